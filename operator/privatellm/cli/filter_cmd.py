"""`privatellm filter`: run an AccessPolicy's prompt or response filters over texts."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from privatellm.api.access import AccessPolicy
from privatellm.filters import FilterResult, InboundPipeline, OutboundPipeline

PROG = "privatellm filter"


class UsageError(Exception):
    """An input the command cannot start with (exit code 2)."""


def add_filter_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `privatellm filter`."""
    command = commands.add_parser(
        "filter",
        help="apply an AccessPolicy's filters to texts; print findings and the filtered text",
        description="Print one JSON line per finding ({entity, start, end, action}; offsets "
        "count characters of the original text), then one line {text, blocked, reason} "
        "per text. Exit 1 when an input line was bad, 2 when the policy or a key file is.",
    )
    command.add_argument(
        "--policy", type=Path, required=True, help="AccessPolicy manifest (YAML) with the filters"
    )
    command.add_argument(
        "--direction",
        choices=("inbound", "outbound"),
        default="inbound",
        help="prompt filters (inbound, default) or response filters (outbound)",
    )
    command.add_argument(
        "--protected-entities",
        type=Path,
        default=None,
        metavar="FILE",
        help="other customers' names and identifiers, one per line (outbound)",
    )
    command.add_argument(
        "--hash-key-file",
        type=Path,
        default=None,
        metavar="F",
        help="key of the hash action (default: a random key, so tokens differ between runs)",
    )
    command.add_argument(
        "files",
        nargs="*",
        type=Path,
        metavar="FILE.jsonl",
        help='JSON lines with a "text" field each (default: all of standard input is one text)',
    )


def _one_line(error: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(part) for part in e['loc']) or '(document)'}: {e['msg']}"
        for e in error.errors()
    ]
    return "; ".join(problems)


def load_policy(path: Path) -> AccessPolicy:
    """Read and validate an AccessPolicy manifest; UsageError says what is wrong in one line."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"{path}: cannot read: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise UsageError(f"{path}: not valid YAML{line}") from error
    if not isinstance(document, dict) or document.get("kind") != "AccessPolicy":
        raise UsageError(f"{path}: not an AccessPolicy manifest")
    try:
        return AccessPolicy.model_validate(document)
    except ValidationError as error:
        raise UsageError(f"{path}: invalid AccessPolicy: {_one_line(error)}") from error


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise UsageError(f"{path}: cannot read {what}: {error.strerror or error}") from error


def _pipeline(args: argparse.Namespace) -> InboundPipeline | OutboundPipeline:
    policy = load_policy(args.policy)
    key = _read_bytes(args.hash_key_file, "the hash key") if args.hash_key_file else os.urandom(32)
    if args.direction == "inbound":
        return InboundPipeline.from_spec(policy.spec.inbound, key)
    protected: list[str] = []
    if args.protected_entities is not None:
        raw = _read_bytes(args.protected_entities, "the protected entities")
        protected = [line.strip() for line in raw.decode("utf-8", "replace").splitlines()]
    return OutboundPipeline.from_spec(policy.spec.outbound, [p for p in protected if p], key)


def _emit(result: FilterResult, out: TextIO, extra: dict[str, Any]) -> None:
    for finding in result.findings:
        record = {
            "entity": finding.entity,
            "start": finding.start,
            "end": finding.end,
            "action": finding.action,
        }
        print(json.dumps(record | extra), file=out)
    summary = {"text": result.text, "blocked": result.blocked, "reason": result.reason}
    print(json.dumps(summary | extra), file=out)


def _texts(path: Path) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text, problem) for each non-blank line of a JSON-lines file."""
    with path.open(encoding="utf-8", errors="surrogateescape") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                yield number, None, f"not JSON ({error.msg})"
                continue
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                yield number, None, 'no "text" string'
                continue
            yield number, text, None


def run_filter(args: argparse.Namespace) -> int:
    """Filter standard input or JSON-lines files; 0 when all went well, 1 bad lines, 2 unusable."""
    try:
        pipeline = _pipeline(args)
    except UsageError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    if not args.files:
        _emit(pipeline.apply(sys.stdin.read()), sys.stdout, {})
        return 0
    status = 0
    for path in args.files:
        try:
            for number, text, problem in _texts(path):
                if text is None:
                    print(f"{PROG}: {path}:{number}: {problem}", file=sys.stderr)
                    status = 1
                    continue
                _emit(pipeline.apply(text), sys.stdout, {"line": number})
        except OSError as error:
            print(f"{PROG}: {path}: cannot read: {error.strerror or error}", file=sys.stderr)
            status = 1
    return status
