"""Detectors of personal data and secrets: patterns, the rules that confirm them, bounds.

Each detector is a compiled regular expression that proposes candidates and a
`locate` function that confirms one (checksums, structural rules) and returns its
span. Every pattern starts with a literal or a narrow character class, so the
regular expression engine skips ordinary prose in C; patterns that would start on
any letter run only when a cheap pre-check on the text says they can match.

A detector decides a match at position p by reading at most `back` characters
before p and `reach` characters from p (bounded detectors), or only the run of
token characters containing p and one character on each side (`within_runs`).
Candidates are therefore independent of where a scan starts (scanner.py runs them).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from math import log2

from .checksums import (
    IBAN_LENGTHS,
    de_tax_id_valid,
    digits_of,
    iban_valid,
    ipv4_valid,
    ipv6_valid,
    nl_bsn_valid,
    payment_card_valid,
    shannon_entropy,
    uk_nino_valid,
    us_ssn_valid,
)

DATA_CLASS_OF: dict[str, str] = {
    "usSSN": "pii",
    "ukNINO": "pii",
    "nlBSN": "pii",
    "deTaxID": "pii",
    "email": "pii",
    "phone": "pii",
    "ipAddress": "pii",
    "dateOfBirth": "pii",
    "iban": "financial",
    "paymentCard": "financial",
    "secret": "secret",
}

# Characters of machine tokens (API keys, JWTs, base64): a match of a `within_runs`
# detector never crosses a character outside this set.
RUN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_.-")
MIN_TOKEN = 20
# High-entropy tokens: at least this many bits per character, or this fraction of
# the most a string of that length can have; and a change of character class
# (lower, upper, digit, symbol) at this fraction of positions at least.
ENTROPY_BITS = 4.0
ENTROPY_SHORT_FRACTION = 0.8
SWITCH_RATE = 0.35

Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A confirmed match: entity and span in the scanned text; lower rank wins ties."""

    entity: str
    start: int
    end: int
    rank: int


@dataclass(frozen=True, slots=True)
class Detector:
    """One entity's pattern, its confirmation, and how much text deciding a match reads.

    reach: characters from a match's start that deciding it may read (bounded detectors);
    back: characters before a match's start that it may read or its span may start at;
    lead: how far after a match's start its span may start (context before the value);
    within_runs: matches lie inside one run of RUN_CHARS, unbounded in length;
    lowered: the pattern runs on lower-cased text; keywords: one of them (lower case)
    occurs in every match, so the scan skips the pattern when none does; trigger: a
    pattern shared with other detectors that finds where they can start; gate: a
    cheap fact about the text (see _GATES) without which the detector cannot match;
    native: the rule in the compiled scanner (privatellm_pii_scan) that confirms a match
    as `locate` does, None for detectors only Python runs.
    """

    entity: str
    pattern: re.Pattern[str]
    locate: Callable[[re.Match[str]], Span | None]
    reach: int = 0
    back: int = 1
    lead: int = 0
    within_runs: bool = False
    lowered: bool = False
    keywords: tuple[str, ...] = ()
    trigger: re.Pattern[str] | None = None
    gate: str | None = None
    native: str | None = None


def lower_same_length(text: str) -> str:
    """Lower case with offsets preserved (U+0130 is the one code point lower() widens)."""
    return text.replace("\u0130", "i").lower()


# --- shared pieces -----------------------------------------------------------

# After a number's first character: it starts a token, and does not continue a
# number written in groups ("DE89 3704 0044" holds no number starting at 3704).
_NUMBER_GUARD = r"(?<![A-Za-z0-9_.+\-/@].)(?<![0-9][ .\-/].)"
_WORD_GUARD = r"(?<![A-Za-z0-9_].)"
_NUMBER_END = r"(?![A-Za-z0-9_]|[.:\-/][0-9])"


# Shared first steps: the scan finds where any member of a family can start with one
# search, then tries each member there. A trigger must match wherever a member does.
NUMBER_TRIGGER = re.compile(r"[+(0-9]" + _NUMBER_GUARD + r"[0-9 ().\-/]{6}", re.ASCII)
CAPITALS_TRIGGER = re.compile(r"[A-Z]" + _WORD_GUARD + r"[A-Z] ?[0-9]{2}", re.ASCII)


_DIGIT_GROUP = re.compile(r"[0-9]+")


