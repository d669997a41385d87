"""Demand for one model: what every gateway replica and vLLM replica reports, checked and summed.

A report is refused whole when any of its figures is not a finite number, is negative,
is a fraction where a count is meant, is beyond any real gateway or engine (the limits
below), or contradicts another (more waiting than in flight): one wrong figure says
the reporter cannot be trusted for the others.
Refused reports are left out of the sum and named in `Demand.refused`; they are never
clamped into a figure that could move the replica count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# More requests than one gateway replica (or one engine) could hold for a model: a
# gateway keeps at most some thousands of connections open.
MAX_REQUESTS_PER_REPORT = 1_000_000
# Far beyond the fastest engines (some 10^4 tokens/s per GPU).
MAX_TOKENS_PER_SECOND_PER_REPORT = 100_000_000.0


@dataclass(frozen=True)
class GatewayReport:
    """One gateway replica's figures for one model: its entry in `GET /demand`."""

    # The reporter (a Pod name), for the messages that refuse a report.
    source: str
    # Requests being served: from the first attempt at a replica to the answer's last byte.
    in_flight: float
    # Of those, requests sent and not answered yet (the model's queue). Part of
    # in_flight, so it is checked against it and never added to it.
    waiting: float
    # Requests held while the model has no ready replica; not part of in_flight.
    held: float
    # Requests admitted since the previous report (the difference of requestsTotal).
    arrived: float
    prompt_tokens_per_second: float
    completion_tokens_per_second: float
    # A request asked for the model while it had no ready replica; the gateway keeps
    # this until the model has one, so a wake is not lost when held requests time out.
    wanted: bool = False


@dataclass(frozen=True)
class EngineReport:
    """One vLLM replica's own figures, when it is reachable."""

    source: str
    # vLLM's num_requests_running.
    running: float
    # vLLM's num_requests_waiting.
    waiting: float
    # vLLM's kv_cache_usage_perc, a fraction from 0 to 1.
    kv_cache_usage: float


@dataclass(frozen=True)
class Demand:
    """One model's demand at one moment, summed over the reports that passed the checks."""

    # Gateway reports summed; 0 means nothing is known of the demand.
    gateways: int
    in_flight: int = 0
    held: int = 0
    arrived: int = 0
    wanted: bool = False
    prompt_tokens_per_second: float = 0.0
    completion_tokens_per_second: float = 0.0
    # Engine reports summed.
    engines: int = 0
    # Requests running or waiting inside the engines.
    engine_requests: int = 0
    # Mean KV-cache usage over the engines that reported; None when none did.
    kv_cache_usage: float | None = None
    # Why each refused report was refused, naming its source.
    refused: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        """Whether anything at all is asked of the model."""
        return bool(
            self.in_flight
            or self.held
            or self.wanted
            or self.arrived
            or self.engine_requests
            or self.prompt_tokens_per_second
            or self.completion_tokens_per_second
        )


def _count_problem(name: str, value: object) -> str | None:
    problem = _number_problem(name, value, MAX_REQUESTS_PER_REPORT)
    if problem is None and isinstance(value, float) and not value.is_integer():
        return f"{name} is not a whole number: {value!r}"
    return problem


def _number_problem(name: str, value: object, limit: float) -> str | None:
    # Reports may come from parsed text or JSON: a figure of another type is malformed.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{name} is not a number: {value!r}"
    if not math.isfinite(value) or value < 0:
        return f"{name} is not a finite number >= 0: {value!r}"
    if value > limit:
        return f"{name} is beyond any real reporter: {value!r}"
    return None


def gateway_report_problem(report: GatewayReport) -> str | None:
    """Why a gateway report cannot be used, or None when it can."""
    in_flight = _count_problem("inFlight", report.in_flight)
    waiting = _count_problem("waiting", report.waiting)
    problems = [
        in_flight,
        waiting,
        _count_problem("held", report.held),
        _count_problem("arrived", report.arrived),
        _number_problem(
            "promptTokensPerSecond",
            report.prompt_tokens_per_second,
            MAX_TOKENS_PER_SECOND_PER_REPORT,
        ),
        _number_problem(
            "completionTokensPerSecond",
            report.completion_tokens_per_second,
            MAX_TOKENS_PER_SECOND_PER_REPORT,
        ),
    ]
    if in_flight is None and waiting is None and report.waiting > report.in_flight:
        problems.append(f"waiting exceeds inFlight, of which it is a part: {report.waiting!r}")
    if not isinstance(report.wanted, bool):
        problems.append(f"wanted is not true or false: {report.wanted!r}")
    return _refusal(report.source, problems)


def engine_report_problem(report: EngineReport) -> str | None:
    """Why an engine report cannot be used, or None when it can."""
    problems = [
        _count_problem("numRequestsRunning", report.running),
        _count_problem("numRequestsWaiting", report.waiting),
        _number_problem("kvCacheUsagePerc", report.kv_cache_usage, 1.0),
    ]
    return _refusal(report.source, problems)


def _refusal(source: str, problems: Sequence[str | None]) -> str | None:
    found = [p for p in problems if p is not None]
    return f"{source}: {'; '.join(found)}" if found else None


def aggregate_demand(
    gateways: Sequence[GatewayReport], engines: Sequence[EngineReport] = ()
) -> Demand:
    """The model's demand: the sum of the reports that pass the checks; the others refused."""
    refused: list[str] = []
    good_gateways: list[GatewayReport] = []
    for gateway in gateways:
        problem = gateway_report_problem(gateway)
        if problem is None:
            good_gateways.append(gateway)
        else:
            refused.append(problem)
    good_engines: list[EngineReport] = []
    for engine in engines:
        problem = engine_report_problem(engine)
        if problem is None:
            good_engines.append(engine)
        else:
            refused.append(problem)
    kv = sum(e.kv_cache_usage for e in good_engines) / len(good_engines) if good_engines else None
    return Demand(
        gateways=len(good_gateways),
        in_flight=sum(int(g.in_flight) for g in good_gateways),
        held=sum(int(g.held) for g in good_gateways),
        arrived=sum(int(g.arrived) for g in good_gateways),
        wanted=any(g.wanted for g in good_gateways),
        prompt_tokens_per_second=sum(g.prompt_tokens_per_second for g in good_gateways),
        completion_tokens_per_second=sum(g.completion_tokens_per_second for g in good_gateways),
        engines=len(good_engines),
        engine_requests=sum(int(e.running) + int(e.waiting) for e in good_engines),
        kv_cache_usage=kv,
        refused=tuple(refused),
    )
