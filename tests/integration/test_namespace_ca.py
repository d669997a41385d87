"""One CA per namespace, however many reconciles ask for it at once (real API server)."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable

from privatellm.controllers.tls import namespace_ca
from privatellm.keys.tls import CA_VALIDITY, KeyPair
from privatellm.kube.client import KINDS, Kube
from privatellm.render.tls import CA_CERT_KEY, NAMESPACE_CA_SECRET, secret_bytes

from .conftest import Cluster

WORKERS = 8


def all_at_once(work: Callable[[], KeyPair]) -> list[KeyPair]:
    """Run `work` in WORKERS threads released together; their results."""
    start = threading.Barrier(WORKERS)
    results: list[KeyPair] = []
    lock = threading.Lock()

    def run() -> None:
        start.wait()
        result = work()
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == WORKERS
    return results


def stored_ca(kube: Kube, namespace: str) -> bytes:
    return secret_bytes(kube.get(KINDS["Secret"], namespace, NAMESPACE_CA_SECRET), CA_CERT_KEY)


def test_reconciles_racing_on_a_new_namespace_all_use_one_ca(
    cluster: Cluster, namespace: str
) -> None:
    kube = Kube(cluster.api)
    now = datetime.datetime.now(datetime.UTC)
    cas = all_at_once(lambda: namespace_ca(kube, namespace, now))
    assert {ca.cert_pem for ca in cas} == {stored_ca(kube, namespace)}


def test_reconciles_racing_on_a_renewal_all_use_one_new_ca(
    cluster: Cluster, namespace: str
) -> None:
    kube = Kube(cluster.api)
    now = datetime.datetime.now(datetime.UTC)
    first = namespace_ca(kube, namespace, now)
    # A month before it expires the CA is due for renewal, for every worker at once.
    later = now + CA_VALIDITY - datetime.timedelta(days=30)
    cas = all_at_once(lambda: namespace_ca(kube, namespace, later))
    renewed = {ca.cert_pem for ca in cas}
    assert renewed == {stored_ca(kube, namespace)} and first.cert_pem not in renewed
