"""The Helm chart installs the operator: lint, least-privilege RBAC, values schema, real install."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from privatellm.api import GROUP, KINDS
from privatellm.audit import Signer
from privatellm.devcluster import Toolchain
from privatellm.devcluster.nodes import GPU_RESOURCE
from privatellm.render.meta import operator_pods

from .conftest import ROOT, Cluster, wait_until

CHART = ROOT / "charts" / "privatellm"
RELEASE = "privatellm"
NAMESPACE = "privatellm-system"
# `helm template` assumes an old Kubernetes unless told, and the chart's
# kubeVersion constraint rejects it.
KUBE_VERSION = "1.34.0"

Triple = tuple[str, str, str]

READ = ("get", "list", "watch")
MANAGE = (*READ, "create", "patch", "update", "delete")
PLURALS = sorted(kind.crd_info.plural for kind in KINDS.values())


def triples(groups: Iterable[str], resources: Iterable[str], verbs: Iterable[str]) -> set[Triple]:
    """Every (apiGroup, resource, verb) a rule grants."""
    return {(g, r, v) for g in groups for r in resources for v in verbs}


# The operator's whole cluster-wide permission set. Adding or removing a single
# verb is a security decision, so it must show up as a change to this set.
EXPECTED_CLUSTER_RULES = (
    triples([GROUP], PLURALS, READ)
    | triples([GROUP], [f"{p}/status" for p in PLURALS], ("get", "patch", "update"))
    | triples([GROUP], ["inferencedeployments/finalizers"], ("update",))
    | triples([GROUP], ["inferencedeployments"], ("patch",))
    | triples(["apps"], ["deployments", "statefulsets"], MANAGE)
    | triples([""], ["services", "serviceaccounts", "persistentvolumeclaims"], MANAGE)
    | triples(["networking.k8s.io"], ["networkpolicies"], MANAGE)
    | triples(["policy"], ["poddisruptionbudgets"], MANAGE)
    | triples(["batch"], ["jobs"], MANAGE)
    | triples([""], ["secrets"], ("get", "create", "patch", "update"))
    | triples([""], ["configmaps"], ("get", "create", "patch", "update"))
    | triples(
        ["cert-manager.io"], ["certificates", "issuers"], ("get", "create", "patch", "update")
    )
    | triples(["keda.sh"], ["scaledobjects"], ("list", "create", "patch", "delete"))
    | triples([""], ["pods", "nodes"], READ)
    | triples(["", "events.k8s.io"], ["events"], ("create", "patch", "update"))
    | triples([""], ["events"], ("list",))
    | triples(["apiextensions.k8s.io"], ["customresourcedefinitions"], READ)
    | triples([""], ["namespaces"], READ)
    | triples(
        ["rbac.authorization.k8s.io"],
        ["roles", "rolebindings"],
        ("get", "create", "patch", "update"),
    )
    | triples(["discovery.k8s.io"], ["endpointslices"], READ)
)
RBAC = "rbac.authorization.k8s.io"
EXPECTED_NAMED_RULES = triples([RBAC], ["clusterrolebindings"], ("get", "patch", "update")) | (
    triples([RBAC], ["clusterroles"], ("bind",))
)


@pytest.fixture(scope="module")
def helm_binary() -> str:
    """The pinned Helm of the test environment; on an external cluster, whichever is at hand."""
    if os.environ.get("PRIVATELLM_TEST_KUBECONFIG"):
        return shutil.which("helm") or Toolchain.locate().binary("helm")
    return Toolchain.locate().binary("helm")


def helm(binary: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm; with `check`, fail the test with helm's own error output."""
    result = subprocess.run([binary, *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def render(binary: str, *set_values: str) -> list[dict[str, Any]]:
    """The chart's objects for the given --set values, as `helm install` would send them."""
    args = ["template", RELEASE, str(CHART), "-n", NAMESPACE, f"--kube-version={KUBE_VERSION}"]
    args += [f"--set={value}" for value in set_values]
    return [doc for doc in yaml.safe_load_all(helm(binary, *args).stdout) if doc]


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, got {len(matches)}"
    return matches[0]


def granted(role: dict[str, Any]) -> set[Triple]:
    return set().union(
        *(triples(r["apiGroups"], r["resources"], r["verbs"]) for r in role["rules"])
    )


def test_chart_lints_strictly(helm_binary: str) -> None:
    output = helm(helm_binary, "lint", "--strict", str(CHART)).stdout
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


def test_no_role_grants_a_wildcard(helm_binary: str) -> None:
    objects = render(helm_binary)
    roles = [o for o in objects if o["kind"] in ("ClusterRole", "Role")]
    assert {r["kind"] for r in roles} == {"ClusterRole"}
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert not any("*" in item for item in rule.get(field, [])), (role, rule)


def test_cluster_role_grants_exactly_the_expected_rules(helm_binary: str) -> None:
    objects = render(helm_binary)
    role = only(objects, "ClusterRole")
    assert granted(role) == EXPECTED_CLUSTER_RULES | EXPECTED_NAMED_RULES
    # Rules on named objects grant nothing beyond those objects.
    named = {
        (g, r, v, n)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
        for n in rule.get("resourceNames", [])
    }
    binding_name = f"{RELEASE}-gateway-tokenreview"
    assert named == {
        (RBAC, "clusterrolebindings", verb, binding_name) for verb in ("get", "patch", "update")
    } | {(RBAC, "clusterroles", "bind", "system:auth-delegator")}
    bindings = {b["metadata"]["name"]: b for b in objects if b["kind"] == "ClusterRoleBinding"}
    assert bindings[RELEASE]["subjects"] == [
        {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}
    ]
    # The operator fills the gateways' binding; the chart creates it empty.
    assert bindings[binding_name]["roleRef"]["name"] == "system:auth-delegator"
    assert "subjects" not in bindings[binding_name]
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]


def test_the_operator_keeps_an_audit_log_signed_with_a_key_made_once(helm_binary: str) -> None:
    objects = render(helm_binary)
    secret, claim = only(objects, "Secret"), only(objects, "PersistentVolumeClaim")
    for kept in (secret, claim):
        assert kept["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # The key Helm makes is one the audit log can sign with.
    signer = Signer.from_pem(base64.b64decode(secret["data"]["audit.pem"]))
    assert len(signer.key_id) == 16
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--audit-dir=/var/lib/privatellm/audit" in args
    assert "--audit-signing-key=/etc/privatellm/audit/audit.pem" in args
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["audit"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert volumes["audit-key"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert pod["securityContext"]["fsGroup"] == 65532

    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert "PRIVATELLM_AUDIT_WORM_BUCKET" not in env
    shipped = render(helm_binary, "audit.worm.bucket=audit-worm", "audit.worm.endpoint=http://s3")
    container = only(shipped, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PRIVATELLM_AUDIT_WORM_BUCKET"] == "audit-worm"
    assert env["PRIVATELLM_AUDIT_WORM_PREFIX"] == "audit"
    assert env["PRIVATELLM_AUDIT_WORM_ENDPOINT"] == "http://s3"

    off = render(helm_binary, "audit.enabled=false")
    assert not [o for o in off if o["kind"] in ("Secret", "PersistentVolumeClaim")]
    assert not [
        a
        for a in only(off, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        if a.startswith("--audit")
    ]


@pytest.mark.parametrize("names", [(), ("nameOverride=llm", "fullnameOverride=ops")])
def test_the_operators_pods_carry_the_labels_its_network_policies_admit(
    helm_binary: str, names: tuple[str, ...]
) -> None:
    # Whatever the release and its objects are called, the gateways' peer port and the
    # scaled models' servers let the operator in.
    pod = only(render(helm_binary, *names), "Deployment")["spec"]["template"]
    admitted = operator_pods(NAMESPACE)["podSelector"]["matchLabels"]
    assert admitted.items() <= pod["metadata"]["labels"].items()


@pytest.mark.parametrize(
    ("typo", "key"),
    [("replicaz=2", "replicaz"), ("image.tagg=v1", "tagg"), ("serviceAccount.nmae=x", "nmae")],
)
def test_a_values_typo_fails_with_a_schema_error_naming_the_key(
    helm_binary: str, typo: str, key: str
) -> None:
    result = helm(
        helm_binary,
        *("template", RELEASE, str(CHART), f"--kube-version={KUBE_VERSION}", f"--set={typo}"),
        check=False,
    )
    assert result.returncode != 0
    assert "schema" in result.stderr
    assert f"'{key}' not allowed" in result.stderr


def test_a_second_operator_replica_is_refused(helm_binary: str) -> None:
    """Two operators would reconcile the same objects against each other."""
    refused = helm(
        helm_binary,
        *("template", RELEASE, str(CHART), f"--kube-version={KUBE_VERSION}", "--set=replicas=2"),
        check=False,
    )
    assert refused.returncode != 0
    assert "replicas" in refused.stderr
    deployment = only(render(helm_binary), "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


@pytest.fixture(scope="module")
def release(cluster: Cluster, helm_binary: str) -> Iterator[Cluster]:
    """The chart installed with `helm install --wait` into a namespace enforcing "restricted"."""
    cluster.core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(
                name=NAMESPACE,
                labels={
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            )
        )
    )
    wait_until(
        lambda: cluster.core.list_namespaced_service_account(NAMESPACE).items,
        what=f"default ServiceAccount in {NAMESPACE}",
    )
    kubeconfig = f"--kubeconfig={cluster.kubeconfig}"
    try:
        helm(
            helm_binary,
            *("install", RELEASE, str(CHART), "-n", NAMESPACE, kubeconfig),
            *("--wait", "--timeout=120s"),
        )
        yield cluster
    finally:
        helm(helm_binary, "uninstall", RELEASE, "-n", NAMESPACE, kubeconfig, "--ignore-not-found")
        cluster.core.delete_namespace(NAMESPACE)


def test_install_establishes_the_crds(release: Cluster) -> None:
    crds = client.ApiextensionsV1Api(release.api).list_custom_resource_definition().items
    established = {
        crd.spec.names.plural
        for crd in crds
        if crd.spec.group == GROUP
        and any(c.type == "Established" and c.status == "True" for c in crd.status.conditions)
    }
    assert established == set(PLURALS)


def test_operator_runs_in_a_namespace_enforcing_restricted(release: Cluster) -> None:
    labels = release.core.read_namespace(NAMESPACE).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert release.apps.read_namespaced_deployment(RELEASE, NAMESPACE).status.ready_replicas == 1
    pods = release.core.list_namespaced_pod(
        NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE}"
    ).items
    assert [p.status.phase for p in pods] == ["Running"]
    node = release.core.read_node(pods[0].spec.node_name)
    assert GPU_RESOURCE not in node.status.allocatable, "the operator needs no GPU node"


@pytest.mark.parametrize(
    ("verb", "group", "resource", "subresource", "allowed"),
    [
        ("watch", GROUP, "inferencedeployments", "", True),
        ("patch", GROUP, "inferencedeployments", "status", True),
        ("patch", GROUP, "inferencedeployments", "", True),
        ("patch", GROUP, "accesspolicies", "", False),
        ("delete", GROUP, "inferencedeployments", "", False),
        ("create", "apps", "deployments", "", True),
        ("create", "", "pods", "", False),
        ("get", "", "secrets", "", True),
        ("list", "", "secrets", "", False),
    ],
)
def test_operator_service_account_is_bound_to_the_role(
    release: Cluster, verb: str, group: str, resource: str, subresource: str, allowed: bool
) -> None:
    review = client.AuthorizationV1Api(release.api).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=f"system:serviceaccount:{NAMESPACE}:{RELEASE}",
                resource_attributes=client.V1ResourceAttributes(
                    namespace="some-team",
                    verb=verb,
                    group=group,
                    resource=resource,
                    subresource=subresource,
                ),
            )
        )
    )
    assert review.status.allowed is allowed


# Last in the module on purpose: it removes the release the tests above inspect.
def test_uninstall_removes_the_deployment(release: Cluster, helm_binary: str) -> None:
    helm(helm_binary, "uninstall", RELEASE, "-n", NAMESPACE, f"--kubeconfig={release.kubeconfig}")
    wait_until(
        lambda: not release.apps.list_namespaced_deployment(NAMESPACE).items,
        timeout=30,
        what="the operator Deployment to be deleted",
    )
