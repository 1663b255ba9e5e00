"""Tests of skiff.cluster.api.printers: the Tables kube-apiserver serves to ``kubectl get``.

Expected cells follow kube's printers (pkg/printers/internalversion) and apimachinery's duration formatting;
the age boundaries are the ones apimachinery's own tests pin.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiff.cluster.api import printers

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def ago(**delta: float) -> str:
    return (NOW - timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def cells(group: str, resource: str, obj: dict, *, wide_ok: bool = True) -> list[Any]:
    table = printers.table(group, resource, [obj], now=NOW, wide_ok=wide_ok)
    return table["rows"][0]["cells"]


def header(group: str, resource: str, *, wide_ok: bool = True) -> list[str]:
    table = printers.table(group, resource, [], now=NOW, wide_ok=wide_ok)
    return [column["name"] for column in table["columnDefinitions"]]


# --- ages -----------------------------------------------------------------------------------------------

AGE_CASES = [
    (1, "1s"), (70, "70s"), (190, "3m10s"), (70 * 60, "70m"), (47 * 3600, "47h"), (49 * 3600, "2d1h"),
    ((8 * 24 + 2) * 3600, "8d"), (367 * 24 * 3600, "367d"), ((365 * 2 * 24 + 25) * 3600, "2y1d"),
    ((365 * 8 * 24 + 2) * 3600, "8y"),
    (-2, "<invalid>"), (-1.5, "0s"), (0, "0s"), (0.999, "0s"), (119.999, "119s"), (120, "2m"), (121, "2m1s"),
    (599.999, "9m59s"), (600, "10m"), (601, "10m"), (3 * 3600 - 0.001, "179m"), (3 * 3600, "3h"),
    (3 * 3600 + 60, "3h1m"), (8 * 3600 - 0.001, "7h59m"), (8 * 3600, "8h"), (8 * 3600 + 59 * 60, "8h"),
    (48 * 3600 - 0.001, "47h"), (48 * 3600, "2d"), (8 * 86400 - 0.001, "7d23h"), (8 * 86400, "8d"),
    (2 * 365 * 86400 - 0.001, "729d"), (2 * 365 * 86400, "2y"), (2 * 365 * 86400 + 86400, "2y1d"),
    (3 * 365 * 86400, "3y"),
]


@pytest.mark.parametrize(("seconds", "expected"), AGE_CASES)
def test_human_duration_matches_apimachinery(seconds: float, expected: str) -> None:
    assert printers.human_duration(seconds) == expected


@given(st.floats(min_value=-1.999, max_value=10 * 365 * 86400))
def test_human_duration_is_short_and_well_formed(seconds: float) -> None:
    text = printers.human_duration(seconds)
    assert len(text) <= 7
    assert text[0].isdigit()
    assert text[-1] in "smhdy"


def test_unset_timestamps_are_unknown() -> None:
    assert printers.since(None, NOW) == "<unknown>"
    assert cells("", "namespaces", {"metadata": {"name": "x"}, "status": {"phase": "Active"}}) == [
        "x", "Active", "<unknown>"]


# --- the Table itself -----------------------------------------------------------------------------------


def test_table_shape_and_wide_columns() -> None:
    pod = running_pod()
    table = printers.table("", "pods", [pod], now=NOW)
    assert table["kind"] == "Table"
    assert table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"] == {}
    columns = table["columnDefinitions"]
    assert [c["name"] for c in columns] == [
        "Name", "Ready", "Status", "Restarts", "Age", "IP", "Node", "Nominated Node", "Readiness Gates"]
    assert [c["priority"] for c in columns] == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert columns[0]["format"] == "name"
    assert all(set(c) == {"name", "type", "format", "description", "priority"} for c in columns)
    row = table["rows"][0]
    assert len(row["cells"]) == len(columns)
    assert row["object"] == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": pod["metadata"]}
    narrow = printers.table("", "pods", [pod], now=NOW, wide_ok=False)
    assert [c["name"] for c in narrow["columnDefinitions"]] == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert len(narrow["rows"][0]["cells"]) == 5


def test_rows_do_not_share_state_with_the_objects() -> None:
    pod = running_pod()
    table = printers.table("", "pods", [pod], now=NOW)
    table["rows"][0]["object"]["metadata"]["name"] = "changed"
    assert pod["metadata"]["name"] == "web-1"


def test_unknown_resources_get_kubes_default_table() -> None:
    role = {"metadata": {"name": "reader", "creationTimestamp": "2026-11-20T10:00:00Z"}, "rules": []}
    table = printers.table("rbac.authorization.k8s.io", "roles", [role], now=NOW)
    assert [(c["name"], c["type"]) for c in table["columnDefinitions"]] == [("Name", "string"), ("Created At", "date")]
    assert table["rows"][0]["cells"] == ["reader", "2026-11-20T10:00:00Z"]
    assert header("example.com", "widgets") == ["Name", "Created At"]


# --- pods -----------------------------------------------------------------------------------------------


def running_pod(**status: Any) -> dict:
    return {
        "metadata": {"name": "web-1", "namespace": "default", "creationTimestamp": ago(minutes=5, seconds=10)},
        "spec": {"containers": [{"name": "nginx"}], "nodeName": "node-1"},
        "status": {
            "phase": "Running",
            "podIP": "10.42.0.5",
            "podIPs": [{"ip": "10.42.0.5"}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "nginx", "ready": True, "restartCount": 0, "state": {"running": {}}}],
            **status,
        },
    }


def container_status(name: str, state: dict, *, ready: bool = False, restarts: int = 0, **extra: Any) -> dict:
    return {"name": name, "ready": ready, "restartCount": restarts, "state": state, **extra}


def test_running_pod() -> None:
    assert cells("", "pods", running_pod()) == [
        "web-1", "1/1", "Running", "0", "5m10s", "10.42.0.5", "node-1", "<none>", "<none>"]


def test_restarts_show_when_the_last_one_was() -> None:
    pod = running_pod(containerStatuses=[container_status(
        "nginx", {"running": {}}, ready=True, restarts=3,
        lastState={"terminated": {"exitCode": 1, "finishedAt": ago(minutes=3)}})])
    assert cells("", "pods", pod)[3] == "3 (3m ago)"
    without_time = running_pod(containerStatuses=[container_status("nginx", {"running": {}}, ready=True, restarts=2)])
    assert cells("", "pods", without_time)[3] == "2"


@pytest.mark.parametrize(("state", "expected"), [
    ({"waiting": {"reason": "CrashLoopBackOff"}}, "CrashLoopBackOff"),
    ({"waiting": {"reason": "ContainerCreating"}}, "ContainerCreating"),
    ({"terminated": {"reason": "OOMKilled", "exitCode": 137}}, "OOMKilled"),
    ({"terminated": {"exitCode": 2}}, "ExitCode:2"),
    ({"terminated": {"exitCode": 0, "signal": 9}}, "Signal:9"),
])
def test_container_states_become_the_pod_status(state: dict, expected: str) -> None:
    pod = running_pod(containerStatuses=[container_status("nginx", state)])
    assert cells("", "pods", pod)[1:3] == ["0/1", expected]


def test_pending_pod_without_statuses_shows_its_phase_and_no_ip() -> None:
    pod = {"metadata": {"name": "p", "creationTimestamp": ago(seconds=4)},
           "spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "status": {"phase": "Pending"}}
    assert cells("", "pods", pod) == ["p", "0/2", "Pending", "0", "4s", "<none>", "<none>", "<none>", "<none>"]


def test_status_reason_wins_over_phase() -> None:
    pod = running_pod(phase="Failed", reason="Evicted", containerStatuses=[])
    assert cells("", "pods", pod)[2] == "Evicted"


def test_completed_pod_and_its_row_condition() -> None:
    pod = running_pod(phase="Succeeded", conditions=[], containerStatuses=[
        container_status("nginx", {"terminated": {"reason": "Completed", "exitCode": 0}})])
    table = printers.table("", "pods", [pod], now=NOW)
    assert table["rows"][0]["cells"][1:3] == ["0/1", "Completed"]
    assert table["rows"][0]["conditions"] == [{"type": "Completed", "status": "True", "reason": "Succeeded",
                                               "message": "The pod has completed successfully."}]


def test_completed_container_beside_a_running_one() -> None:
    statuses = [container_status("a", {"running": {}}, ready=True),
                container_status("b", {"terminated": {"reason": "Completed", "exitCode": 0}})]
    pod = running_pod(containerStatuses=statuses)
    pod["spec"]["containers"] = [{"name": "a"}, {"name": "b"}]
    assert cells("", "pods", pod)[1:3] == ["1/2", "Running"]
    pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    assert cells("", "pods", pod)[2] == "NotReady"


def test_deleting_pods_are_terminating_unless_finished_or_lost() -> None:
    pod = running_pod()
    pod["metadata"]["deletionTimestamp"] = ago(seconds=1)
    assert cells("", "pods", pod)[2] == "Terminating"
    pod["status"]["reason"] = "NodeLost"
    assert cells("", "pods", pod)[2] == "Unknown"
    done = running_pod(phase="Succeeded", containerStatuses=[
        container_status("nginx", {"terminated": {"reason": "Completed", "exitCode": 0}})])
    done["metadata"]["deletionTimestamp"] = ago(seconds=1)
    assert cells("", "pods", done)[2] == "Completed"


def init_pod(*init_statuses: dict, initialized: bool = False) -> dict:
    pod = running_pod(phase="Pending", initContainerStatuses=list(init_statuses),
                      conditions=[{"type": "Initialized", "status": "True" if initialized else "False"}],
                      containerStatuses=[container_status("nginx", {"waiting": {"reason": "PodInitializing"}})])
    pod["spec"]["initContainers"] = [{"name": "one"}, {"name": "two"}]
    return pod


def test_init_container_progress() -> None:
    done = container_status("one", {"terminated": {"exitCode": 0, "reason": "Completed"}})
    running = container_status("two", {"running": {}})
    assert cells("", "pods", init_pod(done, running))[2] == "Init:1/2"
    waiting = container_status("one", {"waiting": {"reason": "PodInitializing"}})
    assert cells("", "pods", init_pod(waiting))[2] == "Init:0/2"
    pulling = container_status("one", {"waiting": {"reason": "ErrImagePull"}})
    assert cells("", "pods", init_pod(pulling))[2] == "Init:ErrImagePull"
    failed = container_status("one", {"terminated": {"exitCode": 3}}, restarts=4)
    assert cells("", "pods", init_pod(failed))[2:4] == ["Init:ExitCode:3", "4"]
    errored = container_status("one", {"terminated": {"exitCode": 1, "reason": "Error"}})
    assert cells("", "pods", init_pod(errored))[2] == "Init:Error"
    signalled = container_status("one", {"terminated": {"exitCode": 143, "signal": 15}})
    assert cells("", "pods", init_pod(signalled))[2] == "Init:Signal:15"
    # exit code 0 means the init container finished, whatever the signal
    finished = container_status("one", {"terminated": {"exitCode": 0, "signal": 15}})
    assert cells("", "pods", init_pod(finished))[2] == "PodInitializing"


def test_sidecar_init_containers_count_as_containers() -> None:
    pod = running_pod(initContainerStatuses=[
        container_status("proxy", {"running": {}}, ready=True, started=True, restarts=1,
                         lastState={"terminated": {"finishedAt": ago(seconds=30)}})],
        conditions=[{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}])
    pod["spec"]["initContainers"] = [{"name": "proxy", "restartPolicy": "Always"}]
    assert cells("", "pods", pod)[1:4] == ["2/2", "Running", "1 (30s ago)"]


def test_scheduling_gated_and_readiness_gates() -> None:
    pod = {"metadata": {"name": "g", "creationTimestamp": ago(seconds=1)},
           "spec": {"containers": [{"name": "a"}], "readinessGates": [{"conditionType": "x"}, {"conditionType": "y"}]},
           "status": {"phase": "Pending", "nominatedNodeName": "node-2",
                      "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"},
                                     {"type": "x", "status": "True"}]}}
    assert cells("", "pods", pod)[2:] == ["SchedulingGated", "0", "1s", "<none>", "<none>", "node-2", "1/2"]


# --- nodes, namespaces and friends ----------------------------------------------------------------------


def node(**overrides: Any) -> dict:
    obj = {
        "metadata": {"name": "node-1", "creationTimestamp": ago(days=2, hours=3),
                     "labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/master": "",
                                "kubernetes.io/hostname": "node-1"}},
        "spec": {},
        "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
                   "addresses": [{"type": "Hostname", "address": "node-1"},
                                 {"type": "InternalIP", "address": "192.168.1.10"}],
                   "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
                                "kernelVersion": "6.1.0-18-amd64", "containerRuntimeVersion": "skiff://0.1.0"}},
    }
    obj.update(overrides)
    return obj


def test_node_row() -> None:
    assert header("", "nodes") == ["Name", "Status", "Roles", "Age", "Version", "Internal-IP", "External-IP",
                                   "OS-Image", "Kernel-Version", "Container-Runtime"]
    assert cells("", "nodes", node()) == [
        "node-1", "Ready", "control-plane,master", "2d3h", "v1.32.0", "192.168.1.10", "<none>",
        "Debian GNU/Linux 12 (bookworm)", "6.1.0-18-amd64", "skiff://0.1.0"]


def test_node_status_variants() -> None:
    cordoned = node(spec={"unschedulable": True})
    assert cells("", "nodes", cordoned)[1] == "Ready,SchedulingDisabled"
    not_ready = node(status={"conditions": [{"type": "Ready", "status": "Unknown"}]})
    assert cells("", "nodes", not_ready)[1:] == [
        "NotReady", "control-plane,master", "2d3h", "", "<none>", "<none>", "<unknown>", "<unknown>", "<unknown>"]
    fresh = node(status={}, metadata={"name": "n", "labels": {"kubernetes.io/role": "worker"}})
    assert cells("", "nodes", fresh)[1:3] == ["Unknown", "worker"]


def test_small_resources() -> None:
    created = {"creationTimestamp": ago(hours=3, minutes=1)}
    assert cells("", "configmaps", {"metadata": {"name": "c", **created}, "data": {"a": "1"},
                                    "binaryData": {"b": "AA=="}}) == ["c", 2, "3h1m"]
    assert cells("", "secrets", {"metadata": {"name": "s", **created}, "type": "Opaque", "data": {"a": "MQ=="}}) == [
        "s", "Opaque", 1, "3h1m"]
    assert cells("", "serviceaccounts", {"metadata": {"name": "default", **created}}) == ["default", 0, "3h1m"]
    assert cells("", "namespaces", {"metadata": {"name": "kube-system", **created},
                                    "status": {"phase": "Terminating"}}) == ["kube-system", "Terminating", "3h1m"]
    lease = {"metadata": {"name": "node-1", **created}, "spec": {"holderIdentity": "node-1"}}
    assert cells("coordination.k8s.io", "leases", lease) == ["node-1", "node-1", "3h1m"]
    assert header("", "secrets") == ["Name", "Type", "Data", "Age"]
    assert header("", "serviceaccounts") == ["Name", "Secrets", "Age"]


# --- workloads ------------------------------------------------------------------------------------------


def test_deployment_row() -> None:
    deployment = {
        "metadata": {"name": "web", "creationTimestamp": ago(minutes=70)},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["b", "a"]}, {"key": "canary", "operator": "DoesNotExist"}]},
                 "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"},
                                                      {"name": "side", "image": "busybox"}]}}},
        "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
    }
    assert header("apps", "deployments") == ["Name", "Ready", "Up-to-date", "Available", "Age", "Containers",
                                             "Images", "Selector"]
    assert cells("apps", "deployments", deployment) == [
        "web", "2/3", 3, 2, "70m", "nginx,side", "nginx:1.27,busybox", "app=web,!canary,tier in (a,b)"]
    fresh = {"metadata": {"name": "new"}, "spec": {"replicas": 1}}
    assert cells("apps", "deployments", fresh)[:4] == ["new", "0/1", 0, 0]


def test_replicaset_row() -> None:
    replicaset = {"metadata": {"name": "web-5d8f", "creationTimestamp": ago(seconds=30)},
                  "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "5d8f"}},
                           "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx"}]}}},
                  "status": {"replicas": 2, "readyReplicas": 1}}
    assert header("apps", "replicasets") == ["Name", "Desired", "Current", "Ready", "Age", "Containers", "Images",
                                             "Selector"]
    assert cells("apps", "replicasets", replicaset) == [
        "web-5d8f", 2, 2, 1, "30s", "nginx", "nginx", "app=web,pod-template-hash=5d8f"]


def test_job_row() -> None:
    job = {"metadata": {"name": "pi", "creationTimestamp": ago(minutes=2)},
           "spec": {"completions": 1, "template": {"spec": {"containers": [{"name": "pi", "image": "perl"}]}}},
           "status": {"succeeded": 1, "startTime": ago(minutes=2), "completionTime": ago(minutes=1, seconds=20),
                      "conditions": [{"type": "Complete", "status": "True"}]}}
    assert cells("batch", "jobs", job)[:5] == ["pi", "Complete", "1/1", "40s", "2m"]


# --- services and endpoints -----------------------------------------------------------------------------


def service(type_: str | None = "ClusterIP", **spec: Any) -> dict:
    base: dict[str, Any] = {"clusterIP": "10.43.0.12", "clusterIPs": ["10.43.0.12"],
                            "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}], "selector": {"app": "web"}}
    if type_:
        base["type"] = type_
    base.update(spec)
    return {"metadata": {"name": "web", "creationTimestamp": ago(days=9)}, "spec": base}


def test_service_rows() -> None:
    assert header("", "services") == ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age", "Selector"]
    assert cells("", "services", service()) == ["web", "ClusterIP", "10.43.0.12", "<none>", "80/TCP", "9d", "app=web"]
    node_port = service("NodePort", ports=[{"port": 80, "nodePort": 30080, "protocol": "TCP"},
                                           {"port": 53, "protocol": "UDP"}])
    assert cells("", "services", node_port)[3:5] == ["<none>", "80:30080/TCP,53/UDP"]
    assert cells("", "services", service("LoadBalancer"))[3] == "<pending>"
    balanced = service("LoadBalancer", externalIPs=["1.2.3.4"])
    balanced["status"] = {"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}]}}
    assert cells("", "services", balanced)[3] == "5.6.7.8,1.2.3.4"
    external = service("ExternalName", externalName="example.com", clusterIP="", clusterIPs=[], ports=[])
    assert cells("", "services", external)[1:5] == ["ExternalName", "<none>", "example.com", "<none>"]
    headless = service(clusterIP="None", clusterIPs=["None"], selector={})
    assert cells("", "services", headless)[2] == "None"
    assert cells("", "services", headless)[6] == "<none>"


def test_endpoints_rows() -> None:
    many = {"metadata": {"name": "web", "creationTimestamp": ago(seconds=5)}, "subsets": [
        {"addresses": [{"ip": f"10.42.0.{i}"} for i in range(1, 5)], "ports": [{"port": 80}]}]}
    assert cells("", "endpoints", many) == ["web", "10.42.0.1:80,10.42.0.2:80,10.42.0.3:80 + 1 more...", "5s"]
    headless = {"metadata": {"name": "h"}, "subsets": [{"addresses": [{"ip": "10.42.0.9"}]}]}
    assert cells("", "endpoints", headless)[1] == "10.42.0.9"
    assert cells("", "endpoints", {"metadata": {"name": "e"}})[1] == "<none>"


def test_endpointslice_row() -> None:
    endpoint_slice = {"metadata": {"name": "web-abc", "creationTimestamp": ago(seconds=5)}, "addressType": "IPv4",
                      "ports": [{"name": "http", "port": 80}, {"name": "named"}, {}],
                      "endpoints": [{"addresses": ["10.42.0.1"]}, {"addresses": ["10.42.0.2"]}]}
    assert cells("discovery.k8s.io", "endpointslices", endpoint_slice) == [
        "web-abc", "IPv4", "80,named,*", "10.42.0.1,10.42.0.2", "5s"]
    empty = {"metadata": {"name": "e"}, "addressType": "IPv4"}
    assert cells("discovery.k8s.io", "endpointslices", empty)[2:4] == ["<unset>", "<unset>"]


# --- events and rbac ------------------------------------------------------------------------------------


def test_event_rows_in_kubes_wide_order() -> None:
    assert header("", "events") == ["Last Seen", "Type", "Reason", "Object", "Subobject", "Source", "Message",
                                    "First Seen", "Count", "Name"]
    assert header("", "events", wide_ok=False) == ["Last Seen", "Type", "Reason", "Object", "Message"]
    event = {"metadata": {"name": "web-1.17a"}, "type": "Normal", "reason": "Pulled",
             "involvedObject": {"kind": "Pod", "name": "web-1", "fieldPath": "spec.containers{nginx}"},
             "source": {"component": "kubelet", "host": "node-1"}, "message": "Pulled image \"nginx\"\n",
             "firstTimestamp": ago(minutes=10), "lastTimestamp": ago(minutes=1), "count": 3}
    assert cells("", "events", event) == [
        "60s", "Normal", "Pulled", "pod/web-1", "spec.containers{nginx}", "kubelet, node-1", 'Pulled image "nginx"',
        "10m", 3, "web-1.17a"]
    assert cells("", "events", event, wide_ok=False) == ["60s", "Normal", "Pulled", "pod/web-1",
                                                         'Pulled image "nginx"']
    new_api = {"metadata": {"name": "e"}, "type": "Warning", "reason": "BackOff", "involvedObject": {"kind": "Node"},
               "eventTime": ago(seconds=20), "reportingController": "skiff-kubelet", "message": "m"}
    assert cells("", "events", new_api) == ["20s", "Warning", "BackOff", "node", "", "skiff-kubelet", "m", "20s", 1,
                                            "e"]
    series = dict(new_api, series={"count": 7, "lastObservedTime": ago(seconds=3)})
    assert cells("", "events", series)[0] == "3s"
    assert cells("", "events", series)[8] == 7


def test_role_binding_rows() -> None:
    binding = {"metadata": {"name": "read", "creationTimestamp": ago(seconds=50)},
               "roleRef": {"kind": "ClusterRole", "name": "view", "apiGroup": "rbac.authorization.k8s.io"},
               "subjects": [{"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"},
                            {"kind": "Group", "name": "devs"},
                            {"kind": "ServiceAccount", "name": "default", "namespace": "kube-system"}]}
    assert header("rbac.authorization.k8s.io", "rolebindings") == [
        "Name", "Role", "Age", "Users", "Groups", "ServiceAccounts"]
    assert cells("rbac.authorization.k8s.io", "clusterrolebindings", binding) == [
        "read", "ClusterRole/view", "50s", "alice, bob", "devs", "kube-system/default"]
    assert header("rbac.authorization.k8s.io", "clusterroles") == ["Name", "Created At"]


def test_columns_helper_matches_table() -> None:
    for group, resource in [("", "pods"), ("apps", "deployments"), ("", "events"), ("x", "y")]:
        for wide in (True, False):
            assert printers.columns(group, resource, wide_ok=wide) == printers.table(
                group, resource, [], wide_ok=wide)["columnDefinitions"]


def every_column() -> list[tuple[str, str, dict]]:
    """Each column of each resource's table, and of the default table kube gives other resources."""
    tables = [*printers._PRINTERS, ("example.com", "widgets")]
    return [(group, resource, column) for group, resource in tables for column in printers.columns(group, resource)]


def test_every_column_has_a_description() -> None:
    columns = every_column()
    assert len(columns) > 100
    for group, resource, column in columns:
        text = column["description"]
        where = f"{group}/{resource} {column['name']}: {text!r}"
        assert text and text[0].isupper() and text.endswith("."), where
        assert ". " not in text and "\n" not in text, f"not one sentence: {where}"
        assert "http" not in text, where
        assert len(text) <= 100, f"not short: {where}"
    pods = {c["name"]: c for c in printers.columns("", "pods")}
    assert "IP" in pods["IP"]["description"]
