"""The filters every prompt and every response passes, as the gateway calls them.

Inbound: size limit, prompt-injection heuristics, personal data and secrets.
Outbound: personal data and secrets, other customers' names, internal terms; also
as a stream that emits text as soon as no match can still cover it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from privatellm.api.access import InboundFilters, OutboundFilters, PIIRule

from .actions import replacement
from .detectors import DATA_CLASS_OF, PII_DETECTORS, Candidate, Detector
from .injection import ENTITY as INJECTION_ENTITY
from .injection import InjectionDetector
from .scanner import Scanner, select, trailing_run_start
from .terms import INTERNAL_TERM, PROTECTED_ENTITY, term_detector

DEFAULT_ACTION = "redact"
_TERM_BLOCK_REASONS = {PROTECTED_ENTITY: "protected_entity", INTERNAL_TERM: "internal_term"}


@dataclass(frozen=True, slots=True)
class Finding:
    """A match: entity, span in the original text, and what was done with it."""

    entity: str
    start: int
    end: int
    action: str


@dataclass(frozen=True, slots=True)
class FilterResult:
    """Outcome of one filter pass.

    Findings that change the text never overlap; prompt-injection findings mark
    phrases and may overlap them. When blocked, `text` is "" for a prompt and, for a
    response, what precedes the blocking match (what a stream has already sent).
    """

    text: str
    findings: tuple[Finding, ...]
    blocked: bool
    reason: str | None
    data_classes: frozenset[str]


def block_reason(entity: str) -> str:
    """Machine-readable reason for blocking on `entity`."""
    return _TERM_BLOCK_REASONS.get(entity, f"pii_blocked:{entity}")


def data_classes_of(findings: Iterable[Finding]) -> frozenset[str]:
    """Data classes of the personal data and secrets among `findings`."""
    return frozenset(DATA_CLASS_OF[f.entity] for f in findings if f.entity in DATA_CLASS_OF)


def pii_actions(rules: Sequence[PIIRule]) -> dict[str, str]:
    """Action per entity: the rules' actions, redact for entities they do not list."""
    actions = dict.fromkeys(DATA_CLASS_OF, DEFAULT_ACTION)
    actions.update({rule.entity: rule.action for rule in rules})
    return actions


def utf8_length(text: str) -> int:
    """Length in UTF-8 bytes (lone surrogates, which JSON allows, count three)."""
    return len(text.encode("utf-8", "surrogatepass"))


class _Rewriter:
    """Turns chosen candidates into output text and findings, up to the first block."""

    def __init__(self, scanner: Scanner, actions: Mapping[str, str], hash_key: bytes) -> None:
        self.scanner = scanner
        self.actions = dict(actions)
        self.hash_key = hash_key

    def rewrite(
        self,
        text: str,
        position: int,
        chosen: Sequence[Candidate],
        findings: list[Finding],
        base: int,
    ) -> tuple[list[str], int, Candidate | None]:
        """Output from `position` through the chosen candidates: pieces, end, blocking one."""
        pieces: list[str] = []
        for candidate in chosen:
            action = self.actions[candidate.entity]
            finding = Finding(
                candidate.entity, base + candidate.start, base + candidate.end, action
            )
            findings.append(finding)
            pieces.append(text[position : candidate.start])
            if action == "block":
                return pieces, candidate.start, candidate
            value = text[candidate.start : candidate.end]
            pieces.append(replacement(candidate.entity, value, action, self.hash_key))
            position = candidate.end
        return pieces, position, None


class InboundPipeline:
    """Prompt filters of one AccessPolicy, compiled once."""

    def __init__(
        self,
        max_prompt_bytes: int,
        injection: str,
        actions: Mapping[str, str],
        hash_key: bytes,
    ) -> None:
        self.max_prompt_bytes = max_prompt_bytes
        self.injection_mode = injection
        self._injection = InjectionDetector()
        self._scanner = Scanner(PII_DETECTORS)
        self._actions = dict(actions)
        self._hash_key = hash_key

    @classmethod
    def from_spec(cls, spec: InboundFilters, hash_key: bytes) -> InboundPipeline:
        """Compile the inbound filters of an AccessPolicy."""
        return cls(spec.max_prompt_bytes, spec.injection, pii_actions(spec.pii), hash_key)

    def apply(self, text: str) -> FilterResult:
        """Filter one prompt."""
        # A character takes at least one byte and at most four: skip encoding when clear.
        if len(text) > self.max_prompt_bytes or (
            4 * len(text) > self.max_prompt_bytes and utf8_length(text) > self.max_prompt_bytes
        ):
            return FilterResult("", (), True, "prompt_too_large", frozenset())
        findings: list[Finding] = []
        reason: str | None = None
        if self.injection_mode != "off":
            action = "block" if self.injection_mode == "block" else "flag"
            for start, end in self._injection.find(text):
                findings.append(Finding(INJECTION_ENTITY, start, end, action))
            if findings and action == "block":
                reason = "prompt_injection"
        pieces: list[str] = []
        position = 0
        for candidate in select(self._scanner.scan(text)):
            action = self._actions[candidate.entity]
            findings.append(Finding(candidate.entity, candidate.start, candidate.end, action))
            if action == "block":
                # The prompt is not forwarded, but every finding is still reported.
                reason = reason or block_reason(candidate.entity)
                continue
            value = text[candidate.start : candidate.end]
            pieces += (
                text[position : candidate.start],
                replacement(candidate.entity, value, action, self._hash_key),
            )
            position = candidate.end
        findings.sort(key=lambda f: (f.start, f.end))
        blocked = reason is not None
        pieces.append(text[position:])
        return FilterResult(
            "" if blocked else "".join(pieces),
            tuple(findings),
            blocked,
            reason,
            data_classes_of(findings),
        )


