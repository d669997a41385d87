"""Checksums and structural rules of identifiers: valid and invalid examples of each."""

from __future__ import annotations

import pytest

from privatellm.filters.checksums import (
    card_issuer_plausible,
    de_tax_id_valid,
    digits_of,
    iban_valid,
    ipv4_valid,
    ipv6_valid,
    iso7064_mod11_10_check_digit,
    luhn_valid,
    nl_bsn_valid,
    payment_card_valid,
    shannon_entropy,
    uk_nino_valid,
    us_ssn_valid,
)


def test_digits_of_keeps_ascii_digits_in_order() -> None:
    assert digits_of("+31 (0)20-123") == "31020123"


@pytest.mark.parametrize("number", ["4111111111111111", "79927398713", "0"])
def test_luhn_accepts_valid_numbers(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize("number", ["4111111111111112", "79927398710", "", "41111x1111111111"])
def test_luhn_rejects_invalid_numbers(number: str) -> None:
    assert not luhn_valid(number)


@pytest.mark.parametrize(
    "number",
    [
        "4111111111111111",  # Visa
        "5555555555554444",  # Mastercard
        "2223003122003222",  # Mastercard 2-series
        "378282246310005",  # American Express
        "6011111111111117",  # Discover
        "3530111333300000",  # JCB
        "30569309025904",  # Diners Club
    ],
)
def test_payment_cards_of_each_scheme_are_valid(number: str) -> None:
    assert payment_card_valid(number)


@pytest.mark.parametrize(
    "number",
    [
        "1234567812345670",  # Luhn-valid, but no scheme starts with 1
        "4111111111111112",  # bad check digit
        "378282246310005" + "0",  # Amex length is 15
        "411111111111",  # too short
    ],
)
def test_payment_card_rejects_implausible_numbers(number: str) -> None:
    assert not payment_card_valid(number)


def test_issuer_ranges_include_their_bounds_only() -> None:
    assert card_issuer_plausible("2221000000000009")
    assert card_issuer_plausible("2720990000000007")
    assert not card_issuer_plausible("2721000000000000")
    assert not card_issuer_plausible("")


@pytest.mark.parametrize(
    "iban",
    [
        "NL91ABNA0417164300",
        "DE89370400440532013000",
        "GB29NWBK60161331926819",
        "FR1420041010050500013M02606",
        "ES9121000418450200051332",
        "BE68539007547034",
    ],
)
def test_iban_accepts_valid_numbers(iban: str) -> None:
    assert iban_valid(iban)


@pytest.mark.parametrize(
    "iban",
    [
        "NL92ABNA0417164300",  # check digits off by one
        "NL91ABNA041716430",  # one character short for NL
        "XX91ABNA0417164300",  # no such country
        "nl91abna0417164300",  # lower case
        "NL9AABNA0417164300",  # letters in the check digits
        "BE00615777382003",  # mod 97 holds, but 00 is never issued
    ],
)
def test_iban_rejects_invalid_numbers(iban: str) -> None:
    assert not iban_valid(iban)


@pytest.mark.parametrize(
    ("area", "group", "serial", "valid"),
    [
        ("123", "45", "6789", True),
        ("000", "45", "6789", False),
        ("666", "45", "6789", False),
        ("900", "45", "6789", False),
        ("123", "00", "6789", False),
        ("123", "45", "0000", False),
    ],
)
def test_us_ssn_rules(area: str, group: str, serial: str, valid: bool) -> None:
    assert us_ssn_valid(area, group, serial) is valid


@pytest.mark.parametrize(
    ("nino", "valid"),
    [
        ("AB123456C", True),
        ("CE123456D", True),
        ("DA123456A", False),  # D is never a first letter
        ("AO123456A", False),  # O is never a second letter
        ("GB123456A", False),  # prefix not issued
        ("AB123456E", False),  # suffix beyond D
        ("AB12345C", False),  # too short
    ],
)
def test_uk_nino_rules(nino: str, valid: bool) -> None:
    assert uk_nino_valid(nino) is valid


@pytest.mark.parametrize(
    ("bsn", "valid"),
    [
        ("111222333", True),
        ("123456782", True),
        ("123456789", False),
        ("000000000", False),
        ("12345678", False),
    ],
)
def test_nl_bsn_eleven_proof(bsn: str, valid: bool) -> None:
    assert nl_bsn_valid(bsn) is valid


def test_iso7064_check_digit_of_known_tax_ids() -> None:
    assert iso7064_mod11_10_check_digit("8609574271") == 9
    assert iso7064_mod11_10_check_digit("6592997048") == 9


@pytest.mark.parametrize(
    ("tax_id", "valid"),
    [
        ("86095742719", True),
        ("65929970489", True),
        ("86095742710", False),  # check digit
        ("06095742719", False),  # leading zero
        ("12345678903", False),  # no digit repeats
        ("11123456787", False),  # one digit three times in a row
        ("1122345678", False),  # ten digits
    ],
)
def test_de_tax_id_rules(tax_id: str, valid: bool) -> None:
    assert de_tax_id_valid(tax_id) is valid


def test_de_tax_id_allows_a_digit_three_times_apart() -> None:
    body = "1213456789"
    number = body + str(iso7064_mod11_10_check_digit(body))
    assert de_tax_id_valid(number)


@pytest.mark.parametrize(
    ("address", "valid"),
    [
        ("192.168.1.10", True),
        ("0.0.0.0", True),
        ("256.1.1.1", False),
        ("1.2.3", False),
        ("01.2.3.4", False),
    ],
)
def test_ipv4_rules(address: str, valid: bool) -> None:
    assert ipv4_valid(address) is valid


@pytest.mark.parametrize(
    ("address", "valid"),
    [("2001:db8::1", True), ("::1", True), ("12:30:45", False), ("2001:db8:::1", False)],
)
def test_ipv6_rules(address: str, valid: bool) -> None:
    assert ipv6_valid(address) is valid


def test_shannon_entropy() -> None:
    assert shannon_entropy("") == 0.0
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == pytest.approx(2.0)
