"""Prometheus metrics per model and subject, in a registry of the gateway's own."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Read by KEDA's ScaledObjects of models it scales (render/keda.py).
IN_FLIGHT_METRIC = "privatellm_gateway_in_flight"
HELD_METRIC = "privatellm_gateway_held"


class Metering:
    """The gateway's metrics; a fresh registry per gateway keeps tests independent."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "privatellm_gateway_requests",
            "Requests by model, subject, HTTP status and decision reason.",
            ["model", "subject", "status", "reason"],
            registry=r,
        )
        self.tokens = Counter(
            "privatellm_gateway_tokens",
            "Prompt and completion tokens by model and subject.",
            ["model", "subject", "kind"],
            registry=r,
        )
        self.latency = Histogram(
            "privatellm_gateway_request_seconds",
            "Time from request to the last byte of the response.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "privatellm_gateway_upstream_seconds",
            "Time the model took, from sending the request to its last byte.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            IN_FLIGHT_METRIC,
            "Requests being served, by model.",
            ["model"],
            registry=r,
        )
        self.upstream_waiting = Gauge(
            "privatellm_gateway_upstream_waiting",
            "Requests sent to the model and not yet answered (no response headers): "
            "its queue, as the gateway sees it.",
            ["model"],
            registry=r,
        )
        self.held = Gauge(
            HELD_METRIC,
            "Requests held while the model has no ready replica (scaling from zero).",
            ["model"],
            registry=r,
        )
        self.findings = Counter(
            "privatellm_gateway_filter_findings",
            "What the filters found and did, by direction, entity and action.",
            ["direction", "entity", "action"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "privatellm_gateway_upstream_retries",
            "Attempts moved to another replica or the fallback model.",
            ["model"],
            registry=r,
        )
        self.config_reloads = Counter(
            "privatellm_gateway_config_reloads",
            "Configuration reloads by result (applied or rejected).",
            ["result"],
            registry=r,
        )

    def show_models(self, models: Iterable[str]) -> None:
        """Give each configured model its demand gauges, at 0 until it has demand.

        A reader of one model's gauge (KEDA, docs/autoscaling.md) then finds an idle model
        at 0; a missing sample would be an error to it, which stops its scaling down.
        """
        for model in models:
            for gauge in (self.in_flight, self.upstream_waiting, self.held):
                self.child(gauge, model)

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: the lookup is on every request's path."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
