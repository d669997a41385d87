"""Detectors: what each one finds, the look-alikes it leaves alone, and the bounds it declares."""

from __future__ import annotations

import math
import re
import re._constants as sre  # the parser's node kinds, to check declared bounds
import re._parser as sre_parse
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privatellm.api.access import PII_ENTITIES
from privatellm.filters import DATA_CLASS_OF
from privatellm.filters import detectors as d
from privatellm.filters.detectors import PII_DETECTORS, is_high_entropy
from privatellm.filters.scanner import Scanner, select

SCANNER = Scanner(PII_DETECTORS)


def found(text: str) -> list[tuple[str, str]]:
    return [(c.entity, text[c.start : c.end]) for c in select(SCANNER.scan(text))]


def test_every_api_entity_has_a_detector_and_a_data_class() -> None:
    entities = set(get_args(PII_ENTITIES))
    assert {det.entity for det in PII_DETECTORS} == entities
    assert set(DATA_CLASS_OF) == entities
    assert DATA_CLASS_OF["iban"] == DATA_CLASS_OF["paymentCard"] == "financial"
    assert DATA_CLASS_OF["secret"] == "secret"
    assert {DATA_CLASS_OF[e] for e in entities - {"iban", "paymentCard", "secret"}} == {"pii"}


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
HITS = [
    (
        "mail Jan.de-Vries+news@mail.example.co.uk now",
        "email",
        "Jan.de-Vries+news@mail.example.co.uk",
    ),
    ("reach me at a_b@example.org.", "email", "a_b@example.org"),
    ("call +31 6 12345678 today", "phone", "+31 6 12345678"),
    ("call +44 (0)20 7946 0958 today", "phone", "+44 (0)20 7946 0958"),
    ("bel 020-1234567 of", "phone", "020-1234567"),
    ("bel 0612345678 of", "phone", "0612345678"),
    ("appelez le 01 23 45 67 89", "phone", "01 23 45 67 89"),
    ("call (555) 234-5678 now", "phone", "(555) 234-5678"),
    ("call 555.234.5678 now", "phone", "555.234.5678"),
    ("llame al 612 345 678 hoy", "phone", "612 345 678"),
    ("llame al 0034 91 123 45 67 hoy", "phone", "0034 91 123 45 67"),
    ("IBAN NL91 ABNA 0417 1643 00 please", "iban", "NL91 ABNA 0417 1643 00"),
    ("IBAN DE89370400440532013000.", "iban", "DE89370400440532013000"),
    ("to FR14 2004 1010 0505 0001 3M02 606 THE END", "iban", "FR14 2004 1010 0505 0001 3M02 606"),
    ("card 4111 1111 1111 1111 exp 12/25", "paymentCard", "4111 1111 1111 1111"),
    ("card 4111-1111-1111-1111 ok", "paymentCard", "4111-1111-1111-1111"),
    ("amex 3782 822463 10005 ok", "paymentCard", "3782 822463 10005"),
    ("card 5555555555554444 ok", "paymentCard", "5555555555554444"),
    ("SSN 123-45-6789 on file", "usSSN", "123-45-6789"),
    ("SSN 123 45 6789 on file", "usSSN", "123 45 6789"),
    ("NINO AB 12 34 56 C ok", "ukNINO", "AB 12 34 56 C"),
    ("NINO CE123456D ok", "ukNINO", "CE123456D"),
    ("BSN 111222333 ok", "nlBSN", "111222333"),
    ("BSN 1234.56.782 ok", "nlBSN", "1234.56.782"),
    ("Steuer-ID 86095742719 ok", "deTaxID", "86095742719"),
    ("Steuer-ID 65 929 970 489 ok", "deTaxID", "65 929 970 489"),
    ("server 192.168.1.10, ok", "ipAddress", "192.168.1.10"),
    ("server 10.0.0.1:8080 ok", "ipAddress", "10.0.0.1"),
    ("server 2001:db8::8a2e:370:7334 ok", "ipAddress", "2001:db8::8a2e:370:7334"),
    ("loopback ::1 ok", "ipAddress", "::1"),
    ("He was born on 12 March 1985 in Leeds", "dateOfBirth", "12 March 1985"),
    ("born March 3, 1985", "dateOfBirth", "March 3, 1985"),
    ("DOB: 1990-01-31", "dateOfBirth", "1990-01-31"),
    ("Date of birth 31/12/1999", "dateOfBirth", "31/12/1999"),
    ("Geboren am 03.04.1977 in Köln", "dateOfBirth", "03.04.1977"),
    ("geboortedatum: 5 mei 1960", "dateOfBirth", "5 mei 1960"),
    ("Née le 1er janvier 1970", "dateOfBirth", "1er janvier 1970"),
    ("fecha de nacimiento: 7 de agosto de 1999", "dateOfBirth", "7 de agosto de 1999"),
    ("key AKIAIOSFODNN7EXAMPLE ok", "secret", "AKIAIOSFODNN7EXAMPLE"),
    (
        "token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 ok",
        "secret",
        "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    ),
    ("slack xoxb-1234567890-abcdefghij ok", "secret", "xoxb-1234567890-abcdefghij"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc ok", "secret", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    (
        "maps AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW ok",
        "secret",
        "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW",
    ),
    ("-----BEGIN RSA PRIVATE KEY-----\n", "secret", "-----BEGIN RSA PRIVATE KEY-----"),
    ("random q8Zr2LmX0pT4vW9yB7nK3sD5 ok", "secret", "q8Zr2LmX0pT4vW9yB7nK3sD5"),
    (f"jwt {JWT} ok", "secret", JWT),
]


@pytest.mark.parametrize(("text", "entity", "value"), HITS)
def test_detector_finds(text: str, entity: str, value: str) -> None:
    assert found(text) == [(entity, value)]


DECOYS = [
    "order 2024-118734 shipped",
    "version 3.10.2 and v1.2.3.4 released",
    "invoice INV-2023-00042 is due",
    "logged at 2024-05-01T13:45:12Z and 01-05-2024 10:30:00",
    "the meeting is on 12 March 1985 and 2024-05-01",  # a date without birth context
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b",
    "card 4111 1111 1111 1112 is invalid",  # Luhn
    "SSN 666-45-6789 and 123-00-6789 are invalid",
    "NINO GB 12 34 56 A is not issued",
    "number 123456789 fails the eleven-proof",
    "Steuer-ID 86095742710 has a bad check digit",
    "address 256.1.1.1 and 10.0.0 are not IPs",
    "ratio 3:1 and 12:30:45 and std::vector",
    "call 555-123-4567 (no exchange starts with 1)",
    "a getUserAccountByIdentifier call and internationalization",
    "report_2024_Q3_final_version.xlsx",
    "mail me at example dot com, @handle",
    "price 1,234,567.89 EUR for 42 units",
    "closed account DE21 5734 3370 3701 8423 63 (bad check digits)",  # no card inside
    "Vorgangsnummer 47 984 150 328 ist ungültig",  # no phone inside
    "classes XMLHttpRequestFactoryBuilder and getUserAccountByIdentifier2",
]


@pytest.mark.parametrize("text", DECOYS)
def test_detectors_leave_look_alikes_alone(text: str) -> None:
    assert found(text) == []


def test_iban_with_a_bad_check_is_not_an_iban() -> None:
    assert "iban" not in {entity for entity, _ in found("IBAN NL92 ABNA 0417 1643 00 is invalid")}


def test_numbers_inside_longer_tokens_are_not_split_out() -> None:
    assert found("ref ABC123-45-6789 and x111222333") == []


def test_high_entropy_needs_mixed_classes() -> None:
    assert is_high_entropy("q8Zr2LmX0pT4vW9yB7nK3sD5")
    assert not is_high_entropy("q8zr2lmx0pt4vw9yb7nk3sd5")  # no upper case
    assert not is_high_entropy("Aaaaaaaaaaaaaaaaaaaaaaa1")  # one letter repeated
    assert not is_high_entropy("getUserAccountByIdentifier2")  # words: few class switches


def test_candidates_do_not_depend_on_where_the_scan_begins() -> None:
    text = "x " * 40 + "mail jan@example.nl, IBAN NL91ABNA0417164300, born 1 May 1990 " * 3
    full = SCANNER.scan(text)
    for begin in range(0, len(text), 7):
        assert SCANNER.scan(text, begin) == [c for c in full if c.start >= begin]


# --- declared bounds ----------------------------------------------------------


def _forward(items: Any, groups: Any) -> float:
    """Upper bound of the characters a pattern reads from its start (lookaheads included)."""
    total = 0.0
    for op, av in items:
        if op in (sre.LITERAL, sre.NOT_LITERAL, sre.IN, sre.ANY):
            total += 1
        elif op is sre.BRANCH:
            total += max(_forward(branch, groups) for branch in av[1])
        elif op is sre.SUBPATTERN:
            total += _forward(av[-1], groups)
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            _low, high, sub = av
            total += math.inf if high == sre.MAXREPEAT else high * _forward(sub, groups)
        elif op in (sre.ASSERT, sre.ASSERT_NOT):
            direction, sub = av
            total += _forward(sub, groups) if direction == 1 else 0
        elif op is sre.GROUPREF:
            total += groups[av][1]
        elif op is not sre.AT:
            raise AssertionError(op)
    return total


def _behind(items: Any, consumed: int = 0) -> int:
    """Characters a pattern reads before its start (lookbehinds after `consumed` characters)."""
    most = 0
    for op, av in items:
        if op in (sre.ASSERT, sre.ASSERT_NOT) and av[0] == -1:
            most = max(most, av[1].getwidth()[1] - consumed)
        elif op is sre.BRANCH:
            most = max([most] + [_behind(branch, consumed) for branch in av[1]])
        elif op is sre.SUBPATTERN:
            most = max(most, _behind(av[-1], consumed))
        consumed += (
            sre_parse.SubPattern(items.state, [(op, av)]).getwidth()[0]
            if op
            not in (
                sre.ASSERT,
                sre.ASSERT_NOT,
                sre.AT,
            )
            else 0
        )
    return most


def reads(pattern: re.Pattern[str]) -> tuple[float, int]:
    parsed = sre_parse.parse(pattern.pattern, pattern.flags)
    return _forward(parsed, parsed.state.groupwidths), _behind(parsed)


BOUNDED = [det for det in PII_DETECTORS if not det.within_runs]


@pytest.mark.parametrize("detector", BOUNDED, ids=lambda det: det.pattern.pattern[:24])
def test_bounded_detectors_declare_what_their_patterns_read(detector: d.Detector) -> None:
    forward, behind = reads(detector.pattern)
    assert forward <= detector.reach
    assert behind <= detector.back


def test_detectors_that_read_beyond_their_match_declare_it() -> None:
    assert 1 + reads(d._EMAIL_DOMAIN)[0] <= d.EMAIL.reach
    assert d.EMAIL.back >= 64 + 1
    assert reads(d._IPV6_BODY)[0] <= d.IPV6.reach
    assert reads(d._IBAN)[0] + 1 <= d.IBAN.reach
    context_and_gap = reads(re.compile(d._BIRTH_CONTEXT, re.VERBOSE))[0] + 24
    assert context_and_gap <= d.DATE_OF_BIRTH.lead


@pytest.mark.parametrize("detector", [d.SECRET_TOKEN, d.SECRET_JWT])
def test_run_detectors_read_one_character_around_a_run(detector: d.Detector) -> None:
    assert reads(detector.pattern)[1] <= 1


NUMBERISH = st.text(alphabet="0123456789 +()-./:ABCDEGHNLZ", max_size=40) | st.sampled_from(
    [text for text, _, _ in HITS]
)


@settings(max_examples=300, deadline=None)
@given(NUMBERISH)
def test_triggers_match_wherever_a_member_finds_something(text: str) -> None:
    for det in PII_DETECTORS:
        if det.trigger is None:
            continue
        for position in range(len(text)):
            match = det.pattern.match(text, position)
            if match is not None and det.locate(match) is not None:
                assert det.trigger.match(text, position), (det.entity, text, position)


@pytest.mark.parametrize(
    "phrase",
    [
        "date of birth",
        "birthdate",
        "birth date",
        "birthday",
        "born",
        "born on",
        "d.o.b.",
        "dob",
        "geboren",
        "geboren am",
        "geboren op",
        "geburtsdatum",
        "geburtstag",
        "geboortedatum",
        "né le",
        "née le",
        "date de naissance",
        "fecha de nacimiento",
        "nacido el",
        "nacida",
    ],
)
def test_birth_context_keywords_cover_every_phrase(phrase: str) -> None:
    assert re.fullmatch(d._BIRTH_CONTEXT, phrase, re.VERBOSE)
    assert any(keyword in phrase for keyword in d.DATE_OF_BIRTH.keywords)
    assert found(f"{phrase.capitalize()}: 02.03.1991") == [("dateOfBirth", "02.03.1991")]
