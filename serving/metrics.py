"""Prometheus metrics of one server (its own registry, served on --metrics-port):

    kindling_requests_total{method, model, code}         answered requests by gRPC status code
    kindling_request_seconds{method}                     latency histogram, receipt to reply
    kindling_batch_size{model}                           images (rows) per forward pass
    kindling_queue_images                                images waiting for a worker
    kindling_requests_in_flight{method}                  requests received and not yet answered
    kindling_version_state{model, version, state}        1 for each version's current state
    kindling_refusals_total{model, reason}               versions refused, by kind of reason
"""
from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# The kind of a refusal, for a label with few values (the full reason is in ListModels and the log).
REASON_KINDS = (("no validation record", "unvalidated"), ("has no ", "metric_missing"), (" < ", "below_policy"),
                (" > ", "above_policy"), ("truncated", "incomplete"), ("SHA-256", "corrupt"),
                ("smoke", "smoke_test"), ("load:", "load_error"))


def reason_kind(reason: str) -> str:
    return next((kind for text, kind in REASON_KINDS if text in reason), "other")


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("kindling_requests", "Answered requests by gRPC status code",
                                ["method", "model", "code"], registry=r)
        self.latency = Histogram("kindling_request_seconds", "Request latency, receipt to reply", ["method"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("kindling_batch_size", "Images per forward pass", ["model"], buckets=BATCH_BUCKETS,
                               registry=r)
        self.queue = Gauge("kindling_queue_images", "Images waiting for a compute worker", registry=r)
        self.in_flight = Gauge("kindling_requests_in_flight", "Requests received and not yet answered", ["method"],
                               registry=r)
        self.state = Gauge("kindling_version_state", "1 for the state each version is in",
                           ["model", "version", "state"], registry=r)
        self.refusals = Counter("kindling_refusals", "Versions refused, by kind of reason", ["model", "reason"],
                                registry=r)
        self._states: dict[tuple[str, int], str] = {}
        self._http = None

    def version_state(self, model: str, version: int, state, reason: str) -> None:
        """``state`` None: the version is gone (its file removed), and so is its series."""
        key = (model, version)
        old = self._states.pop(key, None)
        if old is not None:
            self.state.remove(model, str(version), old)
        if state is None:
            return
        self._states[key] = state.name.lower()
        self.state.labels(model, str(version), state.name.lower()).set(1)
        if state.name == "REFUSED":
            self.refusals.labels(model, reason_kind(reason)).inc()

    def request(self, method: str, model: str, code: str, seconds: float) -> None:
        # model names come from requests: only known-looking names become label values
        self.requests.labels(method, model if re.fullmatch(r"[A-Za-z0-9._-]{1,128}", model) else "?", code).inc()
        self.latency.labels(method).observe(seconds)

    def serve(self, port: int, host: str) -> int:
        """Starts the HTTP endpoint; returns the port (0 picks a free one)."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_address[1]

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
