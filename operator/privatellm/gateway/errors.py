"""Errors the gateway returns, in the OpenAI error format clients already parse."""

from __future__ import annotations

import json
from collections.abc import Mapping


class GatewayError(Exception):
    """A request the gateway refuses; `code` is the machine-readable reason."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        audit_reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        # Sent with the answer, e.g. Retry-After.
        self.headers = dict(headers or {})
        # The audit event's reason when it says more than `code` (budget_throttled:<limit>).
        self.audit_reason = audit_reason

    @property
    def error_type(self) -> str:
        return ERROR_TYPES.get(self.status, "invalid_request_error")

    def body(self) -> bytes:
        """The JSON body: {"error": {"message", "type", "param", "code"}}."""
        error = {
            "message": self.message,
            "type": self.error_type,
            "param": self.param,
            "code": self.code,
        }
        return json.dumps({"error": error}).encode()


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}
