"""`privatellm audit`: keys, verification, the Tuesday audit, and erasure of a subject.

Exit codes: 0 when all is well, 1 when the log failed verification (every
problem is printed with its file and offset), 2 on usage or access errors.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from privatellm.audit import Checkpoint
    from privatellm.audit.query import AuditQuery
    from privatellm.keys.transit import TransitClient

FORBIDDEN = 403
TABLE_COLUMNS = (
    "time",
    "seq",
    "kind",
    "subject",
    "auth_method",
    "source_ip",
    "namespace",
    "model",
    "target",
    "data_classes",
    "decision",
    "reason",
    "status",
    "tokens",
    "latency_ms",
    "request_id",
)


def add_audit_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser("audit", help="verify and query the tamper-evident audit log")
    actions = audit.add_subparsers(dest="audit_command", required=True)

    keygen = actions.add_parser("keygen", help="make an Ed25519 key pair for checkpoints")
    keygen.add_argument("--out", type=Path, required=True, help="private key file; .pub beside")

    verify = actions.add_parser(
        "verify", help="check every record, chain hash, checkpoint and signature"
    )
    verify.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="audit log directory")
    verify.add_argument("--public-key", type=Path, required=True)
    verify.add_argument(
        "--published-head",
        type=Path,
        default=None,
        help="a head checkpoint published elsewhere (WORM store): detects removed segments",
    )
    verify.add_argument(
        "--worm-bucket",
        default=None,
        help="also compare with the log's WORM copy in this S3 bucket and its published "
        "head (endpoint and credentials from AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...)",
    )
    verify.add_argument("--worm-prefix", default="audit")
    verify.add_argument("--format", choices=("table", "json"), default="table")

    query = actions.add_parser(
        "query", help="records by subject, time, model and data class, from verified segments"
    )
    query.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="audit log directory")
    query.add_argument("--public-key", type=Path, required=True)
    query.add_argument("--subject")
    query.add_argument("--from", dest="start", help="UTC date or ISO time, inclusive")
    query.add_argument("--to", dest="end", help="UTC date or ISO time, exclusive")
    query.add_argument("--model")
    query.add_argument("--data-class")
    query.add_argument("--prompt-hash", help="the keyed hash of a prompt")
    query.add_argument(
        "--prompt-text", help="find this exact prompt (hashed with --hash-key-file, not stored)"
    )
    query.add_argument("--hash-key-file", type=Path, help="the gateways' hash key")
    query.add_argument(
        "--decrypt",
        action="store_true",
        help="show prompts and responses; needs Vault rights on the keys (VAULT_ADDR, "
        "VAULT_TOKEN) and is itself recorded in --access-log first",
    )
    _add_access_log_arguments(query)
    query.add_argument("--format", choices=("table", "json", "csv"), default="table")

    fetch = actions.add_parser(
        "fetch",
        help="copy logs from their WORM bucket (endpoint and credentials from "
        "AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...) to verify and query them here",
    )
    fetch.add_argument("--worm-bucket", required=True)
    fetch.add_argument("--worm-prefix", default="audit")
    fetch.add_argument("--log-id", action="append", default=[], help="only this log (repeatable)")
    fetch.add_argument("--out", type=Path, required=True, help="one folder per log goes here")

    erase = actions.add_parser(
        "erase",
        help="crypto-shred one subject's stored prompts and responses (delete its key in "
        "Vault); records and chain stay verifiable",
    )
    erase.add_argument("--subject", required=True)
    _add_access_log_arguments(erase)


def _add_access_log_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--access-log", type=Path, help="audit log that records this access (required)"
    )
    parser.add_argument("--signing-key", type=Path, help="signing key of the access log")


def run_audit(args: argparse.Namespace) -> int:
    try:
        if args.audit_command == "keygen":
            return _keygen(args.out)
        if args.audit_command == "verify":
            return _verify(args)
        if args.audit_command == "query":
            return _query(args)
        if args.audit_command == "fetch":
            return _fetch(args)
        return _erase(args)
    except UsageError as error:
        print(f"audit: {error}", file=sys.stderr)
        return 2


class UsageError(Exception):
    """Bad arguments or an access that was refused."""


def _keygen(out: Path) -> int:
    from privatellm.audit import Signer

    signer = Signer.generate()
    out.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(signer.private_pem())
    public = out.with_name(out.name + ".pub")
    public.write_bytes(signer.public_pem())
    print(f"{out} (private), {public} (public), key id {signer.key_id}")
    return 0


def _public_key(path: Path) -> Any:
    from privatellm.audit import load_public_key

    try:
        return load_public_key(path)
    except (OSError, ValueError) as error:
        raise UsageError(f"public key {path}: {error}") from None


def _verify(args: argparse.Namespace) -> int:
    from privatellm.audit import Checkpoint, Problem, verify_log

    public_key = _public_key(args.public_key)
    head = Checkpoint.from_bytes(args.published_head.read_bytes()) if args.published_head else None
    failed = False
    stored: list[str]
    for directory in args.dirs:
        _require_log(directory)
        published, stored = head, []
        if args.worm_bucket:
            published, stored = _worm_copy(directory, args.worm_bucket, args.worm_prefix)
        report = verify_log(directory, public_key, published_head=published)
        # What differs from the WORM copy: files altered or removed here since shipping.
        report.problems.extend(Problem("worm", None, message) for message in stored)
        failed = failed or not report.ok
        if args.format == "json":
            print(
                orjson.dumps(
                    {
                        "log": str(directory),
                        "ok": report.ok,
                        "segments": report.segments,
                        "records": report.records,
                        "bytes": report.bytes,
                        "head": report.head.digest() if report.head else None,
                        "problems": [
                            {"file": p.file, "offset": p.offset, "message": p.message}
                            for p in report.problems
                        ],
                        "notices": report.notices,
                    }
                ).decode()
            )
            continue
        verdict = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
        print(f"{directory}: {verdict}: {report.records} records in {report.segments} segments")
        for problem in report.problems:
            print(f"  problem: {problem}")
        for notice in report.notices:
            print(f"  notice: {notice}")
    return 1 if failed else 0


def _worm_copy(directory: Path, bucket: str, prefix: str) -> tuple[Checkpoint | None, list[str]]:
    """The head published in WORM storage, and every difference from the stored copy."""
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    from privatellm.audit.s3 import S3Client
    from privatellm.audit.worm import WormError, WormStore, compare_with_store

    try:
        store = WormStore.for_directory(S3Client(), bucket, directory, prefix=prefix)
        return store.published_head(), compare_with_store(directory, store)
    except (WormError, BotoCoreError, ClientError) as error:
        raise UsageError(f"cannot read the WORM copy in {bucket}: {error}") from None


def _fetch(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from privatellm.audit.s3 import S3Client
    from privatellm.audit.worm import WormStore, stored_logs

    client = S3Client()
    try:
        log_ids = args.log_id or stored_logs(client, args.worm_bucket, args.worm_prefix)
        for log_id in log_ids:
            store = WormStore(client, args.worm_bucket, log_id, prefix=args.worm_prefix)
            count = store.fetch(args.out / log_id)
            print(f"{args.out / log_id}: {count} sealed segments")
    except (BotoCoreError, ClientError) as error:
        raise UsageError(f"cannot read {args.worm_bucket}: {error}") from None
    return 0


def _require_log(directory: Path) -> None:
    if not (directory / "LOG_ID").exists():
        raise UsageError(f"{directory} is not an audit log (no LOG_ID)")


def parse_time(text: str | None) -> float | None:
    """A UTC date (midnight) or an ISO time (UTC when no zone is given), as unix seconds."""
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _audit_query(args: argparse.Namespace) -> AuditQuery:
    from privatellm.audit.query import AuditQuery
    from privatellm.audit.records import prompt_hash, prompt_hash_key

    digest = args.prompt_hash
    if args.prompt_text is not None:
        if args.hash_key_file is None:
            raise UsageError("--prompt-text needs --hash-key-file")
        digest = prompt_hash(prompt_hash_key(args.hash_key_file.read_bytes()), [args.prompt_text])
    start, end = parse_time(args.start), parse_time(args.end)
    if start is not None and end is not None and end <= start:
        raise UsageError("--to must be after --from")
    return AuditQuery(
        subject=args.subject,
        start=start,
        end=end,
        model=args.model,
        data_class=args.data_class,
        prompt_hash=digest,
    )


def _query(args: argparse.Namespace) -> int:
    from privatellm.audit.query import AuditIntegrityError, query_log

    query = _audit_query(args)
    public_key = _public_key(args.public_key)
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    for directory in args.dirs:
        _require_log(directory)
        try:
            result = query_log(directory, public_key, query)
        except AuditIntegrityError as error:
            print(f"audit: {directory} failed verification; no trail is given:", file=sys.stderr)
            for problem in error.problems:
                print(f"  problem: {problem}", file=sys.stderr)
            return 1
        records.extend(result.records)
        notes.append(
            f"{directory}: {len(result.records)} records from {result.segments_read} verified "
            f"segments ({result.segments_skipped} outside the time range) in "
            f"{result.seconds:.3f} s"
        )
        notes.extend(f"{directory}: notice: {n}" for n in result.notices)
    records.sort(key=lambda r: (r.get("time", 0.0), r.get("seq", 0)))
    if args.decrypt:
        _decrypt_records(args, records)
    _print_records(records, args.format)
    for note in notes:
        print(note, file=sys.stderr)
    return 0


def _vault_transit() -> tuple[TransitClient, dict[str, Any]]:
    """Transit from VAULT_ADDR/VAULT_TOKEN (or BAO_*), and who that token belongs to."""
    from privatellm.keys.transit import TransitClient, VaultError, vault_client_from_env

    client = vault_client_from_env()
    if client is None:
        raise UsageError("set VAULT_ADDR and VAULT_TOKEN: decryption and erasure need Vault")
    try:
        identity = client.lookup_self()
    except VaultError as error:
        raise UsageError(f"Vault refused the token: {error}") from None
    return TransitClient(client), identity


def record_control_action(
    directory: Path | None,
    signing_key: Path | None,
    action: str,
    identity: dict[str, Any],
    **details: Any,
) -> None:
    """Append a control action by the Vault identity to an audit log; wait until durable.

    UsageError when there is no log to record it in or it cannot be opened: the
    action must then not happen.
    """
    from privatellm.audit import AuditLog, AuditLogClosedError, Signer
    from privatellm.audit.records import control_record

    if directory is None or signing_key is None:
        raise UsageError(f"{action} is recorded first: name the audit log and its signing key")
    try:
        log = AuditLog(directory, Signer.from_file(signing_key))
    except (OSError, ValueError, AuditLogClosedError) as error:
        raise UsageError(f"cannot open the audit log {directory}: {error}") from None
    actor = str(identity.get("display_name") or identity.get("entity_id") or "unknown")
    details["vault_policies"] = sorted(identity.get("policies") or ())
    if identity.get("entity_id"):
        details["vault_entity"] = identity["entity_id"]
    try:
        log.append_sync(control_record(action, actor, details=details))
    finally:
        log.close()


def _require_access_log(args: argparse.Namespace, what: str) -> None:
    if args.access_log is None or args.signing_key is None:
        raise UsageError(f"{what} is recorded first: give --access-log and --signing-key")


def _decrypt_records(args: argparse.Namespace, records: list[dict[str, Any]]) -> None:
    from privatellm.audit.payloads import open_payload
    from privatellm.keys.envelope import EnvelopeError, RecordContext
    from privatellm.keys.transit import VaultError

    _require_access_log(args, "--decrypt")
    transit, identity = _vault_transit()
    record_control_action(
        args.access_log,
        args.signing_key,
        "audit.decrypt",
        identity,
        logs=[str(d) for d in args.dirs],
        query={k: v for k, v in vars(_audit_query(args)).items() if v is not None},
        request_ids=[r["request_id"] for r in records if r.get("request_id")],
    )
    for record in records:
        for kind in ("prompt", "response"):
            sealed = record.get(f"{kind}_record")
            if not sealed:
                continue
            context = RecordContext(
                record.get("namespace") or "",
                record.get("model") or "",
                f"{record['request_id']}/{kind}",
            )
            try:
                plain = open_payload(
                    transit, record.get("subject") or "", context, base64.b64decode(sealed)
                )
                record[f"{kind}_text"] = plain.decode(errors="replace")
            except VaultError as error:
                if error.status == FORBIDDEN:
                    raise UsageError(
                        f"Vault refused to decrypt (the attempt is recorded): {error}"
                    ) from None
                record[f"{kind}_text"] = f"[not readable: {error}]"
            except EnvelopeError as error:
                record[f"{kind}_text"] = f"[not readable: {error}]"


def _erase(args: argparse.Namespace) -> int:
    from privatellm.audit.payloads import erase_subject, subject_key_name

    _require_access_log(args, "erase")
    transit, identity = _vault_transit()
    key = subject_key_name(args.subject)
    record_control_action(
        args.access_log, args.signing_key, "audit.erasure", identity, erased_subject_key=key
    )
    erase_subject(transit, args.subject)
    print(f"erased the payload key {key}: stored prompts and responses of this subject")
    print("can no longer be decrypted; the records and their chain are unchanged")
    return 0


def _cell(record: dict[str, Any], column: str) -> str:
    if column == "time":
        moment = dt.datetime.fromtimestamp(record.get("time", 0.0), dt.UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if column == "tokens":
        if record.get("kind") == "control":
            return ""
        return f"{record.get('prompt_tokens', 0)}/{record.get('completion_tokens', 0)}"
    if column == "reason" and record.get("kind") == "control":
        return str(record.get("action", ""))
    value = record.get(column)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def _print_records(records: list[dict[str, Any]], form: str) -> None:
    columns = list(TABLE_COLUMNS)
    if any("prompt_text" in r for r in records):
        columns += ["prompt_text", "response_text"]
    if form == "json":
        for record in records:
            sys.stdout.write(orjson.dumps(record).decode() + "\n")
        return
    rows = [[_cell(r, c) for c in columns] for r in records]
    if form == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
        return
    widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
