"""Decide, without writing, whether a server-side apply would change anything.

Each applied object carries a hash of what the operator applied. A child needs an
apply when that hash differs (the desired object changed, fields may have been
removed) or when the live object no longer contains every desired value (someone
edited it). Otherwise the apply is skipped: a resync of an unchanged world sends no
write to the API server.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

APPLIED_HASH_ANNOTATION = "privatellm.io/applied-hash"


def applied_hash(manifest: dict[str, Any]) -> str:
    """A stable hash of a manifest, ignoring the hash annotation itself."""
    meta = dict(manifest.get("metadata", {}))
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k != APPLIED_HASH_ANNOTATION
    }
    meta["annotations"] = annotations
    canonical = json.dumps({**manifest, "metadata": meta}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def with_applied_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with its hash annotation set."""
    meta = dict(manifest["metadata"])
    meta["annotations"] = {
        **(meta.get("annotations") or {}),
        APPLIED_HASH_ANNOTATION: applied_hash(manifest),
    }
    return {**manifest, "metadata": meta}


def contains(live: Any, desired: Any) -> bool:
    """Whether every value in `desired` is present and equal in `live`.

    Lists must have the same length and match element by element; objects may carry
    more keys in `live` (defaults the API server filled in).
    """
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            key in live and contains(live[key], value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(contains(a, b) for a, b in zip(live, desired, strict=True))
        )
    if isinstance(desired, bool) or isinstance(live, bool):
        return live is desired
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return float(live) == float(desired)
    return bool(live == desired)


def needs_apply(live: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """Whether applying `desired` (as made by `with_applied_hash`) would change `live`.

    `contains` alone would miss a field the operator stopped setting; the hash catches it.
    """
    return live is None or not contains(live, desired)
