"""Pods on a real engine: sandbox + containers named and labelled as dockershim did, status as kubectl shows it,
restarts with CrashLoopBackOff, probes, image pull failures, deletion, and an agent restart under running pods.

Probes and HTTP reach the pod's IP on the engine's bridge, which the test's engine made.
"""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path
from typing import Any

from tests.cluster.kubelet.conftest import (
    IMAGE,
    NODE,
    AgentProcess,
    Api,
    KubectlRun,
    condition,
    container_status,
    delete_pod,
    get_pod,
    pod_manifest,
    pod_path,
    wait_for,
    wait_pod,
)

SLEEP = ["sleep", "3600"]
HTTPD = ["httpd", "-f", "-p", "8080", "-h", "/etc"]


def create(api: Api, manifest: dict[str, Any]) -> dict[str, Any]:
    return api("POST", "/api/v1/namespaces/default/pods", manifest)


def running_and_ready(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and condition(pod, "Ready") == "True"


def engine_containers(engine_api: Any, uid: str) -> list[dict[str, Any]]:
    return engine_api.containers(all=True, filters={"label": f"io.kubernetes.pod.uid={uid}"})


def events_of(api: Api, name: str) -> list[tuple[str, str]]:
    items = api("GET", f"/api/v1/namespaces/default/events?fieldSelector=involvedObject.name={name}")["items"]
    return [(e["reason"], e["message"]) for e in items]


def test_pod_runs_and_is_ready_with_an_ip(agent: AgentProcess, api: Api, kubectl: KubectlRun, engine_api: Any) -> None:
    create(api, pod_manifest("web", [{"name": "httpd", "command": HTTPD, "ports": [{"containerPort": 8080}]}]))
    pod = wait_pod(api, "web", running_and_ready, agent=agent)
    status = pod["status"]
    bridge = ipaddress.ip_network(f"{agent.engine.net.prefix}.0.0/24")
    assert ipaddress.ip_address(status["podIP"]) in bridge
    assert status["hostIP"] == "127.0.0.1"
    assert status["qosClass"] == "BestEffort"
    assert status["startTime"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "PodReadyToStartContainers": "True", "Initialized": "True", "Ready": "True", "ContainersReady": "True",
        "PodScheduled": "True"}
    httpd = container_status(pod, "httpd")
    assert httpd["ready"] and httpd["started"] and httpd["restartCount"] == 0
    assert "running" in httpd["state"]
    assert httpd["containerID"].startswith("skiff://")
    assert httpd["imageID"].startswith("sha256:")

    # the engine holds a sandbox and the container, named and labelled as dockershim did
    uid = pod["metadata"]["uid"]
    names = sorted(c["Names"][0].lstrip("/") for c in engine_containers(engine_api, uid))
    assert names == [f"k8s_POD_web_default_{uid}_0", f"k8s_httpd_web_default_{uid}_0"]
    inspected = engine_api.inspect_container(httpd["containerID"].removeprefix("skiff://"))
    labels = inspected["Config"]["Labels"]
    assert labels["io.kubernetes.pod.name"] == "web" and labels["io.kubernetes.container.name"] == "httpd"
    assert inspected["HostConfig"]["NetworkMode"].startswith("container:")

    # the pod answers on its IP (the engine's bridge), and kubectl shows it on the node
    from tests.engine.test_networks import http_get
    assert http_get(status["podIP"], 8080, "/hostname") == "web"
    out = kubectl("get", "pods", "-o", "wide").stdout
    line = next(line for line in out.splitlines() if line.startswith("web "))
    assert "Running" in line and "1/1" in line and status["podIP"] in line and NODE in line
    reasons = [reason for reason, _ in events_of(api, "web")]
    assert "Created" in reasons and "Started" in reasons


def test_environment_from_fields_configmaps_and_secrets(agent: AgentProcess, api: Api, engine_api: Any) -> None:
    api("POST", "/api/v1/namespaces/default/configmaps",
        {"metadata": {"name": "settings"}, "data": {"color": "blue", "size": "L"}})
    api("POST", "/api/v1/namespaces/default/secrets",
        {"metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}})
    env = [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "color"}}},
           {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
           {"name": "GREETING", "value": "hello $(POD)"}]
    create(api, pod_manifest("envpod", [{"name": "main", "command": SLEEP, "env": env,
                                         "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CM_"}],
                                         "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}}]))
    pod = wait_pod(api, "envpod", running_and_ready, agent=agent)
    inspected = engine_api.inspect_container(container_status(pod)["containerID"].removeprefix("skiff://"))
    environment = dict(e.split("=", 1) for e in inspected["Config"]["Env"])
    assert environment["POD"] == "envpod"
    assert environment["IP"] == pod["status"]["podIP"]
    assert environment["COLOR"] == "blue" and environment["PASSWORD"] == "s3cret"
    assert environment["GREETING"] == "hello envpod"
    assert environment["CM_size"] == "L"
    assert inspected["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert inspected["HostConfig"]["CpuQuota"] == 50_000
    assert pod["status"]["qosClass"] == "Guaranteed"  # the API server defaults requests to the limits
    delete_pod(api, "envpod")


def test_missing_configmap_waits_with_a_config_error(agent: AgentProcess, api: Api) -> None:
    env = [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}]
    create(api, pod_manifest("noconfig", [{"name": "main", "command": SLEEP, "env": env}]))
    pod = wait_pod(api, "noconfig", lambda p: container_status(p).get("state", {}).get("waiting", {}).get("reason")
                   == "CreateContainerConfigError", agent=agent)
    assert 'configmap "absent" not found' in container_status(pod)["state"]["waiting"]["message"]
    assert pod["status"]["phase"] == "Pending"
    delete_pod(api, "noconfig")


def test_exited_container_restarts_with_back_off(agent: AgentProcess, api: Api) -> None:
    create(api, pod_manifest("crash", [{"name": "main", "command": ["sh", "-c", "exit 3"]}]))
    seen: set[str] = set()

    def restarted_in_back_off(pod: dict[str, Any]) -> bool:
        status = container_status(pod)
        seen.update(status.get("state", {}).get("waiting", {}).get("reason", "") for _ in [0])
        return status.get("restartCount", 0) >= 3 and "CrashLoopBackOff" in seen
    pod = wait_pod(api, "crash", restarted_in_back_off, timeout=60, agent=agent)
    status = container_status(pod)
    terminated = status["lastState"].get("terminated") or {}
    assert terminated.get("exitCode") == 3 and terminated.get("reason") == "Error", status
    assert pod["status"]["phase"] == "Running"
    assert condition(pod, "Ready") == "False"
    assert any(reason == "BackOff" for reason, _ in events_of(api, "crash"))
    delete_pod(api, "crash")


def test_restart_policy_never_ends_succeeded_or_failed(agent: AgentProcess, api: Api) -> None:
    create(api, pod_manifest("done-ok", [{"name": "main", "command": ["true"]}], restartPolicy="Never"))
    create(api, pod_manifest("done-bad", [{"name": "main", "command": ["sh", "-c", "exit 2"]}],
                             restartPolicy="Never"))
    ok = wait_pod(api, "done-ok", lambda p: p["status"].get("phase") == "Succeeded", agent=agent)
    assert container_status(ok)["state"]["terminated"]["reason"] == "Completed"
    bad = wait_pod(api, "done-bad", lambda p: p["status"].get("phase") == "Failed", agent=agent)
    assert container_status(bad)["state"]["terminated"]["exitCode"] == 2
    assert container_status(bad)["restartCount"] == 0
    for name in ("done-ok", "done-bad"):
        delete_pod(api, name)


def test_init_containers_run_in_order_first(agent: AgentProcess, api: Api, engine_api: Any) -> None:
    volume = [{"name": "work", "mountPath": "/work"}]
    init = [{"name": "first", "image": IMAGE, "command": ["sh", "-c", "echo one > /work/log"], "volumeMounts": volume},
            {"name": "second", "image": IMAGE, "command": ["sh", "-c", "echo two >> /work/log"],
             "volumeMounts": volume}]
    create(api, pod_manifest("inits", [{"name": "main", "command": SLEEP, "volumeMounts": volume}],
                             initContainers=init, volumes=[{"name": "work", "emptyDir": {}}]))
    pod = wait_pod(api, "inits", running_and_ready, agent=agent)
    assert [s["state"]["terminated"]["reason"] for s in pod["status"]["initContainerStatuses"]] == \
        ["Completed", "Completed"]
    assert condition(pod, "Initialized") == "True"
    container = container_status(pod)["containerID"].removeprefix("skiff://")
    exec_id = engine_api.exec_create(container, ["cat", "/work/log"])["Id"]
    assert engine_api.exec_start(exec_id) == b"one\ntwo\n"
    delete_pod(api, "inits")


def test_failing_liveness_probe_restarts_the_container(agent: AgentProcess, api: Api) -> None:
    probe = {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2}
    create(api, pod_manifest("unhealthy", [{"name": "main", "command": SLEEP, "livenessProbe": probe}]))
    pod = wait_pod(api, "unhealthy", lambda p: container_status(p).get("restartCount", 0) >= 1, timeout=40,
                   agent=agent)
    assert "terminated" in container_status(pod)["lastState"]
    reasons = [reason for reason, _ in events_of(api, "unhealthy")]
    assert "Unhealthy" in reasons and "Killing" in reasons
    delete_pod(api, "unhealthy")


def test_readiness_probes_decide_ready(agent: AgentProcess, api: Api) -> None:
    closed = {"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 1}
    http = {"httpGet": {"path": "/hostname", "port": "web"}, "periodSeconds": 1}
    create(api, pod_manifest("notready", [{"name": "main", "command": SLEEP, "readinessProbe": closed}]))
    create(api, pod_manifest("ready", [{"name": "main", "command": HTTPD, "readinessProbe": http,
                                        "ports": [{"name": "web", "containerPort": 8080}]}]))
    wait_pod(api, "ready", running_and_ready, agent=agent)
    pod = wait_pod(api, "notready", lambda p: p["status"].get("phase") == "Running", agent=agent)
    time.sleep(3)  # several probe periods
    pod = get_pod(api, "notready")
    assert condition(pod, "Ready") == "False" and condition(pod, "ContainersReady") == "False"
    assert container_status(pod)["ready"] is False and "running" in container_status(pod)["state"]
    for name in ("ready", "notready"):
        delete_pod(api, name)


def test_missing_image_gives_err_image_pull_then_back_off(agent: AgentProcess, api: Api) -> None:
    # a registry on a closed loopback port: the pull fails at once, without leaving the machine
    create(api, pod_manifest("noimage", [{"name": "main", "image": "127.0.0.1:9/missing:1", "command": SLEEP}]))
    reasons: set[str] = set()

    def both(pod: dict[str, Any]) -> bool:
        reasons.add(container_status(pod).get("state", {}).get("waiting", {}).get("reason", ""))
        return {"ErrImagePull", "ImagePullBackOff"} <= reasons
    pod = wait_pod(api, "noimage", both, timeout=30, agent=agent)
    assert pod["status"]["phase"] == "Pending"
    messages = [message for reason, message in events_of(api, "noimage") if reason == "Failed"]
    assert any("Failed to pull image" in m for m in messages)
    delete_pod(api, "noimage")


def test_deleted_pod_leaves_no_containers(agent: AgentProcess, api: Api, engine_api: Any) -> None:
    pre_stop = {"preStop": {"exec": {"command": ["sh", "-c", "echo bye > /tmp/bye"]}}}
    pod = create(api, pod_manifest("doomed", [{"name": "main", "command": SLEEP, "lifecycle": pre_stop}]))
    uid = pod["metadata"]["uid"]
    wait_pod(api, "doomed", running_and_ready, agent=agent)
    assert len(engine_containers(engine_api, uid)) == 2
    delete_pod(api, "doomed")
    wait_for(lambda: api_gone(api, "doomed"), timeout=30)
    wait_for(lambda: not engine_containers(engine_api, uid), timeout=10)
    assert any(reason == "Killing" for reason, _ in events_of(api, "doomed"))


def api_gone(api: Api, name: str) -> bool:
    items = api("GET", "/api/v1/namespaces/default/pods")["items"]
    return all(p["metadata"]["name"] != name for p in items)


def test_restarted_agent_keeps_running_pods(agent: AgentProcess, api: Api) -> None:
    create(api, pod_manifest("steady", [{"name": "main", "command": SLEEP}]))
    wait_pod(api, "steady", running_and_ready, agent=agent)
    time.sleep(3)  # resyncs of a steady pod write nothing
    before = get_pod(api, "steady")
    agent.stop()
    agent.start()
    time.sleep(4)  # two resyncs
    after = get_pod(api, "steady")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert container_status(after)["containerID"] == container_status(before)["containerID"]
    assert container_status(after)["restartCount"] == 0
    assert after["status"]["podIP"] == before["status"]["podIP"]
    assert running_and_ready(after)
    delete_pod(api, "steady")


def test_deleted_while_the_agent_was_down_is_cleaned_up(agent: AgentProcess, api: Api, engine_api: Any) -> None:
    pod = create(api, pod_manifest("orphan", [{"name": "main", "command": SLEEP}]))
    uid = pod["metadata"]["uid"]
    wait_pod(api, "orphan", running_and_ready, agent=agent)
    agent.kill()
    api("DELETE", pod_path("orphan") + "?gracePeriodSeconds=0")
    agent.start()
    wait_for(lambda: not engine_containers(engine_api, uid), timeout=20)
    assert json.dumps(IMAGE)  # the image stays


def test_graceful_termination_runs_pre_stop_then_sigterm(agent: AgentProcess, api: Api, tmp_path: Path) -> None:
    host = tmp_path / "term"
    script = "trap 'echo term >> /host/log; exit 0' TERM; while true; do sleep 0.1; done"
    pre_stop = {"preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /host/log"]}}}
    manifest = pod_manifest("graceful", [{"name": "main", "command": ["sh", "-c", script], "lifecycle": pre_stop,
                                          "volumeMounts": [{"name": "host", "mountPath": "/host"}]}],
                            volumes=[{"name": "host", "hostPath": {"path": str(host), "type": "DirectoryOrCreate"}}])
    manifest["spec"]["terminationGracePeriodSeconds"] = 20
    create(api, manifest)
    wait_pod(api, "graceful", running_and_ready, agent=agent)
    started = time.monotonic()
    delete_pod(api, "graceful")
    wait_for(lambda: api_gone(api, "graceful"), timeout=30)
    assert (host / "log").read_text() == "prestop\nterm\n"
    assert time.monotonic() - started < 15  # it ended on SIGTERM, long before the 20 s grace period


def test_startup_probe_holds_liveness_and_readiness(agent: AgentProcess, api: Api) -> None:
    startup = {"exec": {"command": ["test", "-e", "/tmp/up"]}, "periodSeconds": 1, "failureThreshold": 30}
    liveness = {"exec": {"command": ["test", "-e", "/tmp/up"]}, "periodSeconds": 1, "failureThreshold": 1}
    create(api, pod_manifest("slowstart", [{"name": "main", "command": ["sh", "-c", "sleep 3; touch /tmp/up; "
                                                                        "exec sleep 3600"],
                                            "startupProbe": startup, "livenessProbe": liveness}]))
    pod = wait_pod(api, "slowstart", lambda p: p["status"].get("phase") == "Running", agent=agent)
    assert container_status(pod)["started"] is False and condition(pod, "Ready") == "False"
    pod = wait_pod(api, "slowstart", running_and_ready, timeout=20, agent=agent)
    assert container_status(pod)["started"] is True
    assert container_status(pod)["restartCount"] == 0  # liveness waited for the startup probe
    delete_pod(api, "slowstart")


def test_bad_command_crash_loops_and_fails_under_never(agent: AgentProcess, api: Api) -> None:
    create(api, pod_manifest("badcmd", [{"name": "main", "command": ["/no/such/binary"]}]))
    create(api, pod_manifest("badcmd-never", [{"name": "main", "command": ["/no/such/binary"]}],
                             restartPolicy="Never"))
    reasons: set[str] = set()

    def looping(pod: dict[str, Any]) -> bool:
        status = container_status(pod)
        reasons.add(status.get("state", {}).get("waiting", {}).get("reason", ""))
        return status.get("restartCount", 0) >= 2 and "CrashLoopBackOff" in reasons
    pod = wait_pod(api, "badcmd", looping, timeout=60, agent=agent)
    assert container_status(pod)["lastState"]["terminated"]["exitCode"] != 0
    failed = wait_pod(api, "badcmd-never", lambda p: p["status"].get("phase") == "Failed", agent=agent)
    terminated = container_status(failed)["state"]["terminated"]
    assert terminated["exitCode"] != 0, terminated
    for name in ("badcmd", "badcmd-never"):
        delete_pod(api, name)
