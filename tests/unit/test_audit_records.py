"""Records, prompt hashes and query filters: pure parts of the audit trail."""

from __future__ import annotations

from privatellm.audit.index import SegmentIndex
from privatellm.audit.payloads import subject_key_name
from privatellm.audit.query import AuditQuery
from privatellm.audit.records import (
    control_record,
    policy_change_record,
    prompt_hash,
    prompt_hash_key,
    request_record,
)


def test_prompt_hashes_are_keyed_and_unambiguous() -> None:
    key = prompt_hash_key(b"k" * 32)
    assert key != b"k" * 32
    assert prompt_hash(key, ["a", "b"]) == prompt_hash(key, ["a", "b"])
    assert prompt_hash(key, ["ab"]) != prompt_hash(key, ["a", "b"])
    assert prompt_hash(prompt_hash_key(b"x" * 32), ["a", "b"]) != prompt_hash(key, ["a", "b"])


def test_policy_versions_name_the_newest_field_manager() -> None:
    policy = {
        "metadata": {
            "name": "team",
            "namespace": "ns",
            "uid": "u1",
            "generation": 2,
            "resourceVersion": "7",
            "managedFields": [
                {"manager": "kubectl", "operation": "Apply", "time": "2026-11-24T10:00:00Z"},
                {"manager": "argocd", "operation": "Update", "time": "2026-11-24T11:00:00Z"},
            ],
        },
        "spec": {"models": ["chat"]},
    }
    record = policy_change_record("MODIFIED", policy, when=5.0)
    assert (record["action"], record["subject"], record["target"]) == (
        "policy.change",
        "argocd",
        "AccessPolicy/team",
    )
    assert record["details"]["generation"] == 2 and record["namespace"] == "ns"
    changed = policy_change_record(None, {**policy, "spec": {"models": ["other"]}})
    assert changed["details"]["spec_sha256"] != record["details"]["spec_sha256"]
    assert policy_change_record("DELETED", policy)["action"] == "policy.delete"
    assert policy_change_record(None, {"metadata": {"name": "x"}})["subject"] == "unknown"


def test_records_and_control_actions() -> None:
    assert request_record({"request_id": "r"}, pod="gw-1") == {
        "kind": "request",
        "request_id": "r",
        "pod": "gw-1",
    }
    record = control_record("audit.erasure", "dpo", when=1.0, details={"k": 1})
    assert record == {
        "kind": "control",
        "action": "audit.erasure",
        "subject": "dpo",
        "time": 1.0,
        "details": {"k": 1},
    }


def test_subject_key_names_reveal_no_identity() -> None:
    name = subject_key_name("alice@example.com")
    assert name.startswith("audit-subject-") and "alice" not in name
    assert name != subject_key_name("bob@example.com")


def test_queries_narrow_by_index_then_match_exactly() -> None:
    index = SegmentIndex()
    records = [
        {"time": 10.0, "subject": "alice", "model": "chat", "data_classes": ["customer"]},
        {"time": 20.0, "subject": "alice", "model": "code", "data_classes": []},
        {"time": 30.0, "subject": "bob", "model": "chat", "data_classes": ["customer"]},
    ]
    for offset, record in enumerate(records):
        index.add(offset * 100, record)
    query = AuditQuery(subject="alice", data_class="customer")
    assert query.candidates(index) == [0]
    assert AuditQuery().candidates(index) is None
    assert AuditQuery(subject="carol").candidates(index) == []
    assert AuditQuery(model="chat").candidates(index) == [0, 200]
    window = AuditQuery(start=15.0, end=30.0)
    assert [window.matches(r) for r in records] == [False, True, False]
    assert window.overlaps(25.0, 40.0) and not window.overlaps(30.0, 40.0)
    assert not window.overlaps(0.0, 14.9)
    assert (index.min_time, index.max_time, index.unclassified) == (10.0, 30.0, 1)
    assert SegmentIndex.from_bytes(index.to_bytes()).subjects == {"alice": [0, 100], "bob": [200]}
