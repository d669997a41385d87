"""What an inbound item is and what text it carries, judged from its bytes alone.

`inspect` detects an item's content type from its content, never from a file name;
opens archives, mails and office documents within explicit bounds; and extracts the
text the filters read. Containers are read incrementally with counters, so a
decompression bomb is refused as soon as a bound is crossed, before more is
allocated. Every parser error becomes a refusal; `inspect` does not raise.

Refusal reasons (machine-readable; `<type>` is a MIME type):

- too_large: the item is larger than max_item_bytes.
- file_type_not_allowed:<type>: the item, or a part inside it, has a type not allowed.
- undecodable_text: text that is not UTF-8 (with or without BOM) or UTF-16 with BOM.
- text_too_large: more extracted text than max_text_chars.
- archive_bomb:ratio, archive_bomb:total, archive_bomb:overlap: an entry expands more
  than max_ratio, everything together more than max_total_bytes, or zip entries share
  their compressed data.
- archive_entry_too_large: one entry or attachment is larger than max_entry_bytes.
- archive_too_deep, archive_too_many_entries: nesting or entry count past the bounds.
- archive_truncated: an archive ends before its data does.
- archive_unsupported:<what>: a zip compression method other than stored and deflate
  (bzip2 and lzma decompress without an output bound), or a sparse tar member.
- encrypted:<type>: a password-protected PDF or zip entry.
- decompression_limit:<type>: the PDF reader's per-stream decompression limit.
- malformed:<type>: the parser for that type failed.
"""

from __future__ import annotations

import base64
import csv
import email
import email.policy
import io
import json
import quopri
import re
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from html.parser import HTMLParser
from typing import Any, TypeVar
from xml.parsers import expat

# Magic numbers: puremagic, pure Python, so the one image needs no libmagic (python-magic
# does) and it knows far more signatures than filetype. Version 1 reads only the head and
# the tail of the bytes; version 2's deep scanners would open zips outside the bounds
# kept here, so the dependency stays below 2.
import puremagic

# PDF text: pypdf, pure Python and maintained; its decompression limits can be set per
# call (apply_configuration) and it can be told never to run an external decoder.
import pypdf
from pypdf.errors import FileNotDecryptedError, LimitReachedError

TEXT = "text/plain"
JSON = "application/json"
CSV = "text/csv"
HTML = "text/html"
MAIL = "message/rfc822"
PDF = "application/pdf"
ZIP = "application/zip"
GZIP = "application/gzip"
TAR = "application/x-tar"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
UNKNOWN = "application/octet-stream"

SUPPORTED_TYPES = frozenset({TEXT, JSON, CSV, HTML, MAIL, PDF, ZIP, GZIP, TAR, DOCX, XLSX, PPTX})
CONTAINER_TYPES = frozenset({MAIL, ZIP, GZIP, TAR, DOCX, XLSX, PPTX})

# Other spellings of the supported types that senders and configurations use.
_ALIASES = {
    "application/x-gzip": GZIP,
    "application/x-zip-compressed": ZIP,
    "application/x-zip": ZIP,
    "application/tar": TAR,
    "text/json": JSON,
    "application/x-ndjson": JSON,
    "application/jsonl": JSON,
}
# How the item itself is named in part paths.
_ROOT_NAMES = {
    TEXT: "text",
    JSON: "json",
    CSV: "csv",
    HTML: "html",
    MAIL: "mail",
    PDF: "pdf",
    ZIP: "zip",
    GZIP: "gzip",
    TAR: "tar",
    DOCX: "docx",
    XLSX: "xlsx",
    PPTX: "pptx",
}
_MAGIC_FAMILIES = {
    "application/pdf": PDF,
    "application/zip": ZIP,
    "application/x-gzip": GZIP,
    "application/gzip": GZIP,
    "application/x-tar": TAR,
}
# puremagic's confidence for signatures of at least eight bytes; shorter ones are guesses.
_MAGIC_SURE = 0.8

_MIB = 1024 * 1024
_CHUNK = 64 * 1024
# Compressed bytes zipfile reads per call follow the size asked for, so a small read keeps
# the measured ratio close to the true one while a bomb is still small.
_ZIP_CHUNK = 16 * 1024
_CENTRAL_DIRECTORY = b"PK\x01\x02"
_END_OF_CENTRAL_DIRECTORY = b"PK\x05\x06"
_ZIP_LOCAL_HEADER = 30
_MAX_MULTIPART_DEPTH = 32
_TEXT_SAMPLE = 8192
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_LABEL_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAX_LABEL = 200
_MAIL_HEADER_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
_MAIL_NAMES = frozenset({b"to", b"subject", b"date", b"message-id", b"mime-version", b"received"})
_MAIL_HEADERS_SHOWN = ("Subject", "From", "To", "Cc")
_HTML_START = re.compile(r"<(?:html|head|body)[\s>]")
_MAX_FIELD_VALUES = 64
_CSV_DELIMITERS = (",", ";", "\t", "|")

_T = TypeVar("_T")


def normalize_type(content_type: str) -> str:
    """A MIME type as compared: lower case, without parameters, common aliases resolved."""
    bare = content_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(bare, bare)


