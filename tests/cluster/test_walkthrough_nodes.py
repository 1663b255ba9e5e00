"""The seed's walk-through on real nodes (issue 9): a 3-node ``skiff cluster`` (each node a network namespace with
its own engine; node 1 runs ``skiff server``, nodes 2 and 3 ``skiff agent``), the real kubectl 1.32, offline
images loaded with ``skiff cluster load``, step by step as a user would type it.

The steps share one cluster and run in order: 3 Ready nodes; the images loaded; ``kubectl apply`` of the
seed's Deployment (2 nginx pods on different nodes, each serving its page at its pod IP); a deleted pod
replaced, scaled to 5; ``kubectl expose --type=LoadBalancer`` answering on every node's address and by name
from a pod; ``kubectl logs`` / ``exec`` / ``port-forward`` / ``top``; a DaemonSet on every node and a Job; a
rolling update to an image no registry has stopping at maxUnavailable while the old pods serve, and ``rollout
undo``; node 3's agent SIGKILLed: the node NotReady and its pods recreated on nodes 1 and 2; ``skiff cluster
delete`` leaving nothing.

The cluster runs with short node-lifecycle times (``--server-arg``), so a dead node is noticed and evicted in
seconds. Traffic goes only to the cluster's own addresses (the test engines' reserved 10.K block, the pod and
Service ranges inside the nodes' namespaces); the nodes have no route out, so the broken image's pull fails
without reaching any registry.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skiff.image.archive import export_oci_layout, import_rootfs
from skiff.image.content import ContentStore
from skiff.image.store import ImageStore
from tests.cluster.api.conftest import wait_for
from tests.cluster.local.test_cluster import Cluster, assert_nothing_left, container_of
from tests.cluster.seed import DEPLOYMENT_YAML
from tests.engine.conftest import reserve_net_block
from tests.image import testimages

NGINX = "nginx:1.27"
BUSYBOX = "busybox:1.36"  # not :latest, so IfNotPresent (the default) uses the loaded image
WELCOME = "<title>Welcome to nginx!</title>"
# The official image sends nginx's access log to the container's stdout (a symlink made at build time); the
# offline Debian image logs to a file, so its command makes the same symlink before starting nginx.
NGINX_CHANGES = (f"ENV {testimages.PATH_ENV}", "EXPOSE 80/tcp", "STOPSIGNAL SIGQUIT",
                 'CMD ["sh","-c","ln -sf /dev/stdout /var/log/nginx/access.log && '
                 'ln -sf /dev/stderr /var/log/nginx/error.log && exec nginx -g \'daemon off;\'"]')
NODE_MONITOR_GRACE = 20  # > the in-process agent's 10 s lease interval, so node 1 never looks dead
TOLERATION = 2  # the default unreachable/not-ready tolerationSeconds pods get
SLACK = 90  # the machine is shared and loaded: generous waits, short configured intervals


# --- the cluster --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``docker save``-format archives (written by skopeo) of the offline nginx (as nginx:1.27) and busybox."""
    if os.geteuid() != 0:
        pytest.skip("a local cluster needs root")
    out = tmp_path_factory.mktemp("images")
    try:
        rootfs = testimages.nginx_rootfs_tar()
        busybox = testimages.busybox_docker_archive(str(out / "busybox.tar"), BUSYBOX)
    except testimages.TestImageUnavailable as exc:
        pytest.skip(str(exc))
    store, layout = out / "store", out / "layout"
    content = ContentStore(str(store / "content"))
    images = ImageStore(str(store / "images"), content)
    try:
        import_rootfs(rootfs, content, images, NGINX, changes=NGINX_CHANGES, created=testimages.CREATED,
                      message="skiff test image: debian bookworm nginx-light", compresslevel=1)
        export_oci_layout(NGINX, str(layout), content, images)
    finally:
        images.db.close()
    testimages.skopeo("copy", f"oci:{layout}:1.27", f"docker-archive:{out / 'nginx.tar'}:{NGINX}")
    shutil.rmtree(store)  # 200 MB each: only the archives are needed
    shutil.rmtree(layout)
    return {"nginx": out / "nginx.tar", "busybox": Path(busybox)}


