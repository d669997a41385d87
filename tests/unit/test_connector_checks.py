"""Connector filter decisions: inbound verdicts, outbound DLP, and the egress allow-list."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from privatellm.api.access import PIIRule
from privatellm.api.connector import ConnectorFilters, EgressEndpoint
from privatellm.connectors.checks import (
    Change,
    InboundChecks,
    InboundVerdict,
    check_inbound,
    check_outbound,
    destination_allowed,
    outcome_of,
)
from privatellm.connectors.content import InspectLimits
from tests.support import corpus as c

KEY = b"connector test key"


def filters(**spec: Any) -> ConnectorFilters:
    return ConnectorFilters.model_validate(spec)


def verdict(data: bytes, **spec: Any) -> InboundVerdict:
    return check_inbound(data, filters(**spec), KEY)


# --- inbound: size and file types ---------------------------------------------------------


def test_too_large_is_blocked_before_parsing() -> None:
    bomb = c.zip_bomb(64 << 20)
    result = verdict(bomb, maxItemBytes=len(bomb) - 1)
    assert (result.outcome, result.reason) == ("blocked", "too_large")
    assert result.parts == ()  # nothing was opened
    assert result.decompressed_bytes == 0
    assert result.sha256 == hashlib.sha256(bomb).hexdigest()


def test_pdf_renamed_txt_blocked_when_only_text_allowed() -> None:
    renamed = c.Item("invoice.txt", c.pdf(["Invoice 2025-001"]), c.PDF)
    result = verdict(renamed.data, allowedFileTypes=["text/plain"])
    assert (result.outcome, result.reason) == ("blocked", "file_type_not_allowed:application/pdf")
    assert result.content_type == c.PDF
    assert result.text == ""
    assert verdict(c.text("Invoice 2025-001"), allowedFileTypes=["text/plain"]).passed


def test_file_types_checked_inside_archives_and_mails() -> None:
    bundle = c.zip_of({"a.txt": b"fine", "b.pdf": c.pdf(["not allowed"])})
    result = verdict(bundle, allowedFileTypes=["application/zip", "text/plain"])
    assert result.reason == "file_type_not_allowed:application/pdf"
    mail = c.mail("Hi", "Body", [("scan.pdf", c.PDF, c.pdf(["scan"]))])
    assert verdict(mail, allowedFileTypes=["message/rfc822", "application/pdf"]).passed
    assert verdict(mail, allowedFileTypes=["message/rfc822"]).reason == (
        "file_type_not_allowed:application/pdf"
    )


# --- inbound: personal data ---------------------------------------------------------------


def test_iban_redacted_in_passed_text() -> None:
    result = verdict(c.iban_text())
    assert result.passed
    assert c.IBAN not in result.text
    assert result.text == "Please pay the invoice to IBAN [IBAN] before Friday.\n"
    assert result.changes == (Change("iban", "redact", 1),)
    assert result.data_classes == {"financial"}


def test_pii_in_attachments_redacted() -> None:
    mail = c.mail(
        "Payment",
        f"Pay to {c.IBAN}.",
        [("details.docx", c.DOCX, c.docx([f"Account {c.IBAN}", "Mail jan@example.nl"]))],
    )
    result = verdict(mail)
    assert result.passed
    assert c.IBAN not in result.text
    assert "jan@example.nl" not in result.text
    assert "[mail/attachment[1]/details.docx]\nAccount [IBAN]\nMail [EMAIL]" in result.text
    assert dict(((ch.entity, ch.action), ch.count) for ch in result.changes) == {
        ("iban", "redact"): 2,
        ("email", "redact"): 3,  # From and To headers, and the attachment
    }


@pytest.mark.parametrize(
    ("action", "expected"),
    [("mask", "******************3000"), ("redact", "[IBAN]"), ("allow", c.IBAN)],
)
def test_pii_actions_apply(action: str, expected: str) -> None:
    result = verdict(c.iban_text(), pii=[{"entity": "iban", "action": action}])
    assert result.passed
    assert f"IBAN {expected} before" in result.text


def test_pii_hash_is_keyed_and_stable() -> None:
    first = verdict(c.iban_text(), pii=[{"entity": "iban", "action": "hash"}])
    again = verdict(c.iban_text(), pii=[{"entity": "iban", "action": "hash"}])
    assert first.text == again.text
    assert "[IBAN:" in first.text
    assert c.IBAN not in first.text


def test_pii_block_blocks_the_item() -> None:
    result = verdict(c.iban_text(), pii=[{"entity": "iban", "action": "block"}])
    assert (result.outcome, result.reason) == ("blocked", "pii_blocked:iban")
    assert result.text == ""
    assert result.changes == (Change("iban", "block", 1),)


# --- inbound: injection -------------------------------------------------------------------


def test_injection_blocked_by_default() -> None:
    result = verdict(c.injection_text())
    assert (result.outcome, result.reason) == ("blocked", "prompt_injection")
    assert result.changes == (Change("promptInjection", "block", 1),)


def test_injection_flagged_passes_unchanged() -> None:
    result = verdict(c.injection_text(), injection="flag")
    assert result.passed
    assert c.INJECTION in result.text
    assert result.changes == (Change("promptInjection", "flag", 1),)


def test_injection_off_is_not_looked_for() -> None:
    result = verdict(c.injection_text(), injection="off")
    assert result.passed
    assert result.changes == ()


def test_injection_inside_an_attachment_is_found() -> None:
    mail = c.mail("Report", "See attached.", [("report.pdf", c.PDF, c.pdf([c.INJECTION]))])
    assert verdict(mail).reason == "prompt_injection"


# --- inbound: customer mixing -------------------------------------------------------------


def test_mixed_customers_blocked() -> None:
    result = verdict(c.json_customers(["C001", "C002"]), customerIdField="customer_id")
    assert (result.outcome, result.reason) == ("blocked", "mixed_customers")
    assert result.customers == 2
    assert "C001" not in json.dumps(result.to_record())  # counted, never named


def test_one_customer_passes() -> None:
    result = verdict(c.json_customers(["C001", "C001"]), customerIdField="customer_id")
    assert result.passed
    assert result.customers == 1


def test_customer_ids_compare_as_values() -> None:
    data = b'[{"customer_id": 42}, {"customer_id": "42"}, {"customer_id": " 42 "}]'
    assert verdict(data, customerIdField="customer_id").passed


@pytest.mark.parametrize(
    "data",
    [
        c.json_lines(["C001", "C001", "C002"]),
        b'{"customer_id": "C001", "history": {"related": [{"customer_id": "C002"}]}}',
        b'{"customer_id": ["C001", "C002"]}',
        c.csv_table([["customer_id", "name"], ["C001", "Anna"], ["C002", "Bram"]]),
        c.zip_of({"a.json": c.json_customers(["C001"]), "b.json": c.json_customers(["C002"])}),
    ],
    ids=["json-lines", "nested", "list", "csv", "across-files"],
)
def test_mixing_found_anywhere_in_the_item(data: bytes) -> None:
    assert verdict(data, customerIdField="customer_id").reason == "mixed_customers"


def test_no_customer_field_no_mixing_check() -> None:
    assert verdict(c.json_customers(["C001", "C002"])).passed


# --- inbound: quarantine and the audit record ---------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (c.zip_bomb(c.GIB), "archive_bomb:ratio"),
        (c.overlapping_zip_bomb(), "archive_bomb:overlap"),
        (c.truncated_zip(), "archive_truncated"),
        (c.nested_zip(9), "archive_too_deep"),
        ("café".encode("latin-1"), "undecodable_text"),
        (b"%PDF-1.4\nnot a pdf", "malformed:application/pdf"),
    ],
    ids=["bomb", "overlap", "truncated", "deep", "undecodable", "malformed"],
)
def test_what_cannot_be_judged_is_quarantined(data: bytes, reason: str) -> None:
    result = verdict(data)
    assert (result.outcome, result.reason) == ("quarantine", reason)
    assert result.text == ""
    assert result.message


def test_outcome_of_reasons() -> None:
    for blocked in ("too_large", "file_type_not_allowed:image/png", "pii_blocked:iban"):
        assert outcome_of(blocked) == "blocked"
    for blocked in ("prompt_injection", "mixed_customers", "text_too_large"):
        assert outcome_of(blocked) == "blocked"
    for held in ("archive_bomb:total", "malformed:text/html", "encrypted:application/pdf"):
        assert outcome_of(held) == "quarantine"
    assert outcome_of("a reason nobody listed") == "quarantine"


def test_verdict_record_is_json_and_holds_no_values() -> None:
    mail = c.mail("Invoice", f"IBAN {c.IBAN}", [("a.txt", "text/plain", b"call +31 6 12345678")])
    result = verdict(mail)
    record = result.to_record()
    text = json.dumps(record)
    assert c.IBAN not in text
    assert "12345678" not in text
    assert record["sha256"] == hashlib.sha256(mail).hexdigest()
    assert record["itemBytes"] == len(mail)
    assert record["contentType"] == c.MAIL
    assert [p["path"] for p in record["parts"]] == ["mail", "mail/attachment[1]/a.txt"]
    assert {"entity": "iban", "action": "redact", "count": 1} in record["changes"]
    assert record["outcome"] == "passed"


def test_checks_compile_once_and_take_limits() -> None:
    checks = InboundChecks(filters(), KEY, InspectLimits(max_depth=1))
    assert checks.check(c.zip_of({"a.txt": b"one level"})).passed
    assert checks.check(c.nested_zip(2)).reason == "archive_too_deep"


def test_mixed_corpus_items_are_judged_by_content() -> None:
    items = c.mixed_corpus(60, seed=7)
    checks = InboundChecks(filters(customerIdField="customer_id"), KEY)
    reasons = set()
    for item in items:
        result = checks.check(item.data)
        assert result.content_type == item.content_type, item.name
        assert result.outcome in ("passed", "blocked"), (item.name, result.reason)
        if result.passed:
            assert c.IBAN not in result.text
            assert "4111 1111 1111 1111" not in result.text
        else:
            reasons.add(result.reason)
    assert reasons <= {"prompt_injection", "mixed_customers"}


# --- outbound -----------------------------------------------------------------------------

RESULT = "Summary for ACME Holding: apply discount code PX-9000 and mail anna@example.nl."


def test_outbound_dlp_block() -> None:
    result = check_outbound(RESULT, "block", ["ACME Holding"], ["PX-9000"], [], KEY)
    assert (result.outcome, result.reason) == ("blocked", "protected_entity")
    assert result.text == ""


def test_outbound_dlp_block_on_internal_term() -> None:
    result = check_outbound("Use code PX-9000.", "block", ["ACME Holding"], ["PX-9000"], [], KEY)
    assert (result.outcome, result.reason) == ("blocked", "internal_term")


def test_outbound_dlp_redact() -> None:
    result = check_outbound(RESULT, "redact", ["ACME Holding"], ["PX-9000"], [], KEY)
    assert result.passed
    assert result.text == (
        "Summary for [PROTECTED_ENTITY]: apply discount code [INTERNAL_TERM] and mail [EMAIL]."
    )
    assert result.changes == (
        Change("protectedEntity", "redact", 1),
        Change("internalTerm", "redact", 1),
        Change("email", "redact", 1),
    )


def test_outbound_dlp_hash_action() -> None:
    result = check_outbound(RESULT, "hash", ["ACME Holding"], [], [], KEY)
    assert result.passed
    assert "ACME Holding" not in result.text
    assert "[PROTECTED_ENTITY:" in result.text


def test_outbound_pii_rules() -> None:
    rules = [PIIRule(entity="email", action="block")]
    result = check_outbound(RESULT, "redact", [], [], rules, KEY)
    assert (result.outcome, result.reason) == ("blocked", "pii_blocked:email")
    assert json.dumps(result.to_record())


# --- egress -------------------------------------------------------------------------------

EGRESS = [
    EgressEndpoint(host="api.example.com", ports=[443]),
    EgressEndpoint(host="*.files.example.com", ports=[443, 8443]),
    EgressEndpoint(cidr="10.20.0.0/16", ports=[8443]),
    EgressEndpoint(cidr="fd00:1::/64", ports=[443]),
]


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v1/items",
        "https://API.Example.COM/v1",
        "https://api.example.com:443/",
        "https://api.example.com./v1",
        "https://eu.files.example.com:8443/upload",
        "https://a.b.files.example.com/",
        "https://10.20.3.4:8443/hook",
        "https://[fd00:1::5]/hook",
    ],
)
def test_egress_allowed(url: str) -> None:
    decision = destination_allowed(url, EGRESS)
    assert decision
    assert decision.reason is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://other.example.com/", "destination_not_listed"),
        ("https://api.example.com.evil.net/", "destination_not_listed"),
        ("https://evilapi.example.com/", "destination_not_listed"),
        ("https://files.example.com/", "destination_not_listed"),  # the wildcard's apex
        ("http://api.example.com/", "port_not_allowed"),
        ("https://api.example.com:8443/", "port_not_allowed"),
        ("https://10.20.3.4/", "port_not_allowed"),
        ("https://10.21.0.1:8443/", "destination_not_listed"),
        ("ftp://api.example.com/", "scheme_not_allowed"),
        ("file:///etc/passwd", "scheme_not_allowed"),
        ("https://user:pw@api.example.com/", "userinfo_not_allowed"),
        ("https://api.example.com@evil.net/", "userinfo_not_allowed"),
        ("https://evil.net\\@api.example.com/", "malformed_url"),
        ("https://api.example.com:99999/", "malformed_url"),
        ("https://api.exa mple.com/", "malformed_url"),
        ("https://api.exa\tmple.com/", "malformed_url"),
        ("https:///path", "malformed_url"),
        ("https://168559364:8443/", "odd_ip_literal"),  # 10.12.3.4 as one decimal number
        ("https://0x0a140304:8443/", "odd_ip_literal"),
        ("https://012.20.3.4:8443/", "odd_ip_literal"),  # octal 10
        ("https://0xa.20.3.4:8443/", "odd_ip_literal"),
        ("https://10.20.772:8443/", "odd_ip_literal"),  # 10.20.3.4 in short form
        ("https://10.20.3.4.:8443/", "odd_ip_literal"),
        ("https://[::ffff:10.20.3.4]:8443/", "odd_ip_literal"),
        ("https://[::ffff:a14:304]:8443/", "odd_ip_literal"),
        ("https://[fd00:1::5%25eth0]/", "odd_ip_literal"),
        ("https://exa_mple..com/", "malformed_host"),
        ("https://bücher.example.com/", "malformed_host"),
    ],
)
def test_egress_refused(url: str, reason: str) -> None:
    decision = destination_allowed(url, EGRESS)
    assert not decision
    assert decision.reason == reason


def test_no_egress_listed_denies_everything() -> None:
    assert destination_allowed("https://api.example.com/", []).reason == "destination_not_listed"


def test_ip_literal_does_not_match_a_host_entry_by_resolution() -> None:
    # Names are not resolved: an address is allowed only by a cidr entry.
    egress = [EgressEndpoint(host="api.example.com", ports=[443])]
    assert not destination_allowed("https://93.184.216.34/", egress)
