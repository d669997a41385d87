"""Quarantine: items a filter stopped, kept encrypted until a person looks at them.

An item that fails a filter is neither dropped (the business may need it) nor
passed (it failed). It is sealed as an envelope record (AES-256-GCM under a data
key from the namespace's Transit key, keys/envelope.py) whose associated data binds
the namespace, the connector and the item id, so a record copied to another item
or connector does not decrypt. Beside it a small JSON file describes the item
without any of its content.

Layout of a quarantine directory (the sidecar's state volume):

    <item id>.rec     the envelope record; `privatellm keys compromise --records DIR`
                      rewraps these with the rest of the namespace's records
    <item id>.json    what the item was: id, connector, times, reason, type, size, SHA-256

Both are written atomically (temporary file, fsync, rename, fsync of the folder), the
record first: an entry is listed only once its description exists.

Putting an item in is audited by the caller; reading one back is audited by
`privatellm quarantine get` before the plaintext is released.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from privatellm.durable import write_atomically
from privatellm.gateway.config import EncryptionSettings
from privatellm.gateway.payloads import vault_client
from privatellm.keys.envelope import Envelope, RecordContext, TransitKeys
from privatellm.keys.tenancy import namespace_key_name
from privatellm.keys.transit import TransitClient, VaultClient

FORMAT_VERSION = 1
RECORD_SUFFIX = ".rec"
META_SUFFIX = ".json"
# Letters, digits and . _ : @ = + -, not starting with a dot: no separator, no `..`,
# no hidden or temporary file name, at most 200 characters so that a suffix still fits.
ITEM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@=+-]{0,199}")
MAX_REASON = 1024
MAX_CONTENT_TYPE = 255
# Model names are DNS labels and hold no slash: this can never equal a model's context.
CONTEXT_PREFIX = "dataconnector/"


class QuarantineError(Exception):
    """The quarantine cannot do what was asked."""


class InvalidItemIdError(QuarantineError, ValueError):
    """The item id could name a path outside the quarantine, or a file that is not an entry."""


class EntryNotFoundError(QuarantineError):
    """No item is quarantined under that id."""


class EntryConflictError(QuarantineError):
    """Another item is already quarantined under that id; the first one is kept."""


def check_item_id(item_id: str) -> None:
    """Raise InvalidItemIdError unless `item_id` is a safe file name stem."""
    if not ITEM_ID.fullmatch(item_id):
        raise InvalidItemIdError(
            f"item id {item_id[:80]!r} refused: use 1 to 200 letters, digits or . _ : @ = + -,"
            " not starting with a dot"
        )


def record_context(namespace: str, connector: str, item_id: str) -> RecordContext:
    """What a quarantined item's record is bound to."""
    return RecordContext(namespace, CONTEXT_PREFIX + connector, f"quarantine/{item_id}")


@dataclass(frozen=True)
class ItemMeta:
    """What the sidecar knows about an item besides its bytes; never any of its content."""

    content_type: str = "application/octet-stream"
    # When the connector handed the item over (unix seconds); None: now.
    received: float | None = None


@dataclass(frozen=True)
class QuarantineEntry:
    """The description of a quarantined item: no plaintext."""

    item_id: str
    namespace: str
    connector: str
    key_name: str
    received: float
    quarantined: float
    reason: str
    content_type: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, fields: dict[str, Any]) -> QuarantineEntry:
        if fields.get("version") != FORMAT_VERSION:
            raise QuarantineError(f"unknown format version {fields.get('version')!r}")
        return cls(
            item_id=str(fields["item_id"]),
            namespace=str(fields["namespace"]),
            connector=str(fields["connector"]),
            key_name=str(fields["key_name"]),
            received=float(fields["received"]),
            quarantined=float(fields["quarantined"]),
            reason=str(fields["reason"]),
            content_type=str(fields["content_type"]),
            size=int(fields["size"]),
            sha256=str(fields["sha256"]),
        )


def read_entry(directory: Path, item_id: str) -> QuarantineEntry:
    """The description of one item; no Vault needed."""
    check_item_id(item_id)
    path = directory / f"{item_id}{META_SUFFIX}"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EntryNotFoundError(f"no item {item_id!r} is quarantined in {directory}") from None
    try:
        entry = QuarantineEntry.from_json(orjson.loads(raw))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise QuarantineError(f"{path} is not a quarantine description: {error}") from error
    if entry.item_id != item_id:
        raise QuarantineError(f"{path} describes item {entry.item_id!r}, not {item_id!r}")
    return entry


def read_entries(directory: Path) -> list[QuarantineEntry]:
    """Every item quarantined in `directory`, oldest first; no Vault needed."""
    if not directory.is_dir():
        raise QuarantineError(f"{directory} is not a quarantine directory")
    entries = [
        read_entry(directory, path.name.removesuffix(META_SUFFIX))
        for path in directory.glob(f"*{META_SUFFIX}")
        if ITEM_ID.fullmatch(path.name.removesuffix(META_SUFFIX))
    ]
    return sorted(entries, key=lambda e: (e.received, e.item_id))