def _group_prefixes(text: str) -> Iterator[tuple[int, str]]:
    """(end offset, digits so far) at each end of a digit group, longest first."""
    groups = _DIGIT_GROUP.findall(text)
    ends = [m.end() for m in _DIGIT_GROUP.finditer(text)]
    for count in range(len(groups), 0, -1):
        yield ends[count - 1], "".join(groups[:count])


# --- email -------------------------------------------------------------------

_EMAIL_LOCAL_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-"
)
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9._%+\-]{1,64}\Z")
_EMAIL_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,98}[A-Za-z0-9])?(?![A-Za-z0-9\-])")
_EMAIL_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?")


def _locate_email(match: re.Match[str]) -> Span | None:
    text, at = match.string, match.start()
    local = _EMAIL_LOCAL.search(text, max(0, at - 64), at)
    if local is None or (local.start() > 0 and text[local.start() - 1] in _EMAIL_LOCAL_CHARS):
        return None
    start = local.start()
    while text[start] == ".":
        start += 1
    if start == at or text[at - 1] == "." or ".." in text[start:at]:
        return None
    domain = _EMAIL_DOMAIN.match(text, at + 1)
    if domain is None:
        return None
    labels = domain.group().split(".")
    if len(labels) < 2 or not labels[-1].isalpha() or len(labels[-1]) < 2:
        return None
    if not all(_EMAIL_LABEL.fullmatch(label) for label in labels):
        return None
    return start, domain.end()


EMAIL = Detector(
    "email",
    re.compile(r"@(?=[A-Za-z0-9])"),
    _locate_email,
    reach=1 + 100 + 1,
    back=64 + 1,
    gate="at",
    native="email",
)

# --- phone -------------------------------------------------------------------

_PHONE = re.compile(
    r"""[+(0-9]"""
    + _NUMBER_GUARD
    + r"""
    (?:
      (?<=\+)(?P<intl>[1-9][0-9]{0,2}(?:[ .\-]?\(0\))?(?:[ .\-]?\(?[0-9]{1,5}\)?){1,6})
    | (?<=0)(?P<intl00>0[1-9][0-9]{0,2}(?:[ .\-]?\(0\))?(?:[ .\-]?\(?[0-9]{1,5}\)?){1,6})
    | (?<=0)(?P<trunk>[1-9][0-9]{8,9}|[1-9][0-9]{0,4}(?:[ .\-/][0-9]{2,8}){1,4})
    | (?<=\()(?P<paren>[2-9][0-9]{2}\)\ ?[2-9][0-9]{2}[ .\-][0-9]{4}
                  |0[1-9][0-9]{0,3}\)\ ?[0-9]{2,8}(?:[ .\-][0-9]{2,8}){0,2})
    | (?<=[2-9])(?P<nanp>[0-9]{2}(?P<sep>[ .\-])[2-9][0-9]{2}(?P=sep)[0-9]{4})
    | (?<=[6-9])(?P<es>[0-9]{2}(?:\ [0-9]{3}){2}|[0-9]{2}(?:\ [0-9]{2}){3}
                  |[0-9]\ [0-9]{3}(?:\ [0-9]{2}){2})
    )"""
    + _NUMBER_END,
    re.VERBOSE | re.ASCII,
)
# Digits a number of each shape may have (the trunk 0 and the country code included).
_PHONE_DIGITS = {
    "intl": (8, 15),
    "intl00": (10, 17),
    "trunk": (9, 11),
    "paren": (9, 11),
    "nanp": (10, 10),
    "es": (9, 9),
}
_DATE_SHAPED = re.compile(r"(?:0?[1-9]|[12][0-9]|3[01])([./\-])(?:0?[1-9]|1[0-2])\1[0-9]{2,4}")


def _locate_phone(match: re.Match[str]) -> Span | None:
    shape = next(name for name in _PHONE_DIGITS if match.group(name) is not None)
    low, high = _PHONE_DIGITS[shape]
    text = match.group()
    if shape == "trunk" and _DATE_SHAPED.match(text):
        return None
    for end, digits in _group_prefixes(text):
        # "+31 (0)20 ...": the trunk 0 in brackets is not dialled from abroad
        count = len(digits) - text.count("(0)", 0, end)
        if low <= count <= high:
            return match.start(), match.start() + end
    return None


PHONE = Detector(
    "phone",
    _PHONE,
    _locate_phone,
    reach=64,
    back=2,
    trigger=NUMBER_TRIGGER,
    gate="number",
    native="phone",
)

