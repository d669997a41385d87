"""What goes into the log: request records from the gateway, control actions, prompt hashes."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from typing import Any

REQUEST = "request"
CONTROL = "control"
# What the writer records when it moved a crash's torn tail aside.
RECOVERY = "audit.recovery"
# A distinct key for prompt hashes, so they never equal the filters' `hash` action output.
_PROMPT_HASH_CONTEXT = b"privatellm.io/audit/prompt-hash/v1"


def prompt_hash_key(hash_key: bytes) -> bytes:
    return hmac.new(hash_key, _PROMPT_HASH_CONTEXT, hashlib.sha256).digest()


def prompt_hash(key: bytes, texts: Iterable[str]) -> str:
    """A keyed hash of a prompt's texts: equal prompts can be found without decrypting."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for text in texts:
        encoded = text.encode()
        mac.update(len(encoded).to_bytes(8, "big") + encoded)
    return mac.hexdigest()


def request_record(event: dict[str, Any], pod: str | None = None) -> dict[str, Any]:
    """A gateway event as a log record (the event's fields plus kind and recording pod)."""
    record = {"kind": REQUEST, **event}
    if pod:
        record["pod"] = pod
    return record


def control_record(
    action: str,
    actor: str,
    *,
    target: str | None = None,
    namespace: str | None = None,
    details: dict[str, Any] | None = None,
    when: float | None = None,
) -> dict[str, Any]:
    """A control action (policy change, key rotation, suspension, decryption, erasure)."""
    record: dict[str, Any] = {
        "kind": CONTROL,
        "action": action,
        "subject": actor,
        "time": time.time() if when is None else when,
    }
    if target is not None:
        record["target"] = target
    if namespace is not None:
        record["namespace"] = namespace
    if details:
        record["details"] = details
    return record


def policy_change_record(
    event_type: str | None, policy: dict[str, Any], when: float | None = None
) -> dict[str, Any]:
    """An AccessPolicy version as the operator saw it: `policy.change`, or `policy.delete`.

    Generation 1 is the created policy. The actor is the field manager of the
    newest managedFields entry; the API server's own audit log names the user.
    """
    metadata = policy.get("metadata") or {}
    managed = sorted(metadata.get("managedFields") or (), key=lambda m: m.get("time") or "")
    newest = managed[-1] if managed else {}
    spec = json.dumps(policy.get("spec") or {}, sort_keys=True, separators=(",", ":"))
    return control_record(
        "policy.delete" if event_type == "DELETED" else "policy.change",
        str(newest.get("manager") or "unknown"),
        target=f"AccessPolicy/{metadata.get('name', '')}",
        namespace=metadata.get("namespace"),
        details={
            "uid": metadata.get("uid"),
            "generation": metadata.get("generation"),
            "resource_version": metadata.get("resourceVersion"),
            "spec_sha256": hashlib.sha256(spec.encode()).hexdigest(),
            "operation": newest.get("operation"),
        },
        when=when,
    )
