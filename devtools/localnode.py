"""A private RabbitMQ node on this machine, from the ``rabbitmq-server`` binary.

Used by ``make up``, the test suite and the benchmark: its own data dir, logs, config and
ports under one folder, bound to 127.0.0.1, with the management UI on. Nothing here talks
AMQP; readiness is a TCP probe plus the management API.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warren.errors import Unavailable, UsageError
from warren.topology import MAX_MESSAGE_SIZE

# Debian's /usr/sbin/rabbitmq-server re-runs itself as the rabbitmq user when started by
# root; the script it wraps runs as whoever starts it, which keeps a private node simple.
SERVER_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "rabbitmq-server")
CTL_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmqctl", "rabbitmqctl")
INSTALL_HINT = (
    "rabbitmq-server is not installed: run 'sudo apt-get install -y rabbitmq-server' "
    "(Debian/Ubuntu) or see https://www.rabbitmq.com/download.html"
)


def find_binary(candidates: tuple[str, ...]) -> str:
    for c in candidates:
        path = c if os.path.isabs(c) and os.access(c, os.X_OK) else shutil.which(c)
        if path:
            return path
    raise UsageError(INSTALL_HINT)


# Ports handed out below the kernel's ephemeral range (32768-60999 on Linux): while a node
# restarts, its ports are free, and an ephemeral one may meanwhile become the source port of
# any outgoing connection on the machine, and the node then fails to start (eaddrinuse).
PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """A port free now, below the ephemeral range, so a node can restart on it."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # everything there taken: any free port will have to do
        s.bind(("127.0.0.1", 0))
        fallback: int = s.getsockname()[1]
        return fallback


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@dataclass
class LocalNode:
    """One RabbitMQ node whose every file lives under ``base``."""

    base: Path
    amqp_port: int
    mgmt_port: int
    dist_port: int
    name: str = "warren"
    extra_config: str = ""
    # The management API's login: guest on a node of the test suite, the administrator
    # ``make up`` provisions on its nodes (devtools/provision.py), which have no guest.
    admin: tuple[str, str] = ("guest", "guest")

    @classmethod
    def with_free_ports(cls, base: Path, name: str = "warren", extra_config: str = "") -> LocalNode:
        return cls(base, free_port(), free_port(), free_port(), name, extra_config)

    @property
    def nodename(self) -> str:
        return f"{self.name}-{self.amqp_port}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.mgmt_port}/"

    @property
    def admin_url(self) -> str:
        """``WARREN_ADMIN_URL`` for ``python -m manager users``, as ``admin``."""
        user, password = (urllib.parse.quote(x, safe="") for x in self.admin)
        return f"http://{user}:{password}@127.0.0.1:{self.mgmt_port}/"

    def url_for(self, user: str, password: str, vhost: str = "/") -> str:
        """The AMQP URL of ``vhost`` on this node, logged in as ``user``."""
        quoted = [urllib.parse.quote(x, safe="") for x in (user, password, vhost)]
        return f"amqp://{quoted[0]}:{quoted[1]}@127.0.0.1:{self.amqp_port}/{quoted[2]}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(self.base / "feature_flags"),
            RABBITMQ_PID_FILE=str(self.base / "beam.pid"),
            RABBITMQ_DIST_PORT=str(self.dist_port),
        )
        return env

    def config_text(self) -> str:
        """The node's rabbitmq.conf, as ``write_config`` writes it."""
        return (
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {self.mgmt_port}\n"
            "log.console = false\n"
            f"max_message_size = {MAX_MESSAGE_SIZE}\n" + self.extra_config
        )

    def write_config(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq.conf").write_text(self.config_text())
        (self.base / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (self.base / "node.json").write_text(
            json.dumps(
                {
                    "amqp_port": self.amqp_port,
                    "mgmt_port": self.mgmt_port,
                    "dist_port": self.dist_port,
                    "name": self.name,
                }
            )
        )

    @classmethod
    def load(cls, base: Path) -> LocalNode | None:
        """The node whose config is in ``base``, if one was ever written there."""
        try:
            info = json.loads((base / "node.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return cls(base, info["amqp_port"], info["mgmt_port"], info["dist_port"], info["name"])

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        self.wait_ready(timeout, self.launch())

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the node's process without waiting for it (see ``wait_ready``)."""
        server = find_binary(SERVER_CANDIDATES)
        if not (self.base / "node.json").exists():
            self.write_config()
        log = open(self.base / "server.out", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [server],
            env=self.env(),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        (self.base / "server.pid").write_text(str(proc.pid))
        return proc

    def wait_ready(self, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise Unavailable(
                    f"RabbitMQ exited during start-up; see {self.base / 'server.out'} "
                    f"and {self.base / 'log'}"
                )
            if port_open(self.amqp_port) and self._management_ok():
                return
            time.sleep(0.2)
        raise Unavailable(f"RabbitMQ did not start within {timeout:.0f} s; see {self.base}")

    def _management_ok(self) -> bool:
        try:
            self.api("GET", "overview")
            return True
        except urllib.error.HTTPError as exc:
            # It answers, but not to this login (a node whose users are still to be made).
            return exc.code == 401
        except (OSError, urllib.error.URLError):
            return False

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.base / name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def running(self) -> bool:
        pid = self._pid("beam.pid")
        return pid is not None and _alive(pid)

    def stop(self, timeout: float = 60.0, beam: int | None = None) -> None:
        """Stop gracefully (SIGTERM, the way the node's own script handles it).

        ``beam``: the VM's pid, when the caller has already signalled it. RabbitMQ removes
        its pid file as it starts to shut down, so it must be read before the signal.
        """
        if beam is None:
            beam = self._pid("beam.pid")
            if beam is not None and _alive(beam):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(beam, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while beam is not None and _alive(beam) and time.monotonic() < deadline:
            time.sleep(0.1)
        if beam is not None and _alive(beam):
            self.kill(beam)
        # A node started again while the distribution port is still held fails with
        # "dist_port_already_used": wait for it as well as for the AMQP port.
        while (port_open(self.amqp_port) or port_open(self.dist_port)) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)

    def kill(self, beam: int | None = None) -> None:
        """SIGKILL the node: a crash, for fault tests (``beam``: its pid, read earlier)."""
        beam = beam or self._pid("beam.pid")
        for pid in (beam, self._pid("server.pid")):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        while beam is not None and _alive(beam):
            time.sleep(0.05)

    def ctl(self, *args: str) -> str:
        """Run rabbitmqctl against this node (about a second: it boots an Erlang VM)."""
        ctl = find_binary(CTL_CANDIDATES)
        proc = subprocess.run(
            [ctl, "-n", self.nodename, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return proc.stdout

    def join(self, first: LocalNode) -> None:
        """Make this running node part of ``first``'s cluster."""
        self.ctl("stop_app")
        self.ctl("join_cluster", first.nodename)
        self.ctl("start_app")
        self.wait_ready(60)

    # -- management API --------------------------------------------------------------------

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = self.management_url + "api/" + path
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        login = ":".join(self.admin).encode()
        req.add_header("Authorization", "Basic " + base64.b64encode(login).decode())
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def add_vhost(self, vhost: str) -> str:
        """Create a vhost that guest may use fully; return its AMQP URL."""
        quoted = urllib.parse.quote(vhost, safe="")
        self.api("PUT", f"vhosts/{quoted}", {})
        self.api(
            "PUT", f"permissions/{quoted}/guest", {"configure": ".*", "write": ".*", "read": ".*"}
        )
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/{quoted}"

    def delete_vhost(self, vhost: str) -> None:
        with contextlib.suppress(OSError, urllib.error.URLError):
            self.api("DELETE", "vhosts/" + urllib.parse.quote(vhost, safe=""))


def tls_config(
    port: int, ca_file: Path, cert_file: Path, key_file: Path, require_client_cert: bool = False
) -> str:
    """``extra_config`` for a TLS listener on 127.0.0.1:``port`` (amqps://). The node may
    run as the ``rabbitmq`` user: the files and their folders must be readable by it.

    A client certificate signed by ``ca_file`` is checked when one is sent;
    ``require_client_cert`` refuses a client that sends none (the tests' node does, so
    the client certificate settings are proven; ``make up TLS=1`` does not)."""
    return (
        f"listeners.ssl.default = 127.0.0.1:{port}\n"
        f"ssl_options.cacertfile = {ca_file}\n"
        f"ssl_options.certfile = {cert_file}\n"
        f"ssl_options.keyfile = {key_file}\n"
        "ssl_options.verify = verify_peer\n"
        f"ssl_options.fail_if_no_peer_cert = {str(require_client_cert).lower()}\n"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def start_cluster(nodes: list[LocalNode], join: bool = True, timeout: float = 120.0) -> None:
    """Boot the nodes side by side, then (the first time) join the others to the first.

    A node that was clustered before finds its peers by itself on restart.
    """
    procs = [n.launch() for n in nodes]
    for n, proc in zip(nodes, procs, strict=True):
        n.wait_ready(timeout, proc)
    if join:
        for n in nodes[1:]:
            n.join(nodes[0])


def cluster_url(nodes: list[LocalNode], vhost: str = "%2F") -> str:
    """The comma-separated URL list warren takes for a cluster."""
    return ",".join(f"amqp://guest:guest@127.0.0.1:{n.amqp_port}/{vhost}" for n in nodes)


def stop_all(nodes: list[LocalNode]) -> None:
    """Stop several nodes at once (each takes seconds to shut down)."""
    beams = [n._pid("beam.pid") for n in nodes]  # before the signal: it removes the file
    for beam in beams:
        if beam is not None and _alive(beam):
            with contextlib.suppress(ProcessLookupError):
                os.kill(beam, signal.SIGTERM)
    for n, beam in zip(nodes, beams, strict=True):
        n.stop(beam=beam)
