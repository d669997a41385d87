"""The operator's one way to the API server: plain JSON over the kubernetes client's transport.

Objects stay dicts (no model classes) so that what the renderers produce is what is
sent. Writes are server-side applies with one field manager, made only when
`drift.needs_apply` says the live object differs.

Names reach this module from specs that users write. A name or namespace that
Kubernetes would not accept is refused before any request, and every path segment is
percent-escaped, so that no name can address another object ("../../kube-system/...").
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubernetes import client, config
from prometheus_client import Counter

from privatellm.api import GROUP, VERSION
from privatellm.api.base import DNS_LABEL, DNS_SUBDOMAIN, MAX_DNS_LABEL, MAX_DNS_SUBDOMAIN

from .drift import needs_apply, with_applied_hash

FIELD_MANAGER = "privatellm-operator"
# Applies only the fields the operator hands to another owner (a Deployment's replicas to
# KEDA's HPA), so that the operator can stop applying them without the API server
# resetting them to their defaults in between (Kubernetes' documented handover).
HANDOVER_FIELD_MANAGER = "privatellm-handover"
API_WRITES = Counter(
    "privatellm_api_writes_total", "Write requests sent to the API server.", ["verb", "kind"]
)
log = logging.getLogger(__name__)

Obj = dict[str, Any]


class InvalidObjectNameError(ValueError):
    """A name or namespace Kubernetes would not accept; no request was sent."""


@dataclass(frozen=True)
class NameRule:
    """How Kubernetes validates the names of a kind (k8s.io/apimachinery, api/validation)."""

    what: str
    pattern: re.Pattern[str] | None = None
    max_length: int | None = None

    def check(self, kind: str, name: str) -> None:
        """Raise InvalidObjectNameError unless `name` is a valid name under this rule."""
        too_long = self.max_length is not None and len(name) > self.max_length
        mismatch = self.pattern is not None and not self.pattern.fullmatch(name)
        # Kubernetes' path-segment rule, which every name also obeys.
        not_a_segment = name in ("", ".", "..") or "/" in name or "%" in name
        if too_long or mismatch or not_a_segment:
            raise InvalidObjectNameError(f"{kind} name {name!r} is not {self.what}")


SUBDOMAIN_NAME = NameRule(
    "a DNS-1123 subdomain (at most 253 lowercase letters, digits, '-' and '.')",
    re.compile(DNS_SUBDOMAIN),
    MAX_DNS_SUBDOMAIN,
)
LABEL_NAME = NameRule(
    "a DNS-1123 label (at most 63 lowercase letters, digits and '-')",
    re.compile(DNS_LABEL),
    MAX_DNS_LABEL,
)
# RBAC objects may be named like "system:auth-delegator": anything that is one path segment.
PATH_SEGMENT_NAME = NameRule("one path segment (not '.' or '..', without '/' or '%')")


@dataclass(frozen=True)
class Kind:
    """Where the objects of a kind live in the REST API, and how they may be named."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True
    name_rule: NameRule = SUBDOMAIN_NAME

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """Path of the kind's collection (`name` None), cluster-wide when `namespace` is None.

        Raises InvalidObjectNameError for a name or namespace Kubernetes would not accept; each
        segment is percent-escaped, so that the HTTP client never resolves one away.
        """
        segments = (
            ["api", "v1"] if self.api_version == "v1" else ["apis", *self.api_version.split("/")]
        )
        if self.namespaced and namespace is not None:
            LABEL_NAME.check("Namespace", namespace)
            segments += ["namespaces", namespace]
        segments.append(self.plural)
        if name is not None:
            self.name_rule.check(self.kind, name)
            segments.append(name)
        return "".join("/" + quote(segment, safe="") for segment in segments)


KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        Kind("v1", "ServiceAccount", "serviceaccounts"),
        Kind("v1", "Service", "services"),
        Kind("v1", "Secret", "secrets"),
        Kind("v1", "ConfigMap", "configmaps"),
        Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        Kind("v1", "Pod", "pods"),
        Kind("v1", "Event", "events"),
        Kind("v1", "Node", "nodes", namespaced=False),
        Kind("v1", "Namespace", "namespaces", namespaced=False, name_rule=LABEL_NAME),
        Kind("apps/v1", "Deployment", "deployments"),
        Kind("apps/v1", "StatefulSet", "statefulsets"),
        Kind("batch/v1", "Job", "jobs"),
        Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
        Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
        Kind("discovery.k8s.io/v1", "EndpointSlice", "endpointslices"),
        Kind("rbac.authorization.k8s.io/v1", "Role", "roles", name_rule=PATH_SEGMENT_NAME),
        Kind(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            "rolebindings",
            name_rule=PATH_SEGMENT_NAME,
        ),
        Kind(
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            namespaced=False,
            name_rule=PATH_SEGMENT_NAME,
        ),
        Kind(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            namespaced=False,
        ),
        Kind("cert-manager.io/v1", "Issuer", "issuers"),
        Kind("cert-manager.io/v1", "Certificate", "certificates"),
        Kind("keda.sh/v1alpha1", "ScaledObject", "scaledobjects"),
        Kind("cilium.io/v2", "CiliumNetworkPolicy", "ciliumnetworkpolicies"),
        Kind(f"{GROUP}/{VERSION}", "InferenceDeployment", "inferencedeployments"),
        Kind(f"{GROUP}/{VERSION}", "AccessPolicy", "accesspolicies"),
        Kind(f"{GROUP}/{VERSION}", "DataConnector", "dataconnectors"),
        Kind(f"{GROUP}/{VERSION}", "CostBudget", "costbudgets"),
    )
}


def kind_of(obj: Obj) -> Kind:
    return KINDS[obj["kind"]]


def namespace_and_name(obj: Obj) -> tuple[str, str]:
    """Where an object is: its namespace ("" for a cluster-wide one) and its name."""
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def applies_field(obj: Obj, path: Sequence[str], manager: str = FIELD_MANAGER) -> bool:
    """Whether `manager`'s server-side applies own the field at `path` (e.g. spec, replicas)
    of `obj` as read, by its managedFields."""
    for entry in obj["metadata"].get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        fields = entry.get("fieldsV1") or {}
        for key in path:
            fields = fields.get(f"f:{key}")
            if fields is None:
                break
        else:
            return True
    return False


