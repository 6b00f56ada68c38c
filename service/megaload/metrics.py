"""Prometheus metrics of one service instance.

Each :class:`Metrics` owns its own ``CollectorRegistry`` (no process-global state), so
several apps can live in one process (tests). ``GET /metrics`` renders :meth:`Metrics.render`.

Names (all prefixed ``megaload_``):

========================================  =========  ==========================================
checkpoint_loads_total{outcome}           counter    checkpoint reads by the engine (success/failure)
load_seconds                              histogram  time to read and build a model
checkpoint_bytes_read_total               counter    on-disk bytes of checkpoints loaded
cache_bytes / cache_entries               gauge      resident models
cache_budget_bytes / cache_reserved_bytes gauge      the budget; bytes held for loads in flight
evictions_total{reason}                   counter    models dropped (lru, request)
stream_bytes_total                        counter    state-dict bytes sent (streaming routes)
streams_stalled_total                     counter    streams dropped: the client took no data for the idle timeout
jobs{kind,state}                          gauge      jobs currently known, by state
http_requests_total{method,route,status}  counter    requests by route template
http_request_seconds{method,route}        histogram  request latency
engine_queue_depth                        gauge      commands waiting for the engine
========================================  =========  ==========================================
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.checkpoint_loads = Counter(
            "megaload_checkpoint_loads", "Checkpoint reads by the engine", ["outcome"], registry=r
        )
        self.load_seconds = Histogram(
            "megaload_load_seconds", "Seconds to read a checkpoint and build its model", buckets=_LOAD_BUCKETS, registry=r
        )
        self.checkpoint_bytes_read = Counter(
            "megaload_checkpoint_bytes_read", "On-disk bytes of checkpoints loaded", registry=r
        )
        self.cache_bytes = Gauge("megaload_cache_bytes", "Bytes held by resident models", registry=r)
        self.cache_entries = Gauge("megaload_cache_entries", "Resident models", registry=r)
        self.cache_budget_bytes = Gauge("megaload_cache_budget_bytes", "Memory budget for resident models", registry=r)
        self.cache_reserved_bytes = Gauge(
            "megaload_cache_reserved_bytes", "Bytes reserved for loads in flight", registry=r
        )
        self.evictions = Counter("megaload_evictions", "Models evicted", ["reason"], registry=r)
        self.stream_bytes = Counter("megaload_stream_bytes", "State-dict bytes streamed", registry=r)
        self.streams_stalled = Counter(
            "megaload_streams_stalled", "Streams dropped because the client took no data for the idle timeout", registry=r
        )
        self.jobs = Gauge("megaload_jobs", "Jobs by kind and state", ["kind", "state"], registry=r)
        self.http_requests = Counter(
            "megaload_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.http_seconds = Histogram(
            "megaload_http_request_seconds", "HTTP request latency", ["method", "route"], registry=r
        )
        self.engine_queue_depth = Gauge("megaload_engine_queue_depth", "Commands waiting for the engine", registry=r)
        for outcome in ("success", "failure"):
            self.checkpoint_loads.labels(outcome=outcome)
        for reason in ("lru", "request"):
            self.evictions.labels(reason=reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)
