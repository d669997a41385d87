"""The audit log's cost, on a real Vault: run by `make bench`.

Measures, in one run, on one core (the process pins itself to one CPU once Vault runs):

1. Appending realistic gateway request records (20 subjects, three models, data
   classes on a third, a 1 KiB prompt and a 1 KiB response each sealed twice
   through a dev-mode Vault, under the model's key then the subject's): (a) sealing
   alone, (b) AuditLog.append with the default group commit and limits, producers
   submitting in bursts, (c) a raw sequential write of the very bytes (b) wrote, in
   the same batches with as many fdatasync calls; sealing and appending together;
   and the append-to-durable latency at concurrency 1, which a gateway request waits
   for. Then the writer's work per record, step by step, on the same records.
2. verify_log over that log, and over the large log of 3.
3. The Tuesday audit: query_log for one subject and one day over a log of
   10,000,000 small records (no payloads) in segments of 100,000, generated once and
   cached in .bench/audit-10m/ (`--records` sets the size; another size has its own
   directory).
4. Bytes on disk per record against the canonical JSON body, and how much sealing
   expands a payload.

The results replace this benchmark's section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import gc
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import orjson

from privatellm.audit import AuditLog, Signer, load_public_key, verify_log
from privatellm.audit.checkpoint import CHECKPOINT_VERSION
from privatellm.audit.index import SegmentIndex
from privatellm.audit.merkle import leaf_hash
from privatellm.audit.payloads import SubjectEnvelopes
from privatellm.audit.query import AuditQuery, QueryResult, query_log
from privatellm.audit.records import prompt_hash, prompt_hash_key, request_record
from privatellm.audit.segment import (
    FORMAT_VERSION,
    FRAME_OVERHEAD,
    HEADER_BYTES,
    canonical,
    frame,
)
from privatellm.audit.writer import SegmentLimits
from privatellm.devcluster import DevVault, Toolchain
from privatellm.gateway.audit import AuditEvent
from privatellm.gateway.config import EncryptionSettings
from privatellm.gateway.payloads import PayloadSealer
from privatellm.keys.envelope import Envelope, RecordContext
from privatellm.keys.tenancy import namespace_key_name
from privatellm.keys.transit import TransitClient, VaultClient

from .bench_gateway import PARAGRAPHS, machine
from .report import write_section

SECTION = "audit-log"
ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".bench"
T = TypeVar("T")

NAMESPACE = "llm-prod"
POD = "privatellm-gateway-6d9f7c5b8-x2kqp"
PATH = "/v1/chat/completions"
# (model, share of traffic, policy that lets it be used)
MODELS = (
    ("llama-3.1-8b-instruct", 0.6, "all-staff"),
    ("mistral-small-24b-instruct", 0.3, "all-staff"),
    ("qwen2.5-coder-32b-instruct", 0.1, "engineering"),
)
TEAMS = ("search", "support", "finance", "legal", "platform", "research")
FIRST_NAMES = (
    "amara", "bastian", "chen", "dalia", "emeka", "farah", "gustav", "hana", "ivan", "jonas",
    "keiko", "lucia", "mateo", "nadia", "olu", "priya", "quentin", "rosa", "sven", "tamar",
)  # fmt: skip
LAST_NAMES = (
    "okafor", "schmidt", "wang", "haddad", "novak", "jansen", "tanaka", "garcia", "rossi",
    "kowalski", "dubois", "larsen", "silva", "nguyen", "ibrahim", "murphy", "fischer",
    "moreau", "patel", "berg", "costa", "weber", "kim", "meyer", "ali", "horvat", "lind",
    "yilmaz", "popescu", "ortiz", "sato", "mensah", "ahmed", "kaur", "fraser", "lopez",
    "bakker", "cohen", "ferreira", "ivanova",
)  # fmt: skip
SERVICE_ACCOUNTS = ("ticket-summarizer", "search-reranker", "doc-indexer", "eval-runner")
# Data classes and what the filters did, for the third of the requests that carry any.
CLASSIFIED = (
    (["pii"], {"inbound": {"email:redact": 1, "phone:redact": 1}}),
    (["pii"], {"inbound": {"email:redact": 2}, "outbound": {"email:redact": 1}}),
    (["financial", "pii"], {"inbound": {"iban:redact": 1, "email:redact": 1}}),
)
DENIALS = (
    (403, "model_not_allowed"),
    (403, "no_policy_for_subject"),
    (429, "rate_limited:requests_per_minute"),
    (503, "no_ready_replica"),
)

PAYLOAD_BYTES = 1024
APPEND_SUBJECTS = 20
BURST = 64
# Rounds of each throughput measure; the fastest counts (the machine is shared).
ROUNDS = 3
LARGE_SUBJECTS = 1_000
DAYS = 10
DAY = 86_400.0
SEGMENT_RECORDS = 100_000
# The large log's first day is a Monday, so its second day is the Tuesday asked about.
START = datetime.datetime(2026, 11, 16, tzinfo=datetime.UTC)
TUESDAY = START.timestamp() + DAY
# Bump when the generated records change, so a cached large log is made again.
GENERATOR_VERSION = 1
SEED = 20261116


def log_line(message: str) -> None:
    print(f"[bench_audit] {message}", file=sys.stderr, flush=True)


# --- who calls, with what -----------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    kind: str
    name: str
    groups: list[str]
    method: str
    namespace: str | None
    source_ip: str


def make_subjects(count: int) -> list[Subject]:
    """People (OIDC), workloads (ServiceAccounts) and API keys, 7:2:1."""
    people = len(FIRST_NAMES) * len(LAST_NAMES)
    subjects = []
    for i in range(count):
        ip = f"10.{40 + i % 8}.{(i // 8) % 256}.{(i * 37) % 250 + 2}"
        team = TEAMS[i % len(TEAMS)]
        if i % 10 < 7:
            first = FIRST_NAMES[i % len(FIRST_NAMES)]
            last = LAST_NAMES[(i // len(FIRST_NAMES)) % len(LAST_NAMES)]
            suffix = str(i // people + 1) if i >= people else ""
            name = f"{first}.{last}{suffix}@corp.example"
            subjects.append(Subject("User", name, [team, "llm-users"], "oidc", None, ip))
        elif i % 10 < 9:
            namespace = f"team-{team}"
            account = f"{SERVICE_ACCOUNTS[i % len(SERVICE_ACCOUNTS)]}-{i:03d}"
            groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
            name = f"system:serviceaccount:{namespace}:{account}"
            subjects.append(
                Subject("ServiceAccount", name, groups, "serviceAccount", namespace, ip)
            )
        else:
            subjects.append(Subject("APIKey", f"{team}-ci-{i:03d}", [], "apiKey", None, ip))
    return subjects


class Traffic:
    """Request events as the gateway fills them in, from a seeded generator."""

    def __init__(self, subjects: list[Subject], seed: int, *, denials: bool) -> None:
        self.subjects = subjects
        self.rng = random.Random(seed)
        self.denials = denials
        self.models = [m for m, _, _ in MODELS]
        self.model_weights = list(itertools.accumulate(share for _, share, _ in MODELS))
        self.policies = {m: policy for m, _, policy in MODELS}

    def event(self, subject: Subject, when: float) -> AuditEvent:
        rng = self.rng
        model = rng.choices(self.models, cum_weights=self.model_weights)[0]
        latency = round(rng.uniform(150.0, 4000.0), 3)
        event = AuditEvent(
            request_id=f"{rng.getrandbits(128):032x}",
            time=when - latency / 1000,
            namespace=NAMESPACE,
            path=PATH,
            source_ip=subject.source_ip,
            subject_kind=subject.kind,
            subject=subject.name,
            groups=list(subject.groups),
            auth_method=subject.method,
            subject_namespace=subject.namespace,
            model=model,
            latency_ms=latency,
            stream=rng.random() < 0.3,
        )
        if self.denials and rng.random() < 0.04:
            event.status, event.reason = DENIALS[rng.randrange(len(DENIALS))]
            event.latency_ms = round(rng.uniform(1.0, 20.0), 3)
        else:
            event.served_by, event.policy = model, self.policies[model]
            event.decision, event.reason, event.status = "allow", "allowed", 200
            event.prompt_tokens = rng.randint(40, 2000)
            event.completion_tokens = rng.randint(10, 800)
        if rng.random() < 1 / 3:
            classes, findings = CLASSIFIED[rng.randrange(len(CLASSIFIED))]
            event.data_classes = list(classes)
            event.findings = {k: dict(v) for k, v in findings.items()}
        event.prompt_hash = f"{rng.getrandbits(256):064x}"
        return event


def prompt_body(model: str, number: int) -> tuple[bytes, list[str]]:
    """A chat completion request of PAYLOAD_BYTES bytes, and the texts it sends."""
    start = number % len(PARAGRAPHS)
    text = f"Request {number}: " + " ".join(PARAGRAPHS[start:] + PARAGRAPHS[:start])
    system = "Answer questions from the operations team briefly and precisely."
    user = {"role": "user", "content": ""}
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": system}, user],
        "temperature": 0.2,
        "max_tokens": 512,
    }
    room = PAYLOAD_BYTES - len(orjson.dumps(body))
    user["content"] = content = text.encode()[:room].decode(errors="ignore")
    return orjson.dumps(body), [system, content]


def response_body(model: str, number: int, prompt_tokens: int, completion_tokens: int) -> bytes:
    """A chat completion answer of PAYLOAD_BYTES bytes."""
    start = (number * 7 + 3) % len(PARAGRAPHS)
    text = "Summary: " + " ".join(PARAGRAPHS[start:] + PARAGRAPHS[:start])
    body: dict[str, Any] = {
        "id": f"chatcmpl-{number:016x}",
        "object": "chat.completion",
        "created": 1_764_000_000 + number,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ""},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    room = PAYLOAD_BYTES - len(orjson.dumps(body))
    body["choices"][0]["message"]["content"] = text.encode()[:room].decode(errors="ignore")
    return orjson.dumps(body)


@dataclass
class Request:
    """One request's event and the plaintext payloads the gateway seals."""

    event: AuditEvent
    prompt: bytes
    response: bytes


