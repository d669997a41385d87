"""`privatellm gateway` as a process: it serves, traces, and drains on SIGTERM losing no event."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from privatellm.devcluster.cluster import free_port
from tests.gateway.conftest import base_config, gateway_stack, upstream
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_client import chat, first_answer


def test_two_workers_serve_and_every_event_is_on_disk_after_sigterm(tmp_path: Path) -> None:
    with FakeOpenAI(model="fake-model") as model:
        config = tmp_path / "gateway.yaml"
        config.write_text(yaml.safe_dump(base_config({"llama": [model.url]})))
        port, audit = free_port(), tmp_path / "audit.jsonl"
        command = [sys.executable, "-m", "privatellm.cli.main", "gateway"]
        command += ["--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        command += ["--audit-log", str(audit), "--workers", "2"]
        log = (tmp_path / "gateway.log").open("w")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            first_answer(url)
            statuses = [chat(url) for _ in range(40)]
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    assert statuses == [200] * 40
    assert process.returncode == 0
    files = sorted(tmp_path.glob("audit.jsonl.*"))
    assert [f.name for f in files] == ["audit.jsonl.0", "audit.jsonl.1"]
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    events = [e for e in lines if e.get("kind") != "control"]
    assert len(events) == 41  # the first request that found the gateway up, then 40
    assert [e["action"] for e in lines if e.get("kind") == "control"] == ["gateway.start"] * 2
    assert {e["decision"] for e in events} == {"allow"}


def test_spans_cover_authentication_filters_and_the_upstream_call() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def scenario() -> None:
        async with upstream() as model:
            config = base_config({"llama": [model.url]})
            async with gateway_stack(config, tracer=provider.get_tracer("test")) as stack:
                status, _ = await stack.chat("hello")
                assert status == 200

    asyncio.run(scenario())
    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["authenticate", "filter.inbound", "upstream", "filter.outbound"]
