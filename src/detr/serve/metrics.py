"""What ``detr serve`` counts, in the Prometheus text format (``GET /metrics``), via prometheus_client.

Each app has its own registry, so that several apps in one process (tests, a user's service mounting
two models) count apart.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    """Requests by endpoint and status, errors by kind, latency, batch sizes, images and the queue length."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_length: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "detr_requests", "HTTP requests answered", ("endpoint", "status"), registry=self.registry
        )
        self.errors = Counter("detr_errors", "requests refused or failed, by kind", ("kind",), registry=self.registry)
        self.latency = Histogram(
            "detr_request_seconds",
            "time from request to answer",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "detr_batch_size",
            "requests' images per forward pass (each pass runs --max-batch-size images, copies filling the rest)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("detr_images", "images predicted", registry=self.registry)
        self.queue = Gauge("detr_queue_length", "images waiting for the model", registry=self.registry)
        self.queue.set_function(queue_length)

    def render(self) -> bytes:
        return generate_latest(self.registry)