# --- payment card ------------------------------------------------------------

_CARD = re.compile(
    r"[2-6]" + _NUMBER_GUARD + r"[0-9]{3}"
    r"(?:(?P<sep>[ \-])[0-9]{4,6}(?:(?P=sep)[0-9]{3,5}){1,2}(?:(?P=sep)[0-9]{1,4})?|[0-9]{9,15})"
    r"(?![A-Za-z0-9_])",
    re.ASCII,
)


def _locate_card(match: re.Match[str]) -> Span | None:
    for end, digits in _group_prefixes(match.group()):
        if payment_card_valid(digits):
            return match.start(), match.start() + end
    return None


PAYMENT_CARD = Detector(
    "paymentCard",
    _CARD,
    _locate_card,
    reach=29,
    back=2,
    trigger=NUMBER_TRIGGER,
    gate="number",
    native="paymentCard",
)

# --- national identifiers ----------------------------------------------------

_US_SSN = re.compile(
    r"[0-8]" + _NUMBER_GUARD + r"(?P<area>[0-9]{2})(?P<sep>[ \-])(?P<group>[0-9]{2})(?P=sep)"
    r"(?P<serial>[0-9]{4})" + _NUMBER_END,
    re.ASCII,
)


def _locate_us_ssn(match: re.Match[str]) -> Span | None:
    area = match.group()[0] + match.group("area")
    return match.span() if us_ssn_valid(area, match.group("group"), match.group("serial")) else None


US_SSN = Detector(
    "usSSN",
    _US_SSN,
    _locate_us_ssn,
    reach=14,
    back=2,
    trigger=NUMBER_TRIGGER,
    gate="number",
    native="usSSN",
)

_UK_NINO = re.compile(
    r"[A-CEGHJ-PR-TW-Z]" + _WORD_GUARD + r"[A-CEGHJ-NPR-TW-Z](?P<sep>\ ?)"
    r"[0-9]{2}(?P=sep)[0-9]{2}(?P=sep)[0-9]{2}(?P=sep)[A-D](?![A-Za-z0-9_])",
    re.ASCII | re.VERBOSE,
)


def _locate_uk_nino(match: re.Match[str]) -> Span | None:
    return match.span() if uk_nino_valid(match.group().replace(" ", "")) else None


UK_NINO = Detector(
    "ukNINO",
    _UK_NINO,
    _locate_uk_nino,
    reach=14,
    trigger=CAPITALS_TRIGGER,
    gate="capitals",
    native="ukNINO",
)

_NL_BSN = re.compile(
    r"[0-9]" + _NUMBER_GUARD + r"(?:[0-9]{8}|[0-9]{3}\.[0-9]{2}\.[0-9]{3})" + _NUMBER_END,
    re.ASCII,
)


def _locate_nl_bsn(match: re.Match[str]) -> Span | None:
    return match.span() if nl_bsn_valid(digits_of(match.group())) else None


NL_BSN = Detector(
    "nlBSN",
    _NL_BSN,
    _locate_nl_bsn,
    reach=14,
    back=2,
    trigger=NUMBER_TRIGGER,
    gate="number",
    native="nlBSN",
)

_DE_TAX_ID = re.compile(
    r"[1-9]" + _NUMBER_GUARD + r"(?:[0-9]{10}|[0-9]\ [0-9]{3}\ [0-9]{3}\ [0-9]{3})" + _NUMBER_END,
    re.ASCII | re.VERBOSE,
)


def _locate_de_tax_id(match: re.Match[str]) -> Span | None:
    return match.span() if de_tax_id_valid(digits_of(match.group())) else None


DE_TAX_ID = Detector(
    "deTaxID",
    _DE_TAX_ID,
    _locate_de_tax_id,
    reach=16,
    back=2,
    trigger=NUMBER_TRIGGER,
    gate="number",
    native="deTaxID",
)

# --- IBAN --------------------------------------------------------------------

_IBAN = re.compile(
    r"[A-Z]" + _WORD_GUARD + r"[A-Z][0-9]{2}(?:\ ?[A-Z0-9]){11,30}", re.ASCII | re.VERBOSE
)


