"""``skiff kubectl`` expose, rollout, set image and top, side by side with the real kubectl 1.32.

A real ``skiff server`` (its controllers and scheduler inside) with ``skiff hollow-nodes``, so Deployments
really roll out. Each step is done by both clients on twin Deployments (``web-s`` through skiff kubectl,
``web-k`` through kubectl): their outputs, and the objects they leave behind, must agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_skiff_kubectl import Clients
from tests.cluster.api.conftest import KUBECTL, ServerProcess, wait_for
from tests.cluster.scheduler.conftest import HollowNodesProcess

TWINS = ("web-s", "web-k")


def deployment(name: str, image: str = "nginx:1.27") -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: nginx
        image: {image}
        ports:
        - containerPort: 80
"""


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clients]:
    if not Path(KUBECTL).exists():
        pytest.skip("kubectl is not installed")
    root = tmp_path_factory.mktemp("kubectl-workloads")
    server = ServerProcess(root / "server")
    server.start()
    nodes = HollowNodesProcess(server, root / "hollow", 3)
    try:
        nodes.wait_registered()
        both = Clients(server, root / "clients")
        for name in TWINS:
            both.kubectl("apply", "-f", "-", input=deployment(name))
        for name in TWINS:
            both.kubectl("rollout", "status", f"deployment/{name}", "--timeout=60s")
        yield both
    finally:
        nodes.stop()
        server.stop()


def run_both(clients: Clients, *args: str, check: bool = True) -> tuple[Any, Any]:
    """The same command through skiff kubectl on ``web-s`` and through kubectl on ``web-k``."""
    ours = clients.skiff(*(a.replace("{}", "web-s") for a in args), check=check)
    theirs = clients.kubectl(*(a.replace("{}", "web-k") for a in args), check=check)
    return ours, theirs


def same_text(ours: Any, theirs: Any) -> None:
    assert ours.returncode == theirs.returncode, (ours, theirs)
    assert ours.stdout.replace("web-s", "web-X") == theirs.stdout.replace("web-k", "web-X")
    assert ours.stderr.replace("web-s", "web-X") == theirs.stderr.replace("web-k", "web-X")


def get(clients: Clients, *args: str) -> dict[str, Any]:
    return json.loads(clients.kubectl("get", *args, "-o", "json").stdout)


def template_image(clients: Clients, name: str) -> str:
    return get(clients, "deployment", name)["spec"]["template"]["spec"]["containers"][0]["image"]


