"""Storage of the local cluster: a default zonal StorageClass, a regional one, and volumes.

No provisioner runs here, so the volumes exist ahead of time. The real PV controller
and scheduler bind a claim to a volume in the zone of the first Pod that mounts it
(WaitForFirstConsumer), which is how zonal file stores behave in a cloud.
"""

from __future__ import annotations

from typing import Any

from .nodes import ZONE_LABEL, NodePlan

STORAGE_CLASS = "zonal-file"
# For data every zone reads, such as the weights a pvc:// model source names.
REGIONAL_STORAGE_CLASS = "regional-file"
VOLUME_SIZE = "4Ti"


def _storage_class(name: str, default: bool) -> dict[str, Any]:
    annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if default else {}
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name, "annotations": annotations},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Retain",
    }


def _volume(name: str, storage_class: str, zone: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "capacity": {"storage": VOLUME_SIZE},
        "accessModes": ["ReadWriteMany", "ReadWriteOnce", "ReadOnlyMany"],
        "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": storage_class,
        "hostPath": {"path": f"/var/lib/privatellm/{name}"},
    }
    if zone:
        term = {"matchExpressions": [{"key": ZONE_LABEL, "operator": "In", "values": [zone]}]}
        spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [term]}}
    labels = {ZONE_LABEL: zone} if zone else {}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }


def render_storage(plan: NodePlan, regional_volumes: int = 8) -> list[dict[str, Any]]:
    """Two StorageClasses, the plan's zonal volumes per zone and some regional ones."""
    zonal = [
        _volume(f"pv-{zone}-{i:03d}", STORAGE_CLASS, zone)
        for zone in plan.zones
        for i in range(1, plan.volumes_per_zone + 1)
    ]
    regional = [
        _volume(f"pv-regional-{i:03d}", REGIONAL_STORAGE_CLASS, None)
        for i in range(1, regional_volumes + 1)
    ]
    return [
        _storage_class(STORAGE_CLASS, default=True),
        _storage_class(REGIONAL_STORAGE_CLASS, default=False),
        *zonal,
        *regional,
    ]
