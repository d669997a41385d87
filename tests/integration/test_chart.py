"""The Helm chart installs the operator: lint, least-privilege RBAC, values schema, real install."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from privatellm.api import GROUP, KINDS, VERSION
from privatellm.audit import Signer
from privatellm.devcluster import DevVault, Toolchain
from privatellm.devcluster.nodes import GPU_RESOURCE
from privatellm.gateway.config import GatewayConfig
from privatellm.gateway.payloads import vault_client
from privatellm.keys.tenancy import namespace_key_name, operator_policy
from privatellm.keys.tls import KeyPair, issue_ca, issue_leaf
from privatellm.keys.transit import TransitClient, VaultError, VaultUnavailableError
from privatellm.render.gateway import (
    CONFIG_DIR,
    CONFIG_KEY,
    CONFIG_SECRET,
    OIDC_CA_KEY,
    START_SETTINGS_ANNOTATION,
    VAULT_CA_KEY,
)
from privatellm.render.meta import operator_pods

from .conftest import ROOT, Cluster, wait_until
from .operator_process import NAMESPACE as NAMESPACE_UT
from .operator_process import RELEASE as RELEASE_UT
from .operator_process import SERVICE_ACCOUNT as OPERATOR_SERVICE_ACCOUNT
from .operator_process import OperatorProcess, running_operator

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
    | triples(["cilium.io"], ["ciliumnetworkpolicies"], ("get", "create", "patch", "update"))
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


def render(
    binary: str, *set_values: str, release: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """The chart's objects for the given --set values, as `helm install` would send them."""
    args = ["template", release, str(CHART), "-n", namespace, f"--kube-version={KUBE_VERSION}"]
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


# Each value that configures a layer, with a misspelling of its key: helm refuses both a
# misspelled key and a value of the wrong type, naming the key.
LAYER_VALUES = {
    "vault": "vaults",
    "vault.address": "vault.adress",
    "vault.role": "vault.rol",
    "vault.authMount": "vault.authmount",
    "vault.ca": "vault.cacert",
    "vault.ca.secretName": "vault.ca.secretname",
    "vault.ca.configMapName": "vault.ca.configmap",
    "vault.ca.key": "vault.ca.keys",
    "gateway": "gateways",
    "gateway.image": "gateway.images",
    "gateway.image.repository": "gateway.image.repo",
    "gateway.image.tag": "gateway.image.tags",
    "gateway.resources": "gateway.resource",
    "gateway.resources.requests": "gateway.resources.request",
    "gateway.resources.requests.cpu": "gateway.resources.requests.cpus",
    "gateway.resources.limits.memory": "gateway.resources.limits.mem",
    "gateway.oidc": "gateway.oicd",
    "gateway.oidc.issuerURL": "gateway.oidc.issuerUrl",
    "gateway.oidc.audience": "gateway.oidc.audince",
    "gateway.oidc.usernameClaim": "gateway.oidc.userNameClaim",
    "gateway.oidc.groupsClaim": "gateway.oidc.groupClaim",
    "gateway.oidc.jwksURL": "gateway.oidc.jwksUri",
    "gateway.oidc.ca": "gateway.oidc.cas",
    "gateway.oidc.ca.secretName": "gateway.oidc.ca.secret",
    "gateway.oidc.ca.configMapName": "gateway.oidc.ca.configMap",
    "gateway.oidc.ca.key": "gateway.oidc.ca.Key",
    "audit.worm": "audit.warm",
    "audit.worm.bucket": "audit.worm.buckets",
    "audit.worm.prefix": "audit.worm.prefx",
    "audit.worm.endpoint": "audit.worm.endpointURL",
}


def refusal(binary: str, *set_values: str) -> str:
    """Helm's schema error for these values (the test fails when helm accepts them)."""
    args = ["template", RELEASE, str(CHART), f"--kube-version={KUBE_VERSION}"]
    result = helm(binary, *args, *(f"--set={value}" for value in set_values), check=False)
    assert result.returncode != 0, f"helm accepted {set_values}"
    assert "schema" in result.stderr, result.stderr
    return result.stderr