def _locate_iban(match: re.Match[str]) -> Span | None:
    text = match.group()
    expected = IBAN_LENGTHS.get(text[:2])
    if expected is None:
        return None
    count = 0
    for offset, char in enumerate(text):
        if char != " ":
            count += 1
        if count == expected:
            end = match.start() + offset + 1
            following = match.string[end : end + 1]
            if (following.isascii() and following.isalnum()) or following == "_":
                return None
            compact = text[: offset + 1].replace(" ", "")
            return (match.start(), end) if iban_valid(compact) else None
    return None


IBAN = Detector(
    "iban",
    _IBAN,
    _locate_iban,
    reach=66,
    trigger=CAPITALS_TRIGGER,
    gate="capitals",
    native="iban",
)

# --- IP addresses ------------------------------------------------------------

_IPV4 = re.compile(
    r"[0-9](?<![A-Za-z0-9_.].)[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?![0-9]|\.[0-9])", re.ASCII
)


def _locate_ipv4(match: re.Match[str]) -> Span | None:
    return match.span() if ipv4_valid(match.group()) else None


IPV4 = Detector(
    "ipAddress",
    _IPV4,
    _locate_ipv4,
    reach=17,
    trigger=NUMBER_TRIGGER,
    gate="number",
    native="ipv4",
)

_IPV6_LEAD = re.compile(r"[0-9A-Fa-f]{1,4}\Z")
_IPV6_BODY = re.compile(
    r"[0-9A-Fa-f:]{2,39}(?:(?<=:)[0-9]{1,3}(?:\.[0-9]{1,3}){3})?(?![0-9A-Za-z_:]|\.[0-9])"
)


def _locate_ipv6(match: re.Match[str]) -> Span | None:
    text, colon = match.string, match.start()
    lead = _IPV6_LEAD.search(text, max(0, colon - 4), colon)
    start = lead.start() if lead else colon
    if start > 0 and (text[start - 1].isalnum() or text[start - 1] in ":._"):
        return None
    body = _IPV6_BODY.match(text, start)
    if body is None:
        return None
    address = body.group()
    if address.endswith(":") and not address.endswith("::"):
        address = address[:-1]
    if address.count(":") < 2 or not ipv6_valid(address):
        return None
    return start, start + len(address)


IPV6 = Detector(
    "ipAddress",
    re.compile(r":(?=[0-9A-Fa-f:])"),
    _locate_ipv6,
    reach=58,
    back=6,
    gate="colon",
    native="ipv6",
)

# --- date of birth -----------------------------------------------------------

_MONTHS = (
    # en
    *("january", "february", "march", "april", "may", "june", "july", "august"),
    *("september", "october", "november", "december"),
    *("jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"),
    # nl, de
    *("januari", "februari", "maart", "mei", "juni", "juli", "augustus", "oktober"),
    *("januar", "februar", "märz", "mai", "dezember"),
    # fr
    *("janvier", "février", "mars", "avril", "juin", "juillet", "août", "septembre"),
    *("octobre", "novembre", "décembre"),
    # es
    *("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre"),
    *("setiembre", "octubre", "noviembre", "diciembre"),
)
_MONTH = (
    "(?:"
    + "|".join(sorted({re.escape(m) for m in _MONTHS}, key=len, reverse=True))
    + r")\.?(?![^\W\d_])"
)
_BIRTH_CONTEXT = (
    r"(?:date\ of\ birth|birth\ ?date|birthday|born(?:\ on)?|d\.o\.b\.?|dob"
    r"|geboren(?:\ am|\ op)?|geburtsdatum|geburtstag|geboortedatum"
    r"|née?\ le|date\ de\ naissance|fecha\ de\ nacimiento|nacid[oa](?:\ el)?)"
)
_YEAR = r"(?:19|20)[0-9]{2}"
_DATE = (
    r"(?P<date>"
    rf"{_YEAR}-[0-9]{{1,2}}-[0-9]{{1,2}}"
    rf"|[0-9]{{1,2}}[./\-][0-9]{{1,2}}[./\-](?:{_YEAR}|[0-9]{{2}})"
    rf"|[0-9]{{1,2}}(?:st|nd|rd|th|er|e|\.)?\ {{1,2}}(?:of\ |de\ )?{_MONTH}"
    rf",?\ {{1,2}}(?:de\ )?{_YEAR}"
    rf"|{_MONTH}\ {{1,2}}[0-9]{{1,2}}(?:st|nd|rd|th)?,?\ {{1,2}}{_YEAR}"
    r")(?![0-9])"
)
_DATE_OF_BIRTH = re.compile(_BIRTH_CONTEXT + r"(?![^\W\d_])[^0-9\n]{0,24}?" + _DATE, re.VERBOSE)
_DATE_NUMBERS = re.compile(r"[0-9]+")


