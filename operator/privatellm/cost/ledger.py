"""The ledger: one entry per serving Pod, from the moment it started to the moment it
stopped, with the GPUs it held and where they were.

An entry's facts (Pod, model, GPU product, capacity type, GPU count, start) are written
once and never changed; its end is written once. While the Pod runs, `seen` records the
last time the operator saw it running, so that a Pod deleted while nobody watched is
charged up to the last evidence of it and not a second more. Times are whole seconds
since the epoch: what the API server records, and exact to add up.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from privatellm.render.meta import (
    CAPACITY_TYPE_LABEL,
    COMPONENT_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    INFERENCE_DEPLOYMENT_LABEL,
    SPOT,
)
from privatellm.render.workload import SERVER_COMPONENT

# One per namespace: the runs of every serving Pod there (docs/cost.md).
LEDGER_CONFIGMAP = "privatellm-gpu-ledger"
# Closed runs move to archive ConfigMaps, so that the live one, read and written at every
# Pod event, stays small: a model scaling to zero and back every few minutes would fill
# a ConfigMap's 1 MiB within a month. Its annotation lists the archives, oldest first.
ARCHIVES_ANNOTATION = "privatellm.io/archives"
# A closed run moves once it ended this long ago: by then its Pod object is normally
# gone (one still there is observed again, and skipped when archived), and the moves
# come in batches rather than a write per Pod.
ARCHIVE_AFTER_SECONDS = 2 * 86_400
# An archive part holds at most this much ConfigMap data, well inside 1 MiB.
ARCHIVE_PART_BYTES = 768 * 1024
Capacity = Literal["on-demand", "spot"]
ON_DEMAND: Capacity = "on-demand"


@dataclass(frozen=True)
class Run:
    """One serving Pod's time on its GPUs."""

    uid: str
    pod: str
    model: str
    # The node's nvidia.com/gpu.product; "" when the node does not say.
    gpu_product: str
    capacity: Capacity
    gpus: int
    start: int
    # None while the Pod runs.
    end: int | None
    # The last time the Pod was seen running (its end once it has one).
    seen: int
    # The InferenceDeployment's labels when the run was first seen: budgets select runs
    # by them, so a deleted model's spend still counts where it did.
    model_labels: Mapping[str, str] = field(default_factory=dict)

    def selected_by(self, match_labels: Mapping[str, str]) -> bool:
        return match_labels.items() <= self.model_labels.items()

    def stopped(self, at: int) -> Run:
        return replace(self, end=at, seen=at)


def timestamp(text: str | None) -> int | None:
    """Seconds since the epoch of an RFC 3339 time as the API server writes it."""
    if not text:
        return None
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(moment.timestamp())


def _gpus(pod: Mapping[str, Any]) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        limits = (container.get("resources") or {}).get("limits") or {}
        total += int(limits.get(GPU_RESOURCE, 0))
    return total


