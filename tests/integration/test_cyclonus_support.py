"""tests/support/cyclonus.py against the real cyclonus binary that scripts/testenv.sh builds.

No cluster: cyclonus judges connections against NetworkPolicies offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from privatellm.devcluster import Toolchain
from privatellm.devcluster.cluster import CYCLONUS_BINARY
from tests.support.cyclonus import Connection, CyclonusError, External, Pod, judge

A = Pod("x", {"app": "a"}, "10.244.0.10")
B = Pod("x", {"app": "b"}, "10.244.0.11")
A_ELSEWHERE = Pod("y", {"app": "a"}, "10.244.1.10")


@pytest.fixture(scope="module")
def cyclonus() -> Path:
    return Path(Toolchain.locate().required(CYCLONUS_BINARY))


def policy(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def test_pod_carries_its_namespace_name_label() -> None:
    pod = Pod("y", {}, "10.244.1.1", {"team": "blue", "kubernetes.io/metadata.name": "z"})
    assert pod.namespace_labels == {"team": "blue", "kubernetes.io/metadata.name": "y"}


def test_no_policies_allow_everything(cyclonus: Path) -> None:
    connections = [
        Connection(A, B, 80),
        Connection(B, A, 53, "UDP"),
        Connection(A, External("8.8.8.8"), 443),
        Connection(External("203.0.113.7"), A, 8080),
    ]
    assert judge([], connections, cyclonus) == [True] * 4


def test_default_deny_ingress_applies_to_the_selected_pods_only(cyclonus: Path) -> None:
    deny = policy("x", "deny-a", {"podSelector": {"matchLabels": {"app": "a"}}})
    connections = [
        Connection(B, A, 80),  # selected: denied
        Connection(External("203.0.113.7"), A, 80),  # from outside too
        Connection(A, B, 80),  # not selected, and the policy says nothing of egress
        Connection(B, A_ELSEWHERE, 80),  # same labels in another namespace
    ]
    assert judge([deny], connections, cyclonus) == [False, False, True, True]


def test_egress_to_an_ip_block_on_one_port(cyclonus: Path) -> None:
    egress = policy(
        "x",
        "egress-b",
        {
            "podSelector": {"matchLabels": {"app": "b"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"port": 443}]}],
        },
    )
    connections = [
        Connection(B, External("10.0.0.5"), 443),
        Connection(B, External("8.8.8.8"), 443),
        Connection(B, External("10.0.0.5"), 80),
        Connection(B, External("10.0.0.5"), 443, "UDP"),  # the policy's port is TCP
        Connection(B, A, 443),  # a pod outside the CIDR
        Connection(A, External("8.8.8.8"), 443),  # another pod: not selected
    ]
    assert judge([egress], connections, cyclonus) == [True, False, False, False, False, True]


def test_ingress_from_selected_pods_in_selected_namespaces(cyclonus: Path) -> None:
    ingress = policy(
        "x",
        "from-blue-clients",
        {
            "podSelector": {"matchLabels": {"app": "a"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"team": "blue"}},
                            "podSelector": {"matchLabels": {"role": "client"}},
                        },
                        {
                            # The label the API server puts on every namespace.
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                            }
                        },
                    ]
                }
            ],
        },
    )
    blue_client = Pod("y", {"role": "client"}, "10.244.1.2", {"team": "blue"})
    blue_other = Pod("y", {"role": "server"}, "10.244.1.3", {"team": "blue"})
    red_client = Pod("z", {"role": "client"}, "10.244.2.2", {"team": "red"})
    local_client = Pod("x", {"role": "client"}, "10.244.0.2")
    monitor = Pod("monitoring", {"app": "prometheus"}, "10.244.3.2")
    connections = [
        Connection(blue_client, A, 8080),
        Connection(blue_other, A, 8080),
        Connection(red_client, A, 8080),
        Connection(local_client, A, 8080),
        Connection(monitor, A, 9090),
        Connection(External("10.244.1.2"), A, 8080),  # a client's IP, but not a pod
    ]
    assert judge([ingress], connections, cyclonus) == [True, False, False, False, True, False]


def test_named_port_matches_the_port_name_only(cyclonus: Path) -> None:
    ingress = policy(
        "x",
        "http-only",
        {
            "podSelector": {"matchLabels": {"app": "a"}},
            "ingress": [{"ports": [{"port": "http"}]}],
        },
    )
    connections = [
        Connection(B, A, 8080, port_name="http"),
        Connection(B, A, 8080),
        Connection(B, A, 9090, port_name="metrics"),
    ]
    assert judge([ingress], connections, cyclonus) == [True, False, False]


def test_except_end_port_and_sctp(cyclonus: Path) -> None:
    egress = policy(
        "x",
        "egress-b",
        {
            "podSelector": {"matchLabels": {"app": "b"}},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}}],
                    "ports": [
                        {"port": 8000, "endPort": 8100},
                        {"port": 3868, "protocol": "SCTP"},
                    ],
                }
            ],
        },
    )
    connections = [
        Connection(B, External("10.0.0.5"), 8050),
        Connection(B, External("10.0.1.5"), 8050),  # in `except`
        Connection(B, External("10.0.0.5"), 8101),  # past endPort
        Connection(B, External("10.0.0.5"), 3868, "SCTP"),
        Connection(B, External("10.0.0.5"), 3868),
    ]
    assert judge([egress], connections, cyclonus) == [True, False, False, True, False]


def test_policy_types_default_as_the_api_server_sets_them(cyclonus: Path) -> None:
    # Without policyTypes, a policy with egress rules restricts egress too.
    egress = policy(
        "x",
        "egress-b",
        {"podSelector": {"matchLabels": {"app": "b"}}, "egress": [{"ports": [{"port": 53}]}]},
    )
    connections = [Connection(B, External("8.8.8.8"), 443), Connection(A, B, 80)]
    assert judge([egress], connections, cyclonus) == [False, False]


def test_cyclonus_refusal_is_an_error(cyclonus: Path) -> None:
    bad = policy("x", "bad", {"podSelector": {}, "policyTypes": ["Ingress"], "bogus": 1})
    with pytest.raises(CyclonusError, match="exited with"):
        judge([bad], [Connection(A, B, 80)], cyclonus)
