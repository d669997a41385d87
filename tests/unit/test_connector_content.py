"""Connector item inspection: types from content, bounded archives, extracted text."""

from __future__ import annotations

import base64
import tracemalloc
import zipfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privatellm.connectors.content import (
    CSV,
    DOCX,
    GZIP,
    HTML,
    JSON,
    MAIL,
    PDF,
    PPTX,
    SUPPORTED_TYPES,
    TAR,
    TEXT,
    UNKNOWN,
    XLSX,
    ZIP,
    Inspection,
    InspectLimits,
    inspect,
    normalize_type,
)
from tests.support import corpus as c

MIB = 1 << 20
NO_LIMIT = 1 << 40


def by_path(inspection: Inspection) -> dict[str, str]:
    """Content type of each part, by path."""
    return {p.path: p.content_type for p in inspection.parts}


def text_of(inspection: Inspection, path: str) -> str:
    return next(p.text for p in inspection.parts if p.path == path)


def reason(data: bytes, **limits: Any) -> str | None:
    """The refusal reason under InspectLimits(**limits), None when inspected."""
    refusal = inspect(data, InspectLimits(**limits)).refusal
    return None if refusal is None else refusal.reason


# --- detection ----------------------------------------------------------------------------

MISLEADING = [
    c.Item("report.txt", c.pdf(["Quarterly report"]), PDF),
    c.Item("scan.pdf", c.docx(["A letter"]), DOCX),
    c.Item("export.csv", c.xlsx([["name", "amount"], ["Anna", 5]]), XLSX),
    c.Item("letter.docx", c.pptx(["Slide"]), PPTX),
    c.Item("letter.docx", c.zip_of({"word/document.xml": b"<w/>"}), ZIP),
    c.Item("archive.zip", c.gzip_of(b"hello"), GZIP),
    c.Item("notes.txt", c.tar_of({"a.txt": b"hello"}), TAR),
    c.Item("orders.txt", c.json_customers(["C1"]), JSON),
    c.Item("orders.csv", c.json_lines(["C1", "C2"]), JSON),
    c.Item("table.txt", c.csv_table([["id", "name", "city"], ["1", "Anna", "Utrecht"]]), CSV),
    c.Item("page.txt", c.html_page(["Hello"]), HTML),
    c.Item("message.pdf", c.mail("Hello", "Body"), MAIL),
    c.Item("data.bin", c.utf16_text("Grüße aus Köln"), TEXT),
    c.Item("image.png", c.text("Just a note.\nTwo lines."), TEXT),
    c.Item("utf8bom.dat", b"\xef\xbb\xbfwith a byte order mark", TEXT),
]


@pytest.mark.parametrize(
    "item", MISLEADING, ids=[f"{i.name}-is-{i.content_type}" for i in MISLEADING]
)
def test_type_comes_from_content_not_name(item: c.Item) -> None:
    inspection = inspect(item.data)
    assert inspection.content_type == item.content_type
    assert inspection.ok, inspection.refusal


def test_mail_attachments_typed_by_content_not_declared_type_or_name() -> None:
    data = c.mail(
        "Documents",
        "See attached.",
        [
            ("notes.txt", "text/plain", c.pdf(["a pdf in disguise"])),
            ("scan.pdf", "application/pdf", c.docx(["a docx in disguise"])),
            ("report.docx", DOCX, c.text("only text")),
        ],
    )
    inspection = inspect(data)
    assert inspection.ok
    assert by_path(inspection) == {
        "mail": MAIL,
        "mail/attachment[1]/notes.txt": PDF,
        "mail/attachment[2]/scan.pdf": DOCX,
        "mail/attachment[3]/report.docx": TEXT,
    }
    assert text_of(inspection, "mail/attachment[1]/notes.txt").strip() == "a pdf in disguise"
    assert text_of(inspection, "mail/attachment[2]/scan.pdf") == "a docx in disguise"


