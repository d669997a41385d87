"""The demo's requests, on the real control plane: the gateway the operator configured for
the examples serves them here, in front of the stand-in model."""

from __future__ import annotations

from pathlib import Path

import pytest

from privatellm.controllers.gateway import reconcile_gateway
from privatellm.cost.usage import load
from privatellm.devcluster.demo import ALLOWED_PROMPT, run_demo
from privatellm.kube.client import KINDS, Kube

from .conftest import ROOT, Cluster


def test_the_demo_shows_a_redacted_prompt_a_refusal_and_their_verified_records(
    crds: Cluster, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crds.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples"))
    kube = Kube(crds.api)
    reconcile_gateway(kube, namespace)

    assert run_demo(kube, namespace, tmp_path, vllm=None) == 0
    shown = capsys.readouterr().out
    received = shown.split("What the model received:\n")[1].splitlines()[0]
    assert "jane.doe@example.com" not in received and "DE89" not in received
    assert "[IBAN]" in received and ALLOWED_PROMPT.split(":")[0] in received
    assert "HTTP 200" in shown
    assert "HTTP 400: pii_blocked:paymentCard" in shown
    assert "Requests that reached the model: 0" in shown
    records = shown.split("chain and signatures verified):\n")[1]
    assert '"decision": "allow"' in records and '"decision": "deny"' in records
    # The allowed request's use is in the usage ledger the report shares spend by.
    month = shown.split("is in the usage ledger: ")[1].split()[0]
    stored = kube.get(KINDS["ConfigMap"], namespace, month)
    assert stored is not None
    # Counted in UTC and in the example budget's Europe/Amsterdam.
    rows = load(stored["data"])
    assert sorted((r.zone, r.model, r.requests) for r in rows) == [
        ("Europe/Amsterdam", "llama-8b", 1),
        ("UTC", "llama-8b", 1),
    ]
