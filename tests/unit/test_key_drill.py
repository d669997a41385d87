"""The drill's pure parts: finding records, atomic writes, reports, CLI errors before Vault.

The drill itself runs against a real Vault in tests/integration/test_key_drill.py.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from privatellm.cli.main import main
from privatellm.keys.drill import (
    CompromiseReport,
    FailureKind,
    RecordFailure,
    RotationReport,
    find_records,
    format_compromise,
    format_rotation,
    write_atomically,
)

REPORT = CompromiseReport(
    key="tenant-a-llama",
    mount="transit",
    previous_version=2,
    new_version=3,
    min_decryption_version=3,
    rewrapped_by_version={1: 4, 2: 10},
    failures=(
        RecordFailure(Path("r/bad.rec"), FailureKind.CORRUPT, "not an envelope record"),
        RecordFailure(Path("r/2025/old.rec"), FailureKind.REFUSED, "Transit refused v1"),
    ),
)


def test_write_atomically_replaces_the_bytes_and_keeps_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "a.rec"
    path.write_bytes(b"old")
    path.chmod(0o640)
    write_atomically(path, b"new bytes")
    assert path.read_bytes() == b"new bytes"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["a.rec"]


def test_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.rec"
    path.write_bytes(b"old")

    def replace_fails(source: str, target: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace_fails)
    with pytest.raises(OSError, match="No space"):
        write_atomically(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.rec"]


def test_find_records_is_recursive_sorted_and_counts_each_file_once(tmp_path: Path) -> None:
    for name in ("b.rec", "a.rec", "sub/c.rec", "odd.rec/d.rec", "notes.txt", ".a.rec.x1.tmp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "z-link.rec").symlink_to(tmp_path / "a.rec")
    (tmp_path / "dangling.rec").symlink_to(tmp_path / "gone.rec")
    found = [p.relative_to(tmp_path).as_posix() for p in find_records([tmp_path])]
    assert found == ["a.rec", "b.rec", "odd.rec/d.rec", "sub/c.rec"]


def test_find_records_across_folders_keeps_their_order_and_skips_overlaps(
    tmp_path: Path,
) -> None:
    for name in ("live/x.rec", "live/y.rec", "backup/a.rec"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = find_records([tmp_path / "live", tmp_path / "backup", tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "live/x.rec",
        "live/y.rec",
        "backup/a.rec",
    ]


def test_report_counts() -> None:
    assert (REPORT.rewrapped, REPORT.complete) == (14, False)
    clean = CompromiseReport("k", "transit", 1, 2, 2, {}, ())
    assert (clean.rewrapped, clean.complete) == (0, True)


def test_compromise_table() -> None:
    assert format_compromise(REPORT, "table").splitlines() == [
        "key tenant-a-llama (mount transit/): rotated v2 -> v3, min_decryption_version now v3",
        "re-protected: 14 records",
        "  from v1  4",
        "  from v2  10",
        "NOT re-protected: 2 records",
        "  FILE            PROBLEM  REASON",
        "  r/bad.rec       corrupt  not an envelope record",
        "  r/2025/old.rec  refused  Transit refused v1",
    ]


def test_compromise_json() -> None:
    assert json.loads(format_compromise(REPORT, "json")) == {
        "key": "tenant-a-llama",
        "mount": "transit",
        "previous_version": 2,
        "new_version": 3,
        "min_decryption_version": 3,
        "rewrapped": {"total": 14, "by_old_version": {"1": 4, "2": 10}},
        "not_reprotected": [
            {"path": "r/bad.rec", "kind": "corrupt", "reason": "not an envelope record"},
            {"path": "r/2025/old.rec", "kind": "refused", "reason": "Transit refused v1"},
        ],
    }


def test_rotation_table_and_json() -> None:
    report = RotationReport("k", "transit", 4, 5)
    assert format_rotation(report, "table") == (
        "k (mount transit/): rotated v4 -> v5; new data keys are wrapped with v5"
    )
    assert json.loads(format_rotation(report, "json")) == {
        "key": "k",
        "mount": "transit",
        "previous_version": 4,
        "latest_version": 5,
    }


def test_cli_without_vault_settings_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("BAO_ADDR", "BAO_TOKEN", "VAULT_ADDR", "VAULT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert main(["keys", "rotate", "k"]) == 2
    assert capsys.readouterr().err == (
        "privatellm keys rotate: set BAO_ADDR and BAO_TOKEN (or VAULT_ADDR and VAULT_TOKEN)\n"
    )


def test_cli_refuses_a_missing_records_folder_before_calling_vault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Port 9 (discard) on loopback: any call would fail with "unreachable" instead.
    monkeypatch.setenv("BAO_ADDR", "http://127.0.0.1:9")
    monkeypatch.setenv("BAO_TOKEN", "unused")
    missing = tmp_path / "nowhere"
    assert (
        main(["keys", "compromise", "k", "--records", str(tmp_path), "--records", str(missing)])
        == 2
    )
    assert capsys.readouterr().err == (
        f"privatellm keys compromise: {missing} is not a folder, nothing was changed\n"
    )
