"""Events the operator records on its custom resources, and the timestamps they carry."""

from __future__ import annotations

import datetime
from typing import Any


def now() -> str:
    """The current time in the RFC 3339 form the API uses."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_for(raw: dict[str, Any], type_: str, reason: str, message: str) -> dict[str, Any]:
    """A core/v1 Event about the object `raw` (as read from the API server)."""
    meta = raw["metadata"]
    stamp = now()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": raw["apiVersion"],
            "kind": raw["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "privatellm-operator"},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class ReportedError(Exception):
    """A failure already written to the object's status and Events.

    The reconcile raises it so that the runtime retries with backoff; the runtime logs
    it when it starts or changes, without a traceback.
    """