@pytest.fixture(scope="module")
def cluster(archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    net = reserve_net_block()
    base = tmp_path_factory.mktemp("skc")
    made = Cluster(base / "c", net)
    try:
        made.own("create", "--nodes", "3", "--subnet", made.subnet, "--timeout", "300",
                 "--agent-arg=--lease-interval=2", "--agent-arg=--resync-interval=2",
                 "--server-arg=--node-monitor-period=1",
                 f"--server-arg=--node-monitor-grace-period={NODE_MONITOR_GRACE}",
                 f"--server-arg=--default-unreachable-toleration-seconds={TOLERATION}",
                 f"--server-arg=--default-not-ready-toleration-seconds={TOLERATION}")
        (base / "kubeconfig").write_text(made.own("kubeconfig").stdout)
        yield made
    finally:
        if (made.root / "cluster.json").exists():
            made.own("delete", check=False)
        net.release()


def kubectl(cluster: Cluster, *args: str, check: bool = True, stdin: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["kubectl", "--kubeconfig", str(cluster.root.parent / "kubeconfig"), *args],
                            input=stdin, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"kubectl {' '.join(args)}: exit {result.returncode}\n{result.stderr}"
    return result


def get(cluster: Cluster, *args: str) -> Any:
    return json.loads(kubectl(cluster, "get", *args, "-o", "json").stdout)


def node_name(cluster: Cluster, index: int) -> str:
    return f"{cluster.name}-{index}"


def node_address(cluster: Cluster, index: int) -> str:
    return f"{cluster.net.prefix}.0.{index + 1}"


def in_node(cluster: Cluster, index: int, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``argv`` in node ``index``'s network namespace."""
    return subprocess.run(["ip", "netns", "exec", f"skc-{cluster.name}-{index}", *argv], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def fetch_in_node(cluster: Cluster, index: int, address: str) -> str | None:
    """The page ``GET /`` at ``address:80`` returns, from node ``index``'s namespace (None if it fails).
    (Python, not the host's busybox-static wget, which crashes on its error paths.)"""
    result = in_node(cluster, index, sys.executable, "-c", _FETCH, address)
    return result.stdout if result.returncode == 0 else None


_FETCH = """import http.client, sys
connection = http.client.HTTPConnection(sys.argv[1], 80, timeout=5)
connection.request("GET", "/", headers={"User-Agent": "walkthrough-node"})
response = connection.getresponse()
sys.stdout.write(response.read().decode(errors="replace"))
sys.exit(response.status != 200)
"""


def fetch(address: str, port: int = 80, agent: str = "walkthrough-host") -> str | None:
    """``GET /`` at ``address:port`` (from the host over the cluster's bridge): the page, None if it fails.
    http.client: no proxy settings apply."""
    connection = http.client.HTTPConnection(address, port, timeout=5)
    try:
        connection.request("GET", "/", headers={"User-Agent": agent})
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
        return body if response.status == 200 else None
    except OSError:
        return None
    finally:
        connection.close()


# --- pods ---------------------------------------------------------------------------------------------------


def live_pods(cluster: Cluster, selector: str = "app=web") -> list[dict[str, Any]]:
    """The pods not being deleted."""
    return [p for p in get(cluster, "pods", "-l", selector)["items"] if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and bool(status.get("podIP")) and any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or ())


def image_of(pod: dict[str, Any]) -> str:
    return pod["spec"]["containers"][0]["image"]


def running(cluster: Cluster, count: int, image: str = NGINX, timeout: float = SLACK) -> list[dict[str, Any]]:
    """Wait until exactly ``count`` live web pods exist, all Ready on ``image``."""
    def check() -> list[dict[str, Any]] | None:
        pods = live_pods(cluster)
        return pods if len(pods) == count and all(ready(p) and image_of(p) == image for p in pods) else None

    return wait_for(check, timeout=timeout, interval=0.5)


def wait_phase(cluster: Cluster, name: str, phases: set[str], timeout: float = SLACK) -> dict[str, Any]:
    return wait_for(lambda: (lambda p: p if (p.get("status") or {}).get("phase") in phases else None)(
        get(cluster, "pod", name)), timeout=timeout, interval=0.5)


def busybox_pod(name: str, node: str, script: str, restart: str = "Never") -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "client"}},
                       "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "restartPolicy": restart,
                                "terminationGracePeriodSeconds": 1,
                                "containers": [{"name": "client", "image": BUSYBOX,
                                                "command": ["sh", "-c", script]}]}})


