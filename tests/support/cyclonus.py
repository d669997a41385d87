"""NetworkPolicy verdicts offline, from cyclonus (github.com/mattfenwick/cyclonus).

`judge` hands NetworkPolicies and connections to `cyclonus analyze --mode query-traffic`,
which evaluates them as the NetworkPolicy API specifies, with no cluster and no CNI. The
binary is the one `scripts/testenv.sh` builds (CYCLONUS_BINARY in privatellm.devcluster).

What a verdict means, as cyclonus v0.5.6 models it:
- A connection is allowed when the source's egress and the destination's ingress allow it;
  an External end has no policies, so its side never restricts anything.
- Pod and namespace selectors never select an External address; an ipBlock is matched
  against the peer's IP, pod or not, so a pod whose IP is in the CIDR matches it (as with
  Calico; Cilium, for one, does not apply ipBlock to pods).
- `except`, `endPort` and any protocol (SCTP too) are honoured; a port named in a policy
  matches only a connection whose `port_name` is that name.
- There are no Services: give the destination pod's IP and container port, not a ClusterIP.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# The only parts of a NetworkPolicy cyclonus reads; it parses strictly, so extra keys fail.
POLICY_KEYS = ("apiVersion", "kind", "metadata", "spec")
# query-traffic prints, per traffic: "Traffic:", a table of its two ends, "Is traffic
# allowed?" and a table whose footer row is "| IS ALLOWED? | TRUE |" (or FALSE).
_SOURCE = re.compile(r"^\|\s*(\d+) \(.*?\|\s*source\s*\|\s*([^|\s]+)\s*\|", re.MULTILINE)
# Equal cells of adjacent rows are merged, so a destination with the source's IP shows none.
_DESTINATION = re.compile(r"^\|.*?\|\s*destination\s*\|\s*([^|\s]*)\s*\|", re.MULTILINE)
_VERDICT = re.compile(r"^\|\s*IS ALLOWED\?\s*\|\s*(TRUE|FALSE)\s*\|", re.MULTILINE)


class CyclonusError(RuntimeError):
    """cyclonus failed, or its answer does not fit the connections asked about."""


@dataclass(frozen=True)
class Pod:
    """A pod: the labels and address policies see, and its namespace's labels."""

    namespace: str
    labels: Mapping[str, str]
    ip: str
    namespace_labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ipaddress.ip_address(self.ip)  # cyclonus itself would only trip on it in an ipBlock
        # The API server gives every namespace this label; namespace selectors rely on it.
        labels = {**self.namespace_labels, NAMESPACE_NAME_LABEL: self.namespace}
        object.__setattr__(self, "namespace_labels", labels)


@dataclass(frozen=True)
class External:
    """An address outside the cluster: no pod, no namespace."""

    ip: str

    def __post_init__(self) -> None:
        ipaddress.ip_address(self.ip)


@dataclass(frozen=True)
class Connection:
    """A connection to `port`; `port_name` is the destination container port's name."""

    source: Pod | External
    destination: Pod | External
    port: int
    protocol: str = "TCP"
    port_name: str | None = None


def _peer(end: Pod | External) -> dict[str, Any]:
    # matcher.TrafficPeer (Go field names, no JSON tags): Internal is null outside the cluster.
    if isinstance(end, External):
        return {"Internal": None, "IP": end.ip}
    internal = {
        "Namespace": end.namespace,
        "PodLabels": dict(end.labels),
        "NamespaceLabels": dict(end.namespace_labels),
    }
    return {"Internal": internal, "IP": end.ip}


def _traffic(connection: Connection) -> dict[str, Any]:
    # matcher.Traffic: the port both as number and as name, since a policy may use either.
    return {
        "Source": _peer(connection.source),
        "Destination": _peer(connection.destination),
        "ResolvedPort": connection.port,
        "ResolvedPortName": connection.port_name or "",
        "Protocol": connection.protocol,
    }


def _manifest(policy: Mapping[str, Any]) -> dict[str, Any]:
    manifest = {key: policy[key] for key in POLICY_KEYS if key in policy}
    spec = dict(manifest.get("spec") or {})
    if not spec.get("policyTypes"):
        # cyclonus refuses a policy without policyTypes; this is the API server's default.
        spec["policyTypes"] = ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]
    return {**manifest, "spec": spec}


def _verdicts(output: str, connections: Sequence[Connection]) -> list[bool]:
    blocks = re.split(r"^Traffic:$", output, flags=re.MULTILINE)[1:]
    if len(blocks) != len(connections):
        raise CyclonusError(
            f"cyclonus judged {len(blocks)} connections, not {len(connections)}:\n{output}"
        )
    verdicts = []
    for index, (block, connection) in enumerate(zip(blocks, connections, strict=True)):
        source, destination, verdict = (p.search(block) for p in (_SOURCE, _DESTINATION, _VERDICT))
        if source is None or destination is None or verdict is None:
            raise CyclonusError(f"cannot read cyclonus's answer #{index}:\n{block}")
        seen = (int(source[1]), source[2], destination[1] or source[2])
        asked = (connection.port, connection.source.ip, connection.destination.ip)
        if seen != asked:
            raise CyclonusError(f"cyclonus's answer #{index} is about {seen}, not {asked}")
        verdicts.append(verdict[1] == "TRUE")
    return verdicts


def judge(
    policies: Sequence[Mapping[str, Any]], connections: Sequence[Connection], binary: Path
) -> list[bool]:
    """Whether the policies allow each connection (egress of source, ingress of destination).

    `policies` are NetworkPolicy manifests as the API server returns them (camelCase).
    """
    with tempfile.TemporaryDirectory(prefix="cyclonus-") as tmp:
        policy_dir = Path(tmp) / "policies"
        policy_dir.mkdir()
        for index, policy in enumerate(policies):
            # One policy a file: cyclonus reads a file as one policy or one NetworkPolicyList.
            (policy_dir / f"{index}.yaml").write_text(yaml.safe_dump(_manifest(policy)))
        traffic = Path(tmp) / "traffic.json"
        traffic.write_text(json.dumps([_traffic(c) for c in connections]))
        command = [str(binary), "analyze", "--mode", "query-traffic"]
        command += ["--policy-path", str(policy_dir), "--traffic-path", str(traffic)]
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        raise CyclonusError(f"cyclonus exited with {result.returncode}:\n{result.stderr.strip()}")
    return _verdicts(result.stdout, connections)
