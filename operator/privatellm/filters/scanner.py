"""The scan that runs detectors over a text: gates, shared triggers, the compiled scanner.

A scan's candidates do not depend on where it starts (see detectors.py), which is
what lets the outbound stream hold back a bounded tail and still agree with a
full scan. Detectors with a `native` rule run in the compiled scanner
(`privatellm_pii_scan`, built from native/pii_scan) when it is installed: the same
candidates, found faster.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .detectors import MIN_TOKEN, RUN_CHARS, Candidate, Detector, lower_same_length

try:
    from privatellm_pii_scan import NativeScanner
except ImportError:  # not built here: Python runs every detector, with the same results
    NativeScanner = None  # type: ignore[assignment,misc]


def _byte_map(classes: dict[str, str]) -> bytes:
    """A bytes.translate table: each byte in a key's characters becomes that key's class."""
    table = bytearray(b"x" * 256)
    for members, cls in classes.items():
        for char in members:
            table[ord(char)] = ord(cls)
    return bytes(table)


_DIGITS = "0123456789"
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SHAPES = _byte_map({_UPPER: "A", _DIGITS: "0", " ": " ", "@": "@", ":": ":", "-": "-"})
# Gates: facts about a text, found by mapping its UTF-8 bytes to classes (in C) and
# searching the result, without which a detector cannot match. A gate's needles
# must occur in the mapped text of every match of the detectors it guards.
_GATES: dict[str, tuple[bytes, tuple[bytes, ...]]] = {
    # NUMBER_TRIGGER: seven characters of [0-9 ().+/-] in a row.
    "number": (_byte_map({_DIGITS + " ().+-/": "n"}), (b"n" * 7,)),
    # CAPITALS_TRIGGER: two capitals, maybe a space, two digits.
    "capitals": (_SHAPES, (b"AA00", b"AA 00")),
    "digit": (_SHAPES, (b"0",)),
    "at": (_SHAPES, (b"@",)),
    "colon": (_SHAPES, (b":",)),
    "dashes": (_SHAPES, (b"-----",)),
    "long_run": (_byte_map({"".join(sorted(RUN_CHARS)): "a"}), (b"a" * MIN_TOKEN,)),
}


def open_gates(text: str, gates: Iterable[str]) -> set[str]:
    """Which of `gates` the text passes."""
    raw = text.encode("utf-8", "surrogatepass")
    mapped: dict[bytes, bytes] = {}
    passed = set()
    for gate in gates:
        table, needles = _GATES[gate]
        shapes = mapped.get(table)
        if shapes is None:
            shapes = mapped[table] = raw.translate(table)
        for needle in needles:
            if needle in shapes:
                passed.add(gate)
                break
    return passed


def trailing_run_start(text: str) -> int:
    """Offset where the run of token characters that ends `text` begins (len if none)."""
    start = len(text)
    while start > 0 and text[start - 1] in RUN_CHARS:
        start -= 1
    return start


NativeSpec = tuple[str, str, bool, bool, str | None, str, int, int, bool, list[str]]


def _native_spec(detector: Detector) -> NativeSpec:
    """What the compiled scanner needs of a detector, in the order it takes them."""
    flags = detector.pattern.flags
    return (
        detector.native or "",
        detector.pattern.pattern,
        bool(flags & re.VERBOSE),
        not flags & re.ASCII,
        None if detector.trigger is None else detector.trigger.pattern,
        detector.gate or "",
        detector.back,
        detector.lead,
        detector.lowered,
        list(detector.keywords),
    )


@dataclass(frozen=True)
class _Plan:
    """How Python runs some detectors: families behind shared triggers, then the rest."""

    families: tuple[tuple[re.Pattern[str], str | None, int, tuple[tuple[int, Detector], ...]], ...]
    alone: tuple[tuple[int, Detector], ...]
    gates: frozenset[str]

    @classmethod
    def of(cls, ranked: Sequence[tuple[int, Detector]]) -> _Plan:
        families: dict[re.Pattern[str], list[tuple[int, Detector]]] = {}
        alone: list[tuple[int, Detector]] = []
        for rank, detector in ranked:
            if detector.trigger is None:
                alone.append((rank, detector))
            else:
                families.setdefault(detector.trigger, []).append((rank, detector))
        return cls(
            tuple(
                (trigger, members[0][1].gate, max(d.back for _, d in members), tuple(members))
                for trigger, members in families.items()
            ),
            tuple(alone),
            frozenset(d.gate for _, d in ranked if d.gate is not None),
        )


class Scanner:
    """Runs a fixed set of detectors; candidates do not depend on where a scan begins.

    Detectors with a `native` rule run in the compiled scanner when it is installed
    (the same candidates, found faster); the others, and texts the compiled scanner
    cannot take (lone surrogates), run in Python.
    """

    def __init__(self, detectors: Sequence[Detector], compiled: bool = True) -> None:
        self.detectors = tuple(detectors)
        bounded = [d for d in self.detectors if not d.within_runs]
        # Candidates starting before len(text) - horizon are final once text grows.
        self.horizon = max((d.reach + d.back for d in bounded), default=0)
        # Characters before a scan's start that the scan reads.
        self.context = max((d.back + d.lead for d in self.detectors), default=0)
        self.uses_runs = any(d.within_runs for d in self.detectors)
        ranked = list(enumerate(self.detectors))
        self._everything = _Plan.of(ranked)
        self._python = self._everything
        self._native: NativeScanner | None = None
        self._native_ranks: tuple[int, ...] = ()
        compiled_ones = [(rank, d) for rank, d in ranked if d.native is not None]
        if compiled and NativeScanner is not None and compiled_ones:
            specs = [_native_spec(d) for _, d in compiled_ones]
            self._native = NativeScanner(specs, self.context)
            self._native_ranks = tuple(rank for rank, _ in compiled_ones)
            self._python = _Plan.of([(rank, d) for rank, d in ranked if d.native is None])

    @property
    def compiled(self) -> bool:
        """Whether the compiled scanner runs this scanner's PII detectors."""
        return self._native is not None

    def scan(self, text: str, begin: int = 0, end: int | None = None) -> list[Candidate]:
        """Candidates whose span starts in [begin, end), sorted by start, longest first."""
        found: list[Candidate] = []
        plan = self._python
        if self._native is not None:
            try:
                hits = self._native.scan(text, begin, end)
            except UnicodeEncodeError:
                plan = self._everything
            else:
                ranks, detectors = self._native_ranks, self.detectors
                found = [
                    Candidate(detectors[ranks[i]].entity, start, stop, ranks[i])
                    for i, start, stop in hits
                ]
        if plan.families or plan.alone:
            found += self._scan_python(plan, text, begin, end)
        found.sort(key=lambda c: (c.start, -c.end, c.rank))
        return found

    def _scan_python(self, plan: _Plan, text: str, begin: int, end: int | None) -> list[Candidate]:
        stop = len(text) if end is None else end
        found: list[Candidate] = []
        passed = open_gates(text[max(0, begin - self.context) :], plan.gates)
        passed.add("")

        def keep(rank: int, detector: Detector, match: re.Match[str]) -> None:
            span = detector.locate(match)
            if span is not None and begin <= span[0] < stop:
                found.append(Candidate(detector.entity, span[0], span[1], rank))

        for trigger, gate, back, members in plan.families:
            if (gate or "") not in passed:
                continue
            position = begin
            while (hit := trigger.search(text, position)) is not None:
                at = hit.start()
                if at >= stop + back:
                    break
                for rank, detector in members:
                    match = detector.pattern.match(text, at)
                    if match is not None and at < stop + detector.back:
                        keep(rank, detector, match)
                position = at + 1
        lowered: str | None = None
        for rank, detector in plan.alone:
            if (detector.gate or "") not in passed:
                continue
            subject = text
            first = max(0, begin - detector.lead)
            if detector.lowered or detector.keywords:
                if lowered is None:
                    lowered = lower_same_length(text)
                window = lowered[first:]
                if detector.keywords and not any(k in window for k in detector.keywords):
                    continue
                if detector.lowered:
                    subject = lowered
            last_start = stop + detector.back
            position = first
            while (match := detector.pattern.search(subject, position)) is not None:
                if match.start() >= last_start:
                    break
                keep(rank, detector, match)
                position = match.start() + 1
        return found


def select(candidates: Sequence[Candidate], taken_until: int = 0) -> list[Candidate]:
    """Leftmost, then longest, non-overlapping candidates starting at or after `taken_until`."""
    chosen: list[Candidate] = []
    for candidate in candidates:
        if candidate.start >= taken_until:
            chosen.append(candidate)
            taken_until = candidate.end
    return chosen