def test_set_image_rollout_status_history_and_undo_agree(clients: Clients) -> None:
    same_text(*run_both(clients, "set", "image", "deployment/{}", "nginx=nginx:1.28"))
    ours, theirs = run_both(clients, "rollout", "status", "deployment/{}", "--timeout=90s")
    assert ours.returncode == 0 and ours.stdout.endswith('deployment "web-s" successfully rolled out\n')
    assert theirs.stdout.endswith('deployment "web-k" successfully rolled out\n')
    for name in TWINS:
        assert template_image(clients, name) == "nginx:1.28"

    same_text(*run_both(clients, "rollout", "history", "deployment/{}"))
    ours = clients.skiff("rollout", "history", "deployment/web-s", "--revision=2")
    assert "with revision #2" in ours.stdout and "nginx:1.28" in ours.stdout

    same_text(*run_both(clients, "rollout", "undo", "deployment/{}"))
    for name in TWINS:
        wait_for(lambda name=name: template_image(clients, name) == "nginx:1.27", 30)
    ours, theirs = (get(clients, "deployment", name) for name in TWINS)
    assert ours["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == \
        theirs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    same_text(*run_both(clients, "rollout", "status", "deployment/{}", "--timeout=90s", "--watch=false"))

    # Undo to the revision already running is skipped; to one that never was, an error.
    same_text(*run_both(clients, "rollout", "undo", "deployment/{}", "--to-revision=3"))
    same_text(*run_both(clients, "rollout", "undo", "deployment/{}", "--to-revision=99", check=False))


def test_pause_resume_restart_agree(clients: Clients) -> None:
    same_text(*run_both(clients, "rollout", "pause", "deployment/{}"))
    same_text(*run_both(clients, "rollout", "pause", "deployment/{}", check=False))
    same_text(*run_both(clients, "rollout", "restart", "deployment/{}", check=False))
    same_text(*run_both(clients, "rollout", "undo", "deployment/{}", check=False))
    same_text(*run_both(clients, "rollout", "resume", "deployment/{}"))
    same_text(*run_both(clients, "rollout", "resume", "deployment/{}", check=False))
    same_text(*run_both(clients, "rollout", "restart", "deployment/{}"))
    annotations = [get(clients, "deployment", name)["spec"]["template"]["metadata"]["annotations"] for name in TWINS]
    assert all("kubectl.kubernetes.io/restartedAt" in a for a in annotations)
    for name in TWINS:
        clients.kubectl("rollout", "status", f"deployment/{name}", "--timeout=90s")


@pytest.mark.parametrize("flags", [("--port=80",), ("--port=8080", "--target-port=80", "--type=NodePort"),
                                   ("--type=LoadBalancer",)])
def test_expose_makes_the_same_service(clients: Clients, flags: tuple[str, ...]) -> None:
    same_text(*run_both(clients, "expose", "deployment/{}", *flags))
    try:
        ours, theirs = (get(clients, "service", name) for name in TWINS)
        for service in (ours, theirs):
            for port in service["spec"]["ports"]:
                port.pop("nodePort", None)
        rename = json.loads(json.dumps(ours["spec"]).replace("web-s", "web-k"))
        for key in ("clusterIP", "clusterIPs"):
            rename.pop(key), theirs["spec"].pop(key)
        assert rename == theirs["spec"]
        assert ours["metadata"]["labels"] == {"app": "web-s"}
    finally:
        for name in TWINS:
            clients.kubectl("delete", "service", name)


def test_expose_and_set_image_errors_agree(clients: Clients) -> None:
    same_text(*run_both(clients, "set", "image", "deployment/{}", "nosuch=busybox", check=False))
    same_text(*run_both(clients, "expose", "deployment/nosuch", "--port=80", check=False))
    clients.kubectl("expose", "deployment/web-k", "--port=80", "--name=taken")
    try:
        ours = clients.skiff("expose", "deployment/web-s", "--port=80", "--name=taken", check=False)
        theirs = clients.kubectl("expose", "deployment/web-k", "--port=80", "--name=taken", check=False)
        assert ours.returncode == theirs.returncode == 1
        assert ours.stderr == theirs.stderr  # Error from server (AlreadyExists): services "taken" already exists
    finally:
        clients.kubectl("delete", "service", "taken")


def test_top_without_figures_says_what_kubectl_says(clients: Clients) -> None:
    """No kubelet answers here (hollow nodes): the metrics API is served but has no figures yet."""
    for what in ("pod", "node"):
        ours, theirs = clients.skiff("top", what, check=False), clients.kubectl("top", what, check=False)
        assert (ours.returncode, ours.stdout, ours.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr)
    assert "metrics not available yet" in theirs.stderr


def test_autoscale_makes_the_same_autoscaler(clients: Clients) -> None:
    """skiff kubectl posts autoscaling/v2 (as kubectl 1.33 does), kubectl 1.32 autoscaling/v1: the same object."""
    same_text(*run_both(clients, "autoscale", "deployment/{}", "--min=2", "--max=4", "--cpu-percent=60"))
    try:
        ours, theirs = (get(clients, "hpa", name) for name in TWINS)
        assert json.loads(json.dumps(ours["spec"]).replace("web-s", "web-k")) == theirs["spec"]
        assert theirs["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
        ours, theirs = run_both(clients, "get", "hpa", "{}")
        assert [line.split()[:-1] for line in ours.stdout.replace("web-s", "web-X").splitlines()] == \
            [line.split()[:-1] for line in theirs.stdout.replace("web-k", "web-X").splitlines()]  # all but AGE
        assert "cpu: <unknown>/60%" in theirs.stdout  # hollow nodes have no figures
    finally:
        for name in TWINS:
            clients.kubectl("delete", "hpa", name)
    same_text(*run_both(clients, "autoscale", "deployment/nosuch", "--max=3", check=False))
