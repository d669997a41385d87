"""Autoscaling over a synthetic business day: GPU-hours saved and the wait it adds.

A day of requests (office-hours peaks, an idle night, bursts; seeded) is replayed on
simulated time twice: once against a static deployment sized for the day's peak, once
through the real decision code (`privatellm.autoscale.decide`, every 15 s, with the
policy `policy_for` reads from an InferenceDeploymentSpec). A replica asked for becomes
ready after the weights' restore time (`estimated_restore_seconds` of the spec) plus
the engine's start; it serves up to a fixed number of requests at once, each for its
own service time, and the rest wait in one queue in order of arrival. A replica
scaled away takes no new requests and holds its GPU until its last one is answered.

Each request's added wait is its wait for a free replica here minus the same
request's wait under the static deployment.

Run: python -m tests.benchmarks.bench_autoscale [--seed N] [--engine-start S] [--no-write]
"""

from __future__ import annotations

import argparse
import bisect
import collections
import heapq
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from privatellm.api import InferenceDeploymentSpec
from privatellm.autoscale import (
    EngineReport,
    GatewayReport,
    Policy,
    aggregate_demand,
    decide,
    policy_for,
    start_state,
)
from privatellm.render.weights import estimated_restore_seconds

from .report import write_section

SECTION = "autoscaling"
DAY = 86_400.0
HOUR = 3600.0
DECIDE_EVERY = 15.0
# Requests one replica serves at once (vLLM's running batch); more wait in the gateway.
SLOTS_PER_REPLICA = 32
TARGET_IN_FLIGHT = 16
MODEL_GIB = 16
# Loading the engine and its CUDA graphs after the weights are read.
ENGINE_START_SECONDS = 30.0
PROMPT_TOKENS = 600
COMPLETION_TOKENS_PER_SECOND = 40
RATE_SLICE = 10.0
TARGET_SAVING = 0.40

# Interactive traffic on a working day, requests per second at each hour (linear between).
OFFICE_DAY = [
    (0.0, 0.0),
    (7.0, 0.0),
    (8.0, 2.0),
    (9.5, 7.0),
    (12.0, 7.0),
    (12.5, 3.5),
    (13.5, 6.0),
    (16.0, 6.0),
    (17.5, 2.0),
    (19.0, 0.5),
    (20.0, 0.0),
    (24.0, 0.0),
]
# Someone at night: about one request an hour while the office is empty.
NIGHT_TRICKLE = 1 / HOUR


@dataclass(frozen=True)
class Request:
    arrival: float
    service: float


@dataclass(frozen=True)
class Workload:
    name: str
    workload_class: str
    autoscaling: dict[str, Any]
    requests: Sequence[Request]
    # Expected requests in flight at the day's busiest second: the static size's basis.
    peak_in_flight: float
    description: str


def arrivals(rate: Callable[[float], float], rng: random.Random) -> list[float]:
    """A Poisson process whose rate is `rate(t)`, held constant over each short slice."""
    times = []
    for start in range(0, int(DAY), int(RATE_SLICE)):
        per_second = rate(start + RATE_SLICE / 2)
        if per_second <= 0:
            continue
        t = start + rng.expovariate(per_second)
        while t < start + RATE_SLICE:
            times.append(t)
            t += rng.expovariate(per_second)
    return times


def lognormal(rng: random.Random, mean: float, sigma: float) -> float:
    return rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma)


def office_rate(t: float) -> float:
    hours = [h for h, _ in OFFICE_DAY]
    i = bisect.bisect_right(hours, t / HOUR) - 1
    (h0, r0), (h1, r1) = OFFICE_DAY[i], OFFICE_DAY[min(i + 1, len(OFFICE_DAY) - 1)]
    return r0 if h1 == h0 else r0 + (r1 - r0) * (t / HOUR - h0) / (h1 - h0)


def interactive_day(rng: random.Random, name: str, autoscaling: dict[str, Any]) -> Workload:
    """Chat traffic: two office peaks, a lunch dip, bursts, one request an hour at night."""
    mean_service = 6.0
    bursts = []
    for _ in range(6):
        start = rng.uniform(9 * HOUR, 17 * HOUR)
        bursts.append((start, start + rng.uniform(60, 180), rng.uniform(8, 14)))

    def rate(t: float) -> float:
        base = office_rate(t)
        extra = sum(extra for a, b, extra in bursts if a <= t < b)
        return base + extra if base > 0 else NIGHT_TRICKLE + extra

    times = arrivals(rate, rng)
    requests = [Request(t, lognormal(rng, mean_service, 0.5)) for t in times]
    peak = max(rate(float(t)) for t in range(int(DAY))) * mean_service
    return Workload(
        name,
        "interactive",
        autoscaling,
        requests,
        peak,
        "interactive: chat requests of 6 s on average (lognormal), up to 7 requests/s in"
        " office hours (08:00-19:00, lunch dip), 6 bursts of 8-14 requests/s more for 1-3"
        " minutes, about one request an hour at night",
    )


