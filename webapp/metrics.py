"""Prometheus metrics (one registry per app) and the log of recent request timings for /status."""
from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from runtime.types import Timings


class Metrics:
    """Counters and histograms the app updates; `render()` gives the Prometheus text format."""

    def __init__(self, queue_depth=lambda: 0, recent: int = 20):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("webapp_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.errors = Counter("webapp_errors", "Error answers by error code", ["code"], registry=r)
        self.latency = Histogram("webapp_request_seconds", "Request duration by route", ["route"], registry=r,
                                 buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120))
        self.ttft = Histogram("webapp_time_to_first_token_seconds", "Time to first generated token",
                              registry=r, buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32))
        self.tok_s = Histogram("webapp_decode_tokens_per_second", "Decode speed of each generation",
                               registry=r, buckets=(1, 2, 5, 10, 20, 40, 80, 160))
        self.tokens = Counter("webapp_generated_tokens", "Generated tokens", registry=r)
        queue = Gauge("webapp_queue_depth", "Requests waiting for the engine", registry=r)
        queue.set_function(queue_depth)
        self.recent: deque[dict] = deque(maxlen=recent)
        self._lock = threading.Lock()

    def request(self, route: str, status: int, seconds: float) -> None:
        """Count one finished HTTP request."""
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def error(self, code: str) -> None:
        """Count one error answer."""
        self.errors.labels(code).inc()

    def generation(self, kind: str, timings: Timings, completion_tokens: int, finish_reason: str = "") -> None:
        """Record the timings of one engine call (chat, describe, ground)."""
        if timings.ttft_s > 0:
            self.ttft.observe(timings.ttft_s)
        if timings.decode_tok_s > 0:
            self.tok_s.observe(timings.decode_tok_s)
        self.tokens.inc(max(completion_tokens, 0))
        with self._lock:
            self.recent.appendleft({"kind": kind, "at": time.time(), "tokens": completion_tokens,
                                    "finish_reason": finish_reason, **timings.as_dict()})

    def recent_list(self) -> list[dict]:
        """The most recent generations, newest first."""
        with self._lock:
            return list(self.recent)

    def render(self) -> bytes:
        """All metrics in the Prometheus text exposition format."""
        return generate_latest(self.registry)
