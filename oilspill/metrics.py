"""Prometheus metrics, in a registry of the app's own (no process-wide state).

Counters and histograms are updated where things happen; gauges of the queue are read from
the store when /metrics is scraped.
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

ML_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Every metric the service exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "oilspill_http_requests", "HTTP requests answered", ["route", "method", "status"],
            registry=r)
        self.uploads = Counter("oilspill_uploads", "Uploads by outcome", ["outcome"],
                               registry=r)
        self.upload_bytes = Counter("oilspill_upload_bytes", "Bytes of accepted uploads",
                                    registry=r)
        self.tasks = Gauge("oilspill_tasks", "Tasks by state", ["state"], registry=r)
        self.queue_depth = Gauge("oilspill_queue_depth", "Tasks waiting for a worker",
                                 registry=r)
        self.ml_call_seconds = Histogram(
            "oilspill_ml_call_seconds", "Time of one call to the ML service",
            buckets=ML_BUCKETS_S, registry=r)
        self.ml_errors = Counter("oilspill_ml_errors", "ML service errors by kind", ["kind"],
                                 registry=r)
        self.retries = Counter("oilspill_retries", "Tasks put back in the queue to retry",
                               registry=r)
        self.cleanup_deletions = Counter(
            "oilspill_cleanup_deletions", "What cleanup and DELETE removed", ["what"],
            registry=r)
        self.ml_reachable = Gauge("oilspill_ml_service_reachable",
                                  "1 while the ML service answers, 0 while the pool waits",
                                  registry=r)
        # Per ML endpoint, labelled by its URL without credentials. Requests are HTTP calls
        # (a batch is one), calls are images answered.
        self.ml_endpoint_up = Gauge(
            "oilspill_ml_endpoint_up", "1 while the ML endpoint is in rotation and answers, 0 "
            "while it is out (probed) or failing", ["endpoint"], registry=r)
        self.ml_endpoint_in_flight = Gauge(
            "oilspill_ml_endpoint_in_flight", "Requests to the ML endpoint in flight",
            ["endpoint"], registry=r)
        self.ml_endpoint_limit = Gauge(
            "oilspill_ml_endpoint_limit", "Requests the ML endpoint may have in flight",
            ["endpoint"], registry=r)
        self.ml_endpoint_calls = Counter(
            "oilspill_ml_endpoint_calls", "Images the ML endpoint answered", ["endpoint"],
            registry=r)
        self.ml_endpoint_requests = Counter(
            "oilspill_ml_endpoint_requests", "HTTP requests to the ML endpoint (a batch is one)",
            ["endpoint"], registry=r)
        self.ml_endpoint_errors = Counter(
            "oilspill_ml_endpoint_errors", "Failed requests to the ML endpoint by kind",
            ["endpoint", "kind"], registry=r)
        self.ml_endpoint_seconds = Histogram(
            "oilspill_ml_endpoint_request_seconds", "Time of one request to the ML endpoint",
            ["endpoint"], buckets=ML_BUCKETS_S, registry=r)
        self.ml_rerouted = Counter(
            "oilspill_ml_rerouted", "Calls sent again to another endpoint after one failed",
            registry=r)
        self.loop_lag_max = Gauge("oilspill_event_loop_lag_max_seconds",
                                  "Largest event-loop stall since start", registry=r)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