@pytest.mark.parametrize(("key", "typo"), LAYER_VALUES.items())
def test_each_layer_value_refuses_a_typo_and_a_wrong_type_naming_the_key(
    helm_binary: str, key: str, typo: str
) -> None:
    parent, _, misspelled = typo.rpartition(".")
    where = "/" + parent.replace(".", "/")
    error = refusal(helm_binary, f"{typo}=x")
    assert f"at '{where if parent else ''}': additional properties '{misspelled}'" in error
    # --set reads `true` as a boolean: no value here takes one.
    error = refusal(helm_binary, f"{key}=true")
    assert f"at '/{key.replace('.', '/')}': got boolean, want" in error


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("vault.address=vault:8200", "vault/address"),
        ("vault.role=../root", "vault/role"),
        ("vault.authMount=/kubernetes/", "vault/authMount"),
        ("vault.ca.secretName=Vault_CA", "vault/ca/secretName"),
        ("vault.ca.key=ca crt", "vault/ca/key"),
        ("gateway.image.repository=Mirror.example/pllm", "gateway/image/repository"),
        ("gateway.image.tag=v1 latest", "gateway/image/tag"),
        ("gateway.resources.requests.cpu=lots", "gateway/resources/requests/cpu"),
        # An issuer over plain http would let anyone on the path swap the signing keys.
        ("gateway.oidc.issuerURL=http://idp.example", "gateway/oidc/issuerURL"),
        ("gateway.oidc.jwksURL=http://idp.example/keys", "gateway/oidc/jwksURL"),
        ("gateway.oidc.groupsClaim=", "gateway/oidc/groupsClaim"),
        ("gateway.oidc.ca.configMapName=-ca", "gateway/oidc/ca/configMapName"),
        ("audit.worm.bucket=Audit_Logs", "audit/worm/bucket"),
        ("audit.worm.prefix=/audit/", "audit/worm/prefix"),
        ("audit.worm.endpoint=s3.example", "audit/worm/endpoint"),
    ],
)
def test_a_malformed_layer_value_is_refused(helm_binary: str, value: str, key: str) -> None:
    assert f"at '/{key}'" in refusal(helm_binary, value)


def test_oidc_needs_an_audience_and_a_ca_comes_from_one_object(helm_binary: str) -> None:
    error = refusal(helm_binary, "gateway.oidc.issuerURL=https://idp.example")
    assert "at '/gateway/oidc/audience'" in error
    error = refusal(helm_binary, "vault.ca.secretName=ca", "vault.ca.configMapName=ca")
    assert "at '/vault/ca'" in error


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = only(objects, "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_by_default_gateways_run_the_operators_image_without_vault_or_oidc(
    helm_binary: str,
) -> None:
    objects = render(helm_binary)
    container = operator_container(objects)
    env = env_of(container)
    assert env["PRIVATELLM_GATEWAY_IMAGE"] == container["image"]
    assert json.loads(env["PRIVATELLM_GATEWAY_RESOURCES"]) == {
        "limits": {},
        "requests": {"cpu": "500m", "memory": "256Mi"},
    }
    assert not [name for name in env if "VAULT" in name or "OIDC" in name]
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert not mounts & {"vault-ca", "oidc-ca"}
    # A CA without its layer is not mounted.
    unused = operator_container(
        render(helm_binary, "vault.ca.secretName=vault-ca", "gateway.oidc.ca.secretName=idp")
    )
    assert not {m["name"] for m in unused["volumeMounts"]} & {"vault-ca", "oidc-ca"}


def test_the_gateway_image_follows_the_operators_unless_set(helm_binary: str) -> None:
    mirrored = env_of(
        operator_container(
            render(helm_binary, "image.repository=mirror.example/pllm", "image.tag=1.2.3")
        )
    )
    assert mirrored["PRIVATELLM_GATEWAY_IMAGE"] == "mirror.example/pllm:1.2.3"
    own = env_of(
        operator_container(
            render(helm_binary, "image.tag=1.2.3", "gateway.image.repository=gw.example/gw")
        )
    )
    assert own["PRIVATELLM_GATEWAY_IMAGE"] == "gw.example/gw:1.2.3"
    default = operator_container(render(helm_binary))["image"]
    tagged = env_of(operator_container(render(helm_binary, "gateway.image.tag=v9")))
    assert tagged["PRIVATELLM_GATEWAY_IMAGE"] == f"{default.rpartition(':')[0]}:v9"


