"""``skiff kubectl`` against a real ``skiff server``, side by side with the real kubectl 1.32.

The same commands go to the same server through both clients; their outputs must agree (ages, which tick
between the two runs, are compared as ages only).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cluster.api.conftest import KUBECTL, ServerProcess, wait_for

REPO = Path(__file__).resolve().parents[2]
_AGE = re.compile(r"^\d+[smhdy](\d+[smhd])?$")

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("skiff-kubectl"))
    process.start()
    try:
        yield process
    finally:
        process.stop()


class Clients:
    """Runs a command line through ``skiff kubectl`` or through the real kubectl, on one server."""

    def __init__(self, server: ServerProcess, scratch: Path) -> None:
        self.server = server
        self.scratch = scratch
        self.env = dict(os.environ, HOME=str(scratch), PYTHONPATH=str(REPO))

    def skiff(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "skiff.cli.main", "kubectl", "--kubeconfig", str(self.server.kubeconfig),
                   *args]
        return self._run(command, input, check)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [KUBECTL, "--kubeconfig", str(self.server.kubeconfig), "--cache-dir", str(self.scratch / "cache"),
                   *args]
        return self._run(command, input, check)

    def _run(self, command: list[str], input: str | None, check: bool) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=60, env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stdout}{result.stderr}\n"
                                 f"--- server log ---\n{self.server.log_tail()}")
        return result


@pytest.fixture(scope="module")
def clients(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Clients:
    if not Path(KUBECTL).exists():
        pytest.skip("kubectl is not installed")
    return Clients(server, tmp_path_factory.mktemp("clients"))


@pytest.fixture(scope="module")
def workload(clients: Clients) -> None:
    clients.kubectl("apply", "-f", "-", input=DEPLOYMENT)
    clients.kubectl("create", "namespace", "team-a")
    clients.kubectl("create", "configmap", "settings", "-n", "team-a", "--from-literal=a=1", "--from-literal=b=2")
    # The controllers run in the server: let what they write settle (the Deployment's status, its two pods, the
    # new namespace's kube-root-ca.crt), or the two clients' tables would be taken on either side of a change.

    def settled() -> bool:
        deployment = json.loads(clients.kubectl("get", "deploy", "web", "-o", "json").stdout)
        pods = clients.kubectl("get", "pods", "-l", "app=web", "-o", "name").stdout.split()
        root_ca = clients.kubectl("get", "cm", "kube-root-ca.crt", "-n", "team-a", check=False).returncode == 0
        status = deployment.get("status") or {}
        return (status.get("observedGeneration") == deployment["metadata"]["generation"]
                and status.get("updatedReplicas") == 2 and len(pods) == 2 and root_ca)

    wait_for(settled, 60, 0.5)


def cells(text: str) -> list[list[str]]:
    """A table's cells, ages replaced by a marker (they tick between the two runs)."""
    rows = []
    for line in text.splitlines():
        row = re.split(r"\s{2,}", line.strip()) if line.strip() else []
        rows.append(["<age>" if _AGE.match(cell) else cell for cell in row])
    return rows


TABLE_COMMANDS = [
    ("get", "deployments"),
    ("get", "deploy", "-o", "wide"),
    ("get", "svc"),
    ("get", "services", "-o", "wide", "--show-labels"),
    ("get", "namespaces"),
    ("get", "configmaps", "-A"),
    ("get", "deploy,svc"),
    ("get", "deployment/web", "service/web"),
    ("get", "deploy", "-l", "app=web", "--no-headers"),
    ("get", "cm", "-n", "team-a"),
    ("get", "all"),
]


@pytest.mark.usefixtures("workload")
@pytest.mark.parametrize("command", TABLE_COMMANDS, ids=[" ".join(c) for c in TABLE_COMMANDS])
def test_tables_match_kubectl(clients: Clients, command: tuple[str, ...]) -> None:
    theirs = clients.kubectl(*command)
    ours = clients.skiff(*command)
    assert cells(ours.stdout) == cells(theirs.stdout)
    assert ours.stderr == theirs.stderr


@pytest.mark.usefixtures("workload")
@pytest.mark.parametrize("command", [
    ("get", "deploy", "web", "-o", "name"),
    ("get", "deploy,svc", "-o", "name"),
    ("get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[*].image}"),
    ("get", "deploy", "-o", "jsonpath={range .items[*]}{.metadata.name}{\"\\t\"}{.spec.replicas}{\"\\n\"}{end}"),
    ("get", "ns", "-o", "jsonpath={.items[?(@.metadata.name==\"team-a\")].status.phase}"),
    ("get", "svc", "web", "-o", "jsonpath={.spec.ports[0].port}"),
])
def test_name_and_jsonpath_output_match_kubectl(clients: Clients, command: tuple[str, ...]) -> None:
    assert clients.skiff(*command).stdout == clients.kubectl(*command).stdout