def batch_day(rng: random.Random, name: str, autoscaling: dict[str, Any]) -> Workload:
    """Batch jobs: a nightly run and jobs through the office day, nothing between them."""
    mean_service = 20.0
    jobs = [(1.5 * HOUR, 1.5 * HOUR + 40 * 60, 2.5)]
    for _ in range(6):
        start = rng.uniform(8 * HOUR, 17 * HOUR)
        jobs.append((start, start + rng.uniform(10, 40) * 60, rng.uniform(0.5, 2.0)))

    def rate(t: float) -> float:
        return sum(r for a, b, r in jobs if a <= t < b)

    times = arrivals(rate, rng)
    requests = [Request(t, lognormal(rng, mean_service, 0.5)) for t in times]
    peak = max(rate(float(t)) for t in range(int(DAY))) * mean_service
    return Workload(
        name,
        "batch",
        autoscaling,
        requests,
        peak,
        "batch: 7 jobs (one at 01:30 for 40 min at 2.5 requests/s, six in office hours of"
        " 10-40 min at 0.5-2 requests/s), requests of 20 s on average (lognormal), nothing"
        " between jobs",
    )


@dataclass
class Replica:
    asked: float
    ready_at: float
    ready: bool = False
    running: int = 0
    leaving: bool = False
    released: float | None = None


@dataclass
class Run:
    """One replay of a day: per-request waits, GPU time and what the autoscaler did."""

    waits: list[float]
    gpu_hours: float
    scale_ups: int = 0
    scale_downs: int = 0
    wakes: int = 0
    most_replicas: int = 0
    decisions: int = 0
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)


