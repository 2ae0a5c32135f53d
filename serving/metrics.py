"""Prometheus metrics of ``odal serve`` (prometheus-client), served on the REST port at the path a TF Serving
``--monitoring_config_file`` names (``prometheus_config { enable: true, path: "..." }``).

Names follow TF Serving's where it has the same measurement (``:tensorflow:serving:request_count``...;
prometheus-client adds ``_total`` to counters).  One registry per process: the server is one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter(":tensorflow:serving:request_count", "Predict requests, by model and status code.",
                   ["model_name", "status"], registry=REGISTRY)
LATENCY = Histogram(":tensorflow:serving:request_latency", "Predict latency in seconds (validated request to "
                    "outputs), by model.", ["model_name"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
BATCH_SIZE = Histogram(":tensorflow:serving:batching_session:processed_batch_size", "Requests run together in "
                       "one call by the server-side batcher (--enable_batching).",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=REGISTRY)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def exposition() -> bytes:
    """The metrics in Prometheus' text format."""
    return generate_latest(REGISTRY)


__all__ = ["BATCH_SIZE", "CONTENT_TYPE", "LATENCY", "REGISTRY", "REQUESTS", "exposition"]