def proxy_runs(cluster: Cluster, index: int) -> bool:
    return in_node(cluster, index, "nft", "list", "table", "ip", "skiff-proxy").returncode == 0


# --- the walk-through ---------------------------------------------------------------------------------------


def test_get_nodes_shows_three_ready_nodes(cluster: Cluster) -> None:
    rows = [line.split() for line in kubectl(cluster, "get", "nodes", "--no-headers").stdout.splitlines()]
    assert sorted((row[0], row[1]) for row in rows) == [(node_name(cluster, i), "Ready") for i in (1, 2, 3)]


def test_load_puts_both_images_on_every_node(cluster: Cluster, archives: dict[str, Path]) -> None:
    assert f"Loaded image: {NGINX}" in cluster.own("load", str(archives["nginx"])).stdout
    assert f"Loaded image: {BUSYBOX}" in cluster.own("load", str(archives["busybox"])).stdout
    for index in (1, 2, 3):
        engine = cluster.engine(index)
        try:
            tags = {tag for image in engine.images() for tag in image.get("RepoTags") or ()}
        finally:
            engine.close()
        assert {NGINX, BUSYBOX} <= tags, (index, tags)


def test_apply_runs_two_nginx_pods_on_different_nodes_serving_their_page(cluster: Cluster, tmp_path: Path) -> None:
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text(DEPLOYMENT_YAML)
    assert kubectl(cluster, "apply", "-f", str(manifest)).stdout.strip() == "deployment.apps/web created"
    pods = running(cluster, 2)
    assert len({p["spec"]["nodeName"] for p in pods}) == 2
    rows = kubectl(cluster, "get", "pods", "-l", "app=web", "--no-headers").stdout.splitlines()
    assert [row.split()[1:3] for row in rows] == [["1/1", "Running"]] * 2
    for pod in pods:  # from node 2's namespace: a pod on node 2 over its bridge, one elsewhere over the routes
        ip = pod["status"]["podIP"]
        body = wait_for(lambda ip=ip: fetch_in_node(cluster, 2, ip), timeout=30, interval=0.5)
        assert WELCOME in body


def test_a_deleted_pod_is_replaced(cluster: Cluster) -> None:
    victim = running(cluster, 2)[0]["metadata"]["name"]
    kubectl(cluster, "delete", "pod", victim)

    def replaced() -> list[dict[str, Any]] | None:
        pods = running(cluster, 2)
        return None if victim in {p["metadata"]["name"] for p in pods} else pods

    wait_for(replaced, timeout=SLACK, interval=0.5)


def test_scale_to_five(cluster: Cluster) -> None:
    assert "deployment.apps/web scaled" in kubectl(cluster, "scale", "deployment/web", "--replicas=5").stdout
    running(cluster, 5)
    wait_for(lambda: kubectl(cluster, "get", "deployment", "web", "--no-headers").stdout.split()[:4] == [
        "web", "5/5", "5", "5"], timeout=SLACK, interval=0.5)


def test_expose_as_load_balancer_answers_on_every_node(cluster: Cluster) -> None:
    assert kubectl(cluster, "expose", "deployment/web", "--port=80",
                   "--type=LoadBalancer").stdout.strip() == "service/web exposed"
    addresses = [node_address(cluster, i) for i in (1, 2, 3)]

    def ingress() -> list[str] | None:
        found = [i["ip"] for i in get(cluster, "service", "web")["status"].get("loadBalancer", {}).get("ingress", [])]
        return found if found == addresses else None

    wait_for(ingress, timeout=SLACK, interval=0.5)
    row = kubectl(cluster, "get", "service", "web", "--no-headers").stdout.split()
    assert row[1] == "LoadBalancer" and row[3] == ",".join(addresses) and re.fullmatch(r"80:\d+/TCP", row[4]), row
    for index in (2, 3):  # from the host, over the cluster's bridge, to each agent node's address
        address = addresses[index - 1]
        assert WELCOME in wait_for(lambda address=address: fetch(address), timeout=30, interval=0.5)
    assert proxy_runs(cluster, 1)  # node 1's agent is skiff server's own
    assert WELCOME in wait_for(lambda: fetch(addresses[0]), timeout=30, interval=0.5)


