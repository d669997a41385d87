"""Clients the gateway builds from its configuration: TLS to the models, the authenticator."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import aiohttp

from .auth import Authenticator, OIDCConfig, TokenReviewConfig
from .config import GatewayConfig


def upstream_ssl(config: GatewayConfig) -> ssl.SSLContext | bool:
    """TLS towards the model servers: the namespace CA, and the gateway's client certificate."""
    tls = config.upstream_tls
    if tls is None:
        return True
    context = ssl.create_default_context(cafile=tls.ca_file)
    # Replicas are addressed by Service or Pod address; the certificate is the
    # model's own and the CA is the namespace's, so the CA is what is checked.
    context.check_hostname = False
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def authenticator(
    config: GatewayConfig, session: aiohttp.ClientSession, clock: Callable[[], float]
) -> Authenticator:
    """The authenticator the configuration asks for, sharing the gateway's HTTP session."""
    auth = config.auth
    oidc = (
        OIDCConfig(
            issuer=auth.oidc.issuer,
            audience=auth.oidc.audience,
            jwks_uri=auth.oidc.jwks_uri,
            username_claim=auth.oidc.username_claim,
            groups_claim=auth.oidc.groups_claim,
            leeway_seconds=auth.oidc.leeway_seconds,
            ca_file=auth.oidc.ca_file,
        )
        if auth.oidc
        else None
    )
    review = (
        TokenReviewConfig(
            api_server=auth.token_review.api_server,
            token_file=auth.token_review.token_file,
            ca_file=auth.token_review.ca_file,
            audiences=tuple(auth.token_review.audiences),
        )
        if auth.token_review
        else None
    )
    return Authenticator(oidc, auth.api_keys, review, session, clock)
