"""``skiff cluster``: how long a 2-node local cluster takes to create and delete, and pod-to-pod throughput across
nodes (routed over the cluster's bridge by the agents' host-gw routes) against within one node (bridged), in
the same run.

    python bench/cluster.py [--rounds N] [--size MiB]

A cluster ``skbench`` of 2 nodes is made under a temp root (its nodes' subnet: a free /24 of 10.87.0.0/16) with
the busybox test image loaded; on node 2 a pod serves, with busybox ``httpd``, a file of ``--size`` MiB from a
memory-backed emptyDir; on node 1 a second server pod and a client pod. Each round the client fetches the file
from both servers (``wget -O /dev/null``, run through the Engine API's exec on node 1's socket; the time of an
empty exec is subtracted), the two paths taking turns. Medians are printed, and far/near (the issue's idea:
routing between nodes costs little next to bridging within one). Then ``delete`` is timed, and the bench checks it
left nothing. There is no peer on this host (kind needs Docker-in-Docker images); the ratio is the point.
Traffic goes only to addresses inside the cluster's namespaces. Needs root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skiff.cluster.local.cluster import LocalCluster  # noqa: E402
from tests.image.testimages import busybox_docker_archive  # noqa: E402

IMAGE = "skiff-test/busybox:test"
NAME = "skbench"


def pod(name: str, node: str, command: list[str], memory_dir: bool) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": IMAGE, "command": command}
    spec: dict[str, Any] = {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 0,
                            "containers": [container]}
    if memory_dir:
        container["volumeMounts"] = [{"name": "www", "mountPath": "/www"}]
        spec["volumes"] = [{"name": "www", "emptyDir": {"medium": "Memory"}}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> str:
    return subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), *args], input=input, text=True,
                          capture_output=True, check=True).stdout


def wait_running(kubeconfig: Path, names: list[str]) -> dict[str, str]:
    deadline = time.monotonic() + 120
    while True:
        items = json.loads(kubectl(kubeconfig, "get", "pods", "-o", "json"))["items"]
        ips = {p["metadata"]["name"]: p["status"].get("podIP") for p in items
               if p.get("status", {}).get("phase") == "Running"}
        if all(ips.get(n) for n in names):
            return {n: ips[n] for n in names}
        if time.monotonic() > deadline:
            raise SystemExit(f"pods not running: {names}")
        time.sleep(0.3)


class Exec:
    """Commands in one container through the Engine API of its node."""

    def __init__(self, socket: Path, pod_name: str) -> None:
        import docker

        self.api = docker.APIClient(base_url=f"unix://{socket}", version="auto", timeout=300)
        found = self.api.containers(filters={"label": [f"io.kubernetes.pod.name={pod_name}",
                                                       "io.kubernetes.docker.type=container"]})
        self.container = found[0]["Id"]

    def run(self, *command: str) -> float:
        started = time.perf_counter()
        created = self.api.exec_create(self.container, list(command))
        output = self.api.exec_start(created["Id"])
        took = time.perf_counter() - started
        if self.api.exec_inspect(created["Id"])["ExitCode"] != 0:
            raise SystemExit(f"{command}: {output!r}")
        return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=256, help="MiB per transfer")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="skbench-") as tmp:
        archive = Path(busybox_docker_archive(str(Path(tmp) / "busybox.tar"), IMAGE))
        root = Path(tmp) / "c"
        started = time.perf_counter()
        cluster = LocalCluster.create(NAME, root, 2, image_archive=archive, say=lambda m: print(m, file=sys.stderr))
        created = time.perf_counter() - started
        try:
            kubeconfig = root / "kubeconfig"
            serve = ["httpd", "-f", "-p", "8080", "-h", "/www"]
            manifests = [pod("far", f"{NAME}-2", serve, True), pod("near", f"{NAME}-1", serve, True),
                         pod("client", f"{NAME}-1", ["sleep", "3600"], False)]
            kubectl(kubeconfig, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                      "items": manifests}))
            ips = wait_running(kubeconfig, ["far", "near", "client"])
            nodes = {n.index: n for n in cluster.state.nodes}
            for name, node in (("far", nodes[2]), ("near", nodes[1])):
                Exec(node.engine_socket, name).run("dd", "if=/dev/zero", "of=/www/big", "bs=1M",
                                                   f"count={args.size}")
            client = Exec(nodes[1].engine_socket, "client")
            empty = statistics.median(client.run("true") for _ in range(5))
            rates: dict[str, list[float]] = {"near": [], "far": []}
            for _ in range(args.rounds):
                for path in ("near", "far"):
                    took = client.run("wget", "-qO", "/dev/null", f"http://{ips[path]}:8080/big") - empty
                    rates[path].append(args.size * 1.048576 / took)
        finally:
            started = time.perf_counter()
            cluster.delete()
            deleted = time.perf_counter() - started
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    near, far = statistics.median(rates["near"]), statistics.median(rates["far"])
    print(f"create (2 nodes, to all Ready):    {created:6.1f} s")
    print(f"delete:                            {deleted:6.1f} s")
    print(f"pod -> pod on the same node:       {near:8.0f} MB/s  (bridged)")
    print(f"pod -> pod on the other node:      {far:8.0f} MB/s  (routed: host-gw over the cluster bridge)")
    print(f"far / near:                        {far / near:8.2f}x")
    if f"skc-{NAME}" in leftovers:
        raise SystemExit("delete left a namespace behind")


if __name__ == "__main__":
    main()
