"""An apply is skipped only when it would change nothing."""

from __future__ import annotations

from typing import Any

from privatellm.kube.drift import (
    APPLIED_HASH_ANNOTATION,
    applied_hash,
    contains,
    needs_apply,
    with_applied_hash,
)


def service(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "m", "namespace": "n", "labels": {"a": "b"}},
        "spec": {"ports": [{"port": 8000}], **spec},
    }


def live_copy(desired: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns: the object plus defaults and bookkeeping."""
    live = with_applied_hash(desired)
    live["metadata"] = {**live["metadata"], "uid": "u", "resourceVersion": "7"}
    live["spec"] = {**live["spec"], "clusterIP": "10.96.0.12", "sessionAffinity": "None"}
    live["spec"]["ports"] = [{**live["spec"]["ports"][0], "protocol": "TCP"}]
    return live


def test_unchanged_object_needs_no_apply_despite_server_defaults() -> None:
    desired = service()
    assert not needs_apply(live_copy(desired), with_applied_hash(desired))


def test_missing_object_needs_apply() -> None:
    assert needs_apply(None, with_applied_hash(service()))


def test_a_dropped_field_changes_the_hash() -> None:
    before, after = service(type="ClusterIP"), service()
    assert applied_hash(before) != applied_hash(after)
    assert needs_apply(live_copy(before), with_applied_hash(after))


def test_a_hand_edit_of_a_desired_value_needs_apply() -> None:
    desired = service()
    live = live_copy(desired)
    live["metadata"]["labels"] = {"a": "edited"}
    assert needs_apply(live, with_applied_hash(desired))


def test_hash_ignores_its_own_annotation_and_is_stable() -> None:
    desired = service()
    hashed = with_applied_hash(desired)
    assert applied_hash(hashed) == applied_hash(desired)
    assert hashed["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] == applied_hash(desired)
    assert with_applied_hash(hashed) == hashed


def test_contains_compares_lists_by_position_and_numbers_by_value() -> None:
    assert contains({"a": [1, {"b": 2.0}], "x": 1}, {"a": [1, {"b": 2}]})
    assert not contains({"a": [1]}, {"a": [1, 2]})
    assert not contains({"a": 1}, {"a": True})
    assert not contains({"a": "1"}, {"a": 1})
