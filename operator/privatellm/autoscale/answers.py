"""A gateway replica's `GET /demand` answer, read into the reports `aggregate_demand` sums.

Pure. An answer that is not the shape docs/autoscaling.md gives is refused whole with
the reason; figures inside a well-shaped answer are checked by `gateway_report_problem`.
`arrived` is the difference of `requestsTotal` between two answers of one gateway
process (`instance`); the first answer of a process has arrived = 0 and relies on its
rates and in-flight figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .demand import GatewayReport


class AnswerError(ValueError):
    """The answer is not a demand document."""


@dataclass(frozen=True)
class ReplicaAnswer:
    """What one gateway replica last answered."""

    source: str
    instance: str
    seq: int
    # model -> report, for every model of the replica's configuration.
    reports: Mapping[str, GatewayReport] = field(default_factory=dict)
    # model -> requestsTotal, to count the arrivals until the next answer.
    totals: Mapping[str, int] = field(default_factory=dict)


def read_answer(source: str, body: Any, previous: ReplicaAnswer | None) -> ReplicaAnswer:
    """The reports in one answer of `source`; AnswerError when it is not a demand document."""
    if not isinstance(body, dict):
        raise AnswerError(f"{source}: the answer is not a JSON object")
    instance, seq, models = body.get("instance"), body.get("seq"), body.get("models")
    if not isinstance(instance, str) or not instance:
        raise AnswerError(f"{source}: instance is missing")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise AnswerError(f"{source}: seq is not a whole number >= 0")
    if not isinstance(models, dict):
        raise AnswerError(f"{source}: models is not an object")
    same_process = previous is not None and previous.instance == instance
    reports: dict[str, GatewayReport] = {}
    totals: dict[str, int] = {}
    for model, figures in models.items():
        if not isinstance(figures, dict):
            raise AnswerError(f"{source}: the figures of {model!r} are not an object")
        total = figures.get("requestsTotal", 0)
        earlier = previous.totals.get(model) if same_process and previous else None
        arrived = total - earlier if _is_count(total) and earlier is not None else 0
        if _is_count(total):
            totals[model] = total
        reports[model] = GatewayReport(
            source=source,
            in_flight=figures.get("inFlight", 0),
            waiting=figures.get("waiting", 0),
            held=figures.get("held", 0),
            arrived=arrived,
            prompt_tokens_per_second=figures.get("promptTokensPerSecond", 0.0),
            completion_tokens_per_second=figures.get("completionTokensPerSecond", 0.0),
            wanted=figures.get("wanted", False),
        )
    return ReplicaAnswer(source, instance, seq, reports, totals)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
