"""What the gateway answers for requests its HTTP layer could not read."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, ContentEncodingError, LineTooLong

from privatellm.gateway.refusals import body_refusal, encoding_refusal, parser_refusal


@pytest.mark.parametrize(
    ("codings", "code"),
    [
        ([], None),
        (["gzip"], None),
        (["GZIP"], None),
        (["identity"], None),
        (["x-zip"], "unsupported_content_encoding"),
        (["gzip, gzip"], "unsupported_content_encoding"),
        (["gzip", "gzip"], "unsupported_content_encoding"),
        ([""], "unsupported_content_encoding"),
    ],
)
def test_only_codings_aiohttp_decodes_are_read(codings: list[str], code: str | None) -> None:
    refused = encoding_refusal(codings)
    assert (refused.code if refused else None) == code
    if refused:
        assert (refused.status, refused.param) == (415, "Content-Encoding")


@pytest.mark.parametrize(
    ("error", "url_too_long", "code"),
    [
        (LineTooLong(b"/v1/aaaa", 8192), True, "url_too_long"),
        (LineTooLong(b"Bearer secret", 8192), False, "header_too_large"),
        (
            ContentEncodingError("Can not decode: brotli (br). Please install `Brotli`"),
            False,
            "unsupported_content_encoding",
        ),
        (ContentEncodingError("deflate"), False, "invalid_content_encoding"),
        (BadHttpMessage("Too many headers received"), False, "too_many_headers"),
        (BadHttpMessage("Something new:\n\n  b'Transfer-Encoding: x'"), False, "malformed_request"),
    ],
)
def test_parser_errors_map_to_fixed_answers(
    error: Exception, url_too_long: bool, code: str
) -> None:
    refused = parser_refusal(error, url_too_long)
    assert refused.code == code
    # The quoted request bytes never reach the answer.
    assert b"secret" not in refused.body() and b"Transfer-Encoding: x" not in refused.body()


def test_a_body_error_says_whose_fault_it_is() -> None:
    undecodable = web.RequestPayloadError("no")
    undecodable.__cause__ = ContentEncodingError("gzip")
    assert body_refusal(undecodable).code == "invalid_content_encoding"
    assert body_refusal(web.RequestPayloadError("no")).code == "bad_request_framing"
    assert body_refusal(ConnectionResetError()).status == 499