class Quarantine:
    """The items one connector of one namespace held back; see the module docstring.

    `put` and `get` call Vault (blocking HTTP, like the gateway's sealing): an event
    loop runs them in a thread. `put` raises VaultError (and stores nothing) when no
    data key can be had: the caller then refuses the item (503), it must not pass it.
    """

    def __init__(
        self,
        directory: Path,
        envelope: Envelope,
        namespace: str,
        connector: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not namespace or not connector:
            raise ValueError("a quarantine needs a namespace and a connector")
        self.directory = directory
        self.envelope = envelope
        self.namespace = namespace
        self.connector = connector
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def for_namespace(
        cls,
        directory: Path,
        transit: TransitKeys,
        namespace: str,
        connector: str,
        *,
        max_key_age: float = 300.0,
    ) -> Quarantine:
        """A quarantine sealing under the namespace's Transit key (`privatellm-<namespace>`)."""
        envelope = Envelope(transit, namespace_key_name(namespace), max_key_age=max_key_age)
        return cls(directory, envelope, namespace, connector)

    @classmethod
    def from_settings(
        cls,
        directory: Path,
        settings: EncryptionSettings,
        namespace: str,
        connector: str,
        client: VaultClient | None = None,
    ) -> Quarantine:
        """With the gateway's encryption settings: same Vault login, mount and key lifetime."""
        transit = TransitClient(client or vault_client(settings), settings.transit_mount)
        return cls.for_namespace(
            directory, transit, namespace, connector, max_key_age=settings.data_key_seconds
        )

    def record_path(self, item_id: str) -> Path:
        check_item_id(item_id)
        return self.directory / f"{item_id}{RECORD_SUFFIX}"

    def _context(self, item_id: str) -> RecordContext:
        return record_context(self.namespace, self.connector, item_id)

    def put(
        self, item_id: str, data: bytes, reason: str, meta: ItemMeta | None = None
    ) -> QuarantineEntry:
        """Keep `data` encrypted under `item_id`; return once record and description are on disk.

        `reason` says which filter stopped the item and why, without quoting it. The same
        item put again returns the entry already kept; different bytes under an id
        already used raise EntryConflictError and change nothing.
        """
        meta = meta or ItemMeta()
        record_path = self.record_path(item_id)
        if not reason or len(reason) > MAX_REASON:
            raise ValueError(f"a reason of 1 to {MAX_REASON} characters is needed")
        if not meta.content_type or len(meta.content_type) > MAX_CONTENT_TYPE:
            raise ValueError(f"a content type of 1 to {MAX_CONTENT_TYPE} characters is needed")
        if meta.received is not None and not math.isfinite(meta.received):
            raise ValueError("the received time must be a finite number of seconds")
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            try:
                kept = read_entry(self.directory, item_id)
            except EntryNotFoundError:
                pass
            else:
                if kept.sha256 != digest or (kept.namespace, kept.connector) != (
                    self.namespace,
                    self.connector,
                ):
                    raise EntryConflictError(
                        f"item {item_id!r} is already quarantined with other content; "
                        "the first one is kept"
                    )
                return kept
            record = self.envelope.encrypt(data, self._context(item_id))
            now = self._clock()
            entry = QuarantineEntry(
                item_id=item_id,
                namespace=self.namespace,
                connector=self.connector,
                key_name=self.envelope.key_name,
                received=now if meta.received is None else meta.received,
                quarantined=now,
                reason=reason,
                content_type=meta.content_type,
                size=len(data),
                sha256=digest,
            )
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(record_path, record)
            write_atomically(
                self.directory / f"{item_id}{META_SUFFIX}",
                orjson.dumps(entry.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS),
            )
        return entry

    def list(self) -> list[QuarantineEntry]:
        """This connector's quarantined items, oldest first."""
        if not self.directory.exists():
            return []
        return [
            e
            for e in read_entries(self.directory)
            if (e.namespace, e.connector) == (self.namespace, self.connector)
        ]

    def entry(self, item_id: str) -> QuarantineEntry:
        """The description of one of this connector's items; EntryNotFoundError if none."""
        entry = read_entry(self.directory, item_id)
        if (entry.namespace, entry.connector) != (self.namespace, self.connector):
            raise QuarantineError(
                f"item {item_id!r} was quarantined by connector {entry.connector!r} in "
                f"namespace {entry.namespace!r}, not {self.connector!r} in {self.namespace!r}"
            )
        return entry

    def get(self, item_id: str) -> bytes:
        """The plaintext of a quarantined item, decrypted through Transit.

        Raises DecryptionError (keys/envelope.py) for a record that was altered, moved
        to another item or connector, or whose key version was revoked; QuarantineError
        when the plaintext does not match its description. Audit the access first.
        """
        entry = self.entry(item_id)
        try:
            record = self.record_path(item_id).read_bytes()
        except FileNotFoundError:
            raise EntryNotFoundError(
                f"the record of item {item_id!r} is missing from {self.directory}"
            ) from None
        plaintext = self.envelope.decrypt(record, self._context(item_id))
        # The record is authenticated, its description is not: say when they disagree.
        if len(plaintext) != entry.size or hashlib.sha256(plaintext).hexdigest() != entry.sha256:
            raise QuarantineError(
                f"item {item_id!r} decrypted, but its description {item_id}{META_SUFFIX} "
                "names another size or SHA-256: it was altered"
            )
        return plaintext
