"""What Argo CD and Flux make of the status the operator really writes.

Each kind is created on the real control plane and reconciled as a worker does, as the
chart's ServiceAccount. Every object read back is judged twice: by the health script of
deploy/argocd/argocd-cm.yaml, run by Lua 5.1 (the language Argo CD's interpreter speaks)
with the libraries Argo CD opens, and by kstatus, the library behind Flux's health checks
(tools/kstatus, built by scripts/testenv.sh). docs/gitops.md records every verdict; each
test checks that the verdicts it sees are the ones recorded there.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from lupa.lua51 import LuaRuntime

from privatellm.api import GROUP, VERSION
from privatellm.controllers import budget, inference
from privatellm.controllers.gateway import reconcile_gateway
from privatellm.devcluster import Toolchain
from privatellm.kube.client import KINDS, Kube
from privatellm.render.inference_status import NodeView

from .conftest import ROOT, Cluster, wait_until
from .operator_process import OperatorProcess, running_operator, service_account_kubeconfig
from .test_connector_operator import connector, sidecar_metrics, stack, step
from .test_inference_operator import model
from .test_keda import install_keda, keda, llama

# Fixtures of other modules: the DataConnector tests' namespace, and KEDA's CRD.
__all__ = ["keda", "stack"]

ARGOCD_CM = ROOT / "deploy" / "argocd" / "argocd-cm.yaml"
DOC = ROOT / "docs" / "gitops.md"
PLURALS = {
    "InferenceDeployment": "inferencedeployments",
    "AccessPolicy": "accesspolicies",
    "DataConnector": "dataconnectors",
    "CostBudget": "costbudgets",
}
# Each (kind, sample) the tests below capture; docs/gitops.md has one row for each.
SAMPLES = {
    ("InferenceDeployment", "not observed yet"),
    ("InferenceDeployment", "warming the weight cache"),
    ("InferenceDeployment", "serving"),
    ("InferenceDeployment", "spec edited, not reconciled yet"),
    ("InferenceDeployment", "serving, fallback missing"),
    ("InferenceDeployment", "unknown GPU product"),
    ("AccessPolicy", "not observed yet"),
    ("AccessPolicy", "enforced"),
    ("AccessPolicy", "spec edited, not reconciled yet"),
    ("AccessPolicy", "names a missing model"),
    ("DataConnector", "not observed yet"),
    ("DataConnector", "Pod starting"),
    ("DataConnector", "running"),
    ("DataConnector", "credentials Secret deleted"),
    ("DataConnector", "spec edited, not reconciled yet"),
    ("CostBudget", "not observed yet"),
    ("CostBudget", "spend accounted"),
    ("CostBudget", "spec edited, not reconciled yet"),
    ("CostBudget", "actions not enforced"),
    ("CostBudget", "stored spec now invalid"),
}
SYNC_WAVE = "argocd.argoproj.io/sync-wave"
# Libraries Argo CD does not open for health scripts: what a script must not rely on.
UNOPENED_LIBRARIES = ("os", "io", "debug", "package", "require", "dofile", "loadfile")


# The two judges.


def health_script(kind: str) -> str:
    """The Lua Argo CD runs for `kind`, as argocd-cm.yaml gives it."""
    data = yaml.safe_load(ARGOCD_CM.read_text())["data"]
    script: str = data[f"resource.customizations.health.{GROUP}_{kind}"]
    return script


def argocd_health(obj: dict[str, Any]) -> tuple[str, str]:
    """The health status and message Argo CD's script gives `obj`."""
    lua = LuaRuntime()
    for name in UNOPENED_LIBRARIES:
        lua.globals()[name] = None
    lua.globals().obj = _lua_value(lua, obj)
    result = lua.execute(health_script(obj["kind"]))
    return str(result["status"]), str(result["message"])