def _plausible_date(text: str) -> bool:
    numbers = [int(n) for n in _DATE_NUMBERS.findall(text)]
    if len(numbers) == 3 and not text[0].isalpha() and " " not in text:
        first, second, _ = numbers
        if numbers[0] >= 1900:
            first, second = numbers[2], numbers[1]
        return (1 <= first <= 31 and 1 <= second <= 12) or (1 <= second <= 31 and 1 <= first <= 12)
    return 1 <= numbers[0] <= 31


def _locate_date_of_birth(match: re.Match[str]) -> Span | None:
    start = match.start()
    if start > 0 and (match.string[start - 1].isalnum() or match.string[start - 1] == "_"):
        return None
    return match.span("date") if _plausible_date(match.group("date")) else None


DATE_OF_BIRTH = Detector(
    "dateOfBirth",
    _DATE_OF_BIRTH,
    _locate_date_of_birth,
    reach=120,
    lead=60,
    lowered=True,
    gate="digit",
    keywords=("birth", "born", "dob", "d.o.b", "geb", "né", "naissance", "naci"),
    native="dateOfBirth",
)

# --- secrets -----------------------------------------------------------------

_TOKEN_CLASS = r"[A-Za-z0-9+/=_\-]"
_TOKEN = re.compile(
    _TOKEN_CLASS + r"(?<!" + _TOKEN_CLASS + r".)" + _TOKEN_CLASS + r"{19,}(?!" + _TOKEN_CLASS + ")"
)
_KNOWN_KEYS = re.compile(
    r"(?:AKIA|ASIA)[A-Z0-9]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{36,}"
    r"|github_pat_[A-Za-z0-9_]{22,}"
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}"
    r"|[sr]k_live_[A-Za-z0-9]{24,}"
    r"|AIza[A-Za-z0-9_\-]{35}"
)


def _character_class(char: str) -> int:
    return 0 if "a" <= char <= "z" else 1 if "A" <= char <= "Z" else 2 if "0" <= char <= "9" else 3


def is_high_entropy(token: str) -> bool:
    """Both letter cases, frequent switches between character classes, near-random frequencies.

    The switches tell random tokens (a switch at about 3 of 5 characters) from
    identifiers built of words (camelCase, snake_case), which switch rarely.
    """
    if not (any("a" <= c <= "z" for c in token) and any("A" <= c <= "Z" for c in token)):
        return False
    classes = [_character_class(c) for c in token]
    switches = sum(a != b for a, b in itertools.pairwise(classes))
    if switches < SWITCH_RATE * (len(token) - 1):
        return False
    threshold = min(ENTROPY_BITS, ENTROPY_SHORT_FRACTION * log2(len(token)))
    return shannon_entropy(token) >= threshold


def _locate_token(match: re.Match[str]) -> Span | None:
    token = match.group()
    if _KNOWN_KEYS.match(token) or is_high_entropy(token):
        return match.span()
    return None


SECRET_TOKEN = Detector(
    "secret", _TOKEN, _locate_token, within_runs=True, gate="long_run", native="secretToken"
)

_JWT = re.compile(
    r"eyJ(?<![A-Za-z0-9_.\-]...)[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{10,}"
    r"(?![A-Za-z0-9+/=_\-])"
)
SECRET_JWT = Detector(
    "secret",
    _JWT,
    lambda match: match.span(),
    within_runs=True,
    back=1,
    gate="long_run",
    native="whole",
)

_PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]{1,12} ){0,3}PRIVATE KEY(?: BLOCK)?-----")
SECRET_PRIVATE_KEY = Detector(
    "secret",
    _PRIVATE_KEY,
    lambda match: match.span(),
    reach=72,
    back=0,
    gate="dashes",
    native="whole",
)

# In the order that breaks ties between candidates with the same span.
PII_DETECTORS: tuple[Detector, ...] = (
    SECRET_PRIVATE_KEY,
    SECRET_JWT,
    SECRET_TOKEN,
    IBAN,
    PAYMENT_CARD,
    US_SSN,
    UK_NINO,
    DE_TAX_ID,
    NL_BSN,
    IPV4,
    IPV6,
    EMAIL,
    DATE_OF_BIRTH,
    PHONE,
)
