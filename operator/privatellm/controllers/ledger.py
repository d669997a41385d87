"""Keep each namespace's GPU ledger: the run of every serving Pod, written to a ConfigMap.

Why a ConfigMap in the namespace: it lives in etcd, so the month's figures survive an
operator restart, a new leader on another node and the model's deletion (it has no
owner); `kubectl get` and `privatellm cost report` read it with namespace rights only;
and a write carries the resourceVersion it read, so two operators can never both write
a stale copy. Entries are only added or closed, never removed; closed ones move to
archive ConfigMaps the live one lists, so that it stays small (docs/cost.md).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from privatellm.cost.ledger import (
    ARCHIVES_ANNOTATION,
    LEDGER_CONFIGMAP,
    Run,
    archivable,
    archive_name,
    archive_parts,
    dump,
    fill_parts,
    load,
    merge,
    observe,
    parts_for,
)
from privatellm.kube.client import KINDS, Kube
from privatellm.render.meta import (
    COMPONENT_LABEL,
    INFERENCE_DEPLOYMENT_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
)
from privatellm.render.workload import SERVER_COMPONENT

from .builder import Context, Controller, For, Key, namespace_key

POD = KINDS["Pod"]
INFERENCE = KINDS["InferenceDeployment"]
CONFIG_MAP = KINDS["ConfigMap"]
# How far an open run's last sighting may lag before it is written again: the most a
# Pod deleted while the operator was away can be under-charged, for a write a minute
# instead of one per event.
SEEN_RESOLUTION_SECONDS = 60


def worth_writing(stored: Mapping[str, Run], merged: Mapping[str, Run]) -> bool:
    """Whether the merged ledger says more than the stored one: a new run, an end, or a
    sighting at least SEEN_RESOLUTION_SECONDS later."""
    for uid, run in merged.items():
        old = stored.get(uid)
        if old is None or old.end != run.end:
            return True
        if run.seen - old.seen >= SEEN_RESOLUTION_SECONDS:
            return True
    return False


def render_ledger(
    namespace: str, ledger: Mapping[str, Run], parts: Sequence[str] = (), name: str = ""
) -> dict[str, object]:
    """The live ledger, listing its archive `parts`; or, with `name`, an archive part."""
    metadata: dict[str, object] = {
        "name": name or LEDGER_CONFIGMAP,
        "namespace": namespace,
        "labels": {MANAGED_BY_LABEL: MANAGED_BY},
    }
    if parts:
        metadata["annotations"] = {ARCHIVES_ANNOTATION: ",".join(parts)}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": dump(ledger)}


def archive(
    kube: Kube, namespace: str, ledger: Mapping[str, Run], parts: list[str], now: int
) -> dict[str, Run]:
    """Move the runs that ended long enough ago into the archive parts (appending the
    parts it starts to `parts`); returns what stays in the live ledger. The archives are
    written first: a run is never only in a ledger that failed to be written."""
    months = archivable(ledger, now)
    for month, runs in sorted(months.items()):
        own = [p for p in parts if p.startswith(f"{month}.")]
        last_obj = kube.get(CONFIG_MAP, namespace, archive_name(own[-1])) if own else None
        last = load((last_obj or {}).get("data"))
        for part, content in fill_parts(parts, month, last, runs):
            live = last_obj if own and part == own[-1] else None
            if live is None:
                # A part written before a failed update of the live ledger.
                live = kube.get(CONFIG_MAP, namespace, archive_name(part))
                content = {**load((live or {}).get("data")), **content}
            kube.write_if_unchanged(
                render_ledger(namespace, content, name=archive_name(part)), live
            )
            if part not in parts:
                parts.append(part)
    moved = {uid for runs in months.values() for uid in runs}
    return {uid: run for uid, run in ledger.items() if uid not in moved}


def listed_parts(live: Mapping[str, Any] | None) -> list[str]:
    """The archive parts a live ledger lists in its annotation."""
    annotations = (live or {}).get("metadata", {}).get("annotations") or {}
    return archive_parts(annotations.get(ARCHIVES_ANNOTATION))


def read_runs(kube: Kube, namespace: str, first_month: str) -> tuple[dict[str, Run], list[str]]:
    """The runs of `first_month` (YYYY-MM) and after: the live ledger's and its archives';
    and the archive parts it lists that are missing (their spend is then unknown)."""
    live = kube.get(CONFIG_MAP, namespace, LEDGER_CONFIGMAP)
    if live is None:
        return {}, []
    runs: dict[str, Run] = {}
    missing = []
    for part in parts_for(listed_parts(live), first_month):
        stored = kube.get(CONFIG_MAP, namespace, archive_name(part))
        if stored is None:
            missing.append(archive_name(part))
        runs.update(load((stored or {}).get("data")))
    # The live entry is the newest word on a run seen again after it was archived.
    runs.update(load(live.get("data")))
    return runs, missing


def reconcile(
    kube: Kube,
    namespace: str,
    node_labels: Mapping[str, Mapping[str, str]],
    now: int,
) -> None:
    """Record the namespace's serving Pods in its ledger as of `now`; `node_labels` by node
    name say which GPU product and capacity each Pod's node offers."""
    live = kube.get(CONFIG_MAP, namespace, LEDGER_CONFIGMAP)
    stored = load((live or {}).get("data"))

    @functools.cache
    def models() -> dict[str, Mapping[str, str]]:
        """The models' labels, read once and only for a run's first entry."""
        return {
            m["metadata"]["name"]: m["metadata"].get("labels") or {}
            for m in kube.list(INFERENCE, namespace)
        }

    observed = []
    for pod in kube.list(POD, namespace, f"{COMPONENT_LABEL}={SERVER_COMPONENT}"):
        node = node_labels.get((pod.get("spec") or {}).get("nodeName", ""))
        model = (pod["metadata"].get("labels") or {}).get(INFERENCE_DEPLOYMENT_LABEL, "")
        known = pod["metadata"]["uid"] in stored
        if run := observe(pod, node, None if known else models().get(model)):
            observed.append(run)
    merged = merge(stored, observed, now)
    if live is None and not merged:
        return
    parts = listed_parts(live)
    listed = len(parts)
    kept = archive(kube, namespace, merged, parts, now)
    if (
        live is None
        or len(parts) != listed
        or len(kept) != len(merged)
        or worth_writing(stored, merged)
    ):
        kube.write_if_unchanged(render_ledger(namespace, kept, parts), live)


def _reconcile(context: Context, key: Key, clock: Callable[[], float] = time.time) -> None:
    nodes = {view.name: view.labels for view in context.nodes()}
    reconcile(context.kube, key[0], nodes, int(clock()))


CONTROLLER = Controller(
    name="GPULedger",
    # Every change of a serving Pod (start, deletion, end) is an entry of its namespace's.
    for_=For(POD, key=namespace_key, labels={COMPONENT_LABEL: SERVER_COMPONENT}),
    reconcile=_reconcile,
    workers=1,
)
