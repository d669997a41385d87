"""Actions: redaction labels, masks and keyed hashes."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from privatellm.filters.actions import hash_token, label_of, mask, redact, replacement


@pytest.mark.parametrize(
    ("entity", "label"),
    [
        ("email", "EMAIL"),
        ("paymentCard", "PAYMENT_CARD"),
        ("usSSN", "US_SSN"),
        ("ukNINO", "UK_NINO"),
        ("nlBSN", "NL_BSN"),
        ("deTaxID", "DE_TAX_ID"),
        ("ipAddress", "IP_ADDRESS"),
        ("dateOfBirth", "DATE_OF_BIRTH"),
        ("protectedEntity", "PROTECTED_ENTITY"),
    ],
)
def test_labels_are_upper_snake(entity: str, label: str) -> None:
    assert label_of(entity) == label
    assert redact(entity) == f"[{label}]"


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("4111 1111 1111 1234", "**** **** **** 1234"),
        ("jan@example.nl", "***@*****le.nl"),
        ("NL91ABNA0417164300", "**************4300"),
        ("abc", "abc"),
        ("123-45", "*23-45"),
    ],
)
def test_mask_keeps_the_last_four_alphanumerics_and_separators(value: str, masked: str) -> None:
    assert mask(value) == masked


def test_hash_is_hmac_sha256_of_the_value_under_the_key() -> None:
    digest = hmac.new(b"key", b"jan@example.nl", hashlib.sha256).hexdigest()
    assert hash_token("email", "jan@example.nl", b"key") == f"[EMAIL:{digest[:12]}]"


def test_hash_joins_one_value_written_two_ways_and_depends_on_the_key() -> None:
    spaced = hash_token("iban", "NL91 ABNA 0417 1643 00", b"key")
    assert spaced == hash_token("iban", "NL91ABNA0417164300", b"key")
    assert hash_token("email", "Jan@Example.nl", b"key") == hash_token(
        "email", "jan@example.nl", b"key"
    )
    assert spaced != hash_token("iban", "NL91ABNA0417164300", b"other key")
    assert spaced != hash_token("iban", "DE89370400440532013000", b"key")


def test_replacement_per_action() -> None:
    value = "jan@example.nl"
    assert replacement("email", value, "allow", b"k") == value
    assert replacement("email", value, "redact", b"k") == "[EMAIL]"
    assert replacement("email", value, "mask", b"k") == mask(value)
    assert replacement("email", value, "hash", b"k") == hash_token("email", value, b"k")
