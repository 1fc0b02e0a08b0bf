"""The local RabbitMQ node's process checks (devtools.localnode), which ``make down``,
``make up`` and the suite rely on to know when a node has really stopped."""

from __future__ import annotations

import subprocess
import sys
import time

from devtools.localnode import _alive

# The main thread leaves (as the Erlang VM's may while it shuts down); another one runs on.
MAIN_THREAD_LEAVES = """
import ctypes, threading, time
threading.Thread(target=time.sleep, args=(2,)).start()
ctypes.CDLL(None).pthread_exit(None)
"""


def test_a_process_whose_first_thread_has_left_is_alive_until_its_last_one_has() -> None:
    proc = subprocess.Popen([sys.executable, "-c", MAIN_THREAD_LEAVES])
    try:
        time.sleep(0.5)  # the first thread has left; /proc reads the process as a zombie
        with open(f"/proc/{proc.pid}/stat") as f:
            assert f.read().split(") ", 1)[1][:1] == "Z"
        assert _alive(proc.pid)
        deadline = time.monotonic() + 10
        while _alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(proc.pid)  # a zombie with no thread left, not yet reaped: gone
    finally:
        proc.kill()
        proc.wait()
