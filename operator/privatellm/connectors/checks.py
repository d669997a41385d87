"""A DataConnector's filter decisions: items in, results out, and where results may go.

Inbound items pass the size limit, content inspection (type allow-list, bounded
archives), customer mixing, then the same InboundPipeline the gateway runs on
prompts (prompt injection, personal data and secrets). Outbound results pass the
same OutboundPipeline as gateway responses (personal data, protected entities,
internal terms). Destinations are checked against the connector's egress list.
An item that does not pass is blocked or quarantined, never dropped (see outcome_of).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import urlsplit

from privatellm.api.access import FilterAction, InboundFilters, OutboundFilters, PIIRule
from privatellm.api.connector import ConnectorFilters, EgressEndpoint
from privatellm.filters import FilterResult, Finding, InboundPipeline, OutboundPipeline
from privatellm.filters.detectors import PII_DETECTORS
from privatellm.filters.pipeline import pii_actions
from privatellm.filters.terms import INTERNAL_TERM, PROTECTED_ENTITY, term_detector

from .content import Inspection, InspectLimits, inspect

Outcome = Literal["passed", "blocked", "quarantine"]

# InboundFilters accepts prompts up to this size; extracted text is bounded below it.
_MAX_PIPELINE_BYTES = 64 * 1024 * 1024
# Refusals by a rule that judged the whole item; every other refusal quarantines.
_BLOCKING_REASONS = frozenset(
    {"too_large", "text_too_large", "mixed_customers", "prompt_injection"}
)
_BLOCKING_PREFIXES = ("file_type_not_allowed:", "pii_blocked:")


def outcome_of(reason: str) -> Outcome:
    """Blocked or quarantine, for a refusal reason.

    Neither forwards anything to a model, and neither is a silent drop: both carry a
    reason into the audit record. Blocked: a filter judged the item and refused it
    (size, file type, personal data set to block, prompt injection, mixed customers);
    the item is refused with that reason. Quarantine: the filters could not judge the
    item to the end (malformed, truncated, encrypted, undecodable, a decompression
    bomb, a filter failure, or any reason not listed here); the caller keeps such an
    item for review rather than passing or discarding it.
    """
    if reason in _BLOCKING_REASONS or reason.startswith(_BLOCKING_PREFIXES):
        return "blocked"
    return "quarantine"


@dataclass(frozen=True, slots=True)
class Change:
    """What the filters did with one kind of finding: entity, action, how many times."""

    entity: str
    action: str
    count: int


@dataclass(frozen=True, slots=True)
class PartSummary:
    """A part of an item as the audit record shows it: no text."""

    path: str
    content_type: str
    size: int
    text_chars: int


@dataclass(frozen=True, slots=True)
class InboundVerdict:
    """The decision on one inbound item.

    `text` is what goes to the model, filtered, and is "" unless passed. `changes`
    counts findings per entity and action, never their values; `customers` counts
    distinct customer ids, never naming them.
    """

    outcome: Outcome
    reason: str | None
    message: str
    text: str
    changes: tuple[Change, ...]
    content_type: str
    parts: tuple[PartSummary, ...]
    item_bytes: int
    decompressed_bytes: int
    sha256: str
    data_classes: frozenset[str]
    customers: int

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    def to_record(self) -> dict[str, Any]:
        """JSON-serialisable fields for the audit record (without the text)."""
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "message": self.message,
            "contentType": self.content_type,
            "parts": [
                {
                    "path": p.path,
                    "contentType": p.content_type,
                    "size": p.size,
                    "textChars": p.text_chars,
                }
                for p in self.parts
            ],
            "changes": [
                {"entity": c.entity, "action": c.action, "count": c.count} for c in self.changes
            ],
            "itemBytes": self.item_bytes,
            "decompressedBytes": self.decompressed_bytes,
            "textChars": len(self.text),
            "sha256": self.sha256,
            "dataClasses": sorted(self.data_classes),
            "customers": self.customers,
        }


def inspect_limits(filters: ConnectorFilters, base: InspectLimits | None = None) -> InspectLimits:
    """Inspection bounds for a connector: its item size and file types on `base`."""
    return replace(
        base or InspectLimits(),
        max_item_bytes=filters.max_item_bytes,
        allowed_types=frozenset(filters.allowed_file_types),
    )


class InboundChecks:
    """The inbound filters of one DataConnector, compiled once."""

    def __init__(
        self, filters: ConnectorFilters, hash_key: bytes, limits: InspectLimits | None = None
    ) -> None:
        self.filters = filters
        self.limits = inspect_limits(filters, limits)
        pipeline_bytes = min(_MAX_PIPELINE_BYTES, 4 * self.limits.max_text_chars)
        spec = InboundFilters(
            pii=list(filters.pii), injection=filters.injection, max_prompt_bytes=pipeline_bytes
        )
        self._pipeline = InboundPipeline.from_spec(spec, hash_key)

    def check(self, data: bytes) -> InboundVerdict:
        """Decide on one item; never raises on its content."""
        digest = hashlib.sha256(data).hexdigest()
        if len(data) > self.filters.max_item_bytes:
            # Judged on the size alone: nothing of the item is parsed.
            return _verdict(
                "too_large",
                f"item of {len(data)} bytes is larger than {self.filters.max_item_bytes}",
                Inspection("application/octet-stream", (), None),
                len(data),
                digest,
            )
        inspection = inspect(data, self.limits, self.filters.customer_id_field)
        if inspection.refusal is not None:
            refusal = inspection.refusal
            return _verdict(
                refusal.reason, f"{refusal.path}: {refusal.message}", inspection, len(data), digest
            )
        customers = len({v for p in inspection.parts for v in p.field_values})
        if customers > 1:
            return _verdict(
                "mixed_customers",
                f"{customers} distinct values of {self.filters.customer_id_field}",
                inspection,
                len(data),
                digest,
                customers=customers,
            )
        try:
            result = self._pipeline.apply(inspection.text)
        except Exception as error:  # a filter that fails must not let the item through
            return _verdict(
                "filter_error",
                f"filters failed: {type(error).__name__}",
                inspection,
                len(data),
                digest,
            )
        if result.blocked:
            reason = "text_too_large" if result.reason == "prompt_too_large" else result.reason
            return _verdict(
                reason or "blocked",
                _block_message(result),
                inspection,
                len(data),
                digest,
                result=result,
                customers=customers,
            )
        return InboundVerdict(
            outcome="passed",
            reason=None,
            message="passed",
            text=result.text,
            changes=summarize(result.findings),
            content_type=inspection.content_type,
            parts=_summaries(inspection),
            item_bytes=len(data),
            decompressed_bytes=inspection.decompressed_bytes,
            sha256=digest,
            data_classes=result.data_classes,
            customers=customers,
        )


def check_inbound(data: bytes, filters: ConnectorFilters, hash_key: bytes) -> InboundVerdict:
    """Decide on one item under `filters` (compiles them; keep an InboundChecks to reuse)."""
    return InboundChecks(filters, hash_key).check(data)


def summarize(findings: Sequence[Finding]) -> tuple[Change, ...]:
    """Counts per entity and action, in order of first occurrence."""
    counts = Counter((f.entity, f.action) for f in findings)
    return tuple(Change(entity, action, count) for (entity, action), count in counts.items())


def _summaries(inspection: Inspection) -> tuple[PartSummary, ...]:
    return tuple(PartSummary(p.path, p.content_type, p.size, len(p.text)) for p in inspection.parts)


def _block_message(result: FilterResult) -> str:
    if result.reason == "prompt_injection":
        return "prompt-injection phrases in the item"
    if result.reason == "prompt_too_large":
        return "more extracted text than the filters accept"
    return f"{result.reason}: a finding whose action is block"


def _verdict(
    reason: str,
    message: str,
    inspection: Inspection,
    item_bytes: int,
    digest: str,
    result: FilterResult | None = None,
    customers: int = 0,
) -> InboundVerdict:
    return InboundVerdict(
        outcome=outcome_of(reason),
        reason=reason,
        message=message,
        text="",
        changes=summarize(result.findings) if result is not None else (),
        content_type=inspection.content_type,
        parts=_summaries(inspection),
        item_bytes=item_bytes,
        decompressed_bytes=inspection.decompressed_bytes,
        sha256=digest,
        data_classes=result.data_classes if result is not None else frozenset(),
        customers=customers,
    )


# --- outbound -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboundVerdict:
    """The decision on one outbound result: the text to send ("" when blocked)."""

    outcome: Literal["passed", "blocked"]
    reason: str | None
    text: str
    changes: tuple[Change, ...]
    data_classes: frozenset[str]

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    def to_record(self) -> dict[str, Any]:
        """JSON-serialisable fields for the audit record (without the text)."""
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "changes": [
                {"entity": c.entity, "action": c.action, "count": c.count} for c in self.changes
            ],
            "textChars": len(self.text),
            "dataClasses": sorted(self.data_classes),
        }


class OutboundChecks:
    """The outbound (DLP) filters of one DataConnector, compiled once.

    Protected entities and internal terms take `dlp_action`; personal data and secrets
    take their PII rule, redact when unlisted, as in gateway responses.
    """

    def __init__(
        self,
        dlp_action: FilterAction,
        protected_entities: Sequence[str],
        internal_terms: Sequence[str],
        pii: Sequence[PIIRule],
        hash_key: bytes,
    ) -> None:
        if dlp_action in ("redact", "block"):
            spec = OutboundFilters(
                pii=list(pii), internal_terms=list(internal_terms), action=dlp_action
            )
            self._pipeline = OutboundPipeline.from_spec(spec, protected_entities, hash_key)
        else:
            # A policy's outbound action is redact or block; a connector's may also be
            # allow, mask or hash, so the same pipeline is assembled around that action.
            actions = pii_actions(pii)
            detectors = list(PII_DETECTORS)
            for entity, terms in (
                (PROTECTED_ENTITY, protected_entities),
                (INTERNAL_TERM, internal_terms),
            ):
                detector = term_detector(entity, terms)
                if detector is not None:
                    detectors.append(detector)
                    actions[entity] = dlp_action
            self._pipeline = OutboundPipeline(detectors, actions, hash_key)

    def check(self, text: str) -> OutboundVerdict:
        result = self._pipeline.apply(text)
        return OutboundVerdict(
            outcome="blocked" if result.blocked else "passed",
            reason=result.reason,
            text="" if result.blocked else result.text,
            changes=summarize(result.findings),
            data_classes=result.data_classes,
        )


def check_outbound(
    text: str,
    dlp_action: FilterAction,
    protected_entities: Sequence[str],
    internal_terms: Sequence[str],
    pii: Sequence[PIIRule],
    hash_key: bytes,
) -> OutboundVerdict:
    """Decide on one result (compiles the filters; keep an OutboundChecks to reuse)."""
    checks = OutboundChecks(dlp_action, protected_entities, internal_terms, pii, hash_key)
    return checks.check(text)


# --- egress -------------------------------------------------------------------------------

_DEFAULT_PORTS = {"https": 443, "http": 80}
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
# A label a URL parser may read as a number: decimal, octal (leading 0) or hexadecimal.
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_UNSAFE_URL = re.compile(r"[\x00-\x20\x7f\\]")


@dataclass(frozen=True, slots=True)
class EgressDecision:
    """Whether a destination is allowed; when not, why. True in a boolean context if allowed."""

    allowed: bool
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.allowed


def destination_allowed(url: str, egress: Sequence[EgressEndpoint]) -> EgressDecision:
    """Whether the connector may send to `url`: deny unless an endpoint matches.

    A host entry matches the URL's host name exactly, case-insensitively (one trailing
    dot ignored); "*.example.com" is the explicit form for any name below example.com,
    not example.com itself. A cidr entry matches a URL whose host is an IP address
    literal inside it; names are not resolved here. The port, explicit or the scheme's
    default, must be among the entry's ports. Refused outright: schemes other than http
    and https, user information, whitespace, control characters or backslashes, and IP
    addresses written any way but dotted-quad or bracketed IPv6 (decimal, octal or hex
    numbers, short forms, IPv4-mapped or scoped IPv6) that clients read differently.
    """
    if _UNSAFE_URL.search(url):
        return EgressDecision(False, "malformed_url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return EgressDecision(False, "malformed_url")
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        return EgressDecision(False, "scheme_not_allowed")
    if "@" in parts.netloc:
        return EgressDecision(False, "userinfo_not_allowed")
    host = (parts.hostname or "").lower()
    if not host:
        return EgressDecision(False, "malformed_url")
    if port is None:
        port = _DEFAULT_PORTS[scheme]
    address = _ip_literal(host, parts.netloc)
    if isinstance(address, EgressDecision):
        return address
    if address is None and not _HOST_NAME.fullmatch(host.removesuffix(".")):
        return EgressDecision(False, "malformed_host")
    matched = [e for e in egress if _matches(e, host.removesuffix("."), address)]
    if not matched:
        return EgressDecision(False, "destination_not_listed")
    if not any(port in e.ports for e in matched):
        return EgressDecision(False, "port_not_allowed")
    return EgressDecision(True)


def _ip_literal(
    host: str, netloc: str
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | EgressDecision | None:
    """The host's IP address if it is a canonical literal; a refusal if it is an odd one."""
    if "[" in netloc:  # bracketed: IPv6 only
        try:
            v6 = ipaddress.IPv6Address(host)
        except ValueError:
            return EgressDecision(False, "odd_ip_literal")
        if "." in host or v6.scope_id is not None or v6.ipv4_mapped is not None:
            return EgressDecision(False, "odd_ip_literal")
        return v6
    name = host.removesuffix(".")
    if _NUMERIC_LABEL.fullmatch(name.rpartition(".")[2]):
        # Clients read a host ending in a number as IPv4 in any notation: only the
        # canonical dotted quad is accepted (ipaddress refuses leading zeros).
        try:
            return ipaddress.IPv4Address(host)
        except ValueError:
            return EgressDecision(False, "odd_ip_literal")
    return None


def _matches(
    endpoint: EgressEndpoint,
    host: str,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
) -> bool:
    if endpoint.host is not None:
        wanted = endpoint.host.lower().removesuffix(".")
        if wanted.startswith("*."):
            return address is None and host.endswith(wanted[1:]) and len(host) > len(wanted) - 1
        return host == wanted
    if endpoint.cidr is not None and address is not None:
        try:
            network = ipaddress.ip_network(endpoint.cidr, strict=True)
        except ValueError:
            return False  # the CRD refuses such a cidr; an unvalidated one matches nothing
        return address.version == network.version and address in network
    return False
