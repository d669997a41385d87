"""The demo's gateway configuration: the operator's, with the models served locally."""

from __future__ import annotations

from privatellm.devcluster.demo import local_gateway_config


def test_the_local_configuration_keeps_the_policies_and_points_every_model_here() -> None:
    rendered = {
        "namespace": "team",
        "models": [{"name": "chat", "servedName": "c", "endpoints": ["https://x"], "service": "c"}],
        "policies": [{"name": "p", "spec": {}}],
        "auth": {"apiKeys": {"digest": "key"}, "tokenReview": {"apiServer": "https://k"}},
        "discovery": {},
        "quotaSharing": {},
        "upstreamTls": {},
    }
    local = local_gateway_config(rendered, "http://127.0.0.1:9")
    assert local == {
        "namespace": "team",
        "models": [{"name": "chat", "servedName": "c", "endpoints": ["http://127.0.0.1:9"]}],
        "policies": [{"name": "p", "spec": {}}],
        "auth": {"apiKeys": {"digest": "key"}},
    }
