"""Keep each namespace's GPU ledger: the run of every serving Pod, written to a ConfigMap.

Why a ConfigMap in the namespace: it lives in etcd, so the month's figures survive an
operator restart, a new leader on another node and the model's deletion (it has no
owner); `kubectl get` and `privatellm cost report` read it with namespace rights only;
and a write carries the resourceVersion it read, so two operators can never both write
a stale copy. Entries are only added or closed, never removed (docs/cost.md).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping

from privatellm.cost.ledger import LEDGER_CONFIGMAP, Run, dump, load, merge, observe
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


def render_ledger(namespace: str, ledger: Mapping[str, Run]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": LEDGER_CONFIGMAP,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY},
        },
        "data": dump(ledger),
    }


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
    if live is None or worth_writing(stored, merged):
        kube.write_if_unchanged(render_ledger(namespace, merged), live)


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
