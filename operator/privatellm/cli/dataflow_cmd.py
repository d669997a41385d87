"""`privatellm dataflow`: the data-flow map of a live namespace, read from its objects."""

from __future__ import annotations

import argparse
import base64
import sys
from typing import TYPE_CHECKING, Any

import yaml

from privatellm.api import AccessPolicy, DataConnector, InferenceDeployment
from privatellm.render.dataflow import (
    FORMATS,
    DataFlow,
    GatewayView,
    build_dataflow,
    format_dataflow,
)
from privatellm.render.gateway import CONFIG_KEY, CONFIG_SECRET, GATEWAY_NAME

if TYPE_CHECKING:
    from privatellm.kube.client import Kube


def add_dataflow_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "dataflow",
        help="map where a namespace's data comes from, which filters it passes, where it "
        "goes and rests, and which Transit key protects it",
    )
    parser.add_argument("-n", "--namespace", default="default", help="the namespace to map")
    parser.add_argument("--format", choices=FORMATS, default="table")


def _arg(args: list[str], flag: str) -> str | None:
    prefix = f"--{flag}="
    return next((a[len(prefix) :] for a in args if a.startswith(prefix)), None)


def gateway_view(kube: Kube, namespace: str) -> GatewayView:
    """What the gateway's StatefulSet and configuration say about the data it keeps."""
    from privatellm.kube.client import KINDS, ApiError

    sts = kube.get(KINDS["StatefulSet"], namespace, GATEWAY_NAME)
    if sts is None:
        return GatewayView()
    spec = sts.get("spec", {})
    containers = spec.get("template", {}).get("spec", {}).get("containers", [])
    gateway: dict[str, Any] = next((c for c in containers if c.get("name") == "gateway"), {})
    args = gateway.get("args", [])
    claims = spec.get("volumeClaimTemplates") or [{}]
    seals: bool | None = None
    # The configuration says whether a Vault seals payloads; without leave to read the
    # Secret the map says "unknown" rather than guess.
    try:
        secret = kube.get(KINDS["Secret"], namespace, CONFIG_SECRET)
    except ApiError:
        secret = None
    if secret is not None and CONFIG_KEY in (secret.get("data") or {}):
        config: dict[str, Any] = yaml.safe_load(base64.b64decode(secret["data"][CONFIG_KEY])) or {}
        seals = bool(config.get("encryption"))
    return GatewayView(
        present=True,
        replicas=int(spec.get("replicas", 0)),
        audit_claim=claims[0].get("metadata", {}).get("name", "audit"),
        worm_bucket=_arg(args, "audit-worm-bucket"),
        worm_prefix=_arg(args, "audit-worm-prefix") or "audit",
        seals_payloads=seals,
    )


def read_dataflow(kube: Kube, namespace: str) -> DataFlow:
    """The namespace's map from its InferenceDeployments, AccessPolicies, DataConnectors
    and gateway, as they are now."""
    from privatellm.kube.client import KINDS

    def listed(kind: str) -> list[dict[str, Any]]:
        return kube.list(KINDS[kind], namespace)

    return build_dataflow(
        namespace,
        [InferenceDeployment.model_validate(o) for o in listed("InferenceDeployment")],
        [AccessPolicy.model_validate(o) for o in listed("AccessPolicy")],
        [DataConnector.model_validate(o) for o in listed("DataConnector")],
        gateway_view(kube, namespace),
    )


def run_dataflow(args: argparse.Namespace) -> int:
    """Print the map; exit 2 when the cluster cannot be read."""
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import HTTPError

    from privatellm.kube.client import ApiError, Kube, new_api_client

    try:
        flow = read_dataflow(Kube(new_api_client()), args.namespace)
    except (ApiError, ConfigException, HTTPError, OSError) as error:
        print(f"privatellm dataflow: {error}", file=sys.stderr)
        return 2
    print(format_dataflow(flow, args.format))
    return 0