def projected_files(pod: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """Each file a Secret or ConfigMap item puts into the operator's container:
    path -> (volume kind, object name, key)."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    files = {}
    for mount in pod["containers"][0]["volumeMounts"]:
        volume = volumes[mount["name"]]
        for kind, name_field in (("secret", "secretName"), ("configMap", "name")):
            source = volume.get(kind) or {}
            for item in source.get("items", []):
                path = f"{mount['mountPath']}/{item['path']}"
                files[path] = (kind, source[name_field], item["key"])
    return files


def test_vault_and_oidc_reach_the_operator_with_their_cas_mounted(helm_binary: str) -> None:
    objects = render(
        helm_binary,
        "vault.address=https://vault.vault.svc:8200",
        "vault.authMount=k8s/prod",
        "vault.ca.configMapName=vault-ca",
        "gateway.oidc.issuerURL=https://idp.example/realms/corp",
        "gateway.oidc.audience=privatellm",
        "gateway.oidc.jwksURL=https://idp.example/keys",
        "gateway.oidc.ca.secretName=idp-ca",
        "gateway.oidc.ca.key=root.pem",
    )
    container = operator_container(objects)
    env = env_of(container)
    assert {k: v for k, v in env.items() if "VAULT" in k or "OIDC" in k} == {
        "VAULT_ADDR": "https://vault.vault.svc:8200",
        "PRIVATELLM_VAULT_ROLE": "privatellm-operator",
        "PRIVATELLM_VAULT_AUTH_MOUNT": "k8s/prod",
        "PRIVATELLM_VAULT_CA_FILE": "/etc/privatellm/vault-ca/ca.crt",
        "PRIVATELLM_OIDC_ISSUER_URL": "https://idp.example/realms/corp",
        "PRIVATELLM_OIDC_AUDIENCE": "privatellm",
        "PRIVATELLM_OIDC_USERNAME_CLAIM": "email",
        "PRIVATELLM_OIDC_GROUPS_CLAIM": "groups",
        "PRIVATELLM_OIDC_JWKS_URL": "https://idp.example/keys",
        "PRIVATELLM_OIDC_CA_FILE": "/etc/privatellm/oidc-ca/ca.crt",
    }
    assert projected_files(only(objects, "Deployment")["spec"]["template"]["spec"]) == {
        env["PRIVATELLM_VAULT_CA_FILE"]: ("configMap", "vault-ca", "ca.crt"),
        env["PRIVATELLM_OIDC_CA_FILE"]: ("secret", "idp-ca", "root.pem"),
    }


class TLSFront:
    """TLS in front of a plain-HTTP server on loopback, as a load balancer holding a
    certificate of the platform's own CA would be."""

    def __init__(self, upstream_port: int, leaf: KeyPair, workdir: Path) -> None:
        (workdir / "tls.crt").write_bytes(leaf.cert_pem)
        (workdir / "tls.key").write_bytes(leaf.key_pem)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(workdir / "tls.crt", workdir / "tls.key")
        self._upstream_port = upstream_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        start = asyncio.start_server(self._relay, "127.0.0.1", 0, ssl=context)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result()
        self.port: int = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        await asyncio.gather(_pipe(reader, upstream[1]), _pipe(upstream[0], writer))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


# Not the default mount: the operator, the roles it writes and the gateways must all use it.
AUTH_MOUNT = "k8s-chart"
NOW = datetime.datetime.now(datetime.UTC)
VAULT_CA = issue_ca("vault", NOW)
IDP_CA = issue_ca("idp", NOW)


@pytest.fixture(scope="module")
def tls_vault(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A dev-mode Vault behind TLS (its address), with Kubernetes auth at AUTH_MOUNT and a
    role there for the operator's ServiceAccount with the operator policy."""
    workdir = tmp_path_factory.mktemp("vault")
    dev = DevVault(workdir, Toolchain.locate())
    dev.start()
    front = None
    try:
        root = dev.client()
        root.request("POST", f"sys/auth/{AUTH_MOUNT}", {"type": "kubernetes"})
        server = yaml.safe_load(crds.kubeconfig.read_text())["clusters"][0]["cluster"]
        kubernetes = {
            "kubernetes_host": server["server"],
            "kubernetes_ca_cert": Path(server["certificate-authority"]).read_text(),
            "disable_local_ca_jwt": True,
        }
        root.request("POST", f"auth/{AUTH_MOUNT}/config", kubernetes)
        policy = operator_policy(auth_mount=AUTH_MOUNT)
        root.request("PUT", "sys/policies/acl/privatellm-operator", {"policy": policy})
        role = {
            "bound_service_account_names": [OPERATOR_SERVICE_ACCOUNT],
            "bound_service_account_namespaces": [NAMESPACE_UT],
            "token_policies": ["privatellm-operator"],
            "token_ttl": "10m",
        }
        root.request("POST", f"auth/{AUTH_MOUNT}/role/privatellm-operator", role)
        front = TLSFront(dev.port, issue_leaf(VAULT_CA, "vault", ["localhost"], NOW), workdir)
        yield f"https://127.0.0.1:{front.port}"
    finally:
        if front is not None:
            front.close()
        dev.stop()


def layer_values(vault_address: str) -> list[str]:
    """Every layer configured, as a platform team would install the chart."""
    return [
        f"vault.address={vault_address}",
        f"vault.authMount={AUTH_MOUNT}",
        "vault.ca.secretName=vault-ca",
        "gateway.image.repository=mirror.example/pllm",
        "gateway.image.tag=v9",
        "gateway.resources.requests.cpu=250m",
        "gateway.resources.limits.memory=1Gi",
        "gateway.oidc.issuerURL=https://idp.example/realms/corp",
        "gateway.oidc.audience=privatellm",
        "gateway.oidc.usernameClaim=preferred_username",
        "gateway.oidc.groupsClaim=roles",
        "gateway.oidc.jwksURL=https://idp.example/realms/corp/keys",
        "gateway.oidc.ca.configMapName=idp-ca",
        "gateway.oidc.ca.key=root.pem",
        "audit.worm.bucket=audit-worm",
        "audit.worm.endpoint=https://s3.example",
    ]


def create_cas(cluster: Cluster, namespace: str) -> None:
    """The CAs, stored next to the release as the values name them."""
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="vault-ca"),
            string_data={"ca.crt": VAULT_CA.cert_pem.decode()},
        ),
    )
    cluster.core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="idp-ca"),
            data={"root.pem": IDP_CA.cert_pem.decode()},
        ),
    )


