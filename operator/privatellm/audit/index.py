"""Per-segment indexes: record offsets by subject, model and data class.

Built as records are appended and written when the segment is sealed; the
checkpoint signs the index file's hash, so a query that trusts an index has
verified it first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class SegmentIndex:
    subjects: dict[str, list[int]] = field(default_factory=dict)
    models: dict[str, list[int]] = field(default_factory=dict)
    data_classes: dict[str, list[int]] = field(default_factory=dict)
    min_time: float = float("inf")
    max_time: float = float("-inf")
    count: int = 0
    # Records with no data class: they are kept for the default retention period.
    unclassified: int = 0

    def add(self, offset: int, record: dict[str, Any]) -> None:
        self.count += 1
        when = record.get("time")
        if isinstance(when, int | float):
            self.min_time = min(self.min_time, when)
            self.max_time = max(self.max_time, when)
        subject = record.get("subject")
        if subject:
            self.subjects.setdefault(subject, []).append(offset)
        model = record.get("model")
        if model:
            self.models.setdefault(model, []).append(offset)
        data_classes = record.get("data_classes") or ()
        for data_class in data_classes:
            self.data_classes.setdefault(data_class, []).append(offset)
        if not data_classes:
            self.unclassified += 1

    def section(self, name: str) -> dict[str, list[int]]:
        sections: dict[str, dict[str, list[int]]] = {
            "subjects": self.subjects,
            "models": self.models,
            "data_classes": self.data_classes,
        }
        return sections[name]

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "count": self.count,
                "unclassified": self.unclassified,
                "subjects": self.subjects,
                "models": self.models,
                "data_classes": self.data_classes,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SegmentIndex:
        raw = orjson.loads(data)
        return cls(
            subjects=raw["subjects"],
            models=raw["models"],
            data_classes=raw["data_classes"],
            count=raw["count"],
            unclassified=raw["unclassified"],
        )
