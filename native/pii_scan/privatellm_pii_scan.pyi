# The compiled PII scanner: see src/lib.rs.

Spec = tuple[str, str, bool, bool, str | None, str, int, int, bool, list[str]]

class NativeScanner:
    def __init__(self, specs: list[Spec], context: int) -> None: ...
    def scan(self, text: str, begin: int = 0, end: int | None = None) -> list[tuple[int, int, int]]:
        """(detector index, start, end) of each candidate starting in [begin, end)."""

class KeywordSet:
    def __init__(self, keywords: list[str]) -> None: ...
    def present(self, text: str) -> list[int]:
        """Indices of the keywords that occur in `text`, ascending."""
