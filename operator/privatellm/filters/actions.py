"""What a filter puts in place of a finding: redaction labels, masks and keyed hashes."""

from __future__ import annotations

import hashlib
import hmac
import re
from functools import cache

from .detectors import DATA_CLASS_OF

HASH_HEX_CHARS = 12
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@cache
def label_of(entity: str) -> str:
    """Upper-snake name of an entity: paymentCard -> PAYMENT_CARD, deTaxID -> DE_TAX_ID."""
    return _CAMEL_BOUNDARY.sub("_", entity).upper()


@cache
def redact(entity: str) -> str:
    """The redaction label, e.g. [EMAIL]."""
    return f"[{label_of(entity)}]"


def mask(value: str) -> str:
    """Keep the last four letters or digits; star the others; keep separators."""
    keep_from = len(value)
    kept = 0
    while keep_from > 0 and kept < 4:
        keep_from -= 1
        if value[keep_from].isalnum():
            kept += 1
    head = "".join("*" if c.isalnum() else c for c in value[:keep_from])
    return head + value[keep_from:]


def canonical(entity: str, value: str) -> str:
    """The form that is hashed, so that one value written two ways gives one token."""
    if entity == "email":
        return value.lower()
    if entity in DATA_CLASS_OF and entity not in ("secret", "dateOfBirth"):
        return "".join(c for c in value if c.isalnum() or c == "+").upper()
    return value


def hash_token(entity: str, value: str, key: bytes) -> str:
    """[EMAIL:<12 hex>]: HMAC-SHA256 under the deployment's key, joinable without the value."""
    digest = hmac.new(
        key, canonical(entity, value).encode("utf-8", "surrogatepass"), hashlib.sha256
    )
    return f"[{label_of(entity)}:{digest.hexdigest()[:HASH_HEX_CHARS]}]"


def replacement(entity: str, value: str, action: str, key: bytes) -> str:
    """Text that takes the place of `value` under `action` (allow keeps it)."""
    if action == "allow":
        return value
    if action == "mask":
        return mask(value)
    if action == "hash":
        return hash_token(entity, value, key)
    return redact(entity)
