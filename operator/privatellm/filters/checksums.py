"""Checksums and structural rules of identifiers: small pure functions, one rule each."""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter

# Length of the IBAN of each country (SWIFT IBAN registry), country code included.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip

# Issuer identification ranges of the card schemes: (lowest prefix, highest prefix, lengths).
_CARD_ISSUERS: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),  # Visa
    (51, 55, frozenset({16})),  # Mastercard
    (2221, 2720, frozenset({16})),  # Mastercard 2-series
    (34, 34, frozenset({15})),  # American Express
    (37, 37, frozenset({15})),
    (300, 305, frozenset({14, 16, 17, 18, 19})),  # Diners Club
    (36, 36, frozenset({14, 16, 17, 18, 19})),
    (38, 39, frozenset({16, 17, 18, 19})),
    (6011, 6011, frozenset({16, 17, 18, 19})),  # Discover
    (644, 649, frozenset({16, 17, 18, 19})),
    (65, 65, frozenset({16, 17, 18, 19})),
    (3528, 3589, frozenset({16, 17, 18, 19})),  # JCB
    (62, 62, frozenset({16, 17, 18, 19})),  # UnionPay
    (50, 50, frozenset(range(13, 20))),  # Maestro
    (56, 58, frozenset(range(13, 20))),
    (63, 63, frozenset(range(13, 20))),
    (67, 67, frozenset(range(13, 20))),
)

_NOT_DIGIT = re.compile(r"[^0-9]")
# Letters as the numbers ISO 13616 gives them: A=10 ... Z=35.
_IBAN_LETTER_VALUES = {ord(c): str(10 + i) for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ")}

# National Insurance number prefixes that are never issued.
_NINO_BANNED_PREFIXES = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def digits_of(text: str) -> str:
    """The ASCII digits of `text`, in order."""
    return _NOT_DIGIT.sub("", text)


_LUHN_DOUBLED = {str(d): (2 * d - 9 if d > 4 else 2 * d) for d in range(10)}


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check over a string of digits."""
    if not digits.isascii() or not digits.isdigit():
        return False
    kept = sum(map(int, digits[-1::-2]))
    doubled = sum(map(_LUHN_DOUBLED.__getitem__, digits[-2::-2]))
    return (kept + doubled) % 10 == 0


def card_issuer_plausible(digits: str) -> bool:
    """Whether the number's prefix and length belong to a card scheme."""
    if len(digits) < 4 or not digits.isdigit():
        return False
    prefixes = [int(digits[:width]) for width in range(1, 5)]
    return any(
        len(digits) in lengths and low <= prefixes[len(str(low)) - 1] <= high
        for low, high, lengths in _CARD_ISSUERS
    )


def payment_card_valid(digits: str) -> bool:
    """13 to 19 digits, a known issuer range and a valid Luhn check digit."""
    return 13 <= len(digits) <= 19 and card_issuer_plausible(digits) and luhn_valid(digits)


def iban_valid(iban: str) -> bool:
    """Country length and the ISO 13616 mod-97 check; `iban` without spaces."""
    expected = IBAN_LENGTHS.get(iban[:2])
    if expected is None or len(iban) != expected or not iban[2:4].isdigit():
        return False
    if not 2 <= int(iban[2:4]) <= 98:  # 00, 01 and 99 are never issued
        return False
    if not (iban.isascii() and iban.isalnum() and iban.isupper()):
        return False
    rearranged = iban[4:] + iban[:4]
    return int(rearranged.translate(_IBAN_LETTER_VALUES)) % 97 == 1


def us_ssn_valid(area: str, group: str, serial: str) -> bool:
    """SSA rules: area not 000, 666 or 9xx; group not 00; serial not 0000."""
    return (
        area not in ("000", "666")
        and not area.startswith("9")
        and group != "00"
        and serial != "0000"
    )


def uk_nino_valid(nino: str) -> bool:
    """HMRC prefix rules and an A-D suffix; `nino` without spaces, upper case."""
    if len(nino) != 9 or not nino[2:8].isdigit() or nino[8] not in "ABCD":
        return False
    first, second = nino[0], nino[1]
    return (
        first not in "DFIQUV"
        and second not in "DFIOQUV"
        and first.isalpha()
        and second.isalpha()
        and nino[:2] not in _NINO_BANNED_PREFIXES
    )


def nl_bsn_valid(digits: str) -> bool:
    """Burgerservicenummer: nine digits passing the 11-proof (last weight -1)."""
    if len(digits) != 9 or not digits.isdigit() or digits == "000000000":
        return False
    total = sum(int(d) * weight for d, weight in zip(digits[:8], range(9, 1, -1), strict=True))
    return (total - int(digits[8])) % 11 == 0


def iso7064_mod11_10_check_digit(digits: str) -> int:
    """ISO 7064 MOD 11,10 check digit of a string of digits."""
    product = 10
    for char in digits:
        total = (int(char) + product) % 10 or 10
        product = (total * 2) % 11
    return (11 - product) % 10


def de_tax_id_valid(digits: str) -> bool:
    """Steuerliche Identifikationsnummer: 11 digits, first not 0, digit rule, MOD 11,10."""
    if len(digits) != 11 or not digits.isdigit() or digits[0] == "0":
        return False
    body = digits[:10]
    # Exactly one digit repeats (twice, or three times since 2016); the rest appear once:
    # nine distinct digits, or eight with one of them three times, never three in a row.
    distinct = set(body)
    if len(distinct) == 8:
        if max(body.count(d) for d in distinct) != 3:
            return False
        if any(body[i] == body[i + 1] == body[i + 2] for i in range(8)):
            return False
    elif len(distinct) != 9:
        return False
    return iso7064_mod11_10_check_digit(body) == int(digits[10])


def ipv4_valid(text: str) -> bool:
    """Dotted quad with octets 0-255 and no leading zeros."""
    parts = text.split(".")
    return len(parts) == 4 and all(
        p.isdigit() and len(p) <= 3 and int(p) <= 255 and (p == "0" or p[0] != "0") for p in parts
    )


def ipv6_valid(text: str) -> bool:
    """Whether `text` is an IPv6 address (the standard library decides)."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def shannon_entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    if not text:
        return 0.0
    length = len(text)
    return -sum(n / length * math.log2(n / length) for n in Counter(text).values())