@dataclass(frozen=True, slots=True)
class InspectLimits:
    """Bounds on what inspecting one item may open, read, allocate and accept.

    Decompressed bytes are counted as they are produced: per entry (an archive member
    or a mail attachment), for the whole item, and against the compressed bytes read
    for that entry (the ratio, judged once an entry is past ratio_floor_bytes, since
    small texts legitimately compress well). allowed_types empty means every type in
    SUPPORTED_TYPES; a type outside it passes only when listed explicitly.
    """

    max_item_bytes: int = 10 * _MIB
    max_entry_bytes: int = 16 * _MIB
    max_total_bytes: int = 64 * _MIB
    max_ratio: int = 100
    ratio_floor_bytes: int = _MIB
    max_depth: int = 4
    max_entries: int = 10_000
    max_text_chars: int = 8 * _MIB
    max_pdf_pages: int = 2_000
    allowed_types: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Part:
    """One item inside the inspected one (or itself): where, what, and its own text.

    path: the item's kind, then entry names and attachment positions, e.g.
    mail/attachment[2]/report.docx; names are labels only, never used to judge type.
    field_values: distinct values of the requested field in a JSON or CSV part.
    """

    path: str
    content_type: str
    size: int
    text: str
    field_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an item was not inspected to the end, and where in it."""

    reason: str
    message: str
    path: str


@dataclass(frozen=True, slots=True)
class Inspection:
    """Content type of the item, the parts read (all of them unless refused), the outcome."""

    content_type: str
    parts: tuple[Part, ...]
    refusal: Refusal | None
    decompressed_bytes: int = 0

    @property
    def ok(self) -> bool:
        """Whether the whole item was inspected."""
        return self.refusal is None

    @property
    def text(self) -> str:
        """The extracted text; each part's under its path when more than one part has text."""
        texts = [p for p in self.parts if p.text]
        if len(texts) == 1:
            return texts[0].text
        return "\n\n".join(f"[{p.path}]\n{p.text}" for p in texts)


def inspect(
    data: bytes, limits: InspectLimits | None = None, field_name: str | None = None
) -> Inspection:
    """Detect, open and extract `data` within `limits`; collect `field_name` values.

    Never raises on any input: a failure is a refusal with a reason and a message.
    """
    inspector = _Inspector(limits or InspectLimits(), field_name)
    refusal: Refusal | None = None
    try:
        if len(data) > inspector.limits.max_item_bytes:
            raise _RefusalError(
                "too_large",
                f"item of {len(data)} bytes is larger than {inspector.limits.max_item_bytes}",
                "item",
            )
        inspector.item(bytes(data), None, 0)
    except _RefusalError as refused:
        refusal = Refusal(refused.reason, refused.message, refused.path)
    except Exception as error:  # a defect here must still refuse the item, not pass it
        refusal = Refusal(
            f"malformed:{inspector.root_type}",
            f"inspection failed: {type(error).__name__}",
            "item",
        )
    return Inspection(inspector.root_type, tuple(inspector.parts), refusal, inspector.total_bytes)


