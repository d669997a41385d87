"""Lists of words that must not leave: other customers' names and identifiers, internal terms.

Terms match case-insensitively and only as whole words (no letter, digit or
underscore on either side). The list compiles into one regular expression shaped
like a trie, so a scan costs about the same for ten terms as for ten thousand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .detectors import Detector, lower_same_length

PROTECTED_ENTITY = "protectedEntity"
INTERNAL_TERM = "internalTerm"


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    terminal: bool = False


def _build_trie(terms: Iterable[str]) -> _Node:
    root = _Node()
    for term in terms:
        node = root
        for char in term:
            node = node.children.setdefault(char, _Node())
        node.terminal = True
    return root


def _trie_pattern(node: _Node, root: bool) -> str:
    """Regular expression of a trie; longer continuations are tried before a term ends here."""
    # Only the first character carries the word-boundary check, placed after it so
    # that the scan can still skip quickly to characters that start a term.
    guard = r"(?<!\w.)" if root else ""
    branches = [
        re.escape(char) + guard + _trie_pattern(child, root=False)
        for char, child in sorted(node.children.items())
    ]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    return f"(?:{body})?" if node.terminal else body


def term_detector(entity: str, terms: Iterable[str]) -> Detector | None:
    """A detector of whole-word, case-insensitive occurrences of `terms` (None if empty)."""
    wanted = sorted({lower_same_length(t.strip()) for t in terms if t.strip()})
    if not wanted:
        return None
    pattern = re.compile(_trie_pattern(_build_trie(wanted), root=True) + r"(?!\w)")
    longest = max(len(t) for t in wanted)
    return Detector(
        entity,
        pattern,
        lambda match: match.span(),
        reach=longest + 1,
        back=1,
        lowered=True,
    )
