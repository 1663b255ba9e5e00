"""REST semantics over raw HTTPS: generateName, graceful pod deletion, finalizers, propagation policies,
limit/continue, watch edge cases (410 Expired after compaction, bookmarks, timeoutSeconds, selectors),
Service IP and NodePort allocation, discovery documents.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.cluster.api.conftest import ServerProcess, wait_for

JSON = {"Content-Type": "application/json"}
NS = "/api/v1/namespaces/default"


def _post(server: ServerProcess, path: str, obj: dict) -> dict:
    reply = server.request("POST", path, json.dumps(obj), JSON)
    assert reply.status == 201, reply.body
    return reply.json()


def _watch_lines(server: ServerProcess, path: str) -> list[dict]:
    reply = server.request("GET", path, timeout=30)
    assert reply.status == 200, reply.body
    return [json.loads(line) for line in reply.body.splitlines() if line.strip()]


def test_generate_name(api_server) -> None:
    made = _post(api_server, f"{NS}/configmaps", {"metadata": {"generateName": "gen-"}})
    assert made["metadata"]["name"].startswith("gen-") and len(made["metadata"]["name"]) == 9
    api_server.request("DELETE", f"{NS}/configmaps/{made['metadata']['name']}")


def test_binding_sets_the_node_and_pod_scheduled_once(api_server) -> None:
    pod = {"metadata": {"name": "bound"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]},
           "status": {}}
    _post(api_server, f"{NS}/pods", pod)
    unschedulable = {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                "message": "0/1 nodes are available"}]}}
    assert api_server.request("PATCH", f"{NS}/pods/bound/status", json.dumps(unschedulable),
                              {"Content-Type": "application/merge-patch+json"}).status == 200
    bind = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "bound", "annotations": {"why": "test"}},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}}
    reply = api_server.request("POST", f"{NS}/pods/bound/binding", json.dumps(bind), JSON)
    assert reply.status == 201 and reply.json()["status"] == "Success"
    live = api_server.request("GET", f"{NS}/pods/bound").json()
    assert live["spec"]["nodeName"] == "node-1" and live["metadata"]["annotations"] == {"why": "test"}
    scheduled = [c for c in live["status"]["conditions"] if c["type"] == "PodScheduled"]
    assert len(scheduled) == 1 and scheduled[0]["status"] == "True" and "reason" not in scheduled[0]
    assert scheduled[0]["lastTransitionTime"]
    again = api_server.request("POST", f"{NS}/pods/bound/binding", json.dumps(bind), JSON)
    assert again.status == 409 and 'already assigned to node "node-1"' in again.json()["message"]
    stale = {**bind, "metadata": {"name": "bound", "uid": "not-its-uid"}}
    assert api_server.request("POST", f"{NS}/pods/bound/binding", json.dumps(stale), JSON).status == 409
    for body in ({"target": {}}, {"target": "node-1"}, {"target": {"name": 7}}, ["not", "an", "object"]):
        no_target = api_server.request("POST", f"{NS}/pods/bound/binding", json.dumps(body), JSON)
        assert no_target.status == 422 and no_target.json()["details"]["causes"][0]["field"] == "target.name"
    assert api_server.request("POST", f"{NS}/pods/missing/binding", json.dumps(bind), JSON).status == 404
    api_server.request("DELETE", f"{NS}/pods/bound", json.dumps({"gracePeriodSeconds": 0}), JSON)


def test_graceful_pod_deletion_waits_for_the_final_delete(api_server) -> None:
    pod = {"metadata": {"name": "graceful"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    _post(api_server, f"{NS}/pods", pod)
    bind = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "graceful"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}}
    assert api_server.request("POST", f"{NS}/pods/graceful/binding", json.dumps(bind), JSON).status == 201
    first = api_server.request("DELETE", f"{NS}/pods/graceful", json.dumps({"gracePeriodSeconds": 20}), JSON).json()
    assert first["metadata"]["deletionGracePeriodSeconds"] == 20 and first["metadata"]["deletionTimestamp"]
    assert api_server.request("GET", f"{NS}/pods/graceful").status == 200  # still there: its kubelet stops it
    final = api_server.request("DELETE", f"{NS}/pods/graceful", json.dumps({"gracePeriodSeconds": 0}), JSON)
    assert final.status == 200
    assert api_server.request("GET", f"{NS}/pods/graceful").status == 404


def test_finalizers_hold_deletion_until_removed(api_server) -> None:
    _post(api_server, f"{NS}/configmaps", {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})
    marked = api_server.request("DELETE", f"{NS}/configmaps/held").json()
    assert marked["metadata"]["deletionTimestamp"]
    assert api_server.request("GET", f"{NS}/configmaps/held").status == 200
    patch = json.dumps({"metadata": {"finalizers": None}})
    merge = {"Content-Type": "application/merge-patch+json"}
    reply = api_server.request("PATCH", f"{NS}/configmaps/held", patch, merge)
    assert reply.status == 200
    assert api_server.request("GET", f"{NS}/configmaps/held").status == 404


def _owner_and_dependent(server: ServerProcess, suffix: str) -> tuple[dict, dict]:
    owner = _post(server, f"{NS}/configmaps", {"metadata": {"name": f"owner-{suffix}"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}
    dependent = _post(server, f"{NS}/configmaps", {"metadata": {"name": f"dep-{suffix}", "ownerReferences": [ref]}})
    return owner, dependent


@pytest.mark.parametrize("policy", ["Background", "Foreground", "Orphan"])
def test_propagation_policies(api_server, policy: str) -> None:
    owner, dependent = _owner_and_dependent(api_server, policy.lower())
    body = json.dumps({"propagationPolicy": policy})
    assert api_server.request("DELETE", f"{NS}/configmaps/{owner['metadata']['name']}", body, JSON).status == 200
    owner_gone = lambda: api_server.request("GET", f"{NS}/configmaps/{owner['metadata']['name']}").status == 404  # noqa: E731
    dep_path = f"{NS}/configmaps/{dependent['metadata']['name']}"
    wait_for(owner_gone)
    if policy == "Orphan":
        left = api_server.request("GET", dep_path).json()
        assert "ownerReferences" not in left["metadata"]
        api_server.request("DELETE", dep_path)
    else:
        wait_for(lambda: api_server.request("GET", dep_path).status == 404)


def test_limit_and_continue_page_a_consistent_snapshot(api_server) -> None:
    for i in range(5):
        _post(api_server, f"{NS}/configmaps", {"metadata": {"name": f"page-{i}", "labels": {"paged": "yes"}}})
    first = api_server.request("GET", f"{NS}/configmaps?labelSelector=paged%3Dyes&limit=2").json()
    assert [i["metadata"]["name"] for i in first["items"]] == ["page-0", "page-1"]
    token = first["metadata"]["continue"]
    _post(api_server, f"{NS}/configmaps", {"metadata": {"name": "page-2a", "labels": {"paged": "yes"}}})
    names = []
    while token:
        page = api_server.request("GET", f"{NS}/configmaps?labelSelector=paged%3Dyes&limit=2&continue={token}").json()
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
    assert names == ["page-2", "page-3", "page-4"]  # page-2a came after the snapshot
    api_server.request("DELETE", f"{NS}/configmaps?labelSelector=paged%3Dyes")
    assert api_server.request("GET", f"{NS}/configmaps?labelSelector=paged%3Dyes").json()["items"] == []


def test_watch_semantics(api_server) -> None:
    listed = api_server.request("GET", f"{NS}/configmaps").json()
    rv = listed["metadata"]["resourceVersion"]
    _post(api_server, f"{NS}/configmaps", {"metadata": {"name": "w-sel", "labels": {"w": "1"}}})
    relabel = json.dumps({"metadata": {"labels": {"w": "2"}}})
    api_server.request("PATCH", f"{NS}/configmaps/w-sel", relabel, {"Content-Type": "application/merge-patch+json"})
    events = _watch_lines(api_server, f"{NS}/configmaps?watch=true&resourceVersion={rv}&labelSelector=w%3D1"
                                      "&timeoutSeconds=1")
    # entering the selector is ADDED, leaving it is DELETED
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "w-sel"), ("DELETED", "w-sel")]
    started = time.monotonic()
    events = _watch_lines(api_server, f"{NS}/configmaps?watch=1&resourceVersion={rv}&labelSelector=w%3D3"
                                      "&timeoutSeconds=1")
    assert events == [] and time.monotonic() - started < 5  # timeoutSeconds ends the stream cleanly
    api_server.request("DELETE", f"{NS}/configmaps/w-sel")


def test_watch_table_events(api_server) -> None:
    accept = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
    reply = api_server.request("GET", "/api/v1/namespaces?watch=true&timeoutSeconds=1", headers=accept)
    events = [json.loads(line) for line in reply.body.splitlines()]
    assert len(events) >= 4 and all(e["object"]["kind"] == "Table" for e in events)
    assert events[0]["object"]["columnDefinitions"] and not events[1]["object"]["columnDefinitions"]


def test_discovery_documents(api_server) -> None:
    aggregated = api_server.request("GET", "/apis", headers={
        "Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"})
    assert aggregated.headers["Content-Type"] == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    groups = {g["metadata"]["name"] for g in aggregated.json()["items"]}
    assert {"apps", "rbac.authorization.k8s.io", "coordination.k8s.io", "discovery.k8s.io"} <= groups
    core = api_server.request("GET", "/api/v1").json()
    pods = next(r for r in core["resources"] if r["name"] == "pods")
    assert pods["shortNames"] == ["po"] and pods["categories"] == ["all"] and "watch" in pods["verbs"]
    apps = api_server.request("GET", "/apis/apps/v1").json()
    scale = next(r for r in apps["resources"] if r["name"] == "deployments/scale")
    assert (scale["group"], scale["version"], scale["kind"]) == ("autoscaling", "v1", "Scale")
    root = api_server.request("GET", "/openapi/v3").json()
    assert "apis/apps/v1" in root["paths"] and "api/v1" in root["paths"]


def test_services_get_cluster_ips_and_node_ports(api_server) -> None:
    svc = _post(api_server, f"{NS}/services", {"metadata": {"name": "np"}, "spec": {
        "type": "NodePort", "selector": {"app": "x"}, "ports": [{"port": 80}]}})
    ip, node_port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["nodePort"]
    assert ip.startswith("10.43.") and ip != "10.43.0.1" and 30000 <= node_port <= 32767
    assert svc["spec"]["ports"][0]["targetPort"] == 80 and svc["spec"]["ports"][0]["protocol"] == "TCP"
    taken = api_server.request("POST", f"{NS}/services", json.dumps({"metadata": {"name": "np2"}, "spec": {
        "type": "NodePort", "clusterIP": ip, "ports": [{"port": 81, "nodePort": node_port}]}}), JSON)
    assert taken.status == 422
    causes = {c["field"] for c in taken.json()["details"]["causes"]}
    assert "spec.clusterIPs[0]" in causes
    api_server.request("DELETE", f"{NS}/services/np")
    again = _post(api_server, f"{NS}/services", {"metadata": {"name": "np2"}, "spec": {
        "type": "NodePort", "clusterIP": ip, "ports": [{"port": 81, "nodePort": node_port}]}})
    assert again["spec"]["clusterIP"] == ip  # released by the delete
    api_server.request("DELETE", f"{NS}/services/np2")


def test_expired_watch_after_compaction(tmp_path_factory) -> None:
    server = ServerProcess(tmp_path_factory.mktemp("compacting"), "--compact-interval", "0.2", "--compact-retain", "5")
    server.start()
    try:
        first = _post(server, f"{NS}/configmaps", {"metadata": {"name": "old"}})
        for i in range(20):
            _post(server, f"{NS}/configmaps", {"metadata": {"name": f"fill-{i}"}})
        old_rv = first["metadata"]["resourceVersion"]

        def expired() -> list[dict]:
            events = _watch_lines(server, f"{NS}/configmaps?watch=true&resourceVersion={old_rv}&timeoutSeconds=1")
            return [e for e in events if e["type"] == "ERROR"]
        errors = wait_for(expired, timeout=10)
        assert errors[0]["object"]["code"] == 410 and errors[0]["object"]["reason"] == "Expired"
        bookmarked = _watch_lines(server, f"{NS}/configmaps?watch=true&allowWatchBookmarks=true&timeoutSeconds=1"
                                          "&sendInitialEvents=true&resourceVersionMatch=NotOlderThan")
        # the replay ends with the bookmark (the controllers may write a ConfigMap meanwhile: it comes after)
        end = next(i for i, e in enumerate(bookmarked) if e["type"] == "BOOKMARK")
        assert all(e["type"] == "ADDED" for e in bookmarked[:end])
        assert bookmarked[end]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    finally:
        server.stop()