def make_requests(count: int) -> list[Request]:
    """Allowed requests with payloads, as a busy gateway records them, one every ~2 ms."""
    traffic = Traffic(make_subjects(APPEND_SUBJECTS), SEED, denials=False)
    key = prompt_hash_key(b"bench-gateway-hash-key")
    now = time.time()
    requests = []
    for number in range(count):
        subject = traffic.subjects[traffic.rng.randrange(APPEND_SUBJECTS)]
        event = traffic.event(subject, now + number * 0.002)
        assert event.model is not None
        prompt, texts = prompt_body(event.model, number)
        event.prompt_hash = prompt_hash(key, texts)
        response = response_body(event.model, number, event.prompt_tokens, event.completion_tokens)
        requests.append(Request(event, prompt, response))
    return requests


# --- sealing, as the gateway does it --------------------------------------------------


class CountingVault(VaultClient):
    """A Vault client that counts its requests by operation (datakey, keys, ...)."""

    def __init__(self, addr: str, token: str) -> None:
        super().__init__(addr, token)
        self.calls: dict[str, int] = {}

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        operation = path.split("/")[1] if "/" in path else path
        self.calls[operation] = self.calls.get(operation, 0) + 1
        return super().request(method, path, body)

    def total(self) -> int:
        return sum(self.calls.values())


@dataclass
class Expansion:
    """Byte counts through sealing, summed over payloads."""

    payloads: int = 0
    plaintext: int = 0
    model_sealed: int = 0
    subject_sealed: int = 0
    base64: int = 0


