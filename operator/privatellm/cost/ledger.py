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
from collections.abc import Iterable, Mapping
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
