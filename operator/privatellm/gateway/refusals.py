"""The gateway's answers to requests its HTTP layer could not read.

aiohttp's own answers to these quote the offending bytes (a credential too, for an
over-long Authorization header). These are fixed: a code a client can act on, a
status that says whose fault it is (never a 5xx), and a message with nothing of the
request in it.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    ContentLengthError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)

from .errors import GatewayError

# The codings aiohttp decodes before the gateway reads a body.
DECODED_ENCODINGS = ("identity", "gzip", "deflate") + ("br",) * HAS_BROTLI + ("zstd",) * HAS_ZSTD

_REFUSALS = {
    "url_too_long": (414, "the request URL is too long"),
    "header_too_large": (431, "a request header is too large"),
    "too_many_headers": (431, "the request has too many headers"),
    "bad_request_framing": (
        400,
        "the request's Content-Length or Transfer-Encoding is invalid or conflicting",
    ),
    "invalid_method": (400, "the request method is not valid HTTP"),
    "invalid_request_line": (400, "the request line is not valid HTTP/1.x"),
    "invalid_header": (400, "a request header is malformed"),
    "malformed_request": (400, "the request is not valid HTTP/1.x"),
    "unsupported_content_encoding": (
        415,
        f"Content-Encoding must be one of: {', '.join(DECODED_ENCODINGS)}",
    ),
    "invalid_content_encoding": (400, "the body does not decode as its Content-Encoding says"),
    "client_disconnected": (499, "the client closed the connection before its body arrived"),
    "header_timeout": (408, "the request headers arrived too slowly"),
    "too_many_connections": (429, "this address holds too many connections to the gateway"),
}

# Parser errors whose type says what went wrong (subclasses before their bases).
_BY_TYPE: tuple[tuple[type[BaseException], str], ...] = (
    (TransferEncodingError, "bad_request_framing"),
    (ContentLengthError, "bad_request_framing"),
    (BadHttpMethod, "invalid_method"),
    (BadStatusLine, "invalid_request_line"),
    (InvalidURLError, "invalid_request_line"),
    (InvalidHeader, "invalid_header"),
)
# Otherwise llhttp's description says it: the first line of the message, before the quoted bytes.
_BY_DESCRIPTION = (
    (("content-length", "transfer-encoding", "chunk"), "bad_request_framing"),
    (("too many headers",), "too_many_headers"),
    (("header",), "invalid_header"),
)


def refusal(code: str) -> GatewayError:
    """A fresh error for one of the refusals above (fresh: raising one keeps a traceback)."""
    status, message = _REFUSALS[code]
    return GatewayError(status, code, message)


def parser_refusal(error: BaseException, url_too_long: bool) -> GatewayError:
    """The answer to a request aiohttp's parser refused with `error`.

    `url_too_long`: whether the request's first line was longer than the URL limit, which
    tells an over-long URL from an over-long header (aiohttp raises LineTooLong for both).
    """
    description = str(getattr(error, "message", "")).partition("\n")[0].lower()
    if isinstance(error, LineTooLong):
        return refusal("url_too_long" if url_too_long else "header_too_large")
    if isinstance(error, ContentEncodingError):
        # aiohttp asks to install a library for a coding it cannot decode here (br, zstd).
        missing = "install" in description
        return refusal("unsupported_content_encoding" if missing else "invalid_content_encoding")
    for kind, code in _BY_TYPE:
        if isinstance(error, kind):
            return refusal(code)
    for words, code in _BY_DESCRIPTION:
        if any(word in description for word in words):
            return refusal(code)
    return refusal("malformed_request")


def body_refusal(error: web.RequestPayloadError | ConnectionError) -> GatewayError:
    """The answer to a body aiohttp could not read: gone, undecodable, or badly framed."""
    if isinstance(error, ConnectionError):
        return refusal("client_disconnected")
    if isinstance(error.__cause__, ContentEncodingError):
        return refusal("invalid_content_encoding")
    return refusal("bad_request_framing")


def encoding_refusal(codings: list[str]) -> GatewayError | None:
    """415 unless the Content-Encoding headers name one coding aiohttp has decoded.

    Any other coding would reach the JSON parser still encoded.
    """
    if not codings or ",".join(codings).strip().lower() in DECODED_ENCODINGS:
        return None
    error = refusal("unsupported_content_encoding")
    error.param = "Content-Encoding"
    return error
