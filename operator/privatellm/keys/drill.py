"""Key rotation and the compromise drill for stored envelope records.

The drill, for a Transit key whose current version is suspected to be known:

1. rotate the key, so that a new version exists that the attacker never saw;
2. rewrap the wrapped data key of every stored record (`*.rec` under the given
   folders) with that new version, writing each record back atomically;
3. raise `min_decryption_version` to the new version, so that Transit refuses
   every wrapped key of the old versions, wherever copies of it may be.

Step 2 must come before step 3: rewrapping asks Transit to unwrap the old wrapped
key, which it refuses once the minimum is raised. In the other order every record
not yet rewrapped would become unreadable for good. For the same reason the drill
stops before step 3 (`DrillAbortedError`) when a record that Transit could still
unwrap was not rewritten (Vault went away, a write failed): raising the minimum
then would destroy readable data. Records that Transit already refuses, or that
are not records at all, cannot be rescued by any order; they are reported.

The payload of a record is never decrypted or re-encrypted here: only its wrapped
data key changes. A data key that leaked in plaintext stays leaked; see
docs/encryption.md for what to do then.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from privatellm.durable import write_atomically

from .envelope import (
    REFUSED_CIPHERTEXT_STATUS,
    Envelope,
    EnvelopeError,
    EnvelopeRecord,
    RecordFormatError,
)
from .transit import TransitClient, TransitKey, VaultError, VaultUnavailableError

RECORD_SUFFIX = ".rec"
NOT_FOUND_STATUS = 404
OUTPUT_FORMATS = ("table", "json")


class DrillError(Exception):
    """The drill could not run, or stopped; the message says what state it left behind."""


class KeyNotFoundError(DrillError):
    """The Transit key does not exist under the mount."""


class DrillAbortedError(DrillError):
    """The drill stopped before raising `min_decryption_version`; nothing readable was lost."""


class FailureKind(enum.StrEnum):
    """Why a record was not re-protected."""

    # The file does not parse as an envelope record (truncated, overwritten, not ours).
    CORRUPT = "corrupt"
    # Transit refused to unwrap its data key: forged, damaged, or of a version already
    # below min_decryption_version. It was unreadable before the drill and stays so.
    REFUSED = "refused"
    # A record under another Transit key: this drill neither protects nor revokes it.
    OTHER_KEY = "other-key"


@dataclass(frozen=True)
class RecordFailure:
    """One record that was not re-protected, and why."""

    path: Path
    kind: FailureKind
    reason: str


@dataclass(frozen=True)
class RotationReport:
    """The outcome of one rotation."""

    key: str
    mount: str
    previous_version: int
    latest_version: int


@dataclass(frozen=True)
class CompromiseReport:
    """The outcome of a completed drill: what was re-protected and what was not."""

    key: str
    mount: str
    previous_version: int
    new_version: int
    min_decryption_version: int
    # Records rewrapped, counted by the key version that had wrapped them before.
    rewrapped_by_version: dict[int, int]
    failures: tuple[RecordFailure, ...]

    @property
    def rewrapped(self) -> int:
        """How many records now carry a data key wrapped with the new version."""
        return sum(self.rewrapped_by_version.values())

    @property
    def complete(self) -> bool:
        """Whether every record found was re-protected."""
        return not self.failures


def _read_key(transit: TransitClient, key: str) -> TransitKey:
    """The key's state; a missing key or an unreachable Vault as a DrillError that says so."""
    try:
        return transit.read_key(key)
    except VaultUnavailableError as error:
        raise DrillError(f"Vault is unreachable, nothing was changed: {error}") from error
    except VaultError as error:
        if error.status == NOT_FOUND_STATUS:
            raise KeyNotFoundError(
                f"Transit key {key!r} not found under mount {transit.mount + '/'!r}"
            ) from error
        raise


def rotate_key(transit: TransitClient, key: str) -> RotationReport:
    """Add a version to `key`; new data keys are wrapped with it from now on."""
    before = _read_key(transit, key)
    transit.rotate(key)
    after = transit.read_key(key)
    return RotationReport(key, transit.mount, before.latest_version, after.latest_version)


