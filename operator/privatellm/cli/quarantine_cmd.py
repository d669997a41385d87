"""`privatellm quarantine`: the items a connector's filters held back; reading one is audited.

`get` records who asked for which item and why in a tamper-evident audit log and
waits until that record is on disk; only then does it decrypt the item through
Vault Transit (VAULT_ADDR/VAULT_TOKEN or BAO_*, as `privatellm audit query
--decrypt`) and release the plaintext.

Exit codes: 0 done, 1 the item did not decrypt or does not match its description
(altered, moved, or its key version revoked), 2 on usage or access errors.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from privatellm.cli.audit_cmd import UsageError

if TYPE_CHECKING:
    from privatellm.connectors.quarantine import QuarantineEntry

FORBIDDEN = 403
ACCESS_ACTION = "quarantine.read"


def add_quarantine_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    quarantine = commands.add_parser(
        "quarantine", help="list the items a connector's filters held back, or read one (audited)"
    )
    actions = quarantine.add_subparsers(dest="quarantine_command", required=True)

    listing = actions.add_parser(
        "list", help="describe the quarantined items (no content, no Vault needed)"
    )
    listing.add_argument("--dir", type=Path, required=True, help="the quarantine directory")
    listing.add_argument("--format", choices=("table", "json"), default="table")

    get = actions.add_parser(
        "get",
        help="record the access in the audit log, then decrypt one item through Vault "
        "(VAULT_ADDR and VAULT_TOKEN, or BAO_ADDR and BAO_TOKEN)",
    )
    get.add_argument("item_id", metavar="ITEM_ID")
    get.add_argument("--dir", type=Path, required=True, help="the quarantine directory")
    get.add_argument("--namespace", required=True, help="namespace of the DataConnector")
    get.add_argument("--connector", required=True, help="name of the DataConnector")
    get.add_argument(
        "--reason", required=True, help="why the item is read; kept in the audit record"
    )
    get.add_argument(
        "--requested-by",
        default=None,
        help="who asked for it (default: the user running the command, who is recorded too)",
    )
    get.add_argument(
        "--audit-dir", type=Path, required=True, help="audit log that records the access first"
    )
    get.add_argument(
        "--audit-signing-key", type=Path, required=True, help="its Ed25519 private key (PEM)"
    )
    get.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the item to this new file (mode 0600) instead of standard output",
    )
    get.add_argument("--mount", default="transit", help="path of the Transit engine")


def run_quarantine(args: argparse.Namespace) -> int:
    from privatellm.connectors.quarantine import QuarantineError

    try:
        if args.quarantine_command == "list":
            return _list(args.dir, args.format)
        return _get(args)
    except (UsageError, QuarantineError) as error:
        print(f"quarantine: {error}", file=sys.stderr)
        return 2


def _iso(seconds: float) -> str:
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _list(directory: Path, form: str) -> int:
    from privatellm.connectors.quarantine import read_entries

    entries = read_entries(directory)
    if form == "json":
        for entry in entries:
            sys.stdout.write(orjson.dumps(entry.to_json()).decode() + "\n")
        return 0
    columns = ("item_id", "received", "namespace", "connector", "content_type", "size", "reason")
    rows = [_row(entry) for entry in entries]
    widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _row(entry: QuarantineEntry) -> list[str]:
    return [
        entry.item_id,
        _iso(entry.received),
        entry.namespace,
        entry.connector,
        entry.content_type,
        str(entry.size),
        entry.reason,
    ]


def os_user() -> str:
    """The account running this command, as the system knows it."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in many containers
        return f"uid:{os.getuid()}"


def _get(args: argparse.Namespace) -> int:
    from privatellm.connectors.quarantine import Quarantine, QuarantineError
    from privatellm.keys.envelope import DecryptionError
    from privatellm.keys.transit import TransitClient, VaultError, vault_client_from_env

    reason = args.reason.strip()
    if not reason:
        raise UsageError("--reason must say why the item is read")
    if args.out is not None and args.out.exists():
        raise UsageError(f"{args.out} exists; name a new file")
    client = vault_client_from_env()
    if client is None:
        raise UsageError("set VAULT_ADDR and VAULT_TOKEN (or BAO_ADDR and BAO_TOKEN)")
    quarantine = Quarantine.for_namespace(
        args.dir, TransitClient(client, args.mount), args.namespace, args.connector
    )
    entry = quarantine.entry(args.item_id)
    try:
        identity = client.lookup_self()
    except VaultError as error:
        raise UsageError(f"Vault refused the token: {error}") from None
    _record_access(args, entry, reason, identity)
    try:
        plaintext = quarantine.get(args.item_id)
    except (DecryptionError, QuarantineError) as error:
        print(f"quarantine: {error}", file=sys.stderr)
        return 1
    except VaultError as error:
        refused = "refused" if error.status == FORBIDDEN else "failed"
        raise UsageError(f"Vault {refused} (the attempt is recorded): {error}") from None
    _release(plaintext, args.out)
    return 0


def _record_access(
    args: argparse.Namespace, entry: QuarantineEntry, reason: str, identity: dict[str, Any]
) -> None:
    """Append who reads which item and why; return only once the record is durable."""
    from privatellm.audit import AuditLog, AuditLogClosedError, Signer
    from privatellm.audit.records import control_record
    from privatellm.audit.writer import AuditRecordError

    user = os_user()
    details: dict[str, Any] = {
        "item_id": entry.item_id,
        "reason": reason,
        "os_user": user,
        "quarantine_dir": str(args.dir.resolve()),
        "item_sha256": entry.sha256,
        "item_size": entry.size,
        "filter_reason": entry.reason,
        "vault_identity": str(identity.get("display_name") or ""),
        "vault_policies": sorted(identity.get("policies") or ()),
    }
    if identity.get("entity_id"):
        details["vault_entity"] = identity["entity_id"]
    record = control_record(
        ACCESS_ACTION,
        args.requested_by or user,
        target=f"DataConnector/{entry.connector}",
        namespace=entry.namespace,
        details=details,
    )
    try:
        log = AuditLog(args.audit_dir, Signer.from_file(args.audit_signing_key))
    except (OSError, ValueError, AuditLogClosedError) as error:
        raise UsageError(
            f"cannot open the audit log {args.audit_dir}: {error}; nothing was decrypted"
        ) from None
    try:
        log.append_sync(record)
    except (AuditLogClosedError, AuditRecordError, TimeoutError) as error:
        raise UsageError(f"the access was not recorded: {error}; nothing was decrypted") from None
    finally:
        log.close()


def _release(plaintext: bytes, out: Path | None) -> None:
    if out is None:
        sys.stdout.buffer.write(plaintext)
        sys.stdout.buffer.flush()
        return
    try:
        # A new file only: never overwrite, never follow a link someone placed there.
        descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as error:
        raise UsageError(f"cannot create {out}: {error}") from None
    with os.fdopen(descriptor, "wb") as file:
        file.write(plaintext)
    print(f"wrote {len(plaintext)} bytes to {out}", file=sys.stderr)