@pytest.mark.parametrize("index", [2, 3, 1])
def test_a_pod_reaches_the_service_by_name(cluster: Cluster, index: int) -> None:
    """A busybox pod on node ``index``: ``wget http://web.default.svc.cluster.local`` (the node's cluster DNS,
    then the ClusterIP through its proxy) gets the page; its exit status is the pod's phase."""
    name = f"client-{index}"
    # `timeout`, not wget's -T (this busybox-static build's wget crashes with -T); to a file, not a pipe.
    script = ("timeout 10 wget -q -O /tmp/page http://web.default.svc.cluster.local && "
              f"grep -q '{WELCOME}' /tmp/page && echo fetched || {{ nslookup web.default.svc.cluster.local; exit 1; }}")
    kubectl(cluster, "apply", "-f", "-", stdin=busybox_pod(name, node_name(cluster, index), script))
    pod = wait_phase(cluster, name, {"Succeeded", "Failed"})
    assert pod["status"]["phase"] == "Succeeded", engine_logs(cluster, index, name)


def engine_logs(cluster: Cluster, index: int, pod_name: str) -> str:
    """The pod's container's output, read from node ``index``'s engine (whether or not ``kubectl logs`` works)."""
    engine = cluster.engine(index)
    try:
        return engine.logs(container_of(engine, pod_name)).decode(errors="replace")
    finally:
        engine.close()


def test_logs_show_the_access_log_of_those_requests(cluster: Cluster) -> None:
    pods = running(cluster, 5)
    logs = [kubectl(cluster, "logs", p["metadata"]["name"], check=False) for p in pods]
    failed = [result for result in logs if result.returncode != 0]
    assert not failed, failed[0].stderr
    requests = [line for result in logs for line in result.stdout.splitlines() if '"GET / HTTP/1.1" 200' in line]
    assert any("walkthrough-host" in line for line in requests), requests  # from the host, through the LB
    assert any("Wget" in line for line in requests), requests  # from the busybox pods


def test_exec_runs_in_the_pod_with_its_exit_code(cluster: Cluster) -> None:
    target = running(cluster, 5)[0]["metadata"]["name"]
    hostname = kubectl(cluster, "exec", target, "--", "cat", "/etc/hostname", check=False)
    assert hostname.returncode == 0, hostname.stderr
    assert hostname.stdout.strip() == target
    assert kubectl(cluster, "exec", target, "--", "sh", "-c", "exit 3", check=False).returncode == 3