def _end(pod: Mapping[str, Any]) -> int | None:
    """When the Pod stopped holding its GPUs: its containers' last finish once all
    have finished, else the moment its deletion was asked for; None while it runs."""
    status = pod.get("status") or {}
    finished = [
        timestamp(((s.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        for s in status.get("containerStatuses") or []
    ]
    if finished and all(f is not None for f in finished):
        return max(f for f in finished if f is not None)
    return timestamp(pod["metadata"].get("deletionTimestamp"))


def observe(
    pod: Mapping[str, Any],
    node_labels: Mapping[str, str] | None,
    model_labels: Mapping[str, str] | None = None,
) -> Run | None:
    """The run of a serving Pod that holds GPUs and has started; None for any other Pod.
    `node_labels` are its node's, `model_labels` its InferenceDeployment's."""
    meta = pod["metadata"]
    labels = meta.get("labels") or {}
    model = labels.get(INFERENCE_DEPLOYMENT_LABEL)
    start = timestamp((pod.get("status") or {}).get("startTime"))
    gpus = _gpus(pod)
    if labels.get(COMPONENT_LABEL) != SERVER_COMPONENT or not model or start is None or not gpus:
        return None
    node = node_labels or {}
    capacity: Capacity = "spot" if node.get(CAPACITY_TYPE_LABEL) == SPOT else ON_DEMAND
    end = _end(pod)
    return Run(
        uid=meta["uid"],
        pod=meta["name"],
        model=model,
        gpu_product=node.get(GPU_PRODUCT_LABEL, ""),
        capacity=capacity,
        gpus=gpus,
        start=start,
        end=end,
        seen=start if end is None else end,
        model_labels=dict(model_labels or {}),
    )


def merge(ledger: Mapping[str, Run], observed: Iterable[Run], now: int) -> dict[str, Run]:
    """The ledger after observing the serving Pods that exist at `now`.

    A new run is added; a known one keeps the facts first written and takes its end once;
    a run still open whose Pod no longer exists ends at the last time it was seen.
    """
    merged = dict(ledger)
    present = set()
    for run in observed:
        present.add(run.uid)
        known = merged.get(run.uid)
        if known is None:
            merged[run.uid] = run if run.end is not None else replace(run, seen=max(now, run.start))
        elif known.end is None:
            merged[run.uid] = (
                known.stopped(max(run.end, known.start))
                if run.end is not None
                else replace(known, seen=max(known.seen, now))
            )
    for uid, known in ledger.items():
        if known.end is None and uid not in present:
            merged[uid] = known.stopped(known.seen)
    return merged


def dump(ledger: Mapping[str, Run]) -> dict[str, str]:
    """The ledger as ConfigMap data: one key per Pod UID, its run as one JSON object."""
    return {uid: json.dumps(asdict(run), sort_keys=True) for uid, run in sorted(ledger.items())}


def load(data: Mapping[str, str] | None) -> dict[str, Run]:
    """The ledger from ConfigMap data, as `dump` wrote it."""
    return {uid: Run(**json.loads(text)) for uid, text in (data or {}).items()}


def archive_name(part: str) -> str:
    """The ConfigMap of archive part `part` ("2026-11.1": the first part of the runs that
    ended in November 2026, UTC)."""
    return f"{LEDGER_CONFIGMAP}-{part}"


def _end_month(run: Run) -> str:
    assert run.end is not None
    return datetime.datetime.fromtimestamp(run.end, datetime.UTC).strftime("%Y-%m")


def archivable(ledger: Mapping[str, Run], now: int) -> dict[str, dict[str, Run]]:
    """The closed runs that may leave the live ledger, by the UTC month they ended in."""
    months: dict[str, dict[str, Run]] = {}
    for uid, run in ledger.items():
        if run.end is not None and run.end < now - ARCHIVE_AFTER_SECONDS:
            months.setdefault(_end_month(run), {})[uid] = run
    return months


def fill_parts(
    parts: Sequence[str], month: str, last: Mapping[str, Run], runs: Mapping[str, Run]
) -> list[tuple[str, dict[str, Run]]]:
    """Where `runs` (ended in `month`) go: into `last`, the newest part of that month
    among `parts` (empty when it has none), and new parts while each is full. Returns
    (part, its whole content) for each part to write."""
    numbers = [int(p.rsplit(".", 1)[1]) for p in parts if p.startswith(f"{month}.")]
    number = max(numbers, default=1)
    current = dict(last)
    size = _size(current)
    written = []
    for uid, run in sorted(runs.items()):
        if uid in current:
            continue  # archived before, and seen again while its Pod lingered
        entry = _size({uid: run})
        if current and size + entry > ARCHIVE_PART_BYTES:
            written.append((f"{month}.{number}", current))
            number, current, size = number + 1, {}, 0
        current[uid] = run
        size += entry
    written.append((f"{month}.{number}", current))
    return written


def _size(runs: Mapping[str, Run]) -> int:
    """Bytes of ConfigMap data `runs` take."""
    return sum(len(uid) + len(text) for uid, text in dump(runs).items())


def archive_parts(annotation: str | None) -> list[str]:
    """The archive parts a live ledger's annotation lists."""
    return [p for p in (annotation or "").split(",") if p]


def parts_for(parts: Sequence[str], first_month: str) -> list[str]:
    """The parts that may hold runs of `first_month` (YYYY-MM, any time zone) or later:
    those of runs that ended in the UTC month before it or after."""
    year, month = (int(x) for x in first_month.split("-"))
    before = f"{year - 1:04d}-12" if month == 1 else f"{year:04d}-{month - 1:02d}"
    return [p for p in parts if p.rsplit(".", 1)[0] >= before]
