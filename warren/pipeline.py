"""Work done in order on threads of their own, a few items ahead of the one who takes the
results: reading, hashing and compressing chunks (which release the interpreter lock)
overlap the publishing of the ones before. An upload's client and a worker's restore
stream use it (``client/upload.py``, ``worker/serve.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable
from typing import TypeVar, cast

T = TypeVar("T")
U = TypeVar("U")
AHEAD = 4
# Threads that do the work of ``pipelined``: two chunks are compressed at once (zstd releases
# the GIL), since compressing is the slowest stage of a compressible upload or restore.
THREADS = 2


def pipelined(
    items: Iterable[T], work: Callable[[T], U], ahead: int = AHEAD, threads: int = THREADS
) -> Generator[U, None, None]:
    """``work(item)`` for each item in order, done on ``threads`` threads of their own up
    to ``ahead`` items before they are taken: compressing (and reading, and hashing, which
    release the GIL too) overlaps the caller's publishing. The items are taken one at a
    time, in order (a generator that hashes what it reads may do so), and each thread then
    does the work of the item it took. An exception in ``work`` or in ``items`` is raised to
    the caller at its place in the order. Closing the iterator early (a ``break``, an
    exception in the caller) stops the threads."""
    source = iter(items)
    cond = threading.Condition()
    taking = threading.Lock()
    done: dict[int, object] = {}  # index -> (result,) or the exception raised there
    taken = 0  # items taken from the source so far
    given = 0  # results handed to the caller so far
    end: int | None = None  # how many items there are, once the source is exhausted
    stop = False

    def run() -> None:
        nonlocal taken, end
        while True:
            with taking:  # one thread takes the next item while the others work
                with cond:
                    while not stop and end is None and taken >= given + ahead:
                        cond.wait()
                    if stop or end is not None:
                        return
                    index = taken
                try:
                    item = next(source)
                except StopIteration:
                    with cond:
                        end = index
                        cond.notify_all()
                    return
                except BaseException as exc:  # handed to the caller, raised there
                    with cond:
                        done[index] = exc
                        end = index + 1
                        cond.notify_all()
                    return
                with cond:
                    taken += 1
            try:
                value: object = (work(item),)
            except BaseException as exc:  # handed to the caller, raised there
                value = exc
            with cond:
                done[index] = value
                cond.notify_all()

    workers = [
        threading.Thread(target=run, name="warren-encode", daemon=True)
        for _ in range(max(1, threads))
    ]
    for t in workers:
        t.start()
    try:
        while True:
            with cond:
                while given not in done and (end is None or given < end):
                    cond.wait()
                if given not in done:
                    return
                got = done.pop(given)
                given += 1
                cond.notify_all()
            if isinstance(got, BaseException):
                raise got
            yield cast(tuple[U], got)[0]
    finally:
        with cond:
            stop = True
            cond.notify_all()
        for t in workers:
            t.join()
