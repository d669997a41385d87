"""Prompt-injection heuristics: phrases that try to override or reveal a model's instructions.

The patterns run on the lower-cased prompt and only when one of their keywords
occurs in it; the compiled module looks for every keyword in one pass, so
ordinary text costs about one read of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .detectors import lower_same_length

try:
    from privatellm_pii_scan import KeywordSet
except ImportError:  # not built here: a substring search per keyword, the same result
    KeywordSet = None  # type: ignore[assignment,misc]

ENTITY = "promptInjection"

_EARLIER_EN = r"(?:previous|prior|above|earlier|preceding|foregoing|initial|original)"
_ORDERS_EN = r"(?:instructions?|prompts?|rules|directions|directives|guidelines|commands)"
_SYSTEM_EN = r"system\s+(?:prompt|message|instructions?)"


@dataclass(frozen=True, slots=True)
class Heuristic:
    """One kind of injection: a pattern and the keywords without which it cannot match."""

    name: str
    keywords: tuple[str, ...]
    pattern: re.Pattern[str]


def _heuristic(name: str, keywords: tuple[str, ...], pattern: str) -> Heuristic:
    return Heuristic(name, keywords, re.compile(pattern))


HEURISTICS: tuple[Heuristic, ...] = (
    # Override the instructions (en, nl, de, fr, es).
    _heuristic(
        "ignore-instructions",
        ("ignore",),
        rf"\bignore\s+(?:all\s+|any\s+|every\s+)?(?:of\s+)?(?:the\s+|your\s+|these\s+)?"
        rf"(?:{_EARLIER_EN}\s+{_ORDERS_EN}|{_SYSTEM_EN})\b",
    ),
    _heuristic(
        "disregard-instructions",
        ("disregard",),
        rf"\bdisregard\s+(?:all\s+|any\s+)?(?:of\s+)?(?:the\s+|your\s+)?"
        rf"(?:{_EARLIER_EN}\s+{_ORDERS_EN}|instructions|{_SYSTEM_EN})\b",
    ),
    _heuristic(
        "forget-instructions",
        ("forget",),
        rf"\bforget\s+(?:all\s+|everything\s+)?(?:about\s+)?(?:the\s+|your\s+)?"
        rf"(?:{_EARLIER_EN}\s+{_ORDERS_EN}|{_SYSTEM_EN})\b"
        r"|\bforget\s+everything\s+(?:you\s+(?:were|have\s+been)\s+told|above)\b",
    ),
    _heuristic(
        "negeer-instructies",
        ("negeer", "vergeet"),
        r"\b(?:negeer|vergeet)\s+(?:alle\s+)?(?:de\s+|je\s+|jouw\s+)?"
        r"(?:(?:vorige|voorgaande|eerdere|bovenstaande)\s+(?:instructies|opdrachten|regels|prompts?)"
        r"|systeem\s*-?\s*(?:prompt|instructies))\b",
    ),
    _heuristic(
        "ignoriere-anweisungen",
        ("ignorier", "vergiss", "missachte"),
        r"\b(?:ignorier(?:e|en)?|vergiss|missachte)\s+(?:alle\s+)?(?:die\s+|deine\s+|den\s+)?"
        r"(?:(?:vorherigen|vorigen|bisherigen|obigen|vorangegangenen)\s+"
        r"(?:anweisungen|instruktionen|befehle|regeln)|system\s*-?\s*(?:prompt|anweisungen))\b",
    ),
    _heuristic(
        "ignorer-instructions",
        ("ignore", "oubli", "compte"),
        r"\b(?:ignore[zr]?|oublie[zr]?|ne\s+tiens\s+pas\s+compte\s+d(?:es|u))\s+"
        r"(?:toutes\s+)?(?:les\s+|le\s+)?"
        r"(?:(?:instructions|consignes)\s+(?:précédentes|antérieures|ci-dessus)"
        r"|prompt\s+(?:système|systeme)|instructions\s+(?:du\s+)?système)",
    ),
    _heuristic(
        "ignora-instrucciones",
        ("ignora", "olvida"),
        r"\b(?:ignora|olvida)\s+(?:todas\s+)?(?:las\s+)?instrucciones\s+(?:anteriores|previas)\b",
    ),
    # Ask for the hidden instructions.
    _heuristic(
        "reveal-system-prompt",
        ("system", "initial", "hidden", "original", "secret", "above"),
        r"\b(?:reveal|show|print|repeat|output|display|leak|dump|tell\s+me|give\s+me|"
        r"what\s+(?:is|are|was|were))\s+(?:me\s+)?(?:your|the)\s+"
        r"(?:full\s+|exact\s+|complete\s+)?(?:"
        + _SYSTEM_EN
        + r"|(?:initial|hidden|original|secret)\s+(?:prompt|instructions))\b"
        r"|\brepeat\s+(?:the\s+)?(?:words|text|everything)\s+above\b",
    ),
    # Role-play jailbreaks.
    _heuristic(
        "jailbreak-persona",
        ("dan", "anything now", "developer mode", "jailbr", "unrestricted", "unfiltered"),
        r"\byou\s+are\s+now\s+(?:dan\b|in\s+developer\s+mode|jailbroken|"
        r"an?\s+(?:unrestricted|unfiltered|uncensored))"
        r"|\b(?:act|pretend|behave)\s+(?:as|like|to\s+be)\s+(?:dan\b|an?\s+"
        r"(?:unrestricted|unfiltered|uncensored|jailbroken)\s+(?:ai|assistant|model|chatbot))"
        r"|\bdo\s+anything\s+now\b"
        r"|\b(?:enable|activate|enter|switch\s+to)\s+(?:the\s+)?developer\s+mode"
        r"|\bdeveloper\s+mode\s+(?:enabled|activated|on)\b"
        r"|\bjailbr(?:eak|oken)\s+mode\b",
    ),
    # Role markers of chat templates, which a user has no reason to type.
    _heuristic(
        "fake-role-tag",
        ("<|", "#", "[inst", "[/inst", "<<", "<system", "</system"),
        r"<\|(?:system|im_start|im_end|assistant|endoftext)\|>"
        r"|(?:^|\n)[ \t]*#{2,}[ \t]*(?:system|instructions?)[ \t]*:"
        r"|\[/?inst\]|<<\s*/?sys\s*>>|<\s*/?\s*system\s*>",
    ),
    # An encoded payload with an order to decode it.
    _heuristic(
        "decode-base64",
        ("decod", "dekod", "décod", "base64"),
        r"\b(?:decode|decodeer|dekodiere|décode[zr]?|decodifica|base64)\b"
        r"(?=[^\n]{0,80}?[a-z0-9+/]{40})",
    ),
)


class InjectionDetector:
    """Finds prompt-injection phrases; returns their spans in the original text."""

    def __init__(self, heuristics: tuple[Heuristic, ...] = HEURISTICS, compiled: bool = True):
        self.heuristics = heuristics
        keywords = sorted({k for h in heuristics for k in h.keywords})
        # Which heuristics each keyword lets run.
        self._runs_on = [[h for h in heuristics if k in h.keywords] for k in keywords]
        self._keywords = KeywordSet(keywords) if compiled and KeywordSet is not None else None

    @property
    def compiled(self) -> bool:
        """Whether the compiled module looks for the keywords."""
        return self._keywords is not None

    def find(self, text: str) -> list[tuple[int, int]]:
        """Spans of injection phrases, sorted and without overlaps."""
        lowered = lower_same_length(text)
        spans: list[tuple[int, int]] = []
        for heuristic in self._possible(lowered):
            spans.extend(m.span() for m in heuristic.pattern.finditer(lowered))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for start, end in spans:
            if merged and start < merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged

    def _possible(self, lowered: str) -> list[Heuristic]:
        """The heuristics one of whose keywords occurs, in their order."""
        if self._keywords is not None:
            try:
                # One pass for every keyword (compiled), instead of one search each.
                present = self._keywords.present(lowered)
            except UnicodeEncodeError:  # lone surrogates: not UTF-8
                pass
            else:
                chosen = {id(h) for i in present for h in self._runs_on[i]}
                return [h for h in self.heuristics if id(h) in chosen]
        return [h for h in self.heuristics if any(k in lowered for k in h.keywords)]
