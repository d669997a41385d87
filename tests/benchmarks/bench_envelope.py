"""Envelope encryption against raw AES-GCM, on a real Vault: run by `make bench`.

Encrypts the same records three ways in one run: raw AES-256-GCM with one fixed key
(the floor), envelope records whose data keys Transit issues (the product), and
decrypts a sample of envelope records (each unwraps its data key at Transit, so a
revoked key version stops reads at once). Reports records per second, the ratio to
raw AES-GCM, and Transit calls per 10,000 records.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from privatellm.devcluster import DevVault, Toolchain
from privatellm.keys.envelope import Envelope, RecordContext
from privatellm.keys.transit import TransitClient

from .report import write_section

SECTION = "envelope-encryption"
KEY = "bench"
RECORD_BYTES = 2048  # a prompt or response of a few hundred words


class CountingTransit:
    """Forwards to Transit and counts the calls."""

    def __init__(self, transit: TransitClient) -> None:
        self.transit = transit
        self.calls = 0

    def datakey(self, name: str) -> tuple[bytes, str]:
        self.calls += 1
        return self.transit.datakey(name)

    def decrypt_datakey(self, name: str, wrapped: str) -> bytes:
        self.calls += 1
        return self.transit.decrypt_datakey(name, wrapped)

    def rewrap(self, name: str, wrapped: str) -> str:
        self.calls += 1
        return self.transit.rewrap(name, wrapped)


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def run(records: int, decrypts: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="privatellm-vault-bench-"))
    vault = DevVault(workdir, Toolchain.locate())
    vault.start()
    try:
        transit = TransitClient(vault.client())
        transit.create_key(KEY)
        payload = os.urandom(RECORD_BYTES)
        contexts = [RecordContext("bench", "llama", f"r{i}") for i in range(records)]

        raw = AESGCM(AESGCM.generate_key(bit_length=256))
        started = time.perf_counter()
        for context in contexts:
            raw.encrypt(os.urandom(12), payload, context.associated_data(KEY))
        raw_seconds = time.perf_counter() - started

        counting = CountingTransit(transit)
        envelope = Envelope(counting, KEY)
        started = time.perf_counter()
        sealed = [envelope.encrypt(payload, context) for context in contexts]
        envelope_seconds = time.perf_counter() - started
        encrypt_calls = counting.calls

        counting.calls = 0
        started = time.perf_counter()
        for record, context in zip(sealed[:decrypts], contexts[:decrypts], strict=True):
            assert envelope.decrypt(record, context) == payload
        decrypt_seconds = time.perf_counter() - started
        decrypt_calls = counting.calls
        overhead = len(sealed[0]) - RECORD_BYTES
    finally:
        vault.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "raw_rate": rate(records, raw_seconds),
        "envelope_rate": rate(records, envelope_seconds),
        "decrypt_rate": rate(decrypts, decrypt_seconds),
        "encrypt_calls_per_10k": encrypt_calls * 10_000 / records,
        "decrypt_calls_per_10k": decrypt_calls * 10_000 / decrypts,
        "overhead": overhead,
    }


def report(result: dict[str, Any], records: int, decrypts: int) -> str:
    today = datetime.date.today().isoformat()
    raw = result["raw_rate"]
    rows = [
        ("raw AES-256-GCM, one fixed key", raw, 0.0),
        (
            "envelope encrypt (data key from Transit, cached)",
            result["envelope_rate"],
            result["encrypt_calls_per_10k"],
        ),
        (
            f"envelope decrypt ({decrypts} records, data key unwrapped per record)",
            result["decrypt_rate"],
            result["decrypt_calls_per_10k"],
        ),
    ]
    table = "\n".join(
        f"| {name} | {value:,.0f} | {value / raw:.3f} | {calls:,.1f} |"
        for name, value, calls in rows
    )
    return f"""## Envelope encryption

`make bench` (`python -m tests.benchmarks.bench_envelope --records {records}`), {today}, one
core of this machine, dev-mode Vault on loopback, {RECORD_BYTES}-byte records,
default data-key bounds (300 s, 100,000 records).

| path | records/s | vs raw AES-GCM | Transit calls per 10,000 records |
|---|---|---|---|
{table}

Record overhead: {result["overhead"]} bytes per record (header, wrapped data key, nonce,
tag). Decryption asks Transit for every record on purpose, so that raising
`min_decryption_version` stops reads at once; it is the path to batch or cache
when bulk reads (audit queries) need it."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--decrypts", type=int, default=1_000)
    args = parser.parse_args()
    body = report(run(args.records, args.decrypts), args.records, args.decrypts)
    write_section(SECTION, body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