@pytest.mark.usefixtures("workload")
def test_json_and_yaml_output(clients: Clients) -> None:
    ours = json.loads(clients.skiff("get", "deploy", "web", "-o", "json").stdout)
    theirs = json.loads(clients.kubectl("get", "deploy", "web", "-o", "json").stdout)
    assert ours == theirs
    listing = yaml.safe_load(clients.skiff("get", "svc", "-o", "yaml").stdout)
    assert listing["kind"] == "List"
    assert {item["metadata"]["name"] for item in listing["items"]} == {"kubernetes", "web"}
    assert all(item["kind"] == "Service" for item in listing["items"])


@pytest.mark.usefixtures("workload")
def test_errors_read_like_kubectls(clients: Clients) -> None:
    ours = clients.skiff("get", "deploy", "missing", check=False)
    theirs = clients.kubectl("get", "deploy", "missing", check=False)
    assert (ours.returncode, ours.stderr) == (theirs.returncode, theirs.stderr)
    empty = clients.skiff("get", "pods", "-n", "team-a")
    assert empty.stderr == "No resources found in team-a namespace.\n"
    unknown = clients.skiff("get", "frobnicators", check=False)
    assert unknown.returncode == 1
    assert 'the server doesn\'t have a resource type "frobnicators"' in unknown.stderr


def test_apply_creates_configures_and_leaves_unchanged(clients: Clients) -> None:
    manifest = DEPLOYMENT.replace("name: web", "name: shop").replace("{app: web}", "{app: shop}")
    assert clients.skiff("apply", "-f", "-", input=manifest).stdout == (
        "deployment.apps/shop created\nservice/shop created\n")
    assert clients.skiff("apply", "-f", "-", input=manifest).stdout == (
        "deployment.apps/shop unchanged\nservice/shop unchanged\n")
    changed = manifest.replace("nginx:1.25", "nginx:1.27")
    assert clients.skiff("apply", "-f", "-", input=changed).stdout == (
        "deployment.apps/shop configured\nservice/shop unchanged\n")
    image = clients.kubectl("get", "deploy", "shop", "-o", "jsonpath={.spec.template.spec.containers[0].image}")
    assert image.stdout == "nginx:1.27"
    # someone else changes the replicas: our next apply of them conflicts, as kubectl's server-side apply does
    clients.kubectl("patch", "deploy", "shop", "-p", '{"spec":{"replicas":5}}')
    conflict = clients.skiff("apply", "-f", "-", input=changed, check=False)
    assert conflict.returncode == 1
    assert "conflict" in conflict.stderr and ".spec.replicas" in conflict.stderr
    forced = clients.skiff("apply", "--force-conflicts", "-f", "-", input=changed)
    assert "deployment.apps/shop configured" in forced.stdout
    assert clients.kubectl("get", "deploy", "shop", "-o", "jsonpath={.spec.replicas}").stdout == "2"
    assert clients.skiff("delete", "-f", "-", input=manifest).stdout == (
        'deployment.apps "shop" deleted\nservice "shop" deleted\n')


def test_create_scale_label_annotate_delete(clients: Clients) -> None:
    assert clients.skiff("create", "namespace", "verbs").stdout == "namespace/verbs created\n"
    created = clients.skiff("create", "deployment", "hello", "--image=busybox:1.36", "--replicas=2", "-n", "verbs")
    assert created.stdout == "deployment.apps/hello created\n"
    assert clients.skiff("scale", "deploy/hello", "--replicas=3", "-n", "verbs").stdout == (
        "deployment.apps/hello scaled\n")
    assert clients.kubectl("get", "deploy", "hello", "-n", "verbs", "-o", "jsonpath={.spec.replicas}").stdout == "3"
    assert clients.skiff("label", "deploy", "hello", "tier=web", "-n", "verbs").stdout == (
        "deployment.apps/hello labeled\n")
    refused = clients.skiff("label", "deploy", "hello", "-n", "verbs", "tier=db", check=False)
    theirs = clients.kubectl("label", "deploy", "hello", "-n", "verbs", "tier=db", check=False)
    assert (refused.returncode, refused.stderr) == (theirs.returncode, theirs.stderr)
    clients.skiff("label", "deploy/hello", "-n", "verbs", "tier=db", "--overwrite")
    clients.skiff("annotate", "deploy/hello", "-n", "verbs", "note=hi")
    labels = json.loads(clients.kubectl("get", "deploy", "hello", "-n", "verbs", "-o", "json").stdout)["metadata"]
    assert labels["labels"] == {"app": "hello", "tier": "db"}
    assert labels["annotations"]["note"] == "hi"
    clients.skiff("label", "deploy/hello", "-n", "verbs", "tier-")
    assert clients.kubectl("get", "deploy", "hello", "-n", "verbs", "--show-labels").stdout.split()[-1] == "app=hello"
    assert clients.skiff("delete", "deploy", "hello", "-n", "verbs").stdout == 'deployment.apps "hello" deleted\n'
    gone = clients.kubectl("get", "deploy", "-n", "verbs", check=False)
    assert gone.stderr == "No resources found in verbs namespace.\n"
    clients.kubectl("run", "lone", "--image=busybox", "-n", "verbs")
    assert clients.skiff("delete", "pod", "lone", "-n", "verbs", "--force").stdout == 'pod "lone" deleted\n'
    assert clients.kubectl("get", "pod", "lone", "-n", "verbs", check=False).returncode == 1
    cm = clients.skiff("create", "configmap", "c", "-n", "verbs", "--from-literal=x=1")
    assert cm.stdout == "configmap/c created\n"
    assert clients.kubectl("get", "cm", "c", "-n", "verbs", "-o", "jsonpath={.data.x}").stdout == "1"


