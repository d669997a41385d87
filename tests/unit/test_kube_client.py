"""The API client refuses names Kubernetes would not accept, and escapes every path segment."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest

from privatellm.kube.client import KINDS, InvalidObjectNameError, Kube, applies_field

SECRET, ROLE_BINDING = KINDS["Secret"], KINDS["RoleBinding"]
TRAVERSALS = ["../../kube-system/secrets/x", "..", ".", "a/b", "a%2Fb", "Upper", "a\n", ""]


class _Response(io.BytesIO):
    status = 200


class RecordingApi:
    """Stands in for kubernetes.client.ApiClient: records requests, answers `{}`."""

    def __init__(self) -> None:
        self.serialized: list[tuple[str, str]] = []
        self.sent: list[tuple[str, str]] = []

    def param_serialize(self, method: str, path: str, **_: Any) -> tuple[Any, ...]:
        self.serialized.append((method, path))
        return method, path, {}, None, None

    def call_api(self, method: str, url: str, **_: Any) -> _Response:
        self.sent.append((method, url))
        return _Response(b"{}")


def _kube() -> tuple[Kube, RecordingApi]:
    api = RecordingApi()
    return Kube(api), api  # type: ignore[arg-type]


def _secret(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"namespace": namespace, "name": name},
    }


CALLS: dict[str, Callable[[Kube, str, str], object]] = {
    "get": lambda kube, ns, name: kube.get(SECRET, ns, name),
    "apply": lambda kube, ns, name: kube.apply(_secret(ns, name), live=None),
    "delete": lambda kube, ns, name: kube.delete(SECRET, ns, name),
    "set_finalizers": lambda kube, ns, name: kube.set_finalizers(SECRET, ns, name, [], "1"),
    "patch_status": lambda kube, ns, name: kube.patch_status(SECRET, ns, name, {}),
}


@pytest.mark.parametrize("call", CALLS, ids=str)
@pytest.mark.parametrize("bad", TRAVERSALS, ids=repr)
def test_an_invalid_name_is_refused_before_any_request(call: str, bad: str) -> None:
    kube, api = _kube()
    with pytest.raises(InvalidObjectNameError, match="Secret name"):
        CALLS[call](kube, "team-a", bad)
    assert api.serialized == [] and api.sent == []


@pytest.mark.parametrize("call", CALLS, ids=str)
@pytest.mark.parametrize("bad", TRAVERSALS, ids=repr)
def test_an_invalid_namespace_is_refused_before_any_request(call: str, bad: str) -> None:
    kube, api = _kube()
    with pytest.raises(InvalidObjectNameError, match="Namespace name"):
        CALLS[call](kube, bad, "model-store")
    assert api.serialized == [] and api.sent == []


@pytest.mark.parametrize("bad", ["../kube-system", "a" * 64, "a.b"], ids=repr)
def test_list_and_events_refuse_an_invalid_namespace(bad: str) -> None:
    kube, api = _kube()
    with pytest.raises(InvalidObjectNameError):
        kube.list(SECRET, bad)
    event = {"kind": "Event", "metadata": {"namespace": bad}, "reason": "Test"}
    with pytest.raises(InvalidObjectNameError):
        kube.post_event(event)
    assert api.serialized == [] and api.sent == []


def test_names_at_the_length_limit_pass_and_one_more_is_refused() -> None:
    longest_secret = ".".join(["a" * 63] * 4)[:253]
    assert SECRET.path("n" * 63, longest_secret).endswith("/" + longest_secret)
    with pytest.raises(InvalidObjectNameError):
        SECRET.path("team-a", longest_secret + "a")
    with pytest.raises(InvalidObjectNameError):
        SECRET.path("n" * 64, "x")


def test_paths_of_valid_names_are_unchanged() -> None:
    kube, api = _kube()
    kube.get(SECRET, "team-a", "model.store-1")
    kube.list(KINDS["InferenceDeployment"], "team-a")
    kube.get(KINDS["Node"], None, "gpu-node-1.zone-a")
    assert [url for _, url in api.sent] == [
        "/api/v1/namespaces/team-a/secrets/model.store-1",
        "/apis/privatellm.io/v1alpha1/namespaces/team-a/inferencedeployments",
        "/api/v1/nodes/gpu-node-1.zone-a",
    ]


def test_rbac_names_may_hold_any_character_but_are_escaped_as_one_segment() -> None:
    kube, api = _kube()
    kube.get(ROLE_BINDING, "team-a", "system:reader #1?x=y")
    kube.get(KINDS["ClusterRoleBinding"], None, "privatellm:gateway tokenreview")
    assert [url for _, url in api.sent] == [
        "/apis/rbac.authorization.k8s.io/v1/namespaces/team-a/rolebindings/system%3Areader%20%231%3Fx%3Dy",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/privatellm%3Agateway%20tokenreview",
    ]


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "50%", ""], ids=repr)
def test_rbac_names_must_still_be_one_path_segment(bad: str) -> None:
    with pytest.raises(InvalidObjectNameError, match="one path segment"):
        ROLE_BINDING.path("team-a", bad)


def test_namespaces_are_named_by_dns_labels() -> None:
    namespace = KINDS["Namespace"]
    assert namespace.path(None, "team-a") == "/api/v1/namespaces/team-a"
    with pytest.raises(InvalidObjectNameError, match="DNS-1123 label"):
        namespace.path(None, "team.a")


def _managed(manager: str, operation: str, field: str) -> list[dict[str, Any]]:
    return [{"manager": manager, "operation": operation, "fieldsV1": {"f:spec": {field: {}}}}]


@pytest.mark.parametrize(
    ("managed", "owned"),
    [
        (_managed("privatellm-operator", "Apply", "f:replicas"), True),
        (_managed("privatellm-operator", "Apply", "f:selector"), False),
        (_managed("privatellm-handover", "Apply", "f:replicas"), False),
        # An Update (a scale, say) is not what the operator's applies declare.
        (_managed("privatellm-operator", "Update", "f:replicas"), False),
        ([], False),
    ],
)
def test_a_field_belongs_to_the_operator_only_where_its_applies_set_it(
    managed: list[dict[str, Any]], owned: bool
) -> None:
    deployment = {"metadata": {"name": "llama-zone-a", "managedFields": managed}}
    assert applies_field(deployment, ("spec", "replicas")) is owned