def test_unknown_binary_is_octet_stream_and_refused_unless_listed() -> None:
    blob = bytes(range(256)) * 4
    inspection = inspect(blob)
    assert inspection.content_type == UNKNOWN
    assert inspection.refusal is not None
    assert inspection.refusal.reason == f"file_type_not_allowed:{UNKNOWN}"
    allowed = inspect(blob, InspectLimits(allowed_types=frozenset({UNKNOWN})))
    assert allowed.ok
    assert allowed.text == ""


def test_a_known_unsupported_signature_is_named() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    assert inspect(png).content_type == "image/png"
    assert reason(png) == "file_type_not_allowed:image/png"
    assert reason(png, allowed_types=frozenset({"image/png"})) is None


def test_text_must_be_utf8_or_utf16_with_bom() -> None:
    assert reason("café crème brûlée".encode("latin-1")) == "undecodable_text"
    assert reason("no byte order mark".encode("utf-16-le")) is not None
    assert inspect(c.utf16_text("Grüße")).text == "Grüße"
    assert inspect(b"\xfe\xff" + "big endian".encode("utf-16-be")).text == "big endian"


def test_control_garbage_is_not_text() -> None:
    garbage = b"readable start" + bytes(range(1, 9)) * 20
    assert inspect(garbage).content_type != TEXT


def test_normalize_type() -> None:
    assert normalize_type("Text/Plain; charset=utf-8") == TEXT
    assert normalize_type("application/x-gzip") == GZIP
    assert normalize_type("application/x-zip-compressed") == ZIP


def test_allowed_types_compare_normalized() -> None:
    data = c.gzip_of(b"hello")
    assert reason(data, allowed_types=frozenset({"application/x-gzip", "TEXT/PLAIN"})) is None


def test_empty_allow_list_means_every_supported_type() -> None:
    assert {PDF, DOCX, MAIL, ZIP, TEXT} <= SUPPORTED_TYPES
    for item in MISLEADING:
        assert inspect(item.data, InspectLimits()).ok


# --- allow-list inside containers ---------------------------------------------------------


def test_pdf_renamed_txt_refused_when_only_text_allowed() -> None:
    renamed = c.Item("invoice.txt", c.pdf(["Invoice"]), PDF)
    refusal = inspect(renamed.data, InspectLimits(allowed_types=frozenset({TEXT}))).refusal
    assert refusal is not None
    assert refusal.reason == "file_type_not_allowed:application/pdf"


def test_allow_list_applies_to_every_part() -> None:
    data = c.mail("Hi", "Body", [("notes.txt", "text/plain", c.pdf(["not text"]))])
    allowed = frozenset({MAIL, TEXT})
    refusal = inspect(data, InspectLimits(allowed_types=allowed)).refusal
    assert refusal is not None
    assert refusal.reason == "file_type_not_allowed:application/pdf"
    assert refusal.path == "mail/attachment[1]/notes.txt"
    assert inspect(data, InspectLimits(allowed_types=allowed | {PDF})).ok


def test_the_container_itself_must_be_allowed() -> None:
    data = c.zip_of({"a.txt": b"hello"})
    assert reason(data, allowed_types=frozenset({TEXT})) == "file_type_not_allowed:application/zip"
    assert reason(data, allowed_types=frozenset({TEXT, ZIP})) is None


def test_disallowed_type_is_refused_before_it_is_parsed() -> None:
    broken_pdf = b"%PDF-1.7\n" + bytes(range(256)) * 8
    assert reason(broken_pdf) == "malformed:application/pdf"
    assert reason(broken_pdf, allowed_types=frozenset({TEXT})) == (
        "file_type_not_allowed:application/pdf"
    )


# --- text extraction ----------------------------------------------------------------------


def test_docx_paragraphs() -> None:
    assert inspect(c.docx(["First <para>", "Second & last"])).text == (
        "First <para>\nSecond & last"
    )


def test_xlsx_cells_with_shared_strings_and_numbers() -> None:
    text = inspect(c.xlsx([["name", "amount"], ["Anna", 5], ["Bram", 12]])).text
    assert text == "name\tamount\nAnna\t5\nBram\t12"


