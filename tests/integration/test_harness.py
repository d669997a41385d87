"""The control plane is real: version-stamped, RBAC, PodSecurity, scheduler, KWOK nodes."""

from __future__ import annotations

from collections import Counter

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from privatellm.devcluster.nodes import GPU_PRODUCT_LABEL, GPU_RESOURCE, GPU_TAINT, ZONE_LABEL

from .conftest import Cluster, wait_until

ZONES = {"zone-a", "zone-b", "zone-c"}


def test_version_is_stamped(cluster: Cluster) -> None:
    version = client.VersionApi(cluster.api).get_code()
    assert version.git_version.startswith("v1.")
    assert int(version.minor.rstrip("+")) >= 34


def test_gpu_nodes_in_three_zones_are_ready(cluster: Cluster) -> None:
    nodes = cluster.core.list_node().items
    gpu_nodes = [n for n in nodes if GPU_RESOURCE in (n.status.allocatable or {})]
    assert {n.metadata.labels[ZONE_LABEL] for n in gpu_nodes} == ZONES
    assert min(Counter(n.metadata.labels[ZONE_LABEL] for n in gpu_nodes).values()) >= 2
    for node in gpu_nodes:
        assert GPU_PRODUCT_LABEL in node.metadata.labels
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert ready.status == "True", node.metadata.name


def test_rbac_denies_an_unprivileged_identity(cluster: Cluster, namespace: str) -> None:
    review = client.AuthorizationV1Api(cluster.api).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user="nobody",
                resource_attributes=client.V1ResourceAttributes(
                    namespace=namespace, verb="list", resource="secrets"
                ),
            )
        )
    )
    assert review.status.allowed is False


def test_pod_security_admission_enforces_restricted(cluster: Cluster, namespace: str) -> None:
    cluster.core.patch_namespace(
        namespace,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    privileged = client.V1Pod(
        metadata=client.V1ObjectMeta(name="privileged"),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="c",
                    image="busybox",
                    security_context=client.V1SecurityContext(privileged=True),
                )
            ]
        ),
    )
    with pytest.raises(ApiException) as rejected:
        cluster.core.create_namespaced_pod(namespace, privileged)
    assert rejected.value.status == 403
    assert "violates PodSecurity" in rejected.value.body


def gpu_deployment(replicas: int) -> client.V1Deployment:
    labels = {"app": "gpu-spread"}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name="gpu-spread"),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(
                            name="model",
                            image="vllm/vllm-openai",
                            resources=client.V1ResourceRequirements(
                                requests={GPU_RESOURCE: "2", "cpu": "1"},
                                limits={GPU_RESOURCE: "2"},
                            ),
                        )
                    ],
                    tolerations=[
                        client.V1Toleration(
                            key=GPU_TAINT["key"], operator="Exists", effect="NoSchedule"
                        )
                    ],
                    topology_spread_constraints=[
                        client.V1TopologySpreadConstraint(
                            max_skew=1,
                            topology_key=ZONE_LABEL,
                            when_unsatisfiable="DoNotSchedule",
                            label_selector=client.V1LabelSelector(match_labels=labels),
                        )
                    ],
                ),
            ),
        ),
    )


def test_gpu_pods_spread_over_three_zones_and_run(cluster: Cluster, namespace: str) -> None:
    cluster.apps.create_namespaced_deployment(namespace, gpu_deployment(replicas=6))

    def running_pods() -> list[client.V1Pod]:
        pods = cluster.core.list_namespaced_pod(namespace, label_selector="app=gpu-spread").items
        running = [p for p in pods if p.status.phase == "Running"]
        return running if len(running) == 6 else []

    pods = wait_until(running_pods, timeout=90, what="6 Running GPU pods")
    nodes = {n.metadata.name: n for n in cluster.core.list_node().items}
    zones = Counter(nodes[p.spec.node_name].metadata.labels[ZONE_LABEL] for p in pods)
    assert zones == {"zone-a": 2, "zone-b": 2, "zone-c": 2}
    assert all(GPU_RESOURCE in nodes[p.spec.node_name].status.allocatable for p in pods)
    wait_until(
        lambda: (
            cluster.apps.read_namespaced_deployment("gpu-spread", namespace).status.ready_replicas
            == 6
        ),
        what="Deployment reports 6 ready replicas",
    )