@pytest.mark.parametrize("target", ["deployment/web", "svc/web"])
def test_port_forward_reaches_a_pod_of_the_deployment(cluster: Cluster, target: str) -> None:
    """``kubectl port-forward deployment/web`` (or the Service, whose port kubectl maps to the pod's): kubectl
    picks a pod, the API server on node 1 hands the stream to that pod's kubelet, which connects inside the pod;
    nginx answers on the host's loopback."""
    forward = subprocess.Popen(["kubectl", "--kubeconfig", str(cluster.root.parent / "kubeconfig"), "port-forward",
                                target, ":80"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = forward.stdout.readline()  # type: ignore[union-attr]
        found = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> 80", line)
        assert found, f"{line!r} {forward.stderr.read() if forward.poll() is not None else ''}"  # type: ignore[union-attr]
        page = fetch("127.0.0.1", int(found.group(1)), agent="walkthrough-port-forward")
        assert page is not None and "Welcome to nginx!" in page
    finally:
        forward.terminate()
        forward.wait(timeout=10)
        forward.stdout.close()  # type: ignore[union-attr]
        forward.stderr.close()  # type: ignore[union-attr]


def test_top_shows_every_node_and_the_pods(cluster: Cluster) -> None:
    """``kubectl top``: the server on node 1 asks every node's kubelet for its figures."""
    nodes = kubectl(cluster, "top", "node").stdout.splitlines()
    assert sorted(line.split()[0] for line in nodes[1:]) == [node_name(cluster, i) for i in (1, 2, 3)]
    pods = kubectl(cluster, "top", "pod", "-l", "app=web").stdout.splitlines()
    assert sorted(line.split()[0] for line in pods[1:]) == sorted(p["metadata"]["name"] for p in running(cluster, 5))


def test_a_daemonset_runs_on_every_node_and_a_job_runs_to_completion(cluster: Cluster) -> None:
    """A DaemonSet puts one pod on each of the three nodes (bound by the scheduler to each node in turn); a Job's
    pod runs to completion somewhere and its log is there."""
    daemonset = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"}, "spec": {
        "selector": {"matchLabels": {"app": "agent"}}, "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "agent", "image": BUSYBOX, "command": ["sleep", "3600"]}]}}}}
    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(daemonset))
    kubectl(cluster, "rollout", "status", "ds/agent", f"--timeout={SLACK}s")
    pods = get(cluster, "pods", "-l", "app=agent")["items"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == [node_name(cluster, i) for i in (1, 2, 3)]
    assert all(p["status"]["phase"] == "Running" for p in pods)
    kubectl(cluster, "create", "job", "hello", f"--image={BUSYBOX}", "--", "sh", "-c", "echo done on $(hostname)")
    kubectl(cluster, "wait", "--for=condition=complete", "job/hello", f"--timeout={SLACK}s")
    assert re.fullmatch(r"done on hello-\w+\n", kubectl(cluster, "logs", "job/hello").stdout)
    kubectl(cluster, "delete", "ds/agent", "job/hello", "--wait=true")
    wait_for(lambda: not get(cluster, "pods", "-l", "app=agent")["items"], timeout=SLACK, interval=0.5)


def test_a_pod_failing_readiness_leaves_the_services_endpoints(cluster: Cluster) -> None:
    """The kubelet's readiness probe, the Ready condition it writes, and the endpoint controllers, end to end:
    the probe reads a file the test takes away and puts back through kubectl exec."""
    pod = json.loads(busybox_pod("flaky", node_name(cluster, 2), "touch /tmp/ready; exec sleep 3600", "Always"))
    pod["metadata"]["labels"] = {"app": "flaky"}
    pod["spec"]["containers"][0]["readinessProbe"] = {"exec": {"command": ["test", "-f", "/tmp/ready"]},
                                                      "periodSeconds": 1, "failureThreshold": 1}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "flaky"},
               "spec": {"selector": {"app": "flaky"}, "ports": [{"port": 80}]}}
    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                            "items": [pod, service]}))

    def addresses() -> tuple[list[str], list[str]]:
        subsets = get(cluster, "endpoints", "flaky").get("subsets") or [{}]
        return ([a["ip"] for a in subsets[0].get("addresses") or []],
                [a["ip"] for a in subsets[0].get("notReadyAddresses") or []])

    try:
        ip = wait_for(lambda: get(cluster, "pod", "flaky")["status"].get("podIP") if ready(get(cluster, "pod", "flaky"))
                      else None, timeout=SLACK, interval=0.5)
        assert wait_for(lambda: addresses() == ([ip], []), timeout=SLACK, interval=0.5)
        kubectl(cluster, "exec", "flaky", "--", "rm", "/tmp/ready")
        assert wait_for(lambda: addresses() == ([], [ip]), timeout=SLACK, interval=0.5)
        slices = get(cluster, "endpointslices", "-l", "kubernetes.io/service-name=flaky")["items"]
        assert [e["conditions"]["ready"] for s in slices for e in s.get("endpoints") or []] == [False]
        kubectl(cluster, "exec", "flaky", "--", "touch", "/tmp/ready")
        assert wait_for(lambda: addresses() == ([ip], []), timeout=SLACK, interval=0.5)
    finally:
        kubectl(cluster, "delete", "pod,service", "flaky", "--grace-period=1", check=False)