def test_pptx_slides_in_natural_order() -> None:
    slides = [f"slide {n}" for n in range(1, 12)]
    assert inspect(c.pptx(slides)).text.splitlines() == slides


def test_pdf_text() -> None:
    text = inspect(c.pdf(["Hello (PDF)", f"IBAN {c.IBAN}"])).text
    assert "Hello (PDF)" in text
    assert c.IBAN in text


def test_html_visible_text_only() -> None:
    text = inspect(c.html_page(["First & best", "Second"], script="var hidden = 'x';")).text
    assert text.splitlines() == ["Page", "First & best", "Second"]
    assert "hidden" not in text
    assert "color" not in text
    assert "comment" not in text


def test_json_keys_and_values() -> None:
    text = inspect(b'{"name": "Anna", "tags": ["a", "b"], "n": 3, "x": null}').text
    assert text.splitlines() == ["name: Anna", "tags: a", "tags: b", "n: 3"]


def test_csv_text_is_the_table() -> None:
    data = c.csv_table([["id", "name"], ["1", "Anna"], ["2", "Bram"]])
    inspection = inspect(data)
    assert inspection.content_type == CSV
    assert inspection.text == data.decode()


def test_prose_with_commas_is_not_csv() -> None:
    assert inspect(b"Hello, world.\nHow are you?\n").content_type == TEXT


def test_mail_headers_bodies_and_attachments() -> None:
    data = c.mail(
        "Quarterly figures",
        "Plain body.",
        [("report.docx", DOCX, c.docx(["In the report"]))],
        html="<p>Html body.</p>",
    )
    inspection = inspect(data)
    mail_text = text_of(inspection, "mail")
    assert "Subject: Quarterly figures" in mail_text
    assert "From: Jan Jansen <jan@example.nl>" in mail_text
    assert "To: support@example.com" in mail_text
    assert "Plain body." in mail_text
    assert "Html body." not in mail_text  # the same body as html adds nothing
    assert text_of(inspection, "mail/attachment[1]/report.docx") == "In the report"
    assert "[mail/attachment[1]/report.docx]\nIn the report" in inspection.text


def test_html_only_mail_body_is_read() -> None:
    message = (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: x\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><body><p>Visible</p><script>hidden()</script></body></html>\r\n"
    )
    text = inspect(message).text
    assert "Visible" in text
    assert "hidden" not in text


def test_mail_body_in_declared_charset() -> None:
    message = (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: x\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\ncaf\xe9\r\n"
    )
    assert "café" in inspect(message).text


def test_attachments_nest() -> None:
    inner = c.zip_of({"in.docx": c.docx(["deep"]), "note.txt": b"shallow"})
    data = c.mail(
        "Outer",
        "Body",
        [("bundle.zip", ZIP, inner), ("fwd.eml", MAIL, c.mail("Inner", "Inner body"))],
    )
    inspection = inspect(data)
    assert inspection.ok
    assert by_path(inspection) == {
        "mail": MAIL,
        "mail/attachment[1]/bundle.zip": ZIP,
        "mail/attachment[1]/bundle.zip/in.docx": DOCX,
        "mail/attachment[1]/bundle.zip/note.txt": TEXT,
        "mail/attachment[2]/fwd.eml": MAIL,
    }
    assert "Inner body" in text_of(inspection, "mail/attachment[2]/fwd.eml")


def test_base64_encoded_attached_mail_is_decoded() -> None:
    inner = c.mail("Inner", "Inner body")
    encoded = base64.encodebytes(inner).decode()
    data = (
        "From: a@example.com\r\nTo: b@example.com\r\nSubject: Fwd\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nSee below.\r\n"
        "--b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="fwd.eml"\r\n\r\n{encoded}\r\n--b--\r\n'
    ).encode()
    inspection = inspect(data)
    assert by_path(inspection)["mail/attachment[1]/fwd.eml"] == MAIL
    assert "Inner body" in text_of(inspection, "mail/attachment[1]/fwd.eml")