class Day:
    """The event loop of one replay: arrivals, completions, replicas getting ready, decisions."""

    def __init__(self, requests: Sequence[Request], start_seconds: float) -> None:
        self.requests = requests
        self.start_seconds = start_seconds
        self.events: list[tuple[float, int, str, Any]] = []
        self.order = 0
        self.queue: collections.deque[int] = collections.deque()
        self.replicas: list[Replica] = []
        self.waits = [0.0] * len(requests)
        self.arrived = 0
        self.tokens = 0.0

    def push(self, at: float, kind: str, data: Any = None) -> None:
        self.order += 1
        heapq.heappush(self.events, (at, self.order, kind, data))

    def serving(self) -> list[Replica]:
        return [r for r in self.replicas if r.ready and not r.leaving]

    def dispatch(self, now: float) -> None:
        while self.queue:
            free = [r for r in self.serving() if r.running < SLOTS_PER_REPLICA]
            if not free:
                return
            replica = min(free, key=lambda r: r.running)
            index = self.queue.popleft()
            request = self.requests[index]
            self.waits[index] = now - request.arrival
            replica.running += 1
            self.push(now + request.service, "done", (replica, index))

    def scale_to(self, count: int, now: float) -> None:
        staying = [r for r in self.replicas if not r.leaving]
        for _ in range(count - len(staying)):
            replica = Replica(asked=now, ready_at=now + self.start_seconds)
            self.replicas.append(replica)
            self.push(replica.ready_at, "ready", replica)
        # Replicas still starting go first (newest first), then the least busy.
        going = sorted(staying, key=lambda r: (r.ready, r.running, -r.asked))
        for replica in going[: max(0, len(staying) - count)]:
            replica.leaving = True
            if replica.running == 0:
                replica.released = now

    def report(self, now: float) -> tuple[GatewayReport, list[EngineReport]]:
        running = sum(r.running for r in self.replicas)
        queued = len(self.queue)
        # With a replica ready, the queue is the engines' (sent, not answered); without
        # one, the gateway holds it.
        waiting, held = (queued, 0) if self.serving() else (0, queued)
        gateway = GatewayReport(
            source="gateway",
            in_flight=running + waiting,
            waiting=waiting,
            held=held,
            arrived=self.arrived,
            prompt_tokens_per_second=self.arrived * PROMPT_TOKENS / DECIDE_EVERY,
            completion_tokens_per_second=self.tokens / DECIDE_EVERY,
            wanted=held > 0,
        )
        engines = [
            EngineReport(f"vllm-{i}", r.running, 0, r.running / SLOTS_PER_REPLICA)
            for i, r in enumerate(self.serving())
        ]
        self.arrived, self.tokens = 0, 0.0
        return gateway, engines

    def replay(
        self,
        policy: Policy | None,
        static: int,
        policy_at: Callable[[Policy, float], Policy] | None = None,
    ) -> Run:
        """The day with `static` replicas, or from policy.min_replicas under `policy`.
        `policy_at(policy, now)`, when given, is the policy each decision uses (what a
        CostBudget makes of it at that moment)."""
        at = policy_at or (lambda p, _: p)
        first = static if policy is None else at(policy, 0.0).min_replicas
        for _ in range(first):
            self.replicas.append(Replica(asked=0.0, ready_at=0.0, ready=True))
        for index, request in enumerate(self.requests):
            self.push(request.arrival, "arrival", index)
        run = Run(waits=self.waits, gpu_hours=0.0, most_replicas=first)
        state = start_state(first, 0.0)
        if policy is not None:
            self.push(0.0, "decide")
        while self.events:
            now, _, kind, data = heapq.heappop(self.events)
            if kind == "arrival":
                self.arrived += 1
                self.queue.append(data)
            elif kind == "done":
                replica, index = data
                replica.running -= 1
                self.tokens += self.requests[index].service * COMPLETION_TOKENS_PER_SECOND
                if replica.leaving and replica.running == 0:
                    replica.released = now
            elif kind == "ready":
                data.ready = True
            elif kind == "decide" and policy is not None:
                gateway, engines = self.report(now)
                decision = decide(at(policy, now), state, aggregate_demand([gateway], engines), now)
                state = decision.state
                run.decisions += 1
                run.reasons[decision.reason] += 1
                if decision.changed:
                    run.scale_ups += decision.replicas > decision.previous
                    run.scale_downs += decision.replicas < decision.previous
                    run.wakes += decision.previous == 0
                    self.scale_to(decision.replicas, now)
                run.most_replicas = max(run.most_replicas, decision.replicas)
                if now + DECIDE_EVERY < DAY:
                    self.push(now + DECIDE_EVERY, "decide")
            self.dispatch(now)
        run.gpu_hours = (
            sum(
                min(DAY, r.released if r.released is not None else DAY) - r.asked
                for r in self.replicas
            )
            / HOUR
        )
        return run


def spec_for(workload: Workload, max_replicas: int) -> InferenceDeploymentSpec:
    return InferenceDeploymentSpec.model_validate(
        {
            "model": {"name": "m", "source": {"uri": "pvc://weights/m", "sizeGiB": MODEL_GIB}},
            "zones": ["zone-a", "zone-b", "zone-c"],
            "workloadClass": workload.workload_class,
            "autoscaling": {
                **workload.autoscaling,
                "maxReplicas": max_replicas,
                "targetInFlightPerReplica": TARGET_IN_FLIGHT,
            },
        }
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)] if ordered else 0.0


def compare(workload: Workload, engine_start: float) -> dict[str, Any]:
    static = math.ceil(workload.peak_in_flight / TARGET_IN_FLIGHT)
    spec = spec_for(workload, max_replicas=static)
    policy = policy_for(spec)
    start_seconds = estimated_restore_seconds(spec) + engine_start
    fixed = Day(workload.requests, start_seconds).replay(None, static)
    scaled = Day(workload.requests, start_seconds).replay(policy, static)
    added = [a - s for a, s in zip(scaled.waits, fixed.waits, strict=True)]
    return {
        "workload": workload,
        "policy": policy,
        "static": static,
        "start_seconds": start_seconds,
        "fixed": fixed,
        "scaled": scaled,
        "added": added,
        "waited": sum(1 for a in added if a > 0),
        "static_waited": sum(1 for w in fixed.waits if w > 0),
    }


def workloads(seed: int) -> list[Workload]:
    # Each workload draws from its own generator, so adding one leaves the others as they are.
    return [
        interactive_day(random.Random(seed), "interactive, minReplicas 1", {"minReplicas": 1}),
        interactive_day(
            random.Random(seed),
            "interactive, minReplicas 0 (idle 30m by default)",
            {"minReplicas": 0},
        ),
        batch_day(
            random.Random(seed + 1),
            "batch, minReplicas 0 (idle 15m by default)",
            {"minReplicas": 0},
        ),
    ]


