"""Gateway to model over mutual TLS, with certificates from the namespace CA."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

from privatellm.keys.tls import issue_ca, issue_leaf
from tests.gateway.conftest import base_config, gateway_stack
from tests.support.fake_openai import FakeOpenAI


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_only_a_gateway_with_the_namespace_certificate_reaches_the_model(tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca = issue_ca("team-a", now)
    server = issue_leaf(ca, "llama", ["llama.team-a.svc"], now)
    client = issue_leaf(ca, "privatellm-gateway", ["privatellm-gateway.team-a.svc"], now)
    stranger_ca = issue_ca("elsewhere", now)
    stranger = issue_leaf(stranger_ca, "intruder", ["intruder"], now)

    # The model side, as vLLM runs it: --ssl-ca-certs with required client certificates.
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(
        _write(tmp_path / "server.crt", server.cert_pem),
        _write(tmp_path / "server.key", server.key_pem),
    )
    server_tls.load_verify_locations(_write(tmp_path / "ca.crt", ca.cert_pem))
    server_tls.verify_mode = ssl.CERT_REQUIRED

    def config(cert: bytes, key: bytes, name: str, upstream: str) -> dict[str, object]:
        result = base_config({"llama": [upstream]})
        result["upstreamTls"] = {
            "caFile": str(tmp_path / "ca.crt"),
            "certFile": _write(tmp_path / f"{name}.crt", cert),
            "keyFile": _write(tmp_path / f"{name}.key", key),
        }
        return result

    async def scenario() -> None:
        async with FakeOpenAI(model="fake-model", ssl_context=server_tls) as model:
            assert model.url.startswith("https://")
            own = config(client.cert_pem, client.key_pem, "gateway", model.url)
            async with gateway_stack(own) as stack:
                status, body = await stack.chat("hello")
                assert status == 200, body
            other = config(stranger.cert_pem, stranger.key_pem, "stranger", model.url)
            async with gateway_stack(other) as stack:
                status, body = await stack.chat("hello")
                assert status == 503 and body["error"]["code"] == "no_ready_replica"

    asyncio.run(scenario())
