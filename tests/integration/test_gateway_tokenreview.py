"""ServiceAccount tokens judged by the real API server through the TokenReview API.

The gateway authenticates to the API server as its own ServiceAccount, bound to
`system:auth-delegator`, exactly as it does in a cluster; the API server URL and CA
come from the kubeconfig of the test cluster.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from privatellm.devcluster.cluster import free_port
from privatellm.gateway.auth import Authenticator, AuthError, Identity, TokenReviewConfig

from .conftest import Cluster, wait_until

GATEWAY_AUDIENCE = "privatellm-gateway"


def api_server(kubeconfig: Path, workdir: Path) -> tuple[str, str]:
    """The API server's URL and a file with its CA, from the kubeconfig's first cluster."""
    cluster = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]
    if "certificate-authority-data" in cluster:
        ca_file = workdir / "ca.crt"
        ca_file.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        return cluster["server"], str(ca_file)
    return cluster["server"], cluster["certificate-authority"]


def create_token(cluster: Cluster, namespace: str, account: str, audience: str = "") -> str:
    """A bound token of the ServiceAccount, for the API server or for `audience`."""
    audiences = [f"--audience={audience}"] if audience else []
    # kubectl's output may end with warnings; the token is its first word.
    return cluster.kubectl("create", "token", account, "-n", namespace, *audiences).split()[0]


def authenticate(config: TokenReviewConfig, token: str) -> Identity | AuthError:
    """What a fresh gateway makes of the token (no cached reviews from earlier calls)."""

    async def once() -> Identity:
        async with aiohttp.ClientSession() as session:
            authenticator = Authenticator(None, {}, config, session)
            return await authenticator.authenticate({"Authorization": f"Bearer {token}"})

    try:
        return asyncio.run(once())
    except AuthError as error:
        return error


def reason(outcome: Identity | AuthError) -> str:
    assert isinstance(outcome, AuthError), f"accepted: {outcome}"
    return outcome.reason


@contextlib.contextmanager
def token_reviewer(cluster: Cluster, namespace: str, workdir: Path) -> Iterator[TokenReviewConfig]:
    """The gateway's ServiceAccount allowed to review tokens, and its TokenReview settings."""
    server, ca_file = api_server(cluster.kubeconfig, workdir)
    cluster.kubectl("create", "serviceaccount", "privatellm-gateway", "-n", namespace)
    binding = f"privatellm-gateway-review-{namespace}"
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        binding,
        "--clusterrole=system:auth-delegator",
        f"--serviceaccount={namespace}:privatellm-gateway",
    )
    token_file = workdir / "token"
    token_file.write_text(create_token(cluster, namespace, "privatellm-gateway"))
    try:
        yield TokenReviewConfig(
            api_server=server,
            token_file=str(token_file),
            ca_file=ca_file,
            audiences=(GATEWAY_AUDIENCE,),
        )
    finally:
        cluster.kubectl("delete", "clusterrolebinding", binding, check=False)


@pytest.fixture
def gateway(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[TokenReviewConfig]:
    with token_reviewer(cluster, namespace, tmp_path) as config:
        yield config


def test_a_client_service_account_token_names_its_account(
    cluster: Cluster, namespace: str, gateway: TokenReviewConfig
) -> None:
    cluster.kubectl("create", "serviceaccount", "client", "-n", namespace)
    token = create_token(cluster, namespace, "client", GATEWAY_AUDIENCE)
    assert authenticate(gateway, token) == Identity(
        kind="ServiceAccount",
        name="client",
        groups=frozenset(
            {
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
                "system:authenticated",
            }
        ),
        method="serviceAccount",
        namespace=namespace,
    )


def test_the_token_of_a_deleted_service_account_is_denied(
    cluster: Cluster, namespace: str, gateway: TokenReviewConfig
) -> None:
    cluster.kubectl("create", "serviceaccount", "leaving", "-n", namespace)
    reviewed = create_token(cluster, namespace, "leaving", GATEWAY_AUDIENCE)
    token = create_token(cluster, namespace, "leaving", GATEWAY_AUDIENCE)
    assert isinstance(authenticate(gateway, reviewed), Identity)
    cluster.kubectl("delete", "serviceaccount", "leaving", "-n", namespace)
    # A second token, never reviewed: the API server remembers accepted tokens for
    # about 10 s, which would only delay this. It learns of the deletion through
    # its watch: a moment, not a guarantee.
    wait_until(
        lambda: isinstance(authenticate(gateway, token), AuthError),
        timeout=30,
        what="the deleted ServiceAccount's token to be refused",
    )
    assert reason(authenticate(gateway, token)) == "token_review_denied"


def test_a_token_for_another_audience_is_denied(
    cluster: Cluster, namespace: str, gateway: TokenReviewConfig
) -> None:
    cluster.kubectl("create", "serviceaccount", "client", "-n", namespace)
    for audience in ("", "another-service"):
        token = create_token(cluster, namespace, "client", audience)
        assert reason(authenticate(gateway, token)) == "token_review_denied", audience or "API"


def test_a_forged_token_is_denied(
    cluster: Cluster, namespace: str, gateway: TokenReviewConfig
) -> None:
    cluster.kubectl("create", "serviceaccount", "client", "-n", namespace)
    genuine = jwt.decode(
        create_token(cluster, namespace, "client", GATEWAY_AUDIENCE),
        options={"verify_signature": False},
    )
    # Every claim of a genuine token, signed with a key the cluster does not know.
    forged = jwt.encode(
        genuine,
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        algorithm="RS256",
        headers={"kid": uuid.uuid4().hex},
    )
    assert reason(authenticate(gateway, forged)) == "token_review_denied"


def test_a_gateway_without_auth_delegator_cannot_review(
    cluster: Cluster, namespace: str, gateway: TokenReviewConfig, tmp_path: Path
) -> None:
    cluster.kubectl("create", "serviceaccount", "client", "-n", namespace)
    cluster.kubectl("create", "serviceaccount", "unprivileged", "-n", namespace)
    own_token = tmp_path / "unprivileged-token"
    own_token.write_text(create_token(cluster, namespace, "unprivileged"))
    config = TokenReviewConfig(
        gateway.api_server, str(own_token), gateway.ca_file, gateway.audiences
    )
    outcome = authenticate(config, create_token(cluster, namespace, "client", GATEWAY_AUDIENCE))
    assert isinstance(outcome, AuthError)
    assert (outcome.reason, outcome.status) == ("auth_backend_unavailable", 503)


def test_an_api_server_that_is_down_is_a_503(
    cluster: Cluster, namespace: str, gateway: TokenReviewConfig
) -> None:
    cluster.kubectl("create", "serviceaccount", "client", "-n", namespace)
    token = create_token(cluster, namespace, "client", GATEWAY_AUDIENCE)
    stopped = TokenReviewConfig(
        f"https://127.0.0.1:{free_port()}", gateway.token_file, gateway.ca_file, gateway.audiences
    )
    outcome = authenticate(stopped, token)
    assert isinstance(outcome, AuthError)
    assert (outcome.reason, outcome.status) == ("auth_backend_unavailable", 503)
