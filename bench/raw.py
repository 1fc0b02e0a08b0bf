"""The ceilings warren is measured against: stock pika, done the best way it knows.

This is the only code outside ``warren/broker.py`` that imports pika, on purpose: it is
the baseline, not part of warren.

* ``one_hop``: a SelectConnection producer keeps ``window`` persistent publishes of
  ``chunk`` bytes unconfirmed on a durable queue; a consumer at prefetch 32 acks each,
  in another process. MB/s from the first publish to the last ack. With ``source``, the
  chunks are that file's bytes, in order (the same bytes warren is given).
* ``one_hop(..., hops=2)``: the same through a chain, as a 2-replica upload's bytes go: a
  relay process takes each message from the first queue at prefetch 32, publishes it
  (persistent, confirmed) to the second, and acks it when the broker has confirmed that.
  What the mission's chain costs in pika alone, with no disk write, hash or compression.
* ``round_trips``: a blocking requester sends a message of ``payload`` bytes and waits
  for a small reply from a blocking responder, one at a time. Round trips per second.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika


@dataclass(frozen=True)
class Hop:
    """A raw run: MB/s, and the CPU seconds its pika processes spent (the broker's are
    measured by the caller, who knows its process)."""

    mbs: float
    cpu: float


def one_hop(
    url: str,
    total_bytes: int,
    chunk: int = 1024 * 1024,
    window: int = 16,
    source: Path | None = None,
    hops: int = 1,
) -> Hop:
    """MB/s of one hop (or a chain of ``hops``). Producer, relays and consumer are separate
    processes, as warren's are: in one process they would share one interpreter lock and
    measure less than pika can do. ``source``: a file whose chunks are sent (read as they
    go), else the same bytes each time.
    """
    tag = uuid.uuid4().hex[:8]
    queues = [f"bench.raw.{tag}.{n}" for n in range(hops)]
    count = total_bytes // chunk
    params = pika.URLParameters(url)
    setup = pika.BlockingConnection(params)
    for queue in queues:
        setup.channel().queue_declare(queue, durable=True)
    setup.close()

    ctx = multiprocessing.get_context("fork")
    times: multiprocessing.queues.Queue[tuple[str, float]] = ctx.Queue()
    procs = []
    for n in range(hops):  # the consumer first, then the relays back to the first queue
        ready = ctx.Event()
        if n == 0:
            proc = ctx.Process(target=_consume, args=(url, queues[-1], count, ready, times))
        else:
            hop = (queues[-n - 1], queues[-n], count, ready, times)
            proc = ctx.Process(target=_relay, args=(url, *hop))
        proc.start()
        ready.wait()
        procs.append(proc)
    producer = ctx.Process(
        target=_produce, args=(url, queues[0], count, chunk, window, times, source)
    )
    producer.start()
    procs.append(producer)
    stamps: dict[str, float] = {}
    cpu = 0.0
    for _ in range(len(procs) + 2):  # each process's CPU, the first publish, the last ack
        label, value = times.get()
        if label == "cpu":
            cpu += value
        else:
            stamps[label] = value
    for proc in procs:
        proc.join()

    cleanup = pika.BlockingConnection(params)
    for queue in queues:
        cleanup.channel().queue_delete(queue)
    cleanup.close()
    return Hop(count * chunk / (stamps["last ack"] - stamps["first publish"]) / 1e6, cpu)


def _consume(
    url: str,
    queue: str,
    count: int,
    ready: Any,
    times: multiprocessing.queues.Queue[tuple[str, float]],
) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=32)
    got = 0

    def on_message(c: object, method: pika.spec.Basic.Deliver, _p: object, _b: bytes) -> None:
        nonlocal got
        ch.basic_ack(method.delivery_tag)
        got += 1
        if got == count:
            times.put(("last ack", time.monotonic()))
            ch.stop_consuming()

    ch.basic_consume(queue, on_message)
    ready.set()
    ch.start_consuming()
    conn.close()
    times.put(("cpu", time.process_time()))


def _relay(
    url: str,
    source: str,
    target: str,
    count: int,
    ready: Any,
    times: multiprocessing.queues.Queue[tuple[str, float]],
) -> None:
    """Take each message from ``source`` and publish it to ``target``; ack it once the
    broker has confirmed the copy. On this one channel the n-th delivery is the n-th
    publish, so a confirm's tag (and its ``multiple``) is the ack's."""
    props = pika.BasicProperties(delivery_mode=2)
    acked = 0

    def on_open(conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch: pika.channel.Channel) -> None:
        def on_confirm(frame: pika.frame.Method) -> None:
            nonlocal acked
            tag, multiple = frame.method.delivery_tag, frame.method.multiple
            ch.basic_ack(tag, multiple=multiple)
            acked = tag if multiple else acked + 1
            if acked >= count:
                ch.connection.close()

        def on_message(
            _c: object, _m: pika.spec.Basic.Deliver, _p: pika.BasicProperties, body: bytes
        ) -> None:
            ch.basic_publish("", target, body, props)

        def consume(_f: object) -> None:
            ch.basic_consume(source, on_message)
            ready.set()

        ch.basic_qos(
            prefetch_count=32, callback=lambda _f: ch.confirm_delivery(on_confirm, callback=consume)
        )

    relay = pika.SelectConnection(pika.URLParameters(url), on_open_callback=on_open)
    relay.add_on_close_callback(lambda _c, _r: relay.ioloop.stop())
    relay.ioloop.start()
    times.put(("cpu", time.process_time()))


def _produce(
    url: str,
    queue: str,
    count: int,
    chunk: int,
    window: int,
    times: multiprocessing.queues.Queue[tuple[str, float]],
    source: Path | None = None,
) -> None:
    """A SelectConnection keeping ``window`` persistent publishes unconfirmed."""
    body = b"\x5a" * chunk
    fd = os.open(source, os.O_RDONLY) if source is not None else -1
    state = {"sent": 0, "acked": 0}

    def next_body() -> bytes:
        if fd < 0:
            return body
        return os.pread(fd, chunk, state["sent"] * chunk)

    def on_open(conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch: pika.channel.Channel) -> None:
        def on_confirm(frame: pika.frame.Method) -> None:
            tag = frame.method.delivery_tag
            if frame.method.multiple:
                state["acked"] = tag
            else:
                state["acked"] += 1
            pump()

        def pump() -> None:
            if state["sent"] == 0:
                times.put(("first publish", time.monotonic()))
            props = pika.BasicProperties(delivery_mode=2)
            while state["sent"] < count and state["sent"] - state["acked"] < window:
                ch.basic_publish("", queue, next_body(), props)
                state["sent"] += 1
            if state["acked"] >= count:
                ch.connection.close()

        ch.confirm_delivery(on_confirm, callback=lambda _f: pump())

    producer = pika.SelectConnection(pika.URLParameters(url), on_open_callback=on_open)

    def on_close(_c: object, _reason: object) -> None:
        producer.ioloop.stop()

    producer.add_on_close_callback(on_close)
    producer.ioloop.start()
    times.put(("cpu", time.process_time()))


def round_trips(url: str, seconds: float = 3.0, payload: int = 4) -> float:
    queue = f"bench.rpc.{uuid.uuid4().hex[:8]}"
    params = pika.URLParameters(url)
    ready = threading.Event()
    done = threading.Event()

    def responder() -> None:
        conn = pika.BlockingConnection(params)
        ch = conn.channel()
        ch.queue_declare(queue, auto_delete=True)

        def on_request(
            c: object, method: pika.spec.Basic.Deliver, props: pika.BasicProperties, body: bytes
        ) -> None:
            ch.basic_publish(
                "", props.reply_to, b"ok", pika.BasicProperties(correlation_id=props.correlation_id)
            )
            ch.basic_ack(method.delivery_tag)

        ch.basic_consume(queue, on_request)
        ready.set()
        while not done.is_set():
            conn.process_data_events(time_limit=0.1)
        conn.close()

    thread = threading.Thread(target=responder)
    thread.start()
    ready.wait()
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    reply = ch.queue_declare("", exclusive=True).method.queue
    answers: list[bytes] = []
    ch.basic_consume(reply, lambda c, m, p, b: answers.append(b), auto_ack=True)
    n = 0
    request = os.urandom(payload)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        ch.basic_publish("", queue, request, pika.BasicProperties(reply_to=reply))
        while len(answers) <= n:
            conn.process_data_events(time_limit=None)
        n += 1
    elapsed = time.perf_counter() - started
    conn.close()
    done.set()
    thread.join()
    return n / elapsed