def test_tar_in_gzip_named_from_the_gzip_header() -> None:
    data = c.gzip_of(c.tar_of({"dir/a.txt": b"alpha", "b.txt": b"beta"}), name="bundle.tar")
    assert by_path(inspect(data)) == {
        "gzip": GZIP,
        "gzip/bundle.tar": TAR,
        "gzip/bundle.tar/dir/a.txt": TEXT,
        "gzip/bundle.tar/b.txt": TEXT,
    }


def test_field_values_from_json_anywhere() -> None:
    data = b'{"batch": {"items": [{"customer_id": "C1"}, {"deep": {"customer_id": 42}}]}}'
    part = inspect(data, field_name="customer_id").parts[0]
    assert part.field_values == ("C1", "42")


def test_field_values_from_json_lines_and_csv() -> None:
    assert inspect(c.json_lines(["C1", "C1", "C2"]), field_name="customer_id").parts[
        0
    ].field_values == ("C1", "C2")
    table = c.csv_table([["name", "customer_id"], ["Anna", "C7"], ["Bram", "C7"]])
    assert inspect(table, field_name="customer_id").parts[0].field_values == ("C7",)


def test_lone_surrogates_are_replaced() -> None:
    assert inspect(b'{"a": "x\\ud800y"}').text == "a: x\ufffdy"


# --- bounds and hostile archives ----------------------------------------------------------