def _duration(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds / 60:.0f} min"


def _longer(added: Sequence[float]) -> str:
    longer = [a for a in added if a > 0]
    if not longer:
        return ""
    return (
        f"; those that waited longer here did so by {percentile(longer, 0.5):.1f} s at the"
        f" median, {percentile(longer, 0.99):.1f} s at p99"
    )


def report(results: Sequence[dict[str, Any]], seed: int, engine_start: float) -> str:
    rows, notes, targets = [], [], []
    for r in results:
        fixed, scaled, added = r["fixed"], r["scaled"], r["added"]
        ratio = scaled.gpu_hours / fixed.gpu_hours
        rows.append(
            f"| {r['workload'].name} | {len(added):,} | {r['static']} | {fixed.gpu_hours:.1f}"
            f" | {scaled.gpu_hours:.1f} | {ratio:.2f} | {r['waited']:,}"
            f" | {sum(added) / len(added):.2f} | {percentile(added, 0.99):.1f}"
            f" | {max(added):.1f} | {scaled.scale_ups} / {scaled.scale_downs}"
            f" | {scaled.wakes} | {scaled.most_replicas} |"
        )
        p: Policy = r["policy"]
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in scaled.reasons.most_common())
        notes.append(
            f"- {r['workload'].name}: minReplicas {p.min_replicas}, maxReplicas"
            f" {p.max_replicas}, targetInFlightPerReplica {p.target_in_flight_per_replica},"
            f" scale-down window {_duration(p.scale_down_window_seconds)}, to zero after"
            f" {_duration(p.scale_to_zero_after_seconds)}; {scaled.decisions:,} decisions:"
            f" {reasons}. Under the static deployment {r['static_waited']:,} requests waited"
            f"{_longer(added)}."
        )
        targets.append(
            f"| {r['workload'].name}: GPU-hours at least {TARGET_SAVING:.0%} below static"
            f" | {1 - ratio:.0%} fewer | {'yes' if 1 - ratio >= TARGET_SAVING else 'no'} |"
        )
    descriptions = dict.fromkeys(r["workload"].description for r in results)
    start = results[0]["start_seconds"]
    return "\n".join(
        [
            "## Autoscaling",
            "",
            "`make bench` (`python -m tests.benchmarks.bench_autoscale"
            f" --seed {seed} --engine-start {engine_start:g}`),"
            " simulated time, so the figures do not depend on the machine. One synthetic"
            " working day per row, the same requests replayed against a static deployment"
            " sized for the day's peak (its busiest second's expected requests in flight"
            f" over targetInFlightPerReplica {TARGET_IN_FLIGHT}, also the autoscaler's"
            " maxReplicas) and through `privatellm.autoscale.decide` every"
            f" {DECIDE_EVERY:.0f} s. A replica is ready {start:.0f} s after it is asked for"
            f" (a {MODEL_GIB} GiB model read at 500 MiB/s, `estimated_restore_seconds`, plus"
            f" {engine_start:.0f} s of engine start), serves {SLOTS_PER_REPLICA} requests at"
            " once and holds one GPU from the moment it is asked for until its last request"
            " after it is scaled away. The rest wait in one queue in arrival order (held by"
            " the gateway while no replica is ready).",
            "",
            *(f"- {d}" for d in descriptions),
            "",
            "| workload | requests | static replicas | static GPU-h | autoscaled GPU-h"
            " | autoscaled / static | requests that waited longer | added wait mean s"
            " | added wait p99 s | added wait max s | scale ups / downs | wakes from zero"
            " | most replicas |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            *notes,
            "",
            "| target | measured | met |",
            "|---|---|---|",
            *targets,
            "",
            "Added wait: a request's wait for a free replica under the autoscaler minus its"
            " wait under the static deployment; mean and p99 over every request of the day."
            " Not modelled: the engine slowing as its batch fills (a request's service time"
            " is its own), each replica's own queue (here a new replica takes over queued"
            " requests at once, which flatters scale-up), several gateway replicas (one"
            " report stands for their sum), spot capacity and placement over zones.",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--engine-start", type=float, default=ENGINE_START_SECONDS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    results = [compare(w, args.engine_start) for w in workloads(args.seed)]
    body = report(results, args.seed, args.engine_start)
    if not args.no_write:
        write_section(SECTION, body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