def pod_environment(cluster: Cluster, pod: dict[str, Any], root: Path) -> dict[str, str]:
    """The operator container's environment as the kubelet would give it, with the Secret
    and ConfigMap items it mounts written under `root` and their paths moved there."""
    files = projected_files(pod)
    for path, (kind, name, key) in files.items():
        if kind == "secret":
            data = base64.b64decode(
                cluster.core.read_namespaced_secret(name, NAMESPACE_UT).data[key]
            )
        else:
            data = cluster.core.read_namespaced_config_map(name, NAMESPACE_UT).data[key].encode()
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    env = {}
    for variable in pod["containers"][0]["env"]:
        if "valueFrom" in variable:
            assert variable["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
            env[variable["name"]] = NAMESPACE_UT
        else:
            value = variable["value"]
            env[variable["name"]] = str(root / value.lstrip("/")) if value in files else value
    return env


@pytest.fixture(scope="module")
def chart_operator(
    crds: Cluster, tls_vault: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator process with the environment and CA files of the chart's Deployment."""
    workdir = tmp_path_factory.mktemp("chart-operator")
    crds.kubectl("create", "namespace", NAMESPACE_UT, check=False)
    create_cas(crds, NAMESPACE_UT)
    objects = render(
        Toolchain.locate().binary("helm"),
        *layer_values(tls_vault),
        release=RELEASE_UT,
        namespace=NAMESPACE_UT,
    )
    env = pod_environment(crds, only(objects, "Deployment")["spec"]["template"]["spec"], workdir)
    # The Pod's own ServiceAccount token, which the kubelet mounts; and nothing of the
    # test's environment may stand in for what the chart sets.
    token = workdir / "token"
    env |= {"PRIVATELLM_VAULT_JWT_FILE": str(token), "BAO_ADDR": "", "BAO_TOKEN": ""}
    env.setdefault("VAULT_TOKEN", "")
    # Vault reviews each login with the token being checked (no reviewer JWT configured).
    binding = f"{RELEASE_UT}-chart-vault-review"
    crds.kubectl(
        "create",
        "clusterrolebinding",
        binding,
        "--clusterrole=system:auth-delegator",
        f"--serviceaccount={NAMESPACE_UT}:{OPERATOR_SERVICE_ACCOUNT}",
    )
    try:
        yield from running_operator(crds, workdir, env, token)
    finally:
        crds.kubectl("delete", "clusterrolebinding", binding, check=False)
        crds.kubectl("delete", "-n", NAMESPACE_UT, "secret/vault-ca", "configmap/idp-ca")


def test_the_charts_layer_values_reach_every_gateway(
    chart_operator: OperatorProcess, crds: Cluster, namespace: str, tls_vault: str, tmp_path: Path
) -> None:
    model = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": "chat"},
        "spec": {
            "model": {"name": "chat", "source": {"uri": "pvc://weights/chat", "sizeGiB": 16}},
            "zones": ["zone-a", "zone-b"],
            "replicas": 2,
        },
    }
    crds.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencedeployments", model
    )

    def gateway_secret() -> client.V1Secret | None:
        try:
            return crds.core.read_namespaced_secret(CONFIG_SECRET, namespace)
        except client.ApiException:
            return None

    # The operator provisions the namespace's Vault key and role before it writes the
    # gateway: on a loaded machine that takes longer than a minute.
    secret = wait_until(gateway_secret, timeout=180, what="the gateway's config Secret")
    data = {k: base64.b64decode(v) for k, v in secret.data.items()}
    config = GatewayConfig.model_validate(yaml.safe_load(data[CONFIG_KEY]))
    oidc = config.auth.oidc
    assert oidc is not None
    assert oidc.model_dump(exclude={"leeway_seconds"}) == {
        "issuer": "https://idp.example/realms/corp",
        "audience": "privatellm",
        "jwks_uri": "https://idp.example/realms/corp/keys",
        "username_claim": "preferred_username",
        "groups_claim": "roles",
        "ca_file": f"{CONFIG_DIR}/{OIDC_CA_KEY}",
    }
    assert data[OIDC_CA_KEY] == IDP_CA.cert_pem
    encryption = config.encryption
    assert encryption is not None
    assert (encryption.vault_addr, encryption.auth_mount, encryption.ca_file) == (
        tls_vault,
        AUTH_MOUNT,
        f"{CONFIG_DIR}/{VAULT_CA_KEY}",
    )
    assert data[VAULT_CA_KEY] == VAULT_CA.cert_pem

    def statefulset() -> client.V1StatefulSet | None:
        try:
            return crds.apps.read_namespaced_stateful_set("privatellm-gateway", namespace)
        except client.ApiException:
            return None

    # Written after the Secret, in the same reconcile.
    gateway = wait_until(statefulset, timeout=60, what="the gateway's StatefulSet")
    container = crds.api.sanitize_for_serialization(gateway.spec.template.spec.containers[0])
    assert container["image"] == "mirror.example/pllm:v9"
    assert container["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }
    assert "--audit-worm-bucket=audit-worm" in container["args"]
    # A change to those settings replaces the gateway's Pods: it loads them at start.
    assert START_SETTINGS_ANNOTATION in gateway.spec.template.metadata.annotations
    assert {"name": "AWS_ENDPOINT_URL_S3", "value": "https://s3.example"} in container["env"]

    # The gateway's settings work against Vault as it reads them from its mounted Secret:
    # through TLS with the copied CA, logging in at the mount with the role the operator
    # wrote there (which the operator could only do by logging in the same way).
    (tmp_path / VAULT_CA_KEY).write_bytes(data[VAULT_CA_KEY])
    token = crds.kubectl("create", "token", "privatellm-gateway", "-n", namespace).split()[0]
    (tmp_path / "token").write_text(token)
    mounted = encryption.model_copy(
        update={"ca_file": str(tmp_path / VAULT_CA_KEY), "jwt_file": str(tmp_path / "token")}
    )
    key = namespace_key_name(namespace)

    def data_key() -> bool:
        try:
            TransitClient(vault_client(mounted), mounted.transit_mount).datakey(key)
        except VaultError:
            return False
        return True

    wait_until(data_key, what="a data key for the gateway, through TLS at the chart's mount")
    untrusting = vault_client(mounted.model_copy(update={"ca_file": None}))
    with pytest.raises(VaultUnavailableError, match="certificate"):
        TransitClient(untrusting).datakey(key)


INSTALLED_VALUES = layer_values("https://vault.vault.svc:8200")
# `helm upgrade` without --reuse-values starts again from the chart's defaults.
UPGRADED_VALUES = [
    *INSTALLED_VALUES,
    "gateway.resources.requests.cpu=750m",
    "gateway.oidc.audience=privatellm-v2",
]


@pytest.fixture(scope="module")
def release(cluster: Cluster, helm_binary: str) -> Iterator[Cluster]:
    """The chart installed with `helm install --wait` into a namespace enforcing "restricted",
    with every layer configured (INSTALLED_VALUES) and its CAs stored there beforehand."""
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
    create_cas(cluster, NAMESPACE)
    kubeconfig = f"--kubeconfig={cluster.kubeconfig}"
    try:
        helm(
            helm_binary,
            *("install", RELEASE, str(CHART), "-n", NAMESPACE, kubeconfig),
            *("--wait", "--timeout=120s"),
            *(f"--set={value}" for value in INSTALLED_VALUES),
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


def operator_pods_of(cluster: Cluster) -> list[client.V1Pod]:
    pods: list[client.V1Pod] = cluster.core.list_namespaced_pod(
        NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE}"
    ).items
    return pods


def live_env(cluster: Cluster) -> dict[str, Any]:
    """The operator container's environment in the Deployment the API server holds."""
    deployment = cluster.apps.read_namespaced_deployment(RELEASE, NAMESPACE)
    return env_of(
        cluster.api.sanitize_for_serialization(deployment.spec.template.spec)["containers"][0]
    )


def test_install_with_layer_values_runs_the_operator_with_them(release: Cluster) -> None:
    deployment = release.apps.read_namespaced_deployment(RELEASE, NAMESPACE)
    pod = release.api.sanitize_for_serialization(deployment.spec.template.spec)
    env = live_env(release)
    assert env["VAULT_ADDR"] == "https://vault.vault.svc:8200"
    assert env["PRIVATELLM_VAULT_AUTH_MOUNT"] == AUTH_MOUNT
    assert env["PRIVATELLM_OIDC_ISSUER_URL"] == "https://idp.example/realms/corp"
    assert env["PRIVATELLM_GATEWAY_IMAGE"] == "mirror.example/pllm:v9"
    assert json.loads(env["PRIVATELLM_GATEWAY_RESOURCES"])["limits"] == {"memory": "1Gi"}
    assert projected_files(pod) == {
        env["PRIVATELLM_VAULT_CA_FILE"]: ("secret", "vault-ca", "ca.crt"),
        env["PRIVATELLM_OIDC_CA_FILE"]: ("configMap", "idp-ca", "root.pem"),
    }
    assert [p.status.phase for p in operator_pods_of(release)] == ["Running"]


ACCESS_POLICIES = "accesspolicies"


def kept_now(cluster: Cluster) -> dict[str, str]:
    """What upgrades and uninstalls must leave, by uid: the CRDs, the audit claim, the
    signing key (and the key itself), and the custom resource `kept`."""
    crds = client.ApiextensionsV1Api(cluster.api)
    found = {
        plural: crds.read_custom_resource_definition(f"{plural}.{GROUP}").metadata.uid
        for plural in PLURALS
    }
    claim = cluster.core.read_namespaced_persistent_volume_claim(f"{RELEASE}-audit", NAMESPACE)
    key = cluster.core.read_namespaced_secret(f"{RELEASE}-audit", NAMESPACE)
    policy = cluster.custom.get_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, ACCESS_POLICIES, "kept"
    )
    return found | {
        "audit claim": claim.metadata.uid,
        "signing key Secret": key.metadata.uid,
        "signing key": key.data["audit.pem"],
        "AccessPolicy": policy["metadata"]["uid"],
    }