def _lua_value(lua: LuaRuntime, value: Any) -> Any:
    """`value` as Argo CD hands JSON to Lua: objects and arrays become tables, null nil."""
    if isinstance(value, dict):
        return lua.table_from({k: _lua_value(lua, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return lua.table_from([_lua_value(lua, v) for v in value])
    return value


def kstatus(obj: dict[str, Any]) -> str:
    """The kstatus verdict on `obj` (Current, InProgress, Failed, ...)."""
    result = subprocess.run(
        [Toolchain.locate().required("kstatus")],
        input=json.dumps(obj),
        capture_output=True,
        text=True,
        check=True,
    )
    verdict: dict[str, str] = json.loads(result.stdout)
    return verdict["status"]


# What docs/gitops.md records.


def _cell(obj: dict[str, Any], type_: str) -> str:
    conditions = (obj.get("status") or {}).get("conditions") or []
    found = next((c for c in conditions if c["type"] == type_), None)
    return f"{found['status']} {found['reason']}" if found else "-"


def observed_row(obj: dict[str, Any]) -> list[str]:
    """The row of docs/gitops.md's verdict table that `obj` makes, after kind and sample."""
    observed = (obj.get("status") or {}).get("observedGeneration")
    generation = f"{'-' if observed is None else observed}/{obj['metadata']['generation']}"
    conditions = [_cell(obj, t) for t in ("Ready", "Progressing", "Degraded")]
    return [generation, *conditions, argocd_health(obj)[0], kstatus(obj)]


def documented_rows() -> dict[tuple[str, str], list[str]]:
    """The verdict table of docs/gitops.md, by kind and sample."""
    text = DOC.read_text()
    table = text.split("<!-- verdicts -->")[1]
    rows = {}
    for line in table.strip().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if cells[0] in PLURALS:
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def judge(sample: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Check `obj`'s verdicts against docs/gitops.md; the Lua verdict and message."""
    key = (obj["kind"], sample)
    assert key in SAMPLES
    assert observed_row(obj) == documented_rows().get(key), f"{key} in {DOC.name}"
    return argocd_health(obj)


# The cluster.


@pytest.fixture(scope="module")
def kube(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Kube:
    """The API as the chart's ServiceAccount: only the chart's ClusterRole applies."""
    path = service_account_kubeconfig(crds, tmp_path_factory.mktemp("sa") / "kubeconfig")
    return Kube(config.new_client_from_config(str(path)))


def create(cluster: Cluster, namespace: str, body: dict[str, Any]) -> None:
    plural = PLURALS[body["kind"]]
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)


def read(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[kind], name
    )
    return obj


def patch_spec(
    cluster: Cluster, namespace: str, kind: str, name: str, spec: dict[str, Any]
) -> None:
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[kind], name, {"spec": spec}
    )


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), {})


def cost_budget(name: str = "support", **spec: Any) -> dict[str, Any]:
    base = {
        "currency": "EUR",
        "monthlyLimit": 40000,
        "gpuPrices": [{"gpuProduct": "NVIDIA-H100-80GB-HBM3", "onDemandPerHour": 2.85}],
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CostBudget",
        "metadata": {"name": name},
        "spec": {**base, **spec},
    }


def policy(name: str, models: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AccessPolicy",
        "metadata": {"name": name},
        "spec": {"subjects": [{"kind": "Group", "name": "support-agents"}], "models": models},
    }


# The verdicts, kind by kind.


def test_the_health_script_is_one_script_for_the_four_kinds() -> None:
    scripts = {health_script(kind) for kind in PLURALS}
    assert len(scripts) == 1
    assert set(documented_rows()) == SAMPLES


def test_argo_cd_syncs_crds_then_the_operator_then_the_examples() -> None:
    apps = [yaml.safe_load(p.read_text()) for p in (ROOT / "deploy/argocd/apps").glob("*.yaml")]
    ordered = sorted(apps, key=lambda a: int(a["metadata"]["annotations"][SYNC_WAVE]))
    assert [a["spec"]["source"]["path"] for a in ordered] == [
        "crds",
        "charts/privatellm",
        "examples",
    ]
    assert ordered[0]["spec"]["syncPolicy"]["automated"]["prune"] is False
    assert ordered[1]["spec"]["source"]["helm"]["skipCrds"] is True
    root = yaml.safe_load((ROOT / "deploy/argocd/root.yaml").read_text())
    assert root["spec"]["source"]["path"] == "deploy/argocd/apps"
    for app in [root, *apps]:
        assert (ROOT / app["spec"]["source"]["path"]).is_dir()


def test_flux_applies_crds_then_the_operator_then_the_examples() -> None:
    documents = list(yaml.safe_load_all((ROOT / "deploy/flux/privatellm.yaml").read_text()))
    kustomizations = {d["metadata"]["name"]: d["spec"] for d in documents[1:]}
    assert [d["kind"] for d in documents] == ["GitRepository", *["Kustomization"] * 3]
    assert kustomizations["privatellm-crds"]["prune"] is False
    assert kustomizations["privatellm-operator"]["dependsOn"] == [{"name": "privatellm-crds"}]
    assert kustomizations["privatellm-examples"]["dependsOn"] == [{"name": "privatellm-operator"}]
    for spec in kustomizations.values():
        assert (ROOT / spec["path"]).is_dir()
    release = yaml.safe_load((ROOT / "deploy/flux/operator/helmrelease.yaml").read_text())
    assert (ROOT / release["spec"]["chart"]["spec"]["chart"]).is_dir()
    assert release["spec"]["install"]["crds"] == release["spec"]["upgrade"]["crds"] == "Skip"


def test_inference_deployment_verdicts(crds: Cluster, kube: Kube, namespace: str) -> None:
    nodes = [NodeView.from_node(n) for n in kube.list(KINDS["Node"])]

    def reconcile(name: str) -> dict[str, Any]:
        inference.reconcile(kube, None, nodes, namespace, name)
        return read(crds, namespace, "InferenceDeployment", name)

    create(crds, namespace, model("chat", replicas=2, zones=["zone-a", "zone-b"]))
    judge("not observed yet", read(crds, namespace, "InferenceDeployment", "chat"))
    judge("warming the weight cache", reconcile("chat"))

    def serving() -> dict[str, Any]:
        obj = reconcile("chat")
        settled = condition(obj, "Progressing").get("reason") == "Complete"
        return obj if settled and condition(obj, "Ready").get("status") == "True" else {}

    status, _ = judge("serving", wait_until(serving, timeout=180, what="serving"))
    assert status == "Healthy"

    patch_spec(crds, namespace, "InferenceDeployment", "chat", {"fallback": {"model": "small"}})
    judge("spec edited, not reconciled yet", read(crds, namespace, "InferenceDeployment", "chat"))
    status, message = judge("serving, fallback missing", reconcile("chat"))
    assert "spec.fallback.model" in message

    unknown = {"gpusPerReplica": 1, "gpuProduct": "NVIDIA-NOT-A-GPU"}
    create(crds, namespace, model("odd", replicas=1, zones=["zone-a"], resources=unknown))
    judge("unknown GPU product", reconcile("odd"))


def test_access_policy_verdicts(crds: Cluster, kube: Kube, namespace: str) -> None:
    create(crds, namespace, model("chat", replicas=1, zones=["zone-a"]))
    create(crds, namespace, policy("team", ["chat"]))
    judge("not observed yet", read(crds, namespace, "AccessPolicy", "team"))
    reconcile_gateway(kube, namespace)
    status, _ = judge("enforced", read(crds, namespace, "AccessPolicy", "team"))
    assert status == "Healthy"

    patch_spec(crds, namespace, "AccessPolicy", "team", {"models": ["chat", "ghost"]})
    judge("spec edited, not reconciled yet", read(crds, namespace, "AccessPolicy", "team"))
    reconcile_gateway(kube, namespace)
    _, message = judge("names a missing model", read(crds, namespace, "AccessPolicy", "team"))
    assert "spec.models[1]" in message


def test_data_connector_verdicts(crds: Cluster, kube: Kube, stack: str) -> None:
    namespace = stack
    create(crds, namespace, connector())
    judge("not observed yet", read(crds, namespace, "DataConnector", "crm"))
    step(kube, namespace)
    judge("Pod starting", read(crds, namespace, "DataConnector", "crm"))

    def running() -> dict[str, Any]:
        step(kube, namespace, reader=sidecar_metrics)
        obj = read(crds, namespace, "DataConnector", "crm")
        return obj if condition(obj, "Ready").get("status") == "True" else {}

    status, _ = judge("running", wait_until(running, timeout=120, what="running"))
    assert status == "Healthy"

    crds.core.delete_namespaced_secret("crm-login", namespace)
    step(kube, namespace)
    obj = read(crds, namespace, "DataConnector", "crm")
    _, message = judge("credentials Secret deleted", obj)
    assert "spec.credentialsSecret" in message

    patch_spec(crds, namespace, "DataConnector", "crm", {"filters": {"dlpAction": "block"}})
    judge("spec edited, not reconciled yet", read(crds, namespace, "DataConnector", "crm"))


def test_cost_budget_verdicts(keda: Cluster, kube: Kube, namespace: str) -> None:
    crds = keda
    create(crds, namespace, cost_budget())
    judge("not observed yet", read(crds, namespace, "CostBudget", "support"))
    budget.reconcile(kube, namespace, "support", int(time.time()))
    status, _ = judge("spend accounted", read(crds, namespace, "CostBudget", "support"))
    assert status == "Healthy"

    # An idle timeout cannot reach a model KEDA scales.
    install_keda(crds)
    create(crds, namespace, llama("keda"))
    patch_spec(crds, namespace, "CostBudget", "support", {"idleTimeout": "30m"})
    judge("spec edited, not reconciled yet", read(crds, namespace, "CostBudget", "support"))
    budget.reconcile(kube, namespace, "support", int(time.time()))
    again = read(crds, namespace, "CostBudget", "support")
    status, message = judge("actions not enforced", again)
    assert again["status"]["observedGeneration"] == 2
    assert (status, message) == (
        "Suspended",
        "spend is accounted; cannot act on every model in scope: spec.idleTimeout (models"
        " scaled by KEDA: llama)",
    )


BUDGET_CRD = ROOT / "crds" / f"{GROUP}_costbudgets.yaml"


def _with_any_currency(crd: dict[str, Any]) -> dict[str, Any]:
    """The CRD as if it had once accepted any currency code."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    del schema["properties"]["spec"]["properties"]["currency"]["pattern"]
    return crd


def _created(cluster: Cluster, namespace: str, body: dict[str, Any]) -> bool:
    try:
        create(cluster, namespace, body)
    except client.ApiException:
        return False  # the looser schema is not in force yet
    return True


def test_a_budget_stored_before_a_stricter_schema_is_degraded(
    crds: Cluster, kube: Kube, namespace: str
) -> None:
    loose = yaml.safe_dump(_with_any_currency(yaml.safe_load(BUDGET_CRD.read_text())))
    crds.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=loose)
    try:
        body = cost_budget("old", currency="eur")
        wait_until(lambda: _created(crds, namespace, body), what="the looser schema")
    finally:
        crds.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(BUDGET_CRD))
    budget.reconcile(kube, namespace, "old", int(time.time()))
    _, message = judge("stored spec now invalid", read(crds, namespace, "CostBudget", "old"))
    assert message.startswith("spec.currency: String should match pattern")
    events = crds.core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=old,reason=InvalidSpec"
    ).items
    assert sorted((e.message or "").split(":")[0] for e in events) == [
        "Degraded=True",
        "Ready=False",
    ]


@pytest.fixture
def operator(crds: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    yield from running_operator(crds, tmp_path)


def test_the_operator_says_a_budget_is_not_ready_where_kubectl_looks(
    operator: OperatorProcess, keda: Cluster, namespace: str
) -> None:
    crds = keda
    install_keda(crds)
    create(crds, namespace, llama("keda"))
    create(crds, namespace, cost_budget(idleTimeout="30m"))
    crds.kubectl(
        "wait",
        "--for=condition=Ready=false",
        "costbudget/support",
        "-n",
        namespace,
        "--timeout=60s",
    )
    obj = read(crds, namespace, "CostBudget", "support")
    assert condition(obj, "Ready")["reason"] == "ActionsNotEnforced"
    assert condition(obj, "Degraded")["status"] == "False"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    # Measured: no GPU ran in the namespace this month.
    assert (obj["status"]["spentThisMonth"], obj["status"]["spendComplete"]) == (0.0, True)
    printed = crds.kubectl("get", "cb", "support", "-n", namespace).splitlines()
    assert printed[0].split() == [
        "NAME",
        "READY",
        "REASON",
        "SPENT",
        "LIMIT",
        "PERCENT",
        "CURRENCY",
        "AGE",
    ]
    assert printed[1].split()[:7] == [
        "support",
        "False",
        "ActionsNotEnforced",
        "0",
        "40000",
        "0",
        "EUR",
    ]
    events = crds.core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=support,reason=ActionsNotEnforced"
    ).items
    assert [e.type for e in events] == ["Warning"], "said once, when it was first observed"
    assert operator.alive()