def find_records(directories: Sequence[Path]) -> list[Path]:
    """The record files (`*.rec`) under `directories`, recursively, each real file once.

    A symbolic link to a file counts as that file, so a record reachable under two
    names is rewrapped once; symbolic links to folders are not followed. Sorted per
    folder, so that reports are stable.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for directory in directories:
        for path in sorted(directory.rglob(f"*{RECORD_SUFFIX}")):
            real = path.resolve()
            if real.is_file() and real not in seen:
                seen.add(real)
                found.append(path)
    return found


def run_compromise_drill(
    transit: TransitClient, key: str, records_dirs: Sequence[Path]
) -> CompromiseReport:
    """Rotate `key`, rewrap every record under `records_dirs`, then revoke the old versions.

    Every place that holds records of the key must be among `records_dirs`: once the
    minimum is raised, a record left out can no longer be rewrapped by a later run.

    Records that cannot be re-protected (corrupt, refused by Transit, under another
    key) are reported in the result; the minimum is raised all the same, since it
    cannot make them any less readable. Raises KeyNotFoundError for a missing key,
    DrillError when Vault is unreachable or one of `records_dirs` is not a folder
    (nothing changed then), DrillAbortedError when the drill stopped after rotating but
    before raising the minimum, and VaultError when Vault refuses the rotation itself
    (permission denied, say).
    """
    if not records_dirs:
        raise DrillError("no records folder given, nothing was changed")
    for directory in records_dirs:
        if not directory.is_dir():
            raise DrillError(f"{directory} is not a folder, nothing was changed")
    previous = _read_key(transit, key)
    transit.rotate(key)
    new_version = transit.read_key(key).latest_version
    # Listed after the rotation: a record written meanwhile with an old data key is
    # still found, as long as its writer finished before this point.
    records = find_records(records_dirs)
    envelope = Envelope(transit, key)
    rewrapped: dict[int, int] = {}
    failures: list[RecordFailure] = []

    def abort(cause: str) -> DrillAbortedError:
        done = sum(rewrapped.values())
        return DrillAbortedError(
            f"stopped after re-protecting {done} of {len(records)} records: {cause}. "
            f"Key {key!r} was rotated to v{new_version} but min_decryption_version was NOT "
            f"raised (still {previous.min_decryption_version}), so no readable record "
            "became unreadable; fix the cause and run the drill again"
        )

    for path in records:
        real = path.resolve()
        try:
            data = real.read_bytes()
        except OSError as error:
            raise abort(f"cannot read {path}: {error}") from error
        try:
            old_version = EnvelopeRecord.from_bytes(data).key_version
        except RecordFormatError as error:
            failures.append(RecordFailure(path, FailureKind.CORRUPT, str(error)))
            continue
        try:
            new_record = envelope.rewrap(data)
        except VaultUnavailableError as error:
            raise abort(f"Vault became unreachable: {error}") from error
        except VaultError as error:
            if error.status != REFUSED_CIPHERTEXT_STATUS:
                raise abort(f"Vault refused the request for {path}: {error}") from error
            reason = f"Transit refused the data key wrapped with v{old_version}: {error.message}"
            failures.append(RecordFailure(path, FailureKind.REFUSED, reason))
            continue
        except EnvelopeError as error:
            failures.append(RecordFailure(path, FailureKind.OTHER_KEY, str(error)))
            continue
        try:
            write_atomically(real, new_record)
        except OSError as error:
            raise abort(f"cannot write {path}: {error}") from error
        rewrapped[old_version] = rewrapped.get(old_version, 0) + 1

    # Only now, with every rescuable record rewrapped: from here on Transit refuses to
    # unwrap (and so to rewrap) anything of an older version.
    try:
        transit.set_min_decryption_version(key, new_version)
        minimum = transit.read_key(key).min_decryption_version
    except VaultError as error:
        raise DrillAbortedError(
            f"all records were handled, but raising min_decryption_version of {key!r} to "
            f"v{new_version} failed, so the old versions are NOT revoked: {error}"
        ) from error
    return CompromiseReport(
        key=key,
        mount=transit.mount,
        previous_version=previous.latest_version,
        new_version=new_version,
        min_decryption_version=minimum,
        rewrapped_by_version=dict(sorted(rewrapped.items())),
        failures=tuple(failures),
    )


def format_rotation(report: RotationReport, output: str) -> str:
    """The rotation as one line of text (`table`) or as a JSON object (`json`)."""
    if output == "json":
        return json.dumps(
            {
                "key": report.key,
                "mount": report.mount,
                "previous_version": report.previous_version,
                "latest_version": report.latest_version,
            },
            indent=2,
        )
    return (
        f"{report.key} (mount {report.mount}/): rotated v{report.previous_version} -> "
        f"v{report.latest_version}; new data keys are wrapped with v{report.latest_version}"
    )


def format_compromise(report: CompromiseReport, output: str) -> str:
    """The drill's report as aligned text (`table`) or as a JSON object (`json`)."""
    if output == "json":
        return json.dumps(
            {
                "key": report.key,
                "mount": report.mount,
                "previous_version": report.previous_version,
                "new_version": report.new_version,
                "min_decryption_version": report.min_decryption_version,
                "rewrapped": {
                    "total": report.rewrapped,
                    "by_old_version": {str(v): n for v, n in report.rewrapped_by_version.items()},
                },
                "not_reprotected": [
                    {"path": str(f.path), "kind": str(f.kind), "reason": f.reason}
                    for f in report.failures
                ],
            },
            indent=2,
        )
    lines = [
        f"key {report.key} (mount {report.mount}/): rotated v{report.previous_version} -> "
        f"v{report.new_version}, min_decryption_version now v{report.min_decryption_version}",
        f"re-protected: {_records(report.rewrapped)}",
        *_columns([(f"  from v{v}", str(n)) for v, n in report.rewrapped_by_version.items()]),
    ]
    if report.failures:
        lines.append(f"NOT re-protected: {_records(len(report.failures))}")
        lines += _columns(
            [("  FILE", "PROBLEM", "REASON")]
            + [(f"  {f.path}", str(f.kind), f.reason) for f in report.failures]
        )
    return "\n".join(lines)


def _records(count: int) -> str:
    return f"{count} record" if count == 1 else f"{count} records"


def _columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Rows of cells, each column padded to its widest cell (the last one left as is)."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    widths[-1] = 0  # no trailing spaces after the last column
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
