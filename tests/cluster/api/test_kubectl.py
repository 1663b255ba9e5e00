"""The real kubectl 1.32 against a real ``skiff server``: version, apply, get (columns, wide, yaml, json,
name, jsonpath), create, patch (strategic, merge, JSON), label, annotate, delete, watch, selectors,
namespaces with their contents, server-side apply, scale, expose.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import yaml

from tests.cluster.api.conftest import KUBECTL, ServerProcess, wait_for

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: nginx
        image: {image}
        ports:
        - containerPort: 80
"""


@pytest.fixture(scope="module", params=["sqlite", "etcd"])
def api_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Every kubectl test runs on both datastores."""
    extra = ["--datastore", request.getfixturevalue("private_etcd").url] if request.param == "etcd" else []
    server = ServerProcess(tmp_path_factory.mktemp(f"apiserver-{request.param}"), *extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_version_reports_server_1_32(kubectl) -> None:
    out = kubectl("version", "-o", "json").stdout
    server = json.loads(out)["serverVersion"]
    assert (server["major"], server["minor"]) == ("1", "32")


def test_apply_creates_then_unchanged_then_configured(kubectl) -> None:
    first = kubectl("apply", "-f", "-", input=DEPLOYMENT.format(image="nginx:1.27"))
    assert first.stdout.strip() == "deployment.apps/web created"
    again = kubectl("apply", "-f", "-", input=DEPLOYMENT.format(image="nginx:1.27"))
    assert again.stdout.strip() == "deployment.apps/web unchanged"
    changed = kubectl("apply", "-f", "-", input=DEPLOYMENT.format(image="nginx:1.28"))
    assert changed.stdout.strip() == "deployment.apps/web configured"
    spec = json.loads(kubectl("get", "deployment", "web", "-o", "json").stdout)
    assert spec["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.28"
    assert spec["spec"]["replicas"] == 2
    assert spec["metadata"]["generation"] == 2
    assert spec["spec"]["strategy"]["type"] == "RollingUpdate"  # defaulted by the server


def test_get_prints_kubectl_columns_and_wide(kubectl) -> None:
    kubectl("apply", "-f", "-", input=DEPLOYMENT.format(image="nginx:1.28"))
    lines = kubectl("get", "deployments").stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    name, ready, up_to_date, available = lines[1].split()[:4]
    # UP-TO-DATE counts up to 2 as the in-process deployment controller acts; no node runs the pods
    assert (name, ready, available) == ("web", "0/2", "0") and up_to_date in ("0", "1", "2")
    wide = kubectl("get", "deployments", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
    assert wide[1].split()[5:] == ["nginx", "nginx:1.28", "app=web"]
    kubectl("run", "solo", "--image=busybox", "--restart=Never", "--", "sleep", "1")
    pods = kubectl("get", "pods", "-o", "wide").stdout.splitlines()
    assert pods[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE",
                               "READINESS", "GATES"]
    assert pods[1].split()[:3] == ["solo", "0/1", "Pending"]
    kubectl("delete", "pod", "solo")


def test_get_output_formats(kubectl) -> None:
    kubectl("apply", "-f", "-", input=DEPLOYMENT.format(image="nginx:1.28"))
    as_yaml = yaml.safe_load(kubectl("get", "deploy", "web", "-o", "yaml").stdout)
    assert as_yaml["kind"] == "Deployment" and as_yaml["metadata"]["name"] == "web"
    assert int(as_yaml["metadata"]["resourceVersion"]) > 0 and as_yaml["metadata"]["uid"]
    as_json = json.loads(kubectl("get", "deploy", "-o", "json").stdout)
    assert as_json["kind"] == "List" and [i["metadata"]["name"] for i in as_json["items"]] == ["web"]
    assert kubectl("get", "deploy", "-o", "name").stdout.split() == ["deployment.apps/web"]
    path = kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].name}").stdout
    assert path == "nginx"
    everything = kubectl("get", "all").stdout
    assert "deployment.apps/web" in everything and "service/kubernetes" in everything


def test_create_patch_label_annotate_delete(kubectl) -> None:
    kubectl("create", "configmap", "settings", "--from-literal=a=1")  # a typed client: protobuf body
    kubectl("patch", "configmap", "settings", "-p", '{"data":{"b":"2"}}')  # strategic merge by default
    kubectl("patch", "configmap", "settings", "--type", "merge", "-p", '{"data":{"c":"3","a":null}}')
    kubectl("patch", "configmap", "settings", "--type", "json", "-p", '[{"op":"add","path":"/data/d","value":"4"}]')
    data = json.loads(kubectl("get", "cm", "settings", "-o", "jsonpath={.data}").stdout)
    assert data == {"b": "2", "c": "3", "d": "4"}
    kubectl("label", "configmap", "settings", "tier=backend")
    kubectl("annotate", "configmap", "settings", "owner=team-a")
    meta = json.loads(kubectl("get", "cm", "settings", "-o", "json").stdout)["metadata"]
    assert meta["labels"] == {"tier": "backend"} and meta["annotations"]["owner"] == "team-a"
    kubectl("label", "configmap", "settings", "tier-")
    meta = json.loads(kubectl("get", "cm", "settings", "-o", "json").stdout)["metadata"]
    assert "tier" not in (meta.get("labels") or {})
    assert kubectl("delete", "configmap", "settings").stdout.strip() == 'configmap "settings" deleted'
    gone = kubectl("get", "cm", "settings", check=False)
    assert gone.returncode != 0 and 'configmaps "settings" not found' in gone.stderr


def test_patch_deployment_containers_by_merge_key(kubectl) -> None:
    kubectl("apply", "-f", "-", input=DEPLOYMENT.format(image="nginx:1.28"))
    kubectl("patch", "deployment", "web", "-p",
            '{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox"}]}}}}')
    names = kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[*].name}").stdout
    assert names.split() == ["sidecar", "nginx"]  # strategic merge: merged by name, not replaced
    kubectl("set", "image", "deployment/web", "sidecar=busybox:1.36")
    kubectl("patch", "deployment", "web", "--type", "json",
            "-p", '[{"op":"remove","path":"/spec/template/spec/containers/0"}]')
    images = kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[*].image}").stdout
    assert images.split() == ["nginx:1.28"]


def test_scale_expose_and_server_side_apply(kubectl) -> None:
    kubectl("apply", "-f", "-", input=DEPLOYMENT.format(image="nginx:1.28"))
    assert kubectl("scale", "deployment", "web", "--replicas=5").stdout.strip() == "deployment.apps/web scaled"
    assert kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.replicas}").stdout == "5"
    kubectl("expose", "deployment", "web", "--port=80", "--name=web-svc")
    svc = json.loads(kubectl("get", "svc", "web-svc", "-o", "json").stdout)
    assert svc["spec"]["selector"] == {"app": "web"} and svc["spec"]["clusterIP"].startswith("10.43.")
    kubectl("delete", "svc", "web-svc")
    ssa = kubectl("apply", "--server-side", "-f", "-", input=DEPLOYMENT.replace("name: web\n", "name: ssa\n", 1)
                  .format(image="nginx:1.27"))
    assert ssa.stdout.strip() == "deployment.apps/ssa serverside-applied"
    managers = json.loads(kubectl("get", "deploy", "ssa", "-o", "json", "--show-managed-fields").stdout)
    assert any(m["manager"] == "kubectl" and m["operation"] == "Apply" for m in managers["metadata"]["managedFields"])
    kubectl("delete", "deploy", "ssa")


def _managers(kubectl, kind: str, name: str) -> tuple[dict, dict[tuple[str, str, str | None], dict]]:
    obj = json.loads(kubectl("get", kind, name, "-o", "json", "--show-managed-fields").stdout)
    entries = {(m["manager"], m["operation"], m.get("subresource")): m for m in obj["metadata"]["managedFields"]}
    return obj, entries


def test_scale_and_status_writes_record_their_managers(kubectl) -> None:
    kubectl("apply", "-f", "-", input=DEPLOYMENT.replace("name: web\n", "name: owned\n", 1).format(image="nginx"))
    kubectl("scale", "deployment", "owned", "--replicas=3")
    obj, entries = _managers(kubectl, "deployment", "owned")
    assert obj["metadata"]["generation"] == 2 and obj["spec"]["replicas"] == 3
    scale = next(m for key, m in entries.items() if key[1:] == ("Update", "scale"))
    assert scale["apiVersion"] == "apps/v1" and scale["fieldsV1"] == {"f:spec": {"f:replicas": {}}}
    applied = entries[("kubectl-client-side-apply", "Update", None)]
    assert "f:replicas" not in applied["fieldsV1"]["f:spec"]  # the scale took it over
    kubectl("delete", "deploy", "owned")

    # A Service: no controller writes its status meanwhile.
    kubectl("create", "service", "clusterip", "lb", "--tcp=80:80")
    kubectl("patch", "service", "lb", "--subresource=status", "--type=merge",
            "-p", '{"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}, "spec": {"type": "NodePort"}}')
    obj, entries = _managers(kubectl, "service", "lb")
    assert obj["status"]["loadBalancer"]["ingress"] == [{"ip": "192.0.2.1"}] and obj["spec"]["type"] == "ClusterIP"
    status = entries[("kubectl-patch", "Update", "status")]
    assert list(status["fieldsV1"]) == ["f:status"]  # the ignored spec change owns nothing
    assert ("kubectl-patch", "Update", None) not in entries
    kubectl("delete", "service", "lb")


def test_get_watch_streams_changes(kubectl, api_server, kubectl_cache) -> None:
    kubectl("create", "configmap", "watched", "--from-literal=k=v")
    cmd = [KUBECTL, "--kubeconfig", str(api_server.kubeconfig), "--cache-dir", str(kubectl_cache), "get",
           "configmaps", "-w", "--request-timeout=0", "--field-selector", "metadata.name=watched",
           "-o", "custom-columns=NAME:.metadata.name,V:.data.k"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as watcher:
        try:
            time.sleep(1.0)  # let the watch start
            kubectl("patch", "configmap", "watched", "--type", "merge", "-p", '{"data":{"k":"second"}}')
            kubectl("patch", "configmap", "watched", "--type", "merge", "-p", '{"data":{"k":"third"}}')
            time.sleep(1.0)
        finally:
            watcher.terminate()
            out, err = watcher.communicate(timeout=10)
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["NAME", "V"] and rows[1:] == [["watched", "v"], ["watched", "second"], ["watched", "third"]], \
        out + err
    kubectl("delete", "configmap", "watched")


def test_table_watch_prints_header_once(kubectl, api_server, kubectl_cache) -> None:
    cmd = [KUBECTL, "--kubeconfig", str(api_server.kubeconfig), "--cache-dir", str(kubectl_cache), "get",
           "configmaps", "-w", "-l", "wt=1"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as watcher:
        try:
            time.sleep(1.0)
            for name in ("wt-a", "wt-b"):
                kubectl("create", "-f", "-", input=f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n"
                        "  labels:\n    wt: '1'\ndata:\n  x: z\n")
            kubectl("delete", "configmap", "wt-a")
            time.sleep(1.0)
        finally:
            watcher.terminate()
            out, _ = watcher.communicate(timeout=10)
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "DATA", "AGE"]
    assert [line.split()[0] for line in lines[1:]] == ["wt-a", "wt-b", "wt-a"]
    kubectl("delete", "configmap", "wt-b")


def test_label_and_field_selectors(kubectl) -> None:
    for name, tier in (("sel-a", "web"), ("sel-b", "db"), ("sel-c", "web")):
        kubectl("create", "-f", "-", input=f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n"
                f"  labels:\n    tier: {tier}\n    group: sel\n")
    def names(*args: str) -> list[str]:
        return kubectl("get", "configmaps", "-o", "name", *args).stdout.split()
    assert names("-l", "tier=web") == ["configmap/sel-a", "configmap/sel-c"]
    assert names("-l", "group=sel,tier!=web") == ["configmap/sel-b"]
    assert names("-l", "tier in (db, cache)") == ["configmap/sel-b"]
    assert names("-l", "group=sel,tier notin (db)") == ["configmap/sel-a", "configmap/sel-c"]
    assert names("-l", "!nothere,group") == ["configmap/sel-a", "configmap/sel-b", "configmap/sel-c"]
    assert names("--field-selector", "metadata.name=sel-b") == ["configmap/sel-b"]
    assert names("-l", "group=sel", "--field-selector", "metadata.name!=sel-b") == ["configmap/sel-a",
                                                                                     "configmap/sel-c"]
    assert "configmap/sel-a" in kubectl("get", "cm", "-A", "-o", "name", "--field-selector",
                                        "metadata.namespace=default").stdout
    bad = kubectl("get", "cm", "--field-selector", "spec.nope=1", check=False)
    assert bad.returncode != 0 and "field label not supported: spec.nope" in bad.stderr
    kubectl("delete", "configmaps", "-l", "group=sel")
    assert names("-l", "group=sel") == []


def test_namespace_created_and_deleted_with_contents(kubectl) -> None:
    assert kubectl("create", "namespace", "team").stdout.strip() == "namespace/team created"
    kubectl("-n", "team", "create", "configmap", "c1", "--from-literal=a=b")
    kubectl("-n", "team", "apply", "-f", "-", input=DEPLOYMENT.format(image="nginx:1.27"))
    kubectl("-n", "team", "create", "service", "clusterip", "api", "--tcp=80:8080")
    listed = kubectl("get", "namespaces").stdout
    assert "team" in listed and "kube-system" in listed and "kube-node-lease" in listed
    sa = kubectl("-n", "team", "get", "serviceaccounts", "-o", "name").stdout.split()
    assert sa == ["serviceaccount/default"]
    kubectl("delete", "namespace", "team")  # waits until it is gone
    assert kubectl("get", "namespace", "team", check=False).returncode != 0
    assert kubectl("-n", "team", "get", "all,cm", "-o", "name").stdout.strip() == ""
    kubectl("create", "namespace", "team")  # the name is free again, and the namespace holds only what
    # the controllers give every namespace
    assert kubectl("-n", "team", "get", "deploy,svc", "-o", "name").stdout.strip() == ""
    wait_for(lambda: kubectl("-n", "team", "get", "cm,sa", "-o", "name").stdout.split() == [
        "configmap/kube-root-ca.crt", "serviceaccount/default"])
    kubectl("delete", "namespace", "team")


def test_creating_in_a_missing_namespace_is_not_found(kubectl) -> None:
    result = kubectl("-n", "nowhere", "create", "configmap", "x", check=False)
    assert result.returncode != 0 and 'namespaces "nowhere" not found' in result.stderr


def test_delete_with_wait_and_cascade(kubectl) -> None:
    owner = json.loads(kubectl("create", "-o", "json", "-f", "-", input="apiVersion: v1\nkind: ConfigMap\n"
                               "metadata:\n  name: owner\n").stdout)
    uid = owner["metadata"]["uid"]
    kubectl("create", "-f", "-", input="apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\n"
            f"  ownerReferences:\n  - apiVersion: v1\n    kind: ConfigMap\n    name: owner\n    uid: {uid}\n")
    kubectl("delete", "configmap", "owner")  # background propagation
    wait_for(lambda: kubectl("get", "cm", "owned", check=False).returncode != 0)