class Sealer:
    """What PayloadSealer.seal runs in its worker thread, plus base64, called directly."""

    def __init__(self, transit: TransitClient) -> None:
        self.model_key = Envelope(transit, namespace_key_name(NAMESPACE))
        self.subjects = SubjectEnvelopes(transit)
        self.expansion = Expansion()

    def seal(self, subject: str, context: RecordContext, payload: bytes) -> str:
        inner = self.model_key.encrypt(payload, context)
        outer = self.subjects.seal(subject, context, inner)
        text = base64.b64encode(outer).decode()
        stats = self.expansion
        stats.payloads += 1
        stats.plaintext += len(payload)
        stats.model_sealed += len(inner)
        stats.subject_sealed += len(outer)
        stats.base64 += len(text)
        return text

    def record(self, request: Request) -> dict[str, Any]:
        """The request's log record with both payloads sealed, as AuditLogSink builds it."""
        event = request.event
        assert event.model is not None and event.subject is not None
        prompt = RecordContext(NAMESPACE, event.model, f"{event.request_id}/prompt")
        response = RecordContext(NAMESPACE, event.model, f"{event.request_id}/response")
        event.prompt_record = self.seal(event.subject, prompt, request.prompt)
        event.response_record = self.seal(event.subject, response, request.response)
        return request_record(event.as_dict(), POD)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """On uvloop where it is installed, as the gateway runs."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def seal_as_gateway(sealer: PayloadSealer, requests: list[Request]) -> float:
    """Both payloads of every request through PayloadSealer.seal, one request at a time."""
    key = namespace_key_name(NAMESPACE)
    started = time.perf_counter()
    for request in requests:
        event = request.event
        assert event.model is not None and event.subject is not None
        for kind, payload in (("prompt", request.prompt), ("response", request.response)):
            context = RecordContext(NAMESPACE, event.model, f"{event.request_id}/{kind}")
            await sealer.seal(key, event.subject, context, payload)
    return time.perf_counter() - started


# --- the log, instrumented ------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One write + fdatasync of the writer: where, how many bytes, how many records."""

    path: Path
    offset: int
    size: int
    records: int


class MeasuredLog(AuditLog):
    """AuditLog noting each batch it writes and how long each seal takes; nothing else."""

    def __init__(self, directory: Path, signer: Signer, **options: Any) -> None:
        self.batches: list[Batch] = []
        self.seals: list[float] = []
        super().__init__(directory, signer, **options)

    def _write_until_full(self, batch: list[tuple[dict[str, Any], Future[int]]], start: int) -> int:
        segment = self._segment
        offset = segment.size
        end = super()._write_until_full(batch, start)
        self.batches.append(Batch(segment.path, offset, segment.size - offset, end - start))
        return end

    def _seal(self) -> None:
        if self._segment.index.count == 0:
            super()._seal()
            return
        started = time.perf_counter()
        super()._seal()
        self.seals.append(time.perf_counter() - started)


def append_in_bursts(log: AuditLog, records: list[dict[str, Any]], burst: int) -> float:
    """Submit `burst` records at once, wait until each is durable, again; seconds taken."""
    started = time.perf_counter()
    for first in range(0, len(records), burst):
        futures = [log.append(record) for record in records[first : first + burst]]
        for future in futures:
            future.result()
    return time.perf_counter() - started


async def append_in_bursts_async(log: AuditLog, records: list[dict[str, Any]], burst: int) -> float:
    """The same through append_durable from an event loop: the gateway's own path."""
    started = time.perf_counter()
    for first in range(0, len(records), burst):
        await asyncio.gather(*(log.append_durable(r) for r in records[first : first + burst]))
    return time.perf_counter() - started


def seal_and_append(log: AuditLog, sealer: Sealer, requests: list[Request], burst: int) -> float:
    """Seal both payloads, build the record and append it, in bursts: both costs on one core."""
    started = time.perf_counter()
    for first in range(0, len(requests), burst):
        futures = [log.append(sealer.record(r)) for r in requests[first : first + burst]]
        for future in futures:
            future.result()
    return time.perf_counter() - started


