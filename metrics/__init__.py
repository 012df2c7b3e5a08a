"""Prometheus metrics of the cutover and the `/metrics` endpoint.

Imports nothing of the project but the names of the two stores (`config.settings.BACKENDS`),
and registers nothing at import: build `Metrics(registry)`.
"""

from config.settings import BACKENDS
from metrics.exposition import MetricsASGIApp, MetricsServer, make_metrics_app, serve_metrics
from metrics.registry import (
    DISCREPANCY_REASONS,
    ENTITIES,
    SEARCH_ROLES,
    SHADOW_OUTCOMES,
    SHADOW_STAGES,
    STORE_OPS,
    WRITE_OPS,
    WRITE_OUTCOMES,
    Metrics,
)

__all__ = [
    "BACKENDS",
    "DISCREPANCY_REASONS",
    "ENTITIES",
    "SEARCH_ROLES",
    "SHADOW_OUTCOMES",
    "SHADOW_STAGES",
    "STORE_OPS",
    "WRITE_OPS",
    "WRITE_OUTCOMES",
    "Metrics",
    "MetricsASGIApp",
    "MetricsServer",
    "make_metrics_app",
    "serve_metrics",
]