def test_the_nodes_have_no_route_out(cluster: Cluster) -> None:
    """What makes the next step's pull fail at once instead of reaching (or waiting for) a registry."""
    for index in (1, 2, 3):
        routes = in_node(cluster, index, "ip", "-4", "route", "show", "default")
        assert routes.returncode == 0 and routes.stdout.strip() == "", routes.stdout


def test_a_rollout_to_a_missing_image_stops_at_max_unavailable_and_undo_restores_it(cluster: Cluster) -> None:
    running(cluster, 5)
    assert "image updated" in kubectl(cluster, "set", "image", "deployment/web", "nginx=nginx:does-not-exist").stdout
    # maxUnavailable 25% of 5 -> 1: the old ReplicaSet goes to 4 and stays there; maxSurge 25% -> 2: at most
    # 7 pods, so 3 new ones, none of which can start.

    def stuck() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        pods = live_pods(cluster)
        old = [p for p in pods if image_of(p) == NGINX]
        new = [p for p in pods if image_of(p) == "nginx:does-not-exist"]
        reasons = {((s.get("state") or {}).get("waiting") or {}).get("reason")
                   for p in new for s in (p.get("status") or {}).get("containerStatuses") or ()}
        if len(new) == 3 and len(old) == 4 and reasons and reasons <= {"ErrImagePull", "ImagePullBackOff"}:
            return old, new
        return None

    old, new = wait_for(stuck, timeout=SLACK, interval=0.5)
    assert all(ready(p) for p in old)
    # The pull failed because nothing is reachable (no name server, no route), not after waiting for one.
    failures = [e["message"] for e in get(cluster, "events", "--field-selector",
                                          f"involvedObject.name={new[0]['metadata']['name']},reason=Failed")["items"]]
    assert any('Failed to pull image "nginx:does-not-exist": cannot reach registry' in m for m in failures), failures
    time.sleep(3)  # the rollout stays stopped: no old pod is taken away while the new ones cannot start
    assert len([p for p in live_pods(cluster) if image_of(p) == NGINX and ready(p)]) == 4
    assert WELCOME in wait_for(lambda: fetch(node_address(cluster, 2)), timeout=30, interval=0.5)
    status = kubectl(cluster, "rollout", "status", "deployment/web", "--timeout=2s", check=False)
    assert status.returncode != 0 and "Waiting for deployment" in status.stdout + status.stderr

    assert "deployment.apps/web rolled back" in kubectl(cluster, "rollout", "undo", "deployment/web").stdout
    done = kubectl(cluster, "rollout", "status", "deployment/web", f"--timeout={SLACK}s", timeout=SLACK + 30)
    assert 'deployment "web" successfully rolled out' in done.stdout
    running(cluster, 5)


def test_a_killed_node_is_noticed_and_its_pods_move(cluster: Cluster) -> None:
    third = node_name(cluster, 3)
    pods = running(cluster, 5)
    on_third = {p["metadata"]["name"] for p in pods if p["spec"]["nodeName"] == third}
    assert on_third, "the scheduler spread none of the 5 pods to node 3"
    agent = cluster.state["nodes"][2]["processes"]["agent"]
    os.kill(agent["pid"], signal.SIGKILL)

    def node_ready_status() -> str:
        node = get(cluster, "node", third)
        return next(c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready")

    wait_for(lambda: node_ready_status() != "True", timeout=NODE_MONITOR_GRACE + SLACK, interval=0.5)
    row = kubectl(cluster, "get", "node", third, "--no-headers").stdout.split()
    assert row[1].startswith("NotReady"), row

    def moved() -> list[dict[str, Any]] | None:
        now = live_pods(cluster)
        if len(now) == 5 and all(ready(p) and p["spec"]["nodeName"] != third for p in now):
            return now
        return None

    now = wait_for(moved, timeout=TOLERATION + SLACK, interval=0.5)
    assert not on_third & {p["metadata"]["name"] for p in now}
    assert {p["spec"]["nodeName"] for p in now} <= {node_name(cluster, 1), node_name(cluster, 2)}


def test_delete_leaves_nothing(cluster: Cluster) -> None:
    state = cluster.state
    cluster.own("delete")
    assert_nothing_left(cluster, state)
