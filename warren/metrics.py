"""Prometheus metrics of the manager and workers: the only module that imports prometheus_client.

A service exposes them over HTTP when started with ``--metrics-port PORT`` (or
``WARREN_METRICS_PORT``); 0, the default, exposes nothing. Names and meanings are listed in
docs/operations.md.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("warren.metrics")

BYTES_IN = Counter("warren_bytes_in", "Chunk bytes a worker received and wrote to disk")
BYTES_OUT = Counter(
    "warren_bytes_out", "Bytes a worker sent: forwarded chunks, restores, repair copies", ["kind"]
)
REPLICAS_STORED = Counter("warren_replicas_stored", "Replicas a worker fsynced, verified, stored")
REPLICAS_FAILED = Counter("warren_replicas_failed", "Replicas a worker refused (bad hash, disk)")
REPAIRS = Counter("warren_repairs", "Repair copies the manager started and saw finish", ["state"])
DAMAGED = Counter("warren_damaged_copies", "Stored copies found damaged by scrub or verify")
REJECTED = Counter(
    "warren_messages_rejected", "Invalid messages sent to the dead-letter queue", ["queue"]
)
QUEUE_LAG = Histogram(
    "warren_queue_lag_seconds",
    "Time a message waited between publish and delivery",
    ["queue"],
    buckets=(0.001, 0.01, 0.1, 0.5, 1, 5, 30, 120),
)
WORKERS_ALIVE = Gauge("warren_workers_alive", "Workers that sent a heartbeat recently")
FILES = Gauge("warren_files", "Files in the catalog")
UNDER_REPLICATED = Gauge(
    "warren_under_replicated_files", "Files with fewer live replicas than wanted"
)


def serve(port: int, addr: str) -> None:
    """Expose /metrics on ``addr:port`` (in a daemon thread of prometheus_client's)."""
    if port:
        start_http_server(port, addr=addr)
        log.info("metrics on http://%s:%d/metrics", addr, port)
