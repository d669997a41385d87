"""A row of a gateway's `GET /usage` answer, as the tests of both its ends build them."""

from __future__ import annotations

from typing import Any


def usage_row(
    zone: str, month: str, subject: str, policy: str, model: str, *counts: int
) -> dict[str, Any]:
    """The row of (zone, month, subject, policy, model): requests, prompt and completion
    tokens."""
    requests, prompt, completion = counts
    return {
        "zone": zone,
        "month": month,
        "subject": subject,
        "policy": policy,
        "model": model,
        "requests": requests,
        "promptTokens": prompt,
        "completionTokens": completion,
    }