class OutboundPipeline:
    """Response filters of one AccessPolicy, compiled once."""

    def __init__(self, detectors: Sequence[Detector], actions: Mapping[str, str], hash_key: bytes):
        self._rewriter = _Rewriter(Scanner(detectors), actions, hash_key)

    @classmethod
    def from_spec(
        cls, spec: OutboundFilters, protected_entities: Sequence[str], hash_key: bytes
    ) -> OutboundPipeline:
        """Compile the outbound filters of an AccessPolicy and the protected entities."""
        actions = pii_actions(spec.pii)
        detectors = list(PII_DETECTORS)
        for entity, terms in (
            (PROTECTED_ENTITY, protected_entities),
            (INTERNAL_TERM, spec.internal_terms),
        ):
            detector = term_detector(entity, terms)
            if detector is not None:
                detectors.append(detector)
                actions[entity] = spec.action
        return cls(detectors, actions, hash_key)

    @property
    def holdback(self) -> int:
        """Characters a stream keeps back beyond the runs of token characters."""
        return self._rewriter.scanner.horizon

    def apply(self, text: str) -> FilterResult:
        """Filter a whole response; a block stops it at the blocking match."""
        findings: list[Finding] = []
        chosen = select(self._rewriter.scanner.scan(text))
        pieces, position, blocking = self._rewriter.rewrite(text, 0, chosen, findings, 0)
        if blocking is None:
            pieces.append(text[position:])
        return _result(pieces, findings, blocking)

    def stream(self) -> OutboundStream:
        """A filter for one streamed response."""
        return OutboundStream(self._rewriter)


def _result(pieces: list[str], findings: list[Finding], blocking: Candidate | None) -> FilterResult:
    return FilterResult(
        "".join(pieces),
        tuple(findings),
        blocking is not None,
        None if blocking is None else block_reason(blocking.entity),
        data_classes_of(findings),
    )


class OutboundStream:
    """Filters a response chunk by chunk with the same output as `OutboundPipeline.apply`.

    Text is held back only while a match could still cover it: the last `horizon`
    characters, and a run of token characters still growing at the end.
    """

    def __init__(self, rewriter: _Rewriter) -> None:
        self._rewriter = rewriter
        self._scanner = rewriter.scanner
        self._pending: list[str] = []
        self._buffer = ""  # text from absolute offset _base on
        self._base = 0
        self._length = 0  # characters fed so far
        self._frontier = 0  # candidates starting before it are decided
        self._emitted = 0  # output covers the text before it
        self._taken = 0  # end of the last chosen candidate
        self._run_start = 0  # start of the run of token characters that ends the text
        self.findings: list[Finding] = []
        self.blocked = False
        self.reason: str | None = None

    def feed(self, chunk: str) -> str:
        """Take the next chunk; return the filtered text that is safe to send now."""
        if self.blocked or not chunk:
            return ""
        self._pending.append(chunk)
        tail = trailing_run_start(chunk)
        if tail > 0:
            self._run_start = self._length + tail
        self._length += len(chunk)
        frontier = self._length - self._scanner.horizon
        if self._scanner.uses_runs:
            frontier = min(frontier, self._run_start)
        return self._advance(frontier) if frontier > self._frontier else ""

    def finish(self) -> str:
        """The end of the response: flush what was held back."""
        if self.blocked:
            return ""
        return self._advance(self._length)

    @property
    def result(self) -> FilterResult:
        """Findings and outcome so far, in the form `apply` returns (without the text)."""
        return FilterResult(
            "", tuple(self.findings), self.blocked, self.reason, data_classes_of(self.findings)
        )

    def _advance(self, frontier: int) -> str:
        if self._pending:
            self._buffer += "".join(self._pending)
            self._pending.clear()
        base, text = self._base, self._buffer
        candidates = self._scanner.scan(text, self._frontier - base, frontier - base)
        chosen = select(candidates, self._taken - base)
        pieces, position, blocking = self._rewriter.rewrite(
            text, self._emitted - base, chosen, self.findings, base
        )
        if chosen:
            self._taken = base + chosen[-1].end
        if blocking is not None:
            self.blocked = True
            self.reason = block_reason(blocking.entity)
            self._pending.clear()
            self._buffer = ""
            return "".join(pieces)
        if position < frontier - base:
            pieces.append(text[position : frontier - base])
            position = frontier - base
        self._emitted = base + position
        self._frontier = frontier
        # Keep what later scans read before the frontier; drop the rest.
        keep_from = max(0, frontier - self._scanner.context - base)
        self._buffer = text[keep_from:]
        self._base = base + keep_from
        return "".join(pieces)
