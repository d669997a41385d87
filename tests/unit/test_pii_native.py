"""The compiled PII scanner finds exactly what the Python scanner finds.

`privatellm_pii_scan` is built by `make venv` from native/pii_scan. These tests
fail, not skip, when it is missing: the gateway would still filter correctly, but
several times slower than documented.
"""

from __future__ import annotations

import random
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privatellm.api.access import PII_ENTITIES
from privatellm.filters.detectors import PII_DETECTORS, Candidate
from privatellm.filters.injection import HEURISTICS, InjectionDetector
from privatellm.filters.scanner import Scanner
from privatellm.filters.terms import PROTECTED_ENTITY, term_detector
from tests.benchmarks import pii_corpus
from tests.unit import test_filters_injection

COMPILED = Scanner(PII_DETECTORS)
PYTHON = Scanner(PII_DETECTORS, compiled=False)


def both(text: str, begin: int = 0, end: int | None = None) -> tuple[list[Candidate], ...]:
    return COMPILED.scan(text, begin, end), PYTHON.scan(text, begin, end)


def test_every_pii_detector_runs_compiled() -> None:
    assert COMPILED.compiled
    assert all(d.native for d in PII_DETECTORS)
    assert not PYTHON.compiled
    assert InjectionDetector().compiled and not InjectionDetector(compiled=False).compiled


def test_the_labelled_corpus_gives_the_same_candidates() -> None:
    texts = [s.text for s in pii_corpus.corpus(1500)] + pii_corpus.clean_prompts(10)
    found = 0
    for text in texts:
        compiled, python = both(text)
        assert compiled == python, text
        found += len(compiled)
    assert found > 3000  # the corpus holds values of every entity type


# Pieces that make detectors start, confirm, fail a check or stop at a boundary:
# valid and invalid values, separators, keywords, and characters outside ASCII
# (letters and not, a combining mark, U+0130 and the Kelvin sign, which lower-case
# to ASCII, and a character of four UTF-8 bytes).
ENTITIES = get_args(PII_ENTITIES)
LANGUAGES = ("en", "nl", "de", "fr", "es")
_RNG = random.Random(4)
_VALUES = [pii_corpus.value(_RNG, entity, lang) for entity in ENTITIES for lang in LANGUAGES]
_DECOYS = [v for lang in ("en", "de") for v in pii_corpus.decoy_values(_RNG, lang).values()]
PIECES = st.sampled_from(
    [
        *_VALUES,
        *_DECOYS,
        *"0123456789",
        *" .-/()+:@_=\n",
        *"aZkQ",
        "GB",
        "NL91",
        "::",
        "fe80::1",
        "192.168.0.",
        "+31 (0)",
        "born on ",
        "Date of birth: ",
        "geboren am ",
        "né le ",
        "12 märz 1980",
        "3. Mai 1975",
        "1 janvier 1990",
        "-----BEGIN PRIVATE KEY-----",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmN",
        "AKIA",
        "é",
        "ß",
        "€",
        "\u0301",
        "\u0130",
        "\u212a",
        "\U0001f600",
        "٣",
        "Ⓐ",
        "\u0345",
        "\u093e",
        "Ⅻ",
        "²",
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(PIECES, max_size=24).map("".join), st.data())
def test_any_text_and_window_gives_the_same_candidates(text: str, data: st.DataObject) -> None:
    compiled, python = both(text)
    assert compiled == python
    # Streams scan windows of a growing text.
    begin = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(begin, len(text)))
    compiled, python = both(text, begin, end)
    assert compiled == python


# Letters or not, by Python's str.isalnum: marks and symbols that Unicode calls
# Alphabetic are not letters to Python, numbers of every kind are.
BOUNDARY_CHARACTERS = ["Ⓐ", "\u0345", "\u093e", "Ⅻ", "²", "é", "€", "٣", "\u0301"]


@pytest.mark.parametrize("before", BOUNDARY_CHARACTERS)
def test_what_counts_as_a_letter_before_a_value_is_pythons_answer(before: str) -> None:
    for text in (f"x {before}fe80::1 y", f"{before}born on 3 May 1980", f"{before}dob: 1.2.1980"):
        compiled, python = both(text)
        assert compiled == python, text


def test_text_that_is_not_utf8_is_scanned_in_python() -> None:
    text = "card 4111 1111 1111 1111 \ud800 mail a@example.org"
    compiled, python = both(text)
    assert compiled == python
    assert [c.entity for c in compiled] == ["paymentCard", "email"]


def test_values_one_character_away_give_the_same_candidates() -> None:
    """Every value of the corpus with each character changed: checksums and bounds."""
    rng = random.Random(11)
    values = [
        *(pii_corpus.value(rng, e, lang) for e in ENTITIES for lang in LANGUAGES),
        "10.0.0.255",
        "2001:db8::ff00:42:8329",
        "::ffff:192.0.2.128",
    ]
    replacements = "0123456789 .-:/()+AZaz@é"
    checked = 0
    for value in values:
        for at in range(len(value)):
            for new in replacements:
                text = f"see {value[:at]}{new}{value[at + 1 :]}."
                compiled, python = both(text)
                assert compiled == python, text
                checked += 1
    assert checked > 20000


INJECTION_PIECES = st.sampled_from(
    [
        *test_filters_injection.ATTACKS,
        *test_filters_injection.BENIGN,
        *(k for h in HEURISTICS for k in h.keywords),
        " ",
        "\n",
        "İgnore",
        "\u212a",
        "\ud800",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(INJECTION_PIECES, max_size=8).map("".join))
def test_injection_keywords_found_in_one_pass_run_the_same_heuristics(text: str) -> None:
    compiled, python = InjectionDetector(), InjectionDetector(compiled=False)
    assert compiled.find(text) == python.find(text)


def test_python_only_detectors_run_beside_compiled_ones() -> None:
    terms = term_detector(PROTECTED_ENTITY, ["Acme Corp"])
    assert terms is not None
    mixed = Scanner([*PII_DETECTORS, terms])
    reference = Scanner([*PII_DETECTORS, terms], compiled=False)
    text = "Acme Corp paid from NL91ABNA0417164300, mail acme@example.com"
    assert mixed.compiled
    assert mixed.scan(text) == reference.scan(text)
    assert {c.entity for c in mixed.scan(text)} == {PROTECTED_ENTITY, "iban", "email"}


def test_a_detector_the_compiled_scanner_does_not_know_is_refused() -> None:
    from privatellm_pii_scan import NativeScanner

    spec = ("creditScore", "[0-9]+", False, False, None, "", 1, 0, False, [])
    with pytest.raises(ValueError, match='unknown detector kind "creditScore"'):
        NativeScanner([spec], 0)


def test_a_pattern_reading_unicode_classes_must_be_lowered() -> None:
    from privatellm_pii_scan import NativeScanner

    spec = ("whole", r"\w+@", False, True, None, "", 1, 0, False, [])
    with pytest.raises(ValueError, match="outside ASCII: only a lowered detector may"):
        NativeScanner([spec], 0)