@pytest.mark.usefixtures("workload")
def test_describe_shows_the_object_and_its_events(clients: Clients) -> None:
    uid = clients.kubectl("get", "deploy", "web", "-o", "jsonpath={.metadata.uid}").stdout
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.1", "namespace": "default"},
             "involvedObject": {"kind": "Deployment", "name": "web", "namespace": "default", "uid": uid,
                                "apiVersion": "apps/v1"},
             "reason": "ScalingReplicaSet", "message": "Scaled up replica set web-1 to 2", "type": "Normal",
             "source": {"component": "deployment-controller"}, "count": 1,
             "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z"}
    clients.kubectl("create", "-f", "-", input=json.dumps(event))
    text = clients.skiff("describe", "deployment", "web").stdout
    assert text.startswith("Name:               web\nNamespace:          default\n")
    assert "Labels:             app=web" in text
    assert "Image:  nginx:1.25" in text
    events = text[text.index("Events:"):]
    assert "ScalingReplicaSet" in events and "deployment-controller" in events
    assert "Scaled up replica set web-1 to 2" in events


@pytest.mark.usefixtures("workload")
def test_get_watch_prints_changes(clients: Clients, server: ServerProcess) -> None:
    command = [sys.executable, "-m", "skiff.cli.main", "kubectl", "--kubeconfig", str(server.kubeconfig),
               "get", "deploy", "web", "-w"]
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clients.env)
    try:
        header = watcher.stdout.readline()
        first = watcher.stdout.readline()
        assert header.split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
        assert first.split()[:2] == ["web", "0/2"]
        time.sleep(0.3)
        clients.kubectl("scale", "deploy", "web", "--replicas=4")
        changed = watcher.stdout.readline()
        assert changed.split()[:2] == ["web", "0/4"]
    finally:
        watcher.kill()
        watcher.wait(10)
        watcher.stdout.close()
        watcher.stderr.close()
    clients.kubectl("scale", "deploy", "web", "--replicas=2")
    wait_for(lambda: clients.kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.replicas}").stdout == "2")


def test_watch_on_an_empty_list_prints_the_header_with_the_first_row(clients: Clients, server: ServerProcess) -> None:
    clients.kubectl("create", "namespace", "watched")
    command = [sys.executable, "-m", "skiff.cli.main", "kubectl", "--kubeconfig", str(server.kubeconfig),
               "get", "configmaps", "-n", "watched", "-w"]
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clients.env)
    try:
        # kube-root-ca.crt may or may not be published in the namespace; wait for our own object
        time.sleep(1.0)
        clients.kubectl("create", "configmap", "late", "-n", "watched", "--from-literal=k=v")
        lines = []
        while not any(line.startswith("late") for line in lines):
            lines.append(watcher.stdout.readline())
        assert lines[0].split() == ["NAME", "DATA", "AGE"]
        assert lines[-1].split()[:2] == ["late", "1"]
    finally:
        watcher.kill()
        watcher.wait(10)
        watcher.stdout.close()
        watcher.stderr.close()


def test_the_client_uses_no_skiff_internals() -> None:
    # skiff.cluster.client (the kubeconfig loader the control plane shares) is the one part of Skiff it may use
    shared = ("skiff.cli", "skiff.cluster.client", "skiff.errors")
    probe = ("import sys, skiff.cli.kubectl.commands; "
             f"print([m for m in sys.modules if m.startswith('skiff.') and not m.startswith({shared!r}) "
             "and m != 'skiff.cluster'])")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.stdout.strip() == "[]"
