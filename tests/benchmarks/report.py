"""Each benchmark owns one marked section of docs/benchmarks.md and replaces only that."""

from __future__ import annotations

import re
from pathlib import Path

REPORT = Path(__file__).resolve().parents[2] / "docs/benchmarks.md"
HEADER = """# Benchmarks

Written by `make bench`; each section says the command that produced it. The machine
is shared and noisy, so compare the ratios measured side by side in one run rather
than absolute numbers across runs.
"""


def write_section(name: str, body: str) -> None:
    """Replace the section `name` of the report with `body`, or append it."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = REPORT.read_text() if REPORT.exists() else HEADER
    block = f"{start}\n{body}\n{end}"
    if start in text:
        pattern = rf"{re.escape(start)}.*{re.escape(end)}"
        text = re.sub(pattern, lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    REPORT.write_text(text)
