"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"


@pytest.fixture
def golden() -> Callable[[str, str], None]:
    """Compare text with golden/<name> byte for byte; with UPDATE_GOLDEN=1, rewrite it instead."""

    def check(name: str, text: str) -> None:
        path = GOLDEN_DIR / name
        if os.environ.get("UPDATE_GOLDEN") == "1":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode())
            return
        hint = "regenerate with UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit and review the diff"
        assert path.exists(), f"golden/{name} is missing: {hint}"
        assert path.read_bytes() == text.encode(), f"golden/{name} differs: {hint}"

    return check