@pytest.fixture(scope="module")
def kept(release: Cluster) -> dict[str, str]:
    """A custom resource created after the install, and what must be kept, as it is now."""
    policy = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AccessPolicy",
        "metadata": {"name": "kept"},
        "spec": {"subjects": [{"kind": "Group", "name": "analysts"}], "models": ["*"]},
    }
    release.custom.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, ACCESS_POLICIES, policy
    )
    return kept_now(release)


def test_upgrade_with_changed_values_rolls_the_operator_and_loses_nothing(
    release: Cluster, helm_binary: str, kept: dict[str, str]
) -> None:
    before = release.apps.read_namespaced_deployment(RELEASE, NAMESPACE)
    old_pods = operator_pods_of(release)
    helm(
        helm_binary,
        *("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, f"--kubeconfig={release.kubeconfig}"),
        *("--wait", "--timeout=120s"),
        *(f"--set={value}" for value in UPGRADED_VALUES),
    )
    after = release.apps.read_namespaced_deployment(RELEASE, NAMESPACE)
    assert after.metadata.generation > before.metadata.generation
    env = live_env(release)
    assert env["PRIVATELLM_OIDC_AUDIENCE"] == "privatellm-v2"
    assert json.loads(env["PRIVATELLM_GATEWAY_RESOURCES"])["requests"]["cpu"] == "750m"

    # Recreate: the old operator is gone before the one with the new template runs.
    def rolled() -> list[client.V1Pod]:
        pods = operator_pods_of(release)
        old = {p.metadata.name for p in old_pods}
        running = [p for p in pods if p.status.phase == "Running"]
        return running if len(pods) == 1 and not old & {p.metadata.name for p in pods} else []

    [pod] = wait_until(rolled, what="the operator Pod of the new template")
    template_hash = "pod-template-hash"
    assert pod.metadata.labels[template_hash] != old_pods[0].metadata.labels[template_hash]
    assert kept_now(release) == kept


# Last in the module on purpose: it removes (and reinstalls) the release the tests above
# inspect.
def test_uninstall_removes_the_operator_and_keeps_what_is_documented(
    release: Cluster, helm_binary: str, kept: dict[str, str]
) -> None:
    helm(helm_binary, "uninstall", RELEASE, "-n", NAMESPACE, f"--kubeconfig={release.kubeconfig}")
    wait_until(
        lambda: not release.apps.list_namespaced_deployment(NAMESPACE).items,
        timeout=30,
        what="the operator Deployment to be deleted",
    )
    # docs/install.md lists what stays: the CRDs with every custom resource, and the
    # operator's audit log with its signing key.
    assert kept_now(release) == kept
    rbac = client.RbacAuthorizationV1Api(release.api)
    gone = [
        lambda: release.core.read_namespaced_service_account(RELEASE, NAMESPACE),
        lambda: rbac.read_cluster_role(RELEASE),
        lambda: rbac.read_cluster_role_binding(RELEASE),
        lambda: rbac.read_cluster_role_binding(f"{RELEASE}-gateway-tokenreview"),
    ]
    for read in gone:
        with pytest.raises(client.ApiException) as missing:
            read()
        assert missing.value.status == 404
    # Installed again under the same name, the release takes the kept log and key back.
    helm(
        helm_binary,
        *("install", RELEASE, str(CHART), "-n", NAMESPACE, f"--kubeconfig={release.kubeconfig}"),
        *("--wait", "--timeout=120s"),
        *(f"--set={value}" for value in INSTALLED_VALUES),
    )
    assert kept_now(release) == kept