def new_api_client() -> client.ApiClient:
    """An API client from the in-cluster ServiceAccount, else from KUBECONFIG."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


class _Lookup:
    """Marker: read the live object before deciding to apply."""


LOOKUP = _Lookup()


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, body: str) -> None:
        self.status = status
        self.body = body
        try:
            message = json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            message = body
        # What the API server said (its Status message), without the HTTP status.
        self.message = str(message)
        super().__init__(f"{status}: {message}")


class Kube:
    """Reads, applies and deletes objects; counts the writes it makes."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    @staticmethod
    def _count_write(verb: str, kind: str) -> None:
        API_WRITES.labels(verb=verb, kind=kind).inc()

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        method, url, headers, payload, _ = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(method, url, header_params=headers, body=payload)
        data = response.read()  # type: ignore[no-untyped-call]
        if response.status >= 400:
            raise ApiError(response.status, data.decode(errors="replace") if data else "")
        return json.loads(data) if data else {}

    def get(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        try:
            return self._call("GET", kind.path(namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def list(self, kind: Kind, namespace: str | None = None, selector: str = "") -> list[Obj]:
        query = [("labelSelector", selector)] if selector else []
        items: list[Obj] = self._call("GET", kind.path(namespace), query=query).get("items", [])
        # The items of a list carry no kind or apiVersion; give them theirs, so that they
        # compare with rendered objects like a single GET would.
        return [{"apiVersion": kind.api_version, "kind": kind.kind, **item} for item in items]

    def apply(self, manifest: Obj, live: Obj | _Lookup | None = LOOKUP) -> bool:
        """Server-side apply `manifest` when the live object differs; True when it wrote.

        `live` is the object as the caller already read it (None: it does not exist);
        by default it is read here.
        """
        kind = kind_of(manifest)
        meta = manifest["metadata"]
        desired = with_applied_hash(manifest)
        if isinstance(live, _Lookup):
            live = self.get(kind, meta.get("namespace"), meta["name"])
        if not needs_apply(live, desired):
            return False
        self._count_write("apply", kind.kind)
        self._server_side_apply(kind, desired)
        return True

    def _server_side_apply(self, kind: Kind, desired: Obj, manager: str = FIELD_MANAGER) -> None:
        meta = desired["metadata"]
        self._call(
            "PATCH",
            kind.path(meta.get("namespace"), meta["name"]),
            body=desired,
            query=[("fieldManager", manager), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    def hand_over(self, fields: Obj) -> None:
        """Apply `fields` (an existing object's name and the fields to hand over, at their
        live values) as HANDOVER_FIELD_MANAGER: they stay when the operator stops applying
        them, and their new owner changes them freely."""
        kind = kind_of(fields)
        self._count_write("apply", kind.kind)
        self._server_side_apply(kind, fields, HANDOVER_FIELD_MANAGER)

    def delete(self, kind: Kind, namespace: str | None, name: str) -> None:
        """Delete an object and, in the background, what it owns; gone already is fine."""
        self._count_write("delete", kind.kind)
        try:
            self._call(
                "DELETE",
                kind.path(namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except ApiError as error:
            if error.status != 404:
                raise

    def set_finalizers(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        finalizers: Sequence[str],
        resource_version: str,
    ) -> None:
        """Replace an object's finalizers, failing (409) if it changed since it was read."""
        self._count_write("finalizers", kind.kind)
        meta = {"finalizers": [*finalizers], "resourceVersion": resource_version}
        self._call(
            "PATCH",
            kind.path(namespace, name),
            body={"metadata": meta},
            content_type="application/merge-patch+json",
        )

    def patch_status(self, kind: Kind, namespace: str, name: str, status: Obj) -> None:
        """Replace the status fields the operator owns (merge patch on the subresource)."""
        self._count_write("status", kind.kind)
        self._call(
            "PATCH",
            kind.path(namespace, name) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    def post_event(self, event: Obj) -> None:
        """Record a core/v1 Event; a failure to record is logged, never raised."""
        self._count_write("create", "Event")
        try:
            self._call("POST", KINDS["Event"].path(event["metadata"]["namespace"]), body=event)
        except ApiError as error:
            log.warning("could not record event %s: %s", event.get("reason"), error)

    def list_events(self, namespace: str, field_selector: str) -> Sequence[Obj]:
        """The core/v1 Events of `namespace` that match `field_selector` (`reason=FailedCreate`)."""
        query = [("fieldSelector", field_selector)]
        items: Sequence[Obj] = self._call("GET", KINDS["Event"].path(namespace), query=query).get(
            "items", []
        )
        return items

    def write_if_unchanged(self, manifest: Obj, live: Obj | None) -> None:
        """Write `manifest` only if the object is still as `live` shows it (None: absent).

        Raises ApiError 409 when another writer got there first: the object was created,
        or its resourceVersion moved, since `live` was read. For objects made once and
        shared (a CA), the loser then reads and uses the winner's.
        """
        kind = kind_of(manifest)
        meta = manifest["metadata"]
        desired = with_applied_hash(manifest)
        self._count_write("apply", kind.kind)
        if live is None:
            self._call(
                "POST",
                kind.path(meta.get("namespace")),
                body=desired,
                query=[("fieldManager", FIELD_MANAGER)],
            )
            return
        # Server-side apply treats a resourceVersion in the body as a precondition.
        version = live["metadata"]["resourceVersion"]
        desired["metadata"] = {**desired["metadata"], "resourceVersion": version}
        self._server_side_apply(kind, desired)