def write_raw(path: Path, chunks: list[bytes]) -> float:
    """Append each chunk and fdatasync after it, as the writer does per batch; seconds taken."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        started = time.perf_counter()
        for chunk in chunks:
            view, written = memoryview(chunk), 0
            while written < len(chunk):
                written += os.write(fd, view[written:])
            os.fdatasync(fd)
        return time.perf_counter() - started
    finally:
        os.close(fd)


def batch_bytes(batches: list[Batch]) -> list[bytes]:
    """The bytes each batch wrote, read back from the segments."""
    files: dict[Path, bytes] = {}
    chunks = []
    for batch in batches:
        if batch.path not in files:
            files[batch.path] = batch.path.read_bytes()
        chunks.append(files[batch.path][batch.offset : batch.offset + batch.size])
    return chunks


async def latencies(
    log: AuditLog, records: list[dict[str, Any]], raw_path: Path
) -> tuple[list[float], list[float]]:
    """Append-to-durable of one record at a time, each followed by a raw write + fdatasync
    of as many bytes, side by side; (log, raw) seconds."""
    fd = os.open(raw_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    logged, raw = [], []
    try:
        for record in records:
            started = time.perf_counter()
            await log.append_durable(record)
            logged.append(time.perf_counter() - started)
            data = frame(canonical(record), bytes(32))
            started = time.perf_counter()
            os.write(fd, data)
            os.fdatasync(fd)
            raw.append(time.perf_counter() - started)
    finally:
        os.close(fd)
    return logged, raw


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- where the writer's time goes -----------------------------------------------------


def per_record(
    step: Callable[[], object], count: int, setup: Callable[[], object] | None = None
) -> float:
    """Microseconds per record of `step`, which does `count` records; best of three."""
    best = float("inf")
    for _ in range(3):
        if setup is not None:
            setup()
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def writer_steps(records: list[dict[str, Any]], burst: int) -> list[tuple[str, float]]:
    """What `append` and `_write_until_full` do per record, each step timed on its own,
    with the garbage collector off."""
    gc.collect()
    gc.disable()
    try:
        return _writer_steps([dict(r) for r in records], burst)
    finally:
        gc.enable()


def _writer_steps(records: list[dict[str, Any]], burst: int) -> list[tuple[str, float]]:
    count = len(records)
    bodies = [canonical(r) for r in records]
    chain = bytes(32)
    chains = []
    for body in bodies:
        chain = hashlib.sha256(chain + body).digest()
        chains.append(chain)
    frames = [frame(b, c) for b, c in zip(bodies, chains, strict=True)]
    batches = [b"".join(frames[i : i + burst]) for i in range(0, count, burst)]
    condition = threading.Condition()
    pending: list[tuple[dict[str, Any], Future[int]]] = []

    def append_side() -> None:
        for record in records:
            future: Future[int] = Future()
            with condition:
                pending.append((record, future))
                condition.notify()
            if len(pending) == burst:  # the writer takes them
                pending.clear()

    futures: list[Future[int]] = []

    def resolve() -> None:
        for number, future in enumerate(futures):
            if future.set_running_or_notify_cancel():
                future.set_result(number)

    def make_futures() -> None:
        futures[:] = [Future() for _ in range(count)]

    def chain_step() -> None:
        previous = bytes(32)
        for body in bodies:
            previous = hashlib.sha256(previous + body).digest()

    def index_step() -> None:
        index = SegmentIndex()
        offset = 0
        for record in records:
            index.add(offset, record)
            offset += 100

    def file_hash_step() -> None:
        digest = hashlib.sha256()
        for data in batches:
            digest.update(data)

    def frame_step() -> None:
        for body, chain_hash in zip(bodies, chains, strict=True):
            frame(body, chain_hash)

    def canonical_step() -> None:
        for record in records:
            canonical(record)

    def leaf_step() -> None:
        for body in bodies:
            leaf_hash(body)

    def join_step() -> None:
        for first in range(0, count, burst):
            b"".join(frames[first : first + burst])

    steps = [
        ("append(): a Future, the lock, notify (producer side)", per_record(append_side, count)),
        ("canonical JSON (orjson, sorted keys)", per_record(canonical_step, count)),
        ("chain hash SHA-256(previous + body)", per_record(chain_step, count)),
        ("frame (length + body + hash)", per_record(frame_step, count)),
        ("index.add (subject, model, data classes)", per_record(index_step, count)),
        ("Merkle leaf SHA-256(0x00 + body)", per_record(leaf_step, count)),
        ("join the batch", per_record(join_step, count)),
        ("file hash update (the checkpoint's file_sha256)", per_record(file_hash_step, count)),
        ("resolve the Future (set_result)", per_record(resolve, count, make_futures)),
    ]
    return steps


# --- 1 and 2: appending records with payloads, then verifying them ---------------------


@dataclass
class AppendResults:
    records: int
    burst: int
    warmup_calls: dict[str, int]
    timed_calls: int
    seal_seconds: float
    gateway_seal_records: int
    gateway_seal_seconds: float
    append_seconds: float
    batches: list[Batch]
    seals: list[float]
    raw_seconds: float
    async_seconds: float
    async_batches: int
    both_seconds: float
    both_batches: int
    latency_log: list[float]
    latency_raw: list[float]
    verify_seconds: float
    verify_bytes: int
    verify_records: int
    expansion: Expansion
    body_bytes: int
    sizes: Sizes
    steps: list[tuple[str, float]]


def warm_up(seal: Callable[[str, RecordContext, bytes], object]) -> None:
    """One payload per subject, so every Transit key has its data key cached."""
    for subject in make_subjects(APPEND_SUBJECTS):
        seal(subject.name, RecordContext(NAMESPACE, MODELS[0][0], "warm-up"), b"{}")


def run_appends(workdir: Path, count: int, burst: int, samples: int, pin: int) -> AppendResults:
    log_line(f"making {count:,} requests with 1 KiB prompts and responses")
    requests = make_requests(count)
    vault = DevVault(workdir / "vault", Toolchain.locate())
    vault.start()
    try:
        os.sched_setaffinity(0, {pin})
        counting = CountingVault(vault.addr, vault.root_token)
        transit = TransitClient(counting)
        transit.create_key(namespace_key_name(NAMESPACE))
        counting.calls.clear()
        sealer = Sealer(transit)
        warm_up(sealer.seal)
        sealer.expansion = Expansion()
        warmup_calls = dict(counting.calls)
        counting.calls.clear()

        log_line(f"(a) sealing payloads, {ROUNDS} rounds")
        seal_times = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            records = [sealer.record(r) for r in requests]
            seal_times.append(time.perf_counter() - started)
        body_bytes = sum(len(canonical(r)) for r in records)
        timed_calls = counting.total()

        gateway_sealer = PayloadSealer(EncryptionSettings(vault_addr=vault.addr), counting)
        key = namespace_key_name(NAMESPACE)

        async def gateway_warm_up() -> None:
            for subject in make_subjects(APPEND_SUBJECTS):
                context = RecordContext(NAMESPACE, MODELS[0][0], "warm-up")
                await gateway_sealer.seal(key, subject.name, context, b"{}")

        run_loop(gateway_warm_up())
        counting.calls.clear()
        share = requests[: max(1, count // 5)]
        gateway_seconds = run_loop(seal_as_gateway(gateway_sealer, share))

        log_line(f"(b) appending {count:,} records in bursts of {burst}, then (c), {ROUNDS} rounds")
        signer = Signer.generate()
        append_times, raw_times, rounds = [], [], []
        for number in range(ROUNDS):
            directory = workdir / f"payloads-{number}"
            log = MeasuredLog(directory, signer)
            try:
                append_times.append(append_in_bursts(log, records, burst))
                rounds.append((list(log.batches), list(log.seals)))
                log.seal()
            finally:
                log.close()
            raw = workdir / "raw.bin"
            raw_times.append(write_raw(raw, batch_bytes(log.batches)))
            raw.unlink()
            if number:
                shutil.rmtree(directory)
        batches, seals = rounds[0]

        log_line("the same appends from an event loop (append_durable)")
        async_times, async_batches = [], 0
        for number in range(ROUNDS):
            log = MeasuredLog(workdir / f"async-{number}", Signer.generate())
            try:
                async_times.append(run_loop(append_in_bursts_async(log, records, burst)))
                async_batches = len(log.batches)
            finally:
                log.close()
            shutil.rmtree(workdir / f"async-{number}")

        log_line("sealing and appending together")
        both_times, both_batches = [], 0
        for number in range(ROUNDS):
            for request in requests:
                request.event.prompt_record = request.event.response_record = None
            log = MeasuredLog(workdir / f"both-{number}", Signer.generate())
            try:
                both_times.append(seal_and_append(log, sealer, requests, burst))
                both_batches = len(log.batches)
            finally:
                log.close()
            shutil.rmtree(workdir / f"both-{number}")
        timed_calls += counting.total()
    finally:
        vault.stop()

    log_line(f"latency at concurrency 1 ({samples:,} records)")
    log = MeasuredLog(workdir / "latency", Signer.generate())
    try:
        latency_log, latency_raw = run_loop(
            latencies(log, records[:samples], workdir / "raw-latency.bin")
        )
    finally:
        log.close()

    log_line("verifying the log")
    directory = workdir / "payloads-0"
    started = time.perf_counter()
    report = verify_log(directory, signer.public_key)
    verify_seconds = time.perf_counter() - started
    if not report.ok:
        raise RuntimeError(f"the log does not verify: {report.problems[:3]}")

    log_line("timing the writer's steps")
    steps = writer_steps(records[: min(count, 20_000)], burst)
    return AppendResults(
        records=count,
        burst=burst,
        warmup_calls=warmup_calls,
        timed_calls=timed_calls,
        seal_seconds=min(seal_times),
        gateway_seal_records=len(share),
        gateway_seal_seconds=gateway_seconds,
        append_seconds=min(append_times),
        batches=batches,
        seals=seals,
        raw_seconds=min(raw_times),
        async_seconds=min(async_times),
        async_batches=async_batches,
        both_seconds=min(both_times),
        both_batches=both_batches,
        latency_log=latency_log,
        latency_raw=latency_raw,
        verify_seconds=verify_seconds,
        verify_bytes=report.bytes,
        verify_records=report.records,
        expansion=sealer.expansion,
        body_bytes=body_bytes,
        sizes=log_sizes(directory, report.records),
        steps=steps,
    )


# --- 3: the Tuesday audit over a large log ----------------------------------------------


def cache_name(records: int) -> str:
    if records % 1_000_000 == 0:
        return f"audit-{records // 1_000_000}m"
    if records % 1_000 == 0:
        return f"audit-{records // 1_000}k"
    return f"audit-{records}"


def large_subject_weights() -> list[float]:
    """Some subjects are far busier than others: weight 1/(rank + 10)."""
    return [1 / (rank + 10) for rank in range(LARGE_SUBJECTS)]


def stamp(records: int) -> dict[str, Any]:
    """What the cached log was made from; any difference means making it again."""
    sample = request_record(
        Traffic(make_subjects(3), SEED, denials=True).event(make_subjects(3)[0], 0.0).as_dict(),
        POD,
    )
    return {
        "generator": GENERATOR_VERSION,
        "segment_format": FORMAT_VERSION,
        "checkpoint_format": CHECKPOINT_VERSION,
        "record_fields": sorted(sample),
        "sample_sha256": hashlib.sha256(canonical(sample)).hexdigest(),
        "records": records,
        "segment_records": SEGMENT_RECORDS,
        "subjects": LARGE_SUBJECTS,
        "days": DAYS,
        "start": START.isoformat(),
    }


@dataclass
class LargeLog:
    directory: Path
    records: int
    generated_seconds: float
    seals: list[float]
    cached: bool


def large_log(records: int) -> LargeLog:
    """The cached log of `records` small records, made first when missing or stale."""
    directory = CACHE / cache_name(records)
    expected = stamp(records)
    stamp_file, stats_file = directory / "STAMP.json", directory / "generation.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == expected:
        stats = json.loads(stats_file.read_text())
        log_line(f"using the cached log in {directory.relative_to(ROOT)}")
        return LargeLog(directory, records, stats["seconds"], stats["seals"], cached=True)
    partial = directory.with_name(directory.name + ".partial")
    for stale in (directory, partial):
        if stale.exists():
            shutil.rmtree(stale)
    signer = Signer.generate()
    seconds, seals = generate(partial, signer, records)
    (partial / "public.pem").write_bytes(signer.public_pem())
    (partial / "generation.json").write_text(json.dumps({"seconds": seconds, "seals": seals}))
    (partial / "STAMP.json").write_text(json.dumps(expected, indent=2) + "\n")
    partial.rename(directory)
    return LargeLog(directory, records, seconds, seals, cached=False)


def generate(directory: Path, signer: Signer, records: int) -> tuple[float, list[float]]:
    """Append `records` small request records over DAYS days through AuditLog."""
    log_line(f"generating {records:,} records into {directory.relative_to(ROOT)}")
    traffic = Traffic(make_subjects(LARGE_SUBJECTS), SEED, denials=True)
    cumulative = list(itertools.accumulate(large_subject_weights()))
    step = DAYS * DAY / records
    start = START.timestamp()
    limits = SegmentLimits(records=SEGMENT_RECORDS, bytes=1 << 40, seconds=30 * DAY)
    log = MeasuredLog(directory, signer, limits=limits)
    chunk = 10_000
    started = last_report = time.perf_counter()
    waiting: Future[int] | None = None
    # Making the log, not measuring it: the collector would slow this by half.
    gc.disable()
    try:
        for first in range(0, records, chunk):
            count = min(chunk, records - first)
            chosen = traffic.rng.choices(traffic.subjects, cum_weights=cumulative, k=count)
            future: Future[int] | None = None
            for offset, subject in enumerate(chosen):
                event = traffic.event(subject, start + (first + offset) * step)
                future = log.append(request_record(event.as_dict(), POD))
            # Keep one chunk queued behind the one being written.
            if waiting is not None:
                waiting.result()
            waiting = future
            now = time.perf_counter()
            if now - last_report >= 15 or first + count == records:
                last_report = now
                done = first + count
                rate = done / (now - started)
                log_line(
                    f"  {done:,}/{records:,} records, {rate:,.0f}/s, "
                    f"{(records - done) / rate:.0f} s to go"
                )
        if waiting is not None:
            waiting.result()
    finally:
        gc.enable()
        log.close()
    return time.perf_counter() - started, log.seals


def filesystem(path: Path) -> str:
    """The type of the file system holding `path`, from /proc/mounts."""
    best, kind = "", "an unknown file system"
    resolved = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            mount = fields[1]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, kind = mount, fields[2]
    return kind


def evict(directory: Path) -> None:
    """Drop the log's files from the page cache (POSIX_FADV_DONTNEED), these files only."""
    for path in directory.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def resident_bytes(directory: Path) -> int | None:
    """Bytes of the log's files in the page cache, by fincore(1) when it is there."""
    fincore = shutil.which("fincore")
    if fincore is None:
        return None
    files = [str(p) for p in sorted(directory.iterdir()) if p.is_file()]
    output = subprocess.run(
        [fincore, "--bytes", "--noheadings", "--output", "RES", *files],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    try:
        return sum(int(line) for line in output.split())
    except ValueError:
        return None


@dataclass
class Audit:
    label: str
    subject: str
    cold: QueryResult
    cold_wall: float
    cold_resident: int | None
    warm: QueryResult
    warm_wall: float


@dataclass
class LargeResults:
    log: LargeLog
    audits: list[Audit]
    verify_seconds: float
    verify_bytes: int
    verify_records: int
    sizes: Sizes


def run_large(records: int, verify: bool) -> LargeResults:
    large = large_log(records)
    key = load_public_key(large.directory / "public.pem")
    subjects = make_subjects(LARGE_SUBJECTS)
    audits = []
    for label, rank in (("busiest subject", 0), ("a median subject", LARGE_SUBJECTS // 2)):
        query = AuditQuery(subject=subjects[rank].name, start=TUESDAY, end=TUESDAY + DAY)
        evict(large.directory)
        resident = resident_bytes(large.directory)
        log_line(f"the Tuesday audit, {label}: cold")
        started = time.perf_counter()
        cold = query_log(large.directory, key, query)
        cold_wall = time.perf_counter() - started
        log_line(f"the Tuesday audit, {label}: warm")
        started = time.perf_counter()
        warm = query_log(large.directory, key, query)
        warm_wall = time.perf_counter() - started
        if len(warm.records) != len(cold.records):
            raise RuntimeError("the same query answered differently")
        audits.append(Audit(label, subjects[rank].name, cold, cold_wall, resident, warm, warm_wall))
    verify_seconds, verify_bytes, verify_records = 0.0, 0, 0
    if verify:
        log_line(f"verifying the {records:,}-record log")
        started = time.perf_counter()
        report = verify_log(large.directory, key)
        verify_seconds = time.perf_counter() - started
        if not report.ok:
            raise RuntimeError(f"the large log does not verify: {report.problems[:3]}")
        verify_bytes, verify_records = report.bytes, report.records
    return LargeResults(
        large,
        audits,
        verify_seconds,
        verify_bytes,
        verify_records,
        log_sizes(large.directory, records),
    )


# --- 4: bytes on disk -----------------------------------------------------------------------


@dataclass
class Sizes:
    records: int
    segments: int
    log_bytes: int
    index_bytes: int
    checkpoint_bytes: int
    other_bytes: int

    @property
    def bodies(self) -> int:
        return self.log_bytes - self.segments * HEADER_BYTES - self.records * FRAME_OVERHEAD

    @property
    def total(self) -> int:
        return self.log_bytes + self.index_bytes + self.checkpoint_bytes + self.other_bytes


def log_sizes(directory: Path, records: int) -> Sizes:
    def total(pattern: str) -> int:
        return sum(p.stat().st_size for p in directory.glob(pattern))

    return Sizes(
        records=records,
        segments=len(list(directory.glob("*.log"))),
        log_bytes=total("*.log"),
        index_bytes=total("*.idx"),
        checkpoint_bytes=total("*.ckpt"),
        other_bytes=total("LOG_ID"),
    )


# --- the report -----------------------------------------------------------------------------


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def size_rows(sizes: Sizes) -> Iterator[tuple[str, float]]:
    n = sizes.records
    yield "canonical JSON body", sizes.bodies / n
    yield "frame: length (4 B) + chain hash (32 B)", FRAME_OVERHEAD
    yield "segment header share", sizes.segments * HEADER_BYTES / n
    yield "index share (.idx)", sizes.index_bytes / n
    yield "checkpoint share (.ckpt)", (sizes.checkpoint_bytes + sizes.other_bytes) / n
    yield "**on disk**", sizes.total / n


def table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    """A Markdown table."""
    lines = [header, tuple("---" for _ in header), *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def reading(a: AppendResults, large: LargeResults) -> str:
    """One paragraph saying what the numbers mean, computed from them."""
    n, ll = a.records, large.log
    hashing = sum(us for name, us in a.steps if "SHA-256" in name or "file hash" in name)
    futures = sum(us for name, us in a.steps if "Future" in name)
    steps_total = sum(us for _, us in a.steps)
    both_us, seal_us = a.both_seconds / n * 1e6, a.seal_seconds / n * 1e6
    append_us, raw_us = a.append_seconds / n * 1e6, a.raw_seconds / n * 1e6
    sealer_us = a.gateway_seal_seconds / a.gateway_seal_records * 1e6
    async_us = a.async_seconds / n * 1e6
    p50, p99 = percentile(a.latency_log, 0.5), percentile(a.latency_log, 0.99)
    wait = p50 - percentile(a.latency_raw, 0.5)
    seals = sum(a.seals) / n * 1e6
    decides = (
        f"this disk's fdatasync is cheap ({raw_us:.1f} µs per record at "
        f"{n / len(a.batches):.0f} records per batch), so the writer's CPU decides"
        if raw_us < append_us / 2
        else f"the disk decides ({raw_us:.1f} µs per record for the write and fdatasync)"
    )
    worst = max(large.audits, key=lambda x: x.cold_wall)
    target = "well under" if worst.cold_wall < 2 else "under" if worst.cold_wall < 10 else "over"
    sealed = large.audits[0].cold
    segment_mb = large.sizes.log_bytes / ll.records * SEGMENT_RECORDS / 1e6
    verify = (
        f", the {ll.records:,}-record log in {large.verify_seconds:.0f} s"
        f" ({rate(large.verify_records, large.verify_seconds):,.0f} records/s,"
        f" {large.verify_bytes / 1e6 / large.verify_seconds:,.0f} MB/s)"
        if large.verify_seconds
        else ""
    )
    small_body = large.sizes.bodies / ll.records
    small_overhead = large.sizes.total / ll.records - small_body
    return f"""**Reading.** On one core, sealing a request's payloads and logging it durably costs
{both_us:.0f} µs ({rate(n, a.both_seconds):,.0f} requests/s): sealing {seal_us:.0f} µs called
directly ({sealer_us:.0f} µs through PayloadSealer, which seals inline while both data keys
are cached and hands only Vault calls to a worker thread),
appending {append_us:.0f} µs; together they cost {both_us - seal_us - append_us:.0f} µs more
than the sum, as sealing between appends lets the writer take smaller batches
({n / a.both_batches:.0f} records instead of {n / len(a.batches):.0f}).
The log runs at {raw_us / append_us:.2f} of a
raw write of its bytes: {decides}, {steps_total:.0f} µs per record in the steps above, of
which SHA-256 over every body three times (chain, Merkle leaf, file hash) is {hashing:.1f}
µs and the Future of each record (create, lock, resolve) {futures:.1f} µs; segment seals
add {seals:.1f} µs per record. Awaited from an event loop, as the gateway does, an append
costs {async_us - append_us:.0f} µs more. A request waits {p50 * 1000:.2f} ms (p99
{p99 * 1000:.2f} ms) for its record, {wait * 1000:.2f} ms more than a bare write and
fdatasync. verify_log checks the payload log at
{a.verify_bytes / 1e6 / a.verify_seconds:,.0f} MB/s{verify}. The Tuesday audit reads
{sealed.segments_read} of {sealed.segments_read + sealed.segments_skipped} segments (about
{segment_mb:,.0f} MB each) and answers in {worst.cold_wall:.1f} s at worst, cold: {target}
the 10 s target; its time goes to reading and hashing those segments, however busy the
subject. The log adds {small_overhead:.0f} bytes per record on disk,
{small_overhead / small_body * 100:.0f}% of a small record's body."""


def reflow(text: str, width: int = 90) -> str:
    """Wrap each prose paragraph again after the numbers went in; tables and titles stay."""
    blocks = []
    for block in text.split("\n\n"):
        if block.startswith(("|", "#")):
            blocks.append(block)
        else:
            blocks.append(
                textwrap.fill(
                    " ".join(block.split()),
                    width,
                    break_long_words=False,
                    break_on_hyphens=False,
                )
            )
    return "\n\n".join(blocks)


def report(appends: AppendResults, large: LargeResults, command: str, started: float) -> str:
    today = datetime.date.today().isoformat()
    a, ll = appends, large.log
    n, batches = a.records, len(a.batches)
    batch_sizes = sorted(b.records for b in a.batches)
    appended_mb = sum(b.size for b in a.batches) / 1e6
    seal_rate = rate(n, a.seal_seconds)
    gateway_rate = rate(a.gateway_seal_records, a.gateway_seal_seconds)
    append_rate = rate(n, a.append_seconds)
    raw_rate = rate(n, a.raw_seconds)
    overhead_us = (a.append_seconds - a.raw_seconds) / n * 1e6
    appending = table(
        ("path", "records/s", "µs per record"),
        [
            (label, f"{value:,.0f}", f"{1e6 / value:.1f}")
            for label, value in (
                ("(a) seal prompt + response: 4 envelope encryptions, base64", seal_rate),
                ("(a') the same through PayloadSealer.seal, as the gateway does", gateway_rate),
                (f"(b) AuditLog.append in bursts of {a.burst}", append_rate),
                (f"(c) raw write + fdatasync, same bytes, same {batches:,} batches", raw_rate),
                ("(b) by append_durable from an event loop", rate(n, a.async_seconds)),
                (f"seal + append together, bursts of {a.burst}", rate(n, a.both_seconds)),
            )
        ],
    )
    seals = a.seals
    seal_note = (
        f"{len(seals)} segment seal{'s' if len(seals) != 1 else ''} at the 64 MiB limit "
        f"({sum(seals) * 1000:.0f} ms in all) fell inside (b)"
        if seals
        else "no segment filled up during (b)"
    )
    names = {"datakey": "data keys", "keys": "key creations"}
    calls = ", ".join(f"{v} {names.get(k, k)}" for k, v in sorted(a.warmup_calls.items()))
    keys = APPEND_SUBJECTS + 1
    latency = table(
        ("at concurrency 1", "p50", "p99"),
        [
            (label, ms(percentile(values, 0.5)), ms(percentile(values, 0.99)))
            for label, values in (
                ("`append_durable`: what a gateway request waits for", a.latency_log),
                ("raw write + fdatasync of as many bytes", a.latency_raw),
            )
        ],
    )
    steps_total = sum(us for _, us in a.steps)
    steps = table(
        ("step", "µs per record"),
        [(name, f"{us:.2f}") for name, us in a.steps] + [("**sum**", f"**{steps_total:.2f}**")],
    )
    verify_rows = [("payload records of (1)", a.verify_records, a.verify_bytes, a.verify_seconds)]
    if large.verify_seconds:
        verify_rows.append(
            ("small records of (3)", large.verify_records, large.verify_bytes, large.verify_seconds)
        )
    verifying = table(
        ("log", "records", "MB", "seconds", "records/s", "MB/s"),
        [
            (
                label,
                f"{records:,}",
                f"{size / 1e6:,.0f}",
                f"{seconds:.1f}",
                f"{rate(records, seconds):,.0f}",
                f"{size / 1e6 / seconds:,.0f}",
            )
            for label, records, size, seconds in verify_rows
        ],
    )
    audits = table(
        ("subject", "records returned", "segments read / skipped", "cold", "warm"),
        [
            (
                x.label,
                f"{len(x.cold.records):,}",
                f"{x.cold.segments_read} / {x.cold.segments_skipped}",
                f"{x.cold_wall:.2f} s",
                f"{x.warm_wall:.2f} s",
            )
            for x in large.audits
        ],
    )
    resident = large.audits[0].cold_resident
    cold_note = (
        f"fincore then counted {resident / 1e6:.1f} MB of its files in the page cache"
        if resident is not None
        else "fincore was not there to check what stayed cached"
    )
    generation = (
        f"made by an earlier run in {ll.generated_seconds:.0f} s and cached"
        if ll.cached
        else f"made in this run in {ll.generated_seconds:.0f} s"
    )
    mean_seal = sum(ll.seals) / len(ll.seals) * 1000 if ll.seals else 0.0
    small = dict(size_rows(large.sizes))
    sizes = table(
        ("bytes per record", "payload records of (1)", "small records of (3)"),
        [(name, f"{value:,.1f}", f"{small[name]:,.1f}") for name, value in size_rows(a.sizes)],
    )
    payload_body = a.sizes.bodies / n
    payload_overhead = a.sizes.total / n - payload_body
    small_body = large.sizes.bodies / ll.records
    small_overhead = large.sizes.total / ll.records - small_body
    exp = a.expansion
    per = exp.payloads
    elapsed = time.perf_counter() - started

    return reflow(f"""## Audit log

`make bench` (`{command}`), {today}, {machine()}, logs on
{filesystem(CACHE)} (.bench/). The benchmark pins itself to one core once Vault (dev
mode, on loopback) is up; Vault may use the other. Rates are the best of {ROUNDS} rounds.
Whole run: {elapsed / 60:.1f} min.

### Appending (1)

{n:,} allowed chat-completion requests from {APPEND_SUBJECTS} subjects (people, workloads,
API keys) to {len(MODELS)} models, data classes and filter findings on a third; each
carries a {PAYLOAD_BYTES}-byte request body and a {PAYLOAD_BYTES}-byte answer, sealed under
the namespace's Transit key then under the subject's (`audit-subject-…`), in base64 in the
record: {a.body_bytes / n:,.0f} bytes of canonical JSON per record. Producers submit bursts
of {a.burst} records (as {a.burst} requests in flight would) and wait until each is
durable; default group commit and SegmentLimits (100,000 records, 64 MiB, 1 h): {seal_note}.

{appending}

(b) / (c) = **{append_rate / raw_rate:.2f}**: the log spends {overhead_us:.1f} µs per
record beyond writing and syncing its bytes; each round of (c) replays the batches of
the round of (b) before it. (b) made {batches:,} batches (one write and
one fdatasync each) for {appended_mb:,.0f} MB: {n / batches:.1f} records on average
(median {batch_sizes[len(batch_sizes) // 2]}, smallest {batch_sizes[0]}, largest
{batch_sizes[-1]}); from the event loop {n / a.async_batches:.1f}, sealing and appending
together {n / a.both_batches:.1f}. Vault: {calls} before timing (one payload per subject:
a data key for each of the {keys} Transit keys, the namespace's and the {APPEND_SUBJECTS}
subjects', and each subject key created on first use), then {a.timed_calls} for the
{a.expansion.payloads:,} payloads sealed while timing. A data key serves 300 s
(`max_key_age`) or 100,000 payloads, so with these subjects a gateway asks Vault for
about {keys} data keys per 5 minutes, plus one per 100,000 payloads under a busy key.
(a') is timed on the first {a.gateway_seal_records:,} requests.

{latency}

Where the writer's CPU time goes per record of (b), each step timed alone over the same
records (best of 3, garbage collector off):

{steps}

### Verifying (2)

`verify_log` over a whole log: every checkpoint signature, file and index hash, chain
hash and Merkle root.

{verifying}

### The Tuesday audit (3)

A log of {ll.records:,} small request records (the same fields without payloads, as a
gateway that keeps none writes them; {LARGE_SUBJECTS:,} subjects, the busiest weighted
1/(rank+10), 4% denied, over {DAYS} days from Monday {START.date().isoformat()}) in
segments of {SEGMENT_RECORDS:,} records, {generation} (.bench/{cache_name(ll.records)}/,
stamped with the record format), through AuditLog: {mean_seal:.0f} ms per segment seal
(index, Merkle root, signature, three fsynced files). `query_log(subject=…,
start=Tuesday 00:00 UTC, end=+24 h)`, cold after evicting the log's files from the page
cache with `posix_fadvise(DONTNEED)` ({cold_note}; the VM's host may still cache the
disk), then warm: the same query again. Target: under 10 s.

{audits}

### Bytes on disk (4)

{sizes}

Beyond the JSON body: {payload_overhead:.1f} bytes per record with payloads
({payload_overhead / payload_body * 100:.1f}% of the body), {small_overhead:.1f} without
({small_overhead / small_body * 100:.1f}%). Sealing a {exp.plaintext / per:,.0f}-byte
payload gives {exp.model_sealed / per:,.0f} bytes under the model's key,
{exp.subject_sealed / per:,.0f} under the subject's too ({exp.subject_sealed / exp.plaintext:.2f}
x), {exp.base64 / per:,.0f} characters of base64 in the record
({exp.base64 / exp.plaintext:.2f} x the plaintext).

{reading(a, large)}""")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--records", type=int, default=10_000_000, help="size of the Tuesday-audit log"
    )
    parser.add_argument(
        "--append-records", type=int, default=50_000, help="records with payloads for (1)"
    )
    parser.add_argument("--burst", type=int, default=BURST)
    parser.add_argument("--latency-samples", type=int, default=1_000)
    parser.add_argument(
        "--no-verify-large", action="store_true", help="skip verify_log over the large log"
    )
    args = parser.parse_args()
    command = "python -m tests.benchmarks.bench_audit" + "".join(f" {arg}" for arg in sys.argv[1:])
    started = time.perf_counter()

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    CACHE.mkdir(exist_ok=True)
    pin = max(os.sched_getaffinity(0))
    workdir = Path(tempfile.mkdtemp(prefix="audit-run-", dir=CACHE))
    try:
        appends = run_appends(workdir, args.append_records, args.burst, args.latency_samples, pin)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    large = run_large(args.records, verify=not args.no_verify_large)
    body = report(appends, large, command, started)
    write_section(SECTION, body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
