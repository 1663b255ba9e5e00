"""Volumes and securityContext, checked from inside the containers through the engine's exec API."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.kubelet.conftest import (
    IMAGE,
    AgentProcess,
    Api,
    condition,
    container_status,
    delete_pod,
    pod_manifest,
    wait_for,
    wait_pod,
)

SLEEP = ["sleep", "3600"]


def run_in(engine_api: Any, pod: dict[str, Any], command: list[str], container: str | None = None) -> str:
    container_id = container_status(pod, container)["containerID"].removeprefix("skiff://")
    exec_id = engine_api.exec_create(container_id, command)["Id"]
    output = engine_api.exec_start(exec_id).decode()
    assert engine_api.exec_inspect(exec_id)["ExitCode"] == 0, output
    return output


def ready(pod: dict[str, Any]) -> bool:
    return condition(pod, "Ready") == "True"


def tmpfs_mounts_of(agent: AgentProcess) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(agent.data_dir))]


def test_configmap_secret_downward_empty_dir_and_host_path(agent: AgentProcess, api: Api, engine_api: Any,
                                                          tmp_path: Path) -> None:
    api("POST", "/api/v1/namespaces/default/configmaps",
        {"metadata": {"name": "files"}, "data": {"app.conf": "port=80\n", "other": "x"}})
    api("POST", "/api/v1/namespaces/default/secrets",
        {"metadata": {"name": "keys"}, "data": {"token": base64.b64encode(b"t0ken").decode()}})
    host_dir = tmp_path / "host"
    volumes = [{"name": "cfg", "configMap": {"name": "files", "items": [{"key": "app.conf", "path": "conf/app"}]}},
               {"name": "sec", "secret": {"secretName": "keys", "defaultMode": 0o400}},
               {"name": "info", "downwardAPI": {"items": [
                   {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                   {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
               {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}},
               {"name": "host", "hostPath": {"path": str(host_dir), "type": "DirectoryOrCreate"}}]
    mounts = [{"name": "cfg", "mountPath": "/cfg", "readOnly": True}, {"name": "sec", "mountPath": "/sec"},
              {"name": "info", "mountPath": "/info"}, {"name": "scratch", "mountPath": "/scratch"},
              {"name": "host", "mountPath": "/host"}]
    manifest = pod_manifest("vols", [{"name": "main", "command": SLEEP, "volumeMounts": mounts}], volumes=volumes)
    manifest["metadata"]["labels"] = {"app": "vols"}
    api("POST", "/api/v1/namespaces/default/pods", manifest)
    pod = wait_pod(api, "vols", ready, agent=agent)
    assert run_in(engine_api, pod, ["cat", "/cfg/conf/app"]) == "port=80\n"
    assert run_in(engine_api, pod, ["ls", "/cfg"]).split() == ["conf"]
    assert run_in(engine_api, pod, ["cat", "/sec/token"]) == "t0ken"
    assert run_in(engine_api, pod, ["stat", "-c", "%a", "/sec/token"]).strip() == "400"
    assert run_in(engine_api, pod, ["cat", "/info/name"]) == "vols"
    assert run_in(engine_api, pod, ["cat", "/info/labels"]) == 'app="vols"'
    assert "tmpfs" in run_in(engine_api, pod, ["sh", "-c", "grep ' /scratch ' /proc/mounts"])
    run_in(engine_api, pod, ["sh", "-c", "echo from-pod > /host/out"])
    assert (host_dir / "out").read_text() == "from-pod\n"
    assert tmpfs_mounts_of(agent)
    # a ConfigMap's change reaches the running pod's files at the next sync
    api("PATCH", "/api/v1/namespaces/default/configmaps/files", {"data": {"app.conf": "port=81\n"}},
        "application/merge-patch+json")
    wait_for(lambda: run_in(engine_api, pod, ["cat", "/cfg/conf/app"]) == "port=81\n", timeout=15)
    delete_pod(api, "vols")
    wait_for(lambda: not tmpfs_mounts_of(agent), timeout=30)
    wait_for(lambda: not (agent.data_dir / "pods" / pod["metadata"]["uid"]).exists(), timeout=10)


def test_unknown_volume_type_is_reported_and_the_node_keeps_serving(agent: AgentProcess, api: Api) -> None:
    volumes = [{"name": "claim", "persistentVolumeClaim": {"claimName": "nope"}}]
    mounts = [{"name": "claim", "mountPath": "/data"}]
    api("POST", "/api/v1/namespaces/default/pods",
        pod_manifest("badvol", [{"name": "main", "command": SLEEP, "volumeMounts": mounts}], volumes=volumes))
    api("POST", "/api/v1/namespaces/default/pods", pod_manifest("goodvol", [{"name": "main", "command": SLEEP}]))
    wait_pod(api, "goodvol", ready, agent=agent)
    pod = wait_pod(api, "badvol", lambda p: "unsupported volume type" in
                   (container_status(p).get("state", {}).get("waiting", {}).get("message") or ""), agent=agent)
    assert pod["status"]["phase"] == "Pending"
    events = api("GET", "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name=badvol")["items"]
    assert any(e["reason"] == "FailedMount" for e in events)
    for name in ("badvol", "goodvol"):
        delete_pod(api, name)


@pytest.mark.parametrize("privileged", [False, True])
def test_security_context(agent: AgentProcess, api: Api, engine_api: Any, privileged: bool) -> None:
    name = f"secure-{str(privileged).lower()}"
    context: dict[str, Any] = {"runAsUser": 1234, "runAsGroup": 5678, "readOnlyRootFilesystem": True,
                               "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}
    if privileged:
        context = {"privileged": True}
    api("POST", "/api/v1/namespaces/default/pods",
        pod_manifest(name, [{"name": "main", "image": IMAGE, "command": SLEEP, "securityContext": context}]))
    pod = wait_pod(api, name, ready, agent=agent)
    caps = run_in(engine_api, pod, ["sh", "-c", "grep CapEff /proc/self/status"]).split()[1]
    if privileged:
        assert int(caps, 16) >= 0x1FFFFFFFFF >> 4  # (nearly) every capability
    else:
        assert run_in(engine_api, pod, ["id", "-u"]).strip() == "1234"
        assert run_in(engine_api, pod, ["id", "-g"]).strip() == "5678"
        assert int(caps, 16) == 0  # a non-root user keeps no effective capabilities
        container_id = container_status(pod)["containerID"].removeprefix("skiff://")
        exec_id = engine_api.exec_create(container_id, ["touch", "/made"])["Id"]
        engine_api.exec_start(exec_id)
        assert engine_api.exec_inspect(exec_id)["ExitCode"] != 0  # read-only root filesystem
        host = engine_api.inspect_container(container_id)["HostConfig"]
        assert host["CapAdd"] == ["CAP_NET_BIND_SERVICE"] and host["CapDrop"] == ["ALL"]
    delete_pod(api, name)
