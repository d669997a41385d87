"""A vLLM server's `GET /metrics` page (Prometheus text format), read into an `EngineReport`.

Pure. A page that does not parse, or lacks one of the three figures, is refused whole
with the reason (`MetricsError`); the figures of a page that parses are passed on as
they are, and `engine_report_problem` refuses absurd ones (negative, not a number,
a KV-cache fraction above 1) when the demand is summed.

The operator runs one engine per server (no data parallelism is among the flags a spec
may add), so each figure is one sample; several samples of one figure mean a server
the autoscaler does not understand, and the page is refused rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

from .demand import EngineReport

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
# The same fraction under its older name (vLLM PR 18354 renamed it); read only when the
# new name is absent, since a server may show both while the old one is deprecated.
GPU_CACHE_USAGE = "vllm:gpu_cache_usage_perc"
WANTED = (RUNNING, WAITING, KV_CACHE_USAGE, GPU_CACHE_USAGE)


class MetricsError(ValueError):
    """The page is not one vLLM engine's metrics."""


def read_engine_metrics(source: str, text: str) -> EngineReport:
    """The figures of one vLLM server's metrics page; MetricsError when it has none to give."""
    try:
        found = _samples(text)
    except ValueError as error:
        raise MetricsError(f"{source}: not Prometheus text: {error}") from error
    # A page with neither name is refused naming the current one.
    kv_name = (
        GPU_CACHE_USAGE
        if GPU_CACHE_USAGE in found and KV_CACHE_USAGE not in found
        else KV_CACHE_USAGE
    )
    return EngineReport(
        source=source,
        running=_one(source, found, RUNNING),
        waiting=_one(source, found, WAITING),
        kv_cache_usage=_one(source, found, kv_name),
    )


def _samples(text: str) -> dict[str, list[float]]:
    """The values of each wanted figure, in the order the page gives them."""
    found: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in WANTED:
                found.setdefault(sample.name, []).append(sample.value)
    return found


def _one(source: str, found: Mapping[str, list[float]], name: str) -> float:
    values = found.get(name, [])
    if len(values) != 1:
        problem = "missing" if not values else f"given {len(values)} times"
        raise MetricsError(f"{source}: {name} is {problem}; one engine's figures were expected")
    return values[0]