def test_zip_bomb_refused_by_ratio_in_small_memory() -> None:
    bomb = c.zip_bomb(c.GIB)
    tracemalloc.start()
    try:
        inspection = inspect(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert inspection.refusal is not None
    assert inspection.refusal.reason == "archive_bomb:ratio"
    assert inspection.refusal.path == "zip/zeros.txt"
    assert inspection.decompressed_bytes < 4 * MIB
    # The bomb expands to 1 GiB; inspecting it allocates a few MiB.
    assert peak < 16 * MIB, peak


def test_zip_bomb_refused_by_total_when_ratio_allows_it() -> None:
    bomb = c.zip_bomb(c.GIB)
    limits = InspectLimits(max_ratio=NO_LIMIT, max_entry_bytes=NO_LIMIT, max_total_bytes=8 * MIB)
    tracemalloc.start()
    try:
        inspection = inspect(bomb, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert inspection.refusal is not None
    assert inspection.refusal.reason == "archive_bomb:total"
    # What is held is bounded by the total, not by what the entry claims.
    assert peak < 3 * 8 * MIB, peak


def test_zip_bomb_refused_by_entry_size() -> None:
    refused = reason(c.zip_bomb(64 * MIB), max_ratio=NO_LIMIT, max_entry_bytes=2 * MIB)
    assert refused == "archive_entry_too_large"


def test_gzip_bomb_refused_in_small_memory() -> None:
    bomb = c.gzip_bomb(c.GIB)
    tracemalloc.start()
    try:
        inspection = inspect(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert inspection.refusal is not None
    assert inspection.refusal.reason == "archive_bomb:ratio"
    assert peak < 16 * MIB, peak


def test_overlapping_entries_refused() -> None:
    assert reason(c.overlapping_zip_bomb()) == "archive_bomb:overlap"


def test_nested_zips_of_many_copies_refused_by_total() -> None:
    inner = c.zip_of({f"{i}.txt": b"a" * MIB for i in range(8)})
    outer = c.zip_of({f"{j}.zip": inner for j in range(16)}, zipfile.ZIP_STORED)
    assert len(outer) < MIB
    assert reason(outer, max_text_chars=NO_LIMIT) == "archive_bomb:total"


def test_nesting_depth_limit() -> None:
    assert reason(c.nested_zip(3), max_depth=3) is None
    refusal = inspect(c.nested_zip(4), InspectLimits(max_depth=3)).refusal
    assert refusal is not None
    assert refusal.reason == "archive_too_deep"
    assert refusal.path == "zip/level2.zip/level3.zip/level4.zip"


def test_mail_counts_as_a_level() -> None:
    data = c.mail("Outer", "Body", [("a.zip", ZIP, c.nested_zip(2))])
    assert reason(data, max_depth=3) is None
    assert reason(data, max_depth=2) == "archive_too_deep"


def test_entry_count_limit() -> None:
    data = c.zip_of({f"{i}.txt": b"x" for i in range(50)})
    assert reason(data, max_entries=50) is None
    assert reason(data, max_entries=49) == "archive_too_many_entries"


def test_truncated_archives() -> None:
    assert reason(c.truncated_zip()) == "archive_truncated"
    assert reason(c.tar_of({"a.txt": b"x" * 5000})[:2000]) == "archive_truncated"
    assert reason(c.gzip_of(b"hello " * 1000)[:50]) == "archive_truncated"


def test_corrupt_zip_data_is_malformed() -> None:
    data = bytearray(c.zip_of({"a.txt": b"hello world " * 100}))
    data[60] ^= 0xFF  # inside the deflated data of the only entry
    assert reason(bytes(data)) == "malformed:application/zip"


def test_encrypted_zip_entry_refused() -> None:
    data = bytearray(c.zip_of({"a.txt": b"secret"}))
    data[6] |= 1  # general purpose flag, bit 0: encrypted (local header)
    data[data.find(b"PK\x01\x02") + 8] |= 1  # and in the central directory
    assert reason(bytes(data)) == "encrypted:application/zip"


def test_compression_without_output_bound_refused() -> None:
    data = c.zip_of({"a.txt": b"x" * 100}, zipfile.ZIP_BZIP2)
    assert reason(data) == "archive_unsupported:compression"


def test_xml_entities_never_expand() -> None:
    main = c._OFFICE + "wordprocessingml.document.main+xml"
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        '<w:document xmlns:w="w"><w:body><w:p><w:r><w:t>&b;</w:t></w:r></w:p></w:body></w:document>'
    )
    data = c._package("word/document.xml", main, {"word/document.xml": (main, laughs)})
    assert reason(data) == f"malformed:{DOCX}"


def test_item_size_limit() -> None:
    assert reason(b"x" * 101, max_item_bytes=100) == "too_large"


def test_text_limit() -> None:
    assert reason(b"x" * 101, max_text_chars=100) == "text_too_large"


def test_malformed_pdf() -> None:
    assert reason(b"%PDF-1.4\nnot really a pdf") == "malformed:application/pdf"


# --- never raises -------------------------------------------------------------------------

SEEDS = [
    c.pdf(["seed"]),
    c.docx(["seed"]),
    c.xlsx([["a", 1]]),
    c.mail("s", "b", [("a.txt", "text/plain", b"x")]),
    c.zip_of({"a.txt": b"hello", "b/c.json": b'{"a": 1}'}),
    c.gzip_of(c.tar_of({"a.txt": b"hello"})),
    c.json_lines(["C1", "C2"]),
    c.html_page(["x"]),
]
PREFIXES = [b"%PDF-1.4\n", b"PK\x03\x04", b"\x1f\x8b\x08", b"From: a\nTo: b\n\n", b"\xff\xfe", b"{"]


def mutated(seed: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(seed[: max(1, cut % (len(seed) + 1))])
    for position, value in flips:
        data[position % len(data)] = value
    return bytes(data)


HOSTILE = st.one_of(
    st.binary(max_size=4096),
    st.builds(lambda p, b: p + b, st.sampled_from(PREFIXES), st.binary(max_size=2048)),
    st.builds(
        mutated,
        st.sampled_from(SEEDS),
        st.integers(min_value=0, max_value=1 << 16),
        st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8),
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HOSTILE)
def test_inspect_never_raises(data: bytes) -> None:
    inspection = inspect(data, InspectLimits(max_depth=3), field_name="customer_id")
    assert isinstance(inspection.content_type, str) and inspection.content_type
    if inspection.refusal is None:
        assert inspection.parts  # an inspected item has at least its own part
        assert isinstance(inspection.text, str)
    else:
        assert inspection.refusal.reason
        assert inspection.refusal.message
