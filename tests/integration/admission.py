"""An admission policy that refuses some Deployments in one namespace, for as long as a
block runs: it stands for whatever the API server refuses (an invalid quantity, a policy
engine, a quota), which the operator learns of only from the answer to its apply."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import yaml

from .conftest import Cluster, wait_until


@contextmanager
def refusing_deployments(
    cluster: Cluster,
    namespace: str,
    name: str,
    allowed: str,
    message: str,
    probe: Callable[[], str],
) -> Iterator[None]:
    """Deny Deployments in `namespace` for which the CEL expression `allowed` is false,
    with `message`; `probe` (a server dry run's output) shows when the API server enforces it."""
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["deployments"],
                    }
                ]
            },
            "validations": [{"expression": allowed, "message": message}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([policy, binding]))
    try:
        wait_until(lambda: message in probe(), timeout=30, what="the admission policy in force")
        yield
    finally:
        for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
            cluster.kubectl("delete", kind, name, "--ignore-not-found")