class _RefusalError(Exception):
    def __init__(self, reason: str, message: str, path: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message = message
        self.path = path


@dataclass(frozen=True, slots=True)
class _Sniffed:
    content_type: str
    text: str | None = None
    records: tuple[Any, ...] = ()
    undecodable: bool = False


class _CountingBytes(io.BytesIO):
    """The bytes of a zip, counting what zipfile reads from them (the compressed side)."""

    consumed = 0

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        self.consumed += len(chunk)
        return chunk


@dataclass
class _OpenZip:
    """An opened zip: its entries by lower-case name, and what its package parts say."""

    file: zipfile.ZipFile
    source: _CountingBytes
    infos: list[zipfile.ZipInfo]
    by_name: dict[str, zipfile.ZipInfo]
    parts: dict[str, list[str]] = field(default_factory=dict)
    office_type: str = ZIP


class _Inspector:
    """State of one inspection: the parts so far and the budgets they used."""

    def __init__(self, limits: InspectLimits, field_name: str | None) -> None:
        self.limits = limits
        self.field_name = field_name
        self.allowed = frozenset(normalize_type(t) for t in limits.allowed_types)
        self.parts: list[Part] = []
        self.root_type = UNKNOWN
        self.total_bytes = 0
        self.entries = 0
        self.text_chars = 0

    # --- one item, at any depth -------------------------------------------------------

    def item(self, data: bytes, path: str | None, depth: int) -> None:
        sniffed = _sniff(data)
        content_type = sniffed.content_type
        opened: _OpenZip | None = None
        if content_type == ZIP:
            # Which zips are office documents only their [Content_Types].xml says.
            self._note_root(ZIP, path)
            where = path or _ROOT_NAMES[ZIP]
            self._require_depth(depth, where)
            opened = self._guarded(ZIP, where, lambda: self._open_zip(data, where))
            content_type = opened.office_type
        self._note_root(content_type, path)
        where = path or _ROOT_NAMES.get(content_type, "item")
        if sniffed.undecodable:
            raise _RefusalError(
                "undecodable_text",
                "text is neither UTF-8 nor UTF-16 with a byte order mark",
                where,
            )
        self._require_allowed(content_type, where)
        if content_type in CONTAINER_TYPES:
            self._require_depth(depth, where)
        self._guarded(
            content_type,
            where,
            lambda: self._extract(data, content_type, sniffed, opened, where, depth),
        )

    def _extract(
        self,
        data: bytes,
        content_type: str,
        sniffed: _Sniffed,
        opened: _OpenZip | None,
        path: str,
        depth: int,
    ) -> None:
        text = sniffed.text
        if opened is not None and content_type == ZIP:
            self._zip_entries(opened, data, path, depth)
        elif opened is not None:
            self._add_part(path, content_type, len(data), self._office_text(opened, path))
        elif content_type == TEXT and text is not None:
            self._add_part(path, TEXT, len(data), text)
        elif content_type == HTML and text is not None:
            self._add_part(path, HTML, len(data), _visible_text(text))
        elif content_type == CSV and text is not None:
            values = _csv_field_values(text, self.field_name)
            self._add_part(path, CSV, len(data), text, values)
        elif content_type == JSON:
            json_text, values = _json_text(sniffed.records, self.field_name)
            self._add_part(path, JSON, len(data), json_text, values)
        elif content_type == MAIL:
            self._mail(data, path, depth)
        elif content_type == PDF:
            self._add_part(path, PDF, len(data), self._pdf_text(data, path))
        elif content_type == GZIP:
            self._gzip(data, path, depth)
        elif content_type == TAR:
            self._tar(data, path, depth)
        else:  # a type without text, allowed explicitly
            self._add_part(path, content_type, len(data), "")

    def _guarded(self, content_type: str, path: str, action: Callable[[], _T]) -> _T:
        """Run a parser; any error but a refusal becomes one for `content_type`."""
        try:
            return action()
        except _RefusalError:
            raise
        except Exception as error:
            raise _failure(error, content_type, path) from None

    # --- budgets ------------------------------------------------------------------------

    def _note_root(self, content_type: str, path: str | None) -> None:
        if path is None:
            self.root_type = content_type

    def _require_allowed(self, content_type: str, path: str) -> None:
        listed = content_type in self.allowed
        if listed or (not self.allowed and content_type in SUPPORTED_TYPES):
            return
        raise _RefusalError(
            f"file_type_not_allowed:{content_type}",
            f"{content_type} is not among the allowed file types",
            path,
        )

    def _require_depth(self, depth: int, path: str) -> None:
        if depth >= self.limits.max_depth:
            raise _RefusalError(
                "archive_too_deep",
                f"containers nested deeper than {self.limits.max_depth}",
                path,
            )

    def _count_entries(self, count: int, path: str) -> None:
        self.entries += count
        if self.entries > self.limits.max_entries:
            raise _RefusalError(
                "archive_too_many_entries",
                f"more than {self.limits.max_entries} archive entries and attachments",
                path,
            )

    def _charge(self, produced: int, consumed: int, size: int, path: str) -> None:
        """Account `size` more decompressed bytes: `produced` of the entry from `consumed`."""
        limits = self.limits
        self.total_bytes += size
        if produced > limits.ratio_floor_bytes and produced > limits.max_ratio * max(consumed, 1):
            raise _RefusalError(
                "archive_bomb:ratio",
                f"entry expands more than {limits.max_ratio} times its compressed size",
                path,
            )
        if self.total_bytes > limits.max_total_bytes:
            raise _RefusalError(
                "archive_bomb:total",
                f"more than {limits.max_total_bytes} bytes decompressed from one item",
                path,
            )
        if produced > limits.max_entry_bytes:
            raise _RefusalError(
                "archive_entry_too_large",
                f"entry larger than {limits.max_entry_bytes} bytes",
                path,
            )

    def _add_part(
        self,
        path: str,
        content_type: str,
        size: int,
        text: str,
        field_values: tuple[str, ...] = (),
    ) -> None:
        self.text_chars += len(text)
        if self.text_chars > self.limits.max_text_chars:
            raise _RefusalError(
                "text_too_large",
                f"more than {self.limits.max_text_chars} characters of text",
                path,
            )
        # Lone surrogates (JSON escapes, mail headers) cannot be encoded for the model.
        clean = _SURROGATE.sub("\ufffd", text)
        self.parts.append(Part(path, content_type, size, clean, field_values))

    # --- zip and office documents -------------------------------------------------------

    def _open_zip(self, data: bytes, path: str) -> _OpenZip:
        # Every central directory record starts with this signature, so its count bounds
        # the entries zipfile will build objects for, before it builds any.
        self._count_entries(data.count(_CENTRAL_DIRECTORY), path)
        if data.rfind(_END_OF_CENTRAL_DIRECTORY, max(0, len(data) - 65_557)) < 0:
            raise _RefusalError("archive_truncated", "zip without its central directory", path)
        source = _CountingBytes(data)
        archive = zipfile.ZipFile(source)
        infos = archive.infolist()
        _check_zip_layout(infos, len(data), path)
        opened = _OpenZip(archive, source, infos, {i.filename.lower(): i for i in infos})
        opened.parts = self._content_types(opened, path)
        opened.office_type = next((_OFFICE_MAIN[t] for t in opened.parts if t in _OFFICE_MAIN), ZIP)
        return opened

    def _zip_stream(
        self, opened: _OpenZip, info: zipfile.ZipInfo, path: str, sink: Callable[[bytes], Any]
    ) -> None:
        """Feed one entry to `sink` chunk by chunk, within the bounds."""
        if info.flag_bits & 0x1:
            raise _RefusalError("encrypted:application/zip", "password-protected zip entry", path)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _RefusalError(
                "archive_unsupported:compression",
                f"zip compression method {info.compress_type}; only stored and deflate",
                path,
            )
        produced = 0
        with opened.file.open(info) as stream:
            opened.source.consumed = 0
            while chunk := stream.read(_ZIP_CHUNK):
                produced += len(chunk)
                self._charge(produced, opened.source.consumed, len(chunk), path)
                sink(chunk)

    def _zip_entries(self, opened: _OpenZip, data: bytes, path: str, depth: int) -> None:
        self._add_part(path, ZIP, len(data), "")
        for info in opened.infos:
            if info.is_dir():
                continue
            child = f"{path}/{_label(info.filename)}"
            buffer = bytearray()
            self._zip_stream(opened, info, child, buffer.extend)
            self.item(bytes(buffer), child, depth + 1)

    def _content_types(self, opened: _OpenZip, path: str) -> dict[str, list[str]]:
        """Part names by content type, from the package's [Content_Types].xml."""
        info = opened.by_name.get("[content_types].xml")
        if info is None:
            return {}
        found: dict[str, list[str]] = {}

        def start(name: str, attrs: dict[str, str]) -> None:
            if name == "Override" and "ContentType" in attrs and "PartName" in attrs:
                found.setdefault(attrs["ContentType"].lower(), []).append(attrs["PartName"])

        parser = _xml_parser(start, _ignore_end, _ignore_text)
        self._zip_stream(opened, info, f"{path}/[Content_Types].xml", parser.Parse)
        parser.Parse(b"", True)
        return found

    def _office_text(self, opened: _OpenZip, path: str) -> str:
        parts = opened.parts
        if opened.office_type == XLSX:
            return self._xlsx_text(opened, parts, path)
        pieces: list[str] = []
        for part_type in _OFFICE_TEXT_PARTS[opened.office_type]:
            for info in self._package_parts(opened, parts.get(part_type, []), path):
                collector = _RunText()
                parser = _xml_parser(collector.start, collector.end, collector.text)
                self._zip_stream(opened, info, f"{path}/{info.filename}", parser.Parse)
                parser.Parse(b"", True)
                pieces.append(collector.result())
        return "\n".join(p for p in pieces if p)

    def _xlsx_text(self, opened: _OpenZip, parts: dict[str, list[str]], path: str) -> str:
        shared: list[str] = []
        for info in self._package_parts(opened, parts.get(_XLSX_SHARED, []), path):
            strings = _SharedStrings()
            parser = _xml_parser(strings.start, strings.end, strings.text)
            self._zip_stream(opened, info, f"{path}/{info.filename}", parser.Parse)
            parser.Parse(b"", True)
            shared.extend(strings.strings)
        sheets: list[str] = []
        for info in self._package_parts(opened, parts.get(_XLSX_SHEET, []), path):
            sheet = _SheetText(shared)
            parser = _xml_parser(sheet.start, sheet.end, sheet.text)
            self._zip_stream(opened, info, f"{path}/{info.filename}", parser.Parse)
            parser.Parse(b"", True)
            sheets.append("\n".join(sheet.rows))
        return "\n\n".join(s for s in sheets if s)

    def _package_parts(
        self, opened: _OpenZip, names: list[str], path: str
    ) -> Iterator[zipfile.ZipInfo]:
        for name in sorted(set(names), key=_natural_key):
            info = opened.by_name.get(name.lstrip("/").lower())
            if info is None:
                raise _RefusalError(
                    f"malformed:{opened.office_type}",
                    f"package part {_label(name)} is missing",
                    path,
                )
            yield info

    # --- gzip and tar -------------------------------------------------------------------

    def _gzip(self, data: bytes, path: str, depth: int) -> None:
        self._add_part(path, GZIP, len(data), "")
        child = f"{path}/{_gzip_name(data) or 'content'}"
        output = bytearray()
        position = 0
        while True:
            member_start = position
            produced_before = len(output)
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            pending = b""
            while not decompressor.eof:
                if not pending:
                    pending = data[position : position + _CHUNK]
                    position += len(pending)
                chunk = decompressor.decompress(pending, _CHUNK)
                pending = decompressor.unconsumed_tail
                if not chunk and not pending and position >= len(data):
                    if decompressor.eof:
                        break
                    raise _RefusalError("archive_truncated", "gzip stream ends early", path)
                consumed = position - member_start - len(pending)
                produced = len(output) - produced_before + len(chunk)
                self._charge(produced, consumed, len(chunk), child)
                output += chunk
            position -= len(decompressor.unused_data) + len(pending)
            rest = len(data) - position
            if rest == 0 or data.count(0, position) == rest:  # zero padding after the end
                break
            if data[position : position + 2] != b"\x1f\x8b":
                raise _RefusalError(f"malformed:{GZIP}", "data after the gzip stream", path)
        self.item(bytes(output), child, depth + 1)

    def _tar(self, data: bytes, path: str, depth: int) -> None:
        self._add_part(path, TAR, len(data), "")
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            while (member := archive.next()) is not None:
                self._count_entries(1, path)
                if not member.isreg():
                    continue  # directories and links carry no content of their own
                child = f"{path}/{_label(member.name)}"
                if member.issparse():
                    raise _RefusalError(
                        "archive_unsupported:sparse",
                        "sparse tar member: its holes expand to zeros",
                        child,
                    )
                stream = archive.extractfile(member)
                if stream is None:
                    continue
                buffer = bytearray()
                while chunk := stream.read(_CHUNK):
                    stored = len(buffer) + len(chunk)  # a tar stores members as they are
                    self._charge(stored, stored, len(chunk), child)
                    buffer += chunk
                self.item(bytes(buffer), child, depth + 1)

    # --- mail ---------------------------------------------------------------------------

    def _mail(self, data: bytes, path: str, depth: int) -> None:
        message = email.message_from_bytes(data, policy=email.policy.default)
        lines = [
            f"{name}: {value}"
            for name in _MAIL_HEADERS_SHOWN
            for value in (message.get_all(name) or [])
        ]
        bodies, attachments = self._mail_parts(message, path)
        text = "\n".join(lines)
        if bodies:
            text += "\n\n" + "\n\n".join(b for b in bodies if b)
        self._add_part(path, MAIL, len(data), text)
        for index, (label, payload) in enumerate(attachments, 1):
            child = f"{path}/attachment[{index}]" + (f"/{label}" if label else "")
            self._count_entries(1, child)
            self._charge(len(payload), len(payload), len(payload), child)
            self.item(payload, child, depth + 1)

    def _mail_parts(
        self, message: Message, path: str
    ) -> tuple[list[str], list[tuple[str | None, bytes]]]:
        """Body texts, and attachments as (file name, decoded bytes), in mail order."""
        bodies: list[str] = []
        attachments: list[tuple[str | None, bytes]] = []
        stack: list[tuple[Message, int]] = [(message, 0)]
        while stack:
            part, level = stack.pop()
            if level > _MAX_MULTIPART_DEPTH:
                raise _RefusalError(
                    "archive_too_deep", f"multipart nested deeper than {_MAX_MULTIPART_DEPTH}", path
                )
            content_type = part.get_content_type()
            payload = part.get_payload()
            if content_type.startswith("multipart/") and isinstance(payload, list):
                children = [c for c in payload if isinstance(c, Message)]
                if content_type == "multipart/alternative":
                    children = _preferred_alternatives(children)
                stack.extend((child, level + 1) for child in reversed(children))
            elif _is_body(part):
                bodies.append(self._body_text(part, path))
            else:
                attachments.append((_optional_label(part.get_filename()), _part_bytes(part)))
        return bodies, attachments

    def _body_text(self, part: Message, path: str) -> str:
        raw = part.get_payload(decode=True)
        payload = raw if isinstance(raw, bytes) else b""
        # A mail part declares its charset, so it is read in it rather than guessed.
        text = _decode_declared(payload, part.get_content_charset() or "utf-8")
        if text is None:
            raise _RefusalError(
                "undecodable_text", "mail text part not in its declared charset", path
            )
        return _visible_text(text) if part.get_content_subtype() == "html" else text

    # --- PDF ----------------------------------------------------------------------------

    def _pdf_text(self, data: bytes, path: str) -> str:
        limits = self.limits
        cap = limits.max_entry_bytes
        with pypdf.apply_configuration(
            maximum_declared_stream_length=cap,
            array_based_stream_maximum_output_length=cap,
            jbig2_maximum_output_length=cap,
            lzw_maximum_output_length=cap,
            run_length_maximum_output_length=cap,
            zlib_maximum_output_length=cap,
            brotli_maximum_output_length=cap,
            image_maximum_buffer_size=cap,
            stream_decoding_work_maximum_length=limits.max_total_bytes,
            jbig2dec_binary=None,  # never start an external decoder on hostile input
        ):
            reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
            if reader.is_encrypted and not reader.decrypt(""):
                raise _RefusalError("encrypted:application/pdf", "password-protected PDF", path)
            pages = reader.pages
            if len(pages) > limits.max_pdf_pages:
                raise _RefusalError(
                    "too_large", f"PDF with more than {limits.max_pdf_pages} pages", path
                )
            texts: list[str] = []
            chars = self.text_chars
            for page in pages:
                text = page.extract_text()
                chars += len(text)
                if chars > limits.max_text_chars:
                    raise _RefusalError(
                        "text_too_large",
                        f"more than {limits.max_text_chars} characters of text",
                        path,
                    )
                texts.append(text)
        return "\n\n".join(t for t in texts if t)


def _failure(error: Exception, content_type: str, path: str) -> _RefusalError:
    """The refusal for a parser's error; the message names the error, never the content."""
    kind = type(error).__name__
    said = str(error).lower()
    if isinstance(error, EOFError) or (
        isinstance(error, tarfile.ReadError | zlib.error | zipfile.BadZipFile)
        and ("unexpected end" in said or "truncated" in said)
    ):
        return _RefusalError("archive_truncated", f"{content_type} ends early ({kind})", path)
    if isinstance(error, LimitReachedError):
        return _RefusalError(
            f"decompression_limit:{content_type}", f"a stream expands past the limit ({kind})", path
        )
    if isinstance(error, FileNotDecryptedError):
        return _RefusalError(f"encrypted:{content_type}", "password-protected", path)
    return _RefusalError(
        f"malformed:{content_type}", f"{content_type} could not be read ({kind})", path
    )


def _check_zip_layout(infos: list[zipfile.ZipInfo], size: int, path: str) -> None:
    """Refuse entries whose compressed data lie outside the zip or overlap each other.

    Overlapping entries let a few kilobytes of deflate data count as many large files.
    """
    previous_end = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset < previous_end:
            raise _RefusalError("archive_bomb:overlap", "zip entries share their data", path)
        previous_end = info.header_offset + _ZIP_LOCAL_HEADER + info.compress_size
        if previous_end > size:
            raise _RefusalError("archive_truncated", "zip entry extends past the end", path)


# --- detection ----------------------------------------------------------------------------


def _sniff(data: bytes) -> _Sniffed:
    """The content type of `data`, with its decoded text or JSON records for text types."""
    if not data:
        return _Sniffed(TEXT, text="")
    family, other = _magic_type(data)
    if family is not None:
        return _Sniffed(family)
    if _looks_like_mail(data):
        return _Sniffed(MAIL)
    text = _decode_text(data)
    if text is not None:
        return _classify_text(text)
    if other is not None:
        return _Sniffed(other)
    if _looks_textual(data):
        return _Sniffed(UNKNOWN, undecodable=True)
    return _Sniffed(UNKNOWN)


def _magic_type(data: bytes) -> tuple[str | None, str | None]:
    """(supported binary type, other sure type) from the magic numbers."""
    try:
        matches = puremagic.magic_string(data)
    except (puremagic.PureError, ValueError):
        return None, None
    for match in matches:
        family = _MAGIC_FAMILIES.get(match.mime_type)
        if family is not None and match.offset >= 0:
            return family, None
    sure = [m for m in matches if m.confidence >= _MAGIC_SURE and m.mime_type and m.offset >= 0]
    return None, (normalize_type(sure[0].mime_type) if sure else None)


def _looks_like_mail(data: bytes) -> bool:
    """A header block of RFC 5322 fields with From and another field mail always has."""
    head = data[:_CHUNK]
    end = min(
        (i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0),
        default=len(head) if len(data) <= _CHUNK else -1,
    )
    if end <= 0:
        return False
    names: set[bytes] = set()
    for line in head[:end].splitlines():
        if line[:1] in (b" ", b"\t"):
            if not names:
                return False
            continue
        match = _MAIL_HEADER_LINE.match(line)
        if match is None:
            return False
        names.add(line[: line.index(b":")].strip().lower())
    return b"from" in names and bool(names & _MAIL_NAMES)


def _decode_text(data: bytes) -> str | None:
    """Text from UTF-8 (optionally with BOM) or UTF-16 with BOM; None if not clean text."""
    try:
        if data.startswith(b"\xef\xbb\xbf"):
            text = data[3:].decode("utf-8")
        elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
            text = data.decode("utf-16")
        else:
            text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if _is_clean(text) else None


def _is_clean(text: str) -> bool:
    """No NUL, and control characters other than whitespace at most one in a thousand."""
    if "\x00" in text:
        return False
    return len(_CONTROL.findall(text)) <= len(text) // 1000


def _looks_textual(data: bytes) -> bool:
    """Bytes that look like text in some other encoding: no NUL, few control bytes."""
    sample = data[:_TEXT_SAMPLE]
    if b"\x00" in sample:
        return False
    controls = sum(1 for byte in sample if byte < 0x09 or 0x0D < byte < 0x20)
    return controls * 100 <= len(sample)


def _classify_text(text: str) -> _Sniffed:
    start = len(text) - len(text.lstrip())
    head = text[start : start + 2048].lower()
    if head[:1] in ("{", "["):
        records = _json_records(text)
        if records is not None:
            return _Sniffed(JSON, text=text, records=records)
    if head.startswith(("<!doctype html", "<html")) or (
        head.startswith("<") and _HTML_START.search(head) is not None
    ):
        return _Sniffed(HTML, text=text)
    if _looks_like_csv(text):
        return _Sniffed(CSV, text=text)
    return _Sniffed(TEXT, text=text)


def _json_records(text: str) -> tuple[Any, ...] | None:
    """One JSON document, or JSON Lines, whose roots are objects or arrays; else None."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        pass
    else:
        return (value,) if isinstance(value, dict | list) else None
    records: list[Any] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            return None
        if not isinstance(value, dict | list):
            return None
        records.append(value)
    return tuple(records) if len(records) > 1 else None


def _looks_like_csv(text: str) -> bool:
    return _csv_delimiter(text) is not None


def _csv_delimiter(text: str) -> str | None:
    """The delimiter giving the first rows one field count of two or more (three rows for two).

    A line of prose with one comma is not a table; three such lines in a row rarely are.
    """
    sample = text[:_CHUNK]
    for delimiter in _CSV_DELIMITERS:
        reader = csv.reader(io.StringIO(sample), delimiter=delimiter)
        try:
            rows = [row for _, row in zip(range(21), reader, strict=False) if row]
        except csv.Error:
            continue
        if len(sample) < len(text) and len(rows) > 1:
            rows = rows[:-1]  # the sample may cut the last row
        widths = {len(row) for row in rows}
        if len(widths) != 1:
            continue
        width = widths.pop()
        if width >= 2 and len(rows) >= (3 if width == 2 else 2):
            return delimiter
    return None


# --- text extraction ----------------------------------------------------------------------


def _json_text(records: tuple[Any, ...], field_name: str | None) -> tuple[str, tuple[str, ...]]:
    """Keys and scalar values, one per line (`key: value`); values of `field_name` anywhere."""
    lines: list[str] = []
    values: dict[str, None] = {}
    for record in records:
        if lines:
            lines.append("")
        stack: list[tuple[str | None, Any]] = [(None, record)]
        while stack:  # iterative: a deep document cannot exhaust the call stack
            key, node = stack.pop()
            # A list under the field holds several ids: each is collected as it comes.
            collect = key is not None and key == field_name and node is not None
            if collect and not isinstance(node, list) and len(values) < _MAX_FIELD_VALUES:
                values.setdefault(_field_value(node), None)
            if isinstance(node, dict):
                if key is not None:
                    lines.append(f"{key}:")
                stack.extend(reversed([(str(k), v) for k, v in node.items()]))
            elif isinstance(node, list):
                stack.extend(reversed([(key, v) for v in node]))
            elif node is not None:
                scalar = node if isinstance(node, str) else json.dumps(node)
                lines.append(scalar if key is None else f"{key}: {scalar}")
    return "\n".join(lines), tuple(values)


def _field_value(value: Any) -> str:
    """One customer id however it is written: 42 and "42" are the same."""
    if isinstance(value, str):
        return value.strip()
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _csv_field_values(text: str, field_name: str | None) -> tuple[str, ...]:
    """Values of the column headed `field_name`."""
    delimiter = _csv_delimiter(text)
    if field_name is None or delimiter is None:
        return ()
    rows = csv.reader(io.StringIO(text), delimiter=delimiter)
    names = [name.strip() for name in next(rows, [])]
    if field_name not in names:
        return ()
    column = names.index(field_name)
    values: dict[str, None] = {}
    for row in rows:
        if column < len(row) and row[column].strip() and len(values) < _MAX_FIELD_VALUES:
            values.setdefault(row[column].strip(), None)
    return tuple(values)


class _VisibleText(HTMLParser):
    """Text a browser shows: no scripts, styles, templates or comments; blocks on lines."""

    _HIDDEN = frozenset({"script", "style", "template", "noscript"})
    # fmt: off
    _BLOCKS = frozenset({
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt",
        "figcaption", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
        "li", "main", "nav", "ol", "p", "pre", "section", "table", "title", "tr", "ul",
    })
    # fmt: on
    _CELLS = frozenset({"td", "th"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        self._separate(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        self._separate(tag)

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.pieces.append(data)

    def _separate(self, tag: str) -> None:
        if tag in self._BLOCKS:
            self.pieces.append("\n")
        elif tag in self._CELLS:
            self.pieces.append("\t")


def _visible_text(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.pieces).splitlines())
    return "\n".join(line for line in lines if line)


def _decode_declared(payload: bytes, charset: str) -> str | None:
    if payload.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return _decode_text(payload)
    for candidate in (charset, "utf-8"):
        try:
            text = payload.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
        return text if _is_clean(text) else None
    return None


def _is_body(part: Message) -> bool:
    return (
        part.get_content_maintype() == "text"
        and part.get_content_subtype() in ("plain", "html")
        and part.get_content_disposition() != "attachment"
        and part.get_filename() is None
    )


def _preferred_alternatives(children: list[Message]) -> list[Message]:
    """Of text alternatives, plain text only when there is one: html says the same."""
    if any(c.get_content_type() == "text/plain" and _is_body(c) for c in children):
        return [c for c in children if not (c.get_content_type() == "text/html" and _is_body(c))]
    return children


def _part_bytes(part: Message) -> bytes:
    """An attachment's decoded bytes; an attached mail serialised again."""
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload
    inner = part.get_payload()
    if not isinstance(inner, list):
        return str(inner).encode("utf-8", "surrogateescape")
    data = b"\n".join(
        m.as_bytes(policy=email.policy.compat32) for m in inner if isinstance(m, Message)
    )
    # A message/rfc822 part should not be encoded, but some mailers do; the parser then
    # reads the encoded text as a message without headers.
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding == "base64":
        return base64.b64decode(data)  # characters outside the alphabet are skipped
    if encoding == "quoted-printable":
        return quopri.decodestring(data)
    return data


# --- OOXML --------------------------------------------------------------------------------

_OFFICE = "application/vnd.openxmlformats-officedocument."
_OFFICE_MAIN = {
    _OFFICE + "wordprocessingml.document.main+xml": DOCX,
    _OFFICE + "spreadsheetml.sheet.main+xml": XLSX,
    _OFFICE + "presentationml.presentation.main+xml": PPTX,
}
_XLSX_SHARED = _OFFICE + "spreadsheetml.sharedstrings+xml"
_XLSX_SHEET = _OFFICE + "spreadsheetml.worksheet+xml"
# Parts whose text a reader sees, in reading order (content types are compared lower case).
_OFFICE_TEXT_PARTS = {
    DOCX: tuple(
        _OFFICE + "wordprocessingml." + kind
        for kind in (
            "document.main+xml",
            "header+xml",
            "footer+xml",
            "footnotes+xml",
            "endnotes+xml",
            "comments+xml",
        )
    ),
    PPTX: (_OFFICE + "presentationml.slide+xml", _OFFICE + "presentationml.notesslide+xml"),
}


class _DoctypeError(Exception):
    pass


def _refuse_doctype(*_: object) -> None:
    # Without a document type declaration no entity can be declared, so none can expand.
    raise _DoctypeError("XML with a document type declaration")


def _ignore_end(_: str) -> None:
    pass


def _ignore_text(_: str) -> None:
    pass


def _xml_parser(
    start: Callable[[str, dict[str, str]], None],
    end: Callable[[str], None],
    text: Callable[[str], None],
) -> expat.XMLParserType:
    """A streaming expat parser reporting local names; a DOCTYPE stops it."""
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.EntityDeclHandler = _refuse_doctype
    parser.StartElementHandler = lambda name, attrs: start(name.rpartition(" ")[2], attrs)
    parser.EndElementHandler = lambda name: end(name.rpartition(" ")[2])
    parser.CharacterDataHandler = text
    parser.buffer_text = True
    return parser


class _RunText:
    """Text of WordprocessingML and DrawingML: <t> runs, paragraphs on lines, tabs, breaks."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self._in_text = 0

    def start(self, name: str, attrs: dict[str, str]) -> None:
        if name == "t":
            self._in_text += 1
        elif name == "tab":
            self.pieces.append("\t")
        elif name in ("br", "cr"):
            self.pieces.append("\n")

    def end(self, name: str) -> None:
        if name == "t":
            self._in_text = max(0, self._in_text - 1)
        elif name == "p":
            self.pieces.append("\n")

    def text(self, data: str) -> None:
        if self._in_text:
            self.pieces.append(data)

    def result(self) -> str:
        return "".join(self.pieces).strip("\n")


class _SharedStrings:
    """xl/sharedStrings.xml: one string per <si>, phonetic guides left out."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self._current: list[str] = []
        self._in_text = False
        self._phonetic = 0

    def start(self, name: str, attrs: dict[str, str]) -> None:
        if name == "si":
            self._current = []
        elif name == "rPh":
            self._phonetic += 1
        elif name == "t":
            self._in_text = True

    def end(self, name: str) -> None:
        if name == "si":
            self.strings.append("".join(self._current))
        elif name == "rPh":
            self._phonetic = max(0, self._phonetic - 1)
        elif name == "t":
            self._in_text = False

    def text(self, data: str) -> None:
        if self._in_text and not self._phonetic:
            self._current.append(data)


class _SheetText:
    """A worksheet row by row, cells separated by tabs, shared strings looked up."""

    def __init__(self, shared: list[str]) -> None:
        self.shared = shared
        self.rows: list[str] = []
        self._cells: list[str] = []
        self._cell_type = ""
        self._value: list[str] = []
        self._capture = False

    def start(self, name: str, attrs: dict[str, str]) -> None:
        if name == "c":
            self._cell_type = attrs.get("t", "")
            self._value = []
        elif name in ("v", "t"):
            self._capture = True

    def end(self, name: str) -> None:
        if name in ("v", "t"):
            self._capture = False
        elif name == "c":
            value = "".join(self._value)
            if self._cell_type == "s":
                index = int(value) if value.strip().isdigit() else -1
                value = self.shared[index] if 0 <= index < len(self.shared) else ""
            if value:
                self._cells.append(value)
        elif name == "row":
            if self._cells:
                self.rows.append("\t".join(self._cells))
            self._cells = []

    def text(self, data: str) -> None:
        if self._capture:
            self._value.append(data)


# --- labels -------------------------------------------------------------------------------


def _label(name: str) -> str:
    """An entry or file name as a path label: no control characters, bounded length."""
    clean = _LABEL_UNSAFE.sub("?", _SURROGATE.sub("?", name)).strip("/") or "?"
    return clean[:_MAX_LABEL]


def _optional_label(name: str | None) -> str | None:
    return None if name is None else _label(name)


def _natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """slide2 before slide10."""
    return tuple(
        (0, int(piece)) if piece.isdigit() else (1, piece)
        for piece in re.split(r"(\d+)", name.lower())
        if piece
    )


def _gzip_name(data: bytes) -> str | None:
    """The file name a gzip header records (FNAME), if any."""
    flags = data[3] if len(data) > 3 else 0
    if not flags & 0x08:
        return None
    position = 10
    if flags & 0x04:  # FEXTRA: two length bytes, then that many
        position += 2 + int.from_bytes(data[10:12], "little")
    end = data.find(b"\x00", position, position + 1024)
    if end < 0:
        return None
    return _label(data[position:end].decode("latin-1"))
