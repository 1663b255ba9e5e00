"""Durability: SIGKILL the server right after acknowledged writes, restart it on the same data: nothing
acknowledged is lost (SQLite and etcd), certificates and kubeconfigs are reused, and the bootstrap objects
are not duplicated.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from skiff.cluster.store.etcd_process import EtcdProcess
from tests.cluster.api.conftest import ServerProcess, make_kubectl

JSON = {"Content-Type": "application/json"}
NS = "/api/v1/namespaces/default"
WRITES = 200


def _write_burst(server: ServerProcess) -> dict[str, str]:
    """Concurrent creates and updates; returns name -> the value each acknowledged write left."""
    def create(i: int) -> tuple[str, str]:
        reply = server.request("POST", f"{NS}/configmaps", json.dumps({"metadata": {"name": f"d-{i}"},
                                                                        "data": {"v": "created"}}), JSON)
        assert reply.status == 201, reply.body
        if i % 2:
            patch = json.dumps({"data": {"v": "updated"}})
            reply = server.request("PATCH", f"{NS}/configmaps/d-{i}", patch,
                                   {"Content-Type": "application/merge-patch+json"})
            assert reply.status == 200, reply.body
            return f"d-{i}", "updated"
        return f"d-{i}", "created"
    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(create, range(WRITES)))


def _survives_sigkill(server: ServerProcess, etcd: EtcdProcess | None = None) -> None:
    server.start()
    ca_before = (server.data_dir / "tls" / "ca.crt").read_bytes()
    expected = _write_burst(server)
    server.kill()  # at once after the last acknowledgement
    if etcd is not None:  # and the datastore with it
        etcd.kill()
        etcd.start()
    server.start()
    try:
        assert (server.data_dir / "tls" / "ca.crt").read_bytes() == ca_before
        listed = server.request("GET", f"{NS}/configmaps?labelSelector=").json()["items"]
        found = {i["metadata"]["name"]: i["data"]["v"] for i in listed if i["metadata"]["name"].startswith("d-")}
        assert found == expected
        namespaces = [n["metadata"]["name"] for n in server.request("GET", "/api/v1/namespaces").json()["items"]]
        assert namespaces == ["default", "kube-node-lease", "kube-public", "kube-system"]
        services = server.request("GET", f"{NS}/services").json()["items"]
        assert [(s["metadata"]["name"], s["spec"]["clusterIP"]) for s in services] == [("kubernetes", "10.43.0.1")]
    finally:
        server.stop()


def test_sqlite_loses_no_acknowledged_write(tmp_path_factory) -> None:
    _survives_sigkill(ServerProcess(tmp_path_factory.mktemp("durable-sqlite")))


def test_etcd_loses_no_acknowledged_write(tmp_path_factory, private_etcd) -> None:
    _survives_sigkill(ServerProcess(tmp_path_factory.mktemp("durable-etcd"), "--datastore", private_etcd.url),
                      private_etcd)


def test_restart_keeps_kubeconfig_working(tmp_path_factory, kubectl_cache) -> None:
    restarts = 2
    server = ServerProcess(tmp_path_factory.mktemp("restarts"))
    kubectl = make_kubectl(server, kubectl_cache)
    try:
        for i in range(restarts):
            server.start()
            kubectl("create", "configmap", f"r{i}")
            server.stop()
        server.start()
        assert kubectl("get", "cm", "-o", "name").stdout.split() == [f"configmap/r{i}" for i in range(restarts)]
    finally:
        server.stop()
