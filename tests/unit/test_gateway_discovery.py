"""EndpointSlices turned into each Service's ready replicas, and the router's use of them."""

from __future__ import annotations

from typing import Any

import pytest

from privatellm.gateway.config import DiscoverySettings, ModelRoute
from privatellm.gateway.discovery import (
    MAX_RETRY_SECONDS,
    EndpointWatcher,
    Replica,
    ResourceVersionGoneError,
    ready_replicas,
    replica_url,
    retry_delay,
)
from privatellm.gateway.routing import Router, replica_order


def endpoint(
    address: str, zone: str | None = "zone-a", ready: bool | None = True, **conditions: bool
) -> dict[str, Any]:
    state: dict[str, bool] = dict(conditions)
    if ready is not None:
        state["ready"] = ready
    found: dict[str, Any] = {"addresses": [address], "conditions": state}
    if zone:
        found["zone"] = zone
    return found


def endpoint_slice(
    name: str,
    service: str,
    endpoints: list[dict[str, Any]],
    port: int | None = 8000,
    port_name: str = "https",
    version: str = "1",
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "resourceVersion": version,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}] if port else [],
    }


def test_ready_endpoints_become_https_urls_with_their_zone() -> None:
    view = ready_replicas(
        [endpoint_slice("llama-x", "llama", [endpoint("10.0.0.2"), endpoint("10.0.0.1", "b")])]
    )
    assert view == {
        "llama": (
            Replica("https://10.0.0.1:8000", "b"),
            Replica("https://10.0.0.2:8000", "zone-a"),
        )
    }


def test_ipv6_addresses_are_bracketed() -> None:
    ipv6 = endpoint_slice("llama-v6", "llama", [endpoint("fd00::7")])
    ipv6["addressType"] = "IPv6"
    assert ready_replicas([ipv6]) == {"llama": (Replica("https://[fd00::7]:8000", "zone-a"),)}
    assert replica_url("10.1.2.3", 8443) == "https://10.1.2.3:8443"


def test_several_slices_of_a_service_are_merged_and_services_kept_apart() -> None:
    view = ready_replicas(
        [
            endpoint_slice("llama-a", "llama", [endpoint("10.0.0.1")]),
            endpoint_slice("llama-b", "llama", [endpoint("10.0.0.2"), endpoint("10.0.0.1")]),
            endpoint_slice("small-a", "small", [endpoint("10.0.1.1", zone=None)]),
        ]
    )
    assert [r.url for r in view["llama"]] == ["https://10.0.0.1:8000", "https://10.0.0.2:8000"]
    assert view["small"] == (Replica("https://10.0.1.1:8000", None),)


def test_not_ready_and_terminating_endpoints_are_left_out_and_absent_ready_means_ready() -> None:
    view = ready_replicas(
        [
            endpoint_slice(
                "llama-x",
                "llama",
                [
                    endpoint("10.0.0.1", ready=False),
                    endpoint("10.0.0.2", ready=True, terminating=True),
                    endpoint("10.0.0.3", ready=None),
                    endpoint("10.0.0.4", ready=True, terminating=False),
                ],
            ),
            endpoint_slice("small-x", "small", [endpoint("10.0.1.1", ready=False)]),
        ]
    )
    assert [r.url for r in view["llama"]] == ["https://10.0.0.3:8000", "https://10.0.0.4:8000"]
    assert view["small"] == ()


def test_the_https_port_is_used_and_8000_when_there_is_none() -> None:
    named = endpoint_slice("a", "a", [endpoint("10.0.0.1")], port=9443)
    other = endpoint_slice("b", "b", [endpoint("10.0.0.2")], port=9090, port_name="metrics")
    bare = endpoint_slice("c", "c", [endpoint("10.0.0.3")], port=None)
    view = ready_replicas([named, other, bare])
    assert [view[s][0].url for s in "abc"] == [
        "https://10.0.0.1:9443",
        "https://10.0.0.2:8000",
        "https://10.0.0.3:8000",
    ]


def test_slices_without_a_service_label_are_ignored() -> None:
    orphan = endpoint_slice("orphan", "x", [endpoint("10.0.0.1")])
    orphan["metadata"]["labels"] = {}
    assert ready_replicas([orphan]) == {}


def watcher() -> EndpointWatcher:
    return EndpointWatcher(DiscoverySettings(api_server="https://api.invalid"), "team")


def test_the_watcher_knows_nothing_until_it_listed() -> None:
    watching = watcher()
    assert watching.ready("llama") is None
    watching.replace([])
    assert watching.ready("llama") == ()


def test_watch_events_add_change_and_delete_slices() -> None:
    watching = watcher()
    first = endpoint_slice("llama-a", "llama", [endpoint("10.0.0.1")])
    second = endpoint_slice("llama-b", "llama", [endpoint("10.0.0.2")], version="5")
    watching.replace([first])
    watching.apply_event({"type": "ADDED", "object": second})
    assert len(watching.ready("llama") or ()) == 2
    drained = endpoint_slice("llama-b", "llama", [endpoint("10.0.0.2", ready=False)], version="6")
    watching.apply_event({"type": "MODIFIED", "object": drained})
    assert [r.url for r in watching.ready("llama") or ()] == ["https://10.0.0.1:8000"]
    watching.apply_event({"type": "DELETED", "object": first})
    assert watching.ready("llama") == ()
    watching.apply_event({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}})
    assert watching.ready("llama") == ()


def test_a_gone_watch_asks_for_a_new_list() -> None:
    with pytest.raises(ResourceVersionGoneError):
        watcher().apply_event(
            {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
        )


def test_retries_back_off_up_to_a_cap() -> None:
    delays = [retry_delay(n) for n in range(1, 12)]
    assert delays == sorted(delays) and delays[0] < delays[1]
    assert delays[-1] == MAX_RETRY_SECONDS


def test_own_zone_first_then_the_others_each_taken_in_turn() -> None:
    replicas = [
        Replica("https://a1", "zone-a"),
        Replica("https://a2", "zone-a"),
        Replica("https://b1", "zone-b"),
        Replica("https://c1", "zone-c"),
    ]
    assert replica_order(replicas, "zone-b", 0) == [
        "https://b1",
        "https://a1",
        "https://a2",
        "https://c1",
    ]
    assert replica_order(replicas, "zone-a", 1) == [
        "https://a2",
        "https://a1",
        "https://c1",
        "https://b1",
    ]
    assert replica_order(replicas, None, 1)[0] == "https://a2"


def test_the_router_uses_static_endpoints_only_until_discovery_has_listed() -> None:
    route = ModelRoute(
        name="llama", served_name="m", endpoints=["https://llama.team.svc:8000"], service="llama"
    )
    routes = {"llama": route}
    watching = watcher()
    router = Router()
    assert [t.url for t in router.targets(route, routes, watching)] == route.endpoints
    watching.replace([endpoint_slice("llama-a", "llama", [endpoint("10.0.0.1")])])
    assert [t.url for t in router.targets(route, routes, watching)] == ["https://10.0.0.1:8000"]
    watching.replace([])
    assert router.targets(route, routes, watching) == []
    assert [t.url for t in router.targets(route, routes, None)] == route.endpoints
