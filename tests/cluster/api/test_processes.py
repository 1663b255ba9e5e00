"""``skiff server``'s processes: the scheduler and the controller manager run as its children, a child that dies
is restarted (and the server says so), SIGTERM stops them all, and a SIGKILLed server leaves none behind."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.cluster.api.conftest import ServerProcess, wait_for

JSON = {"Content-Type": "application/json"}


def children(pid: int) -> dict[str, int]:
    """``skiff <command>`` -> pid, for the server's live child processes."""
    found = {}
    try:
        pids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in pids:
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        for command in ("scheduler", "controller-manager"):
            if command in argv:
                found[command] = int(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_children_are_restarted_and_stopped_with_the_server(tmp_path) -> None:
    server = ServerProcess(tmp_path / "server")
    server.start()
    try:
        assert server.process is not None
        pid = server.process.pid
        first = wait_for(lambda: (found := children(pid)) and len(found) == 2 and found, timeout=30)
        # the scheduler child is the one that binds: a pod gets a node though no scheduler runs in the server
        node = {"metadata": {"name": "proc-node"}, "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]}}
        assert server.request("POST", "/api/v1/nodes", json.dumps(node), JSON).status == 201
        pod = {"metadata": {"name": "proc-pod"}, "spec": {"containers": [{"name": "c", "image": "busybox"}],
                                                          "tolerations": [{"operator": "Exists"}]}}
        assert server.request("POST", "/api/v1/namespaces/default/pods", json.dumps(pod), JSON).status == 201
        assert wait_for(lambda: server.request("GET", "/api/v1/namespaces/default/pods/proc-pod").json()["spec"]
                        .get("nodeName"), timeout=30) == "proc-node"

        os.kill(first["scheduler"], 9)
        restarted = wait_for(lambda: (found := children(pid)).get("scheduler") not in (None, first["scheduler"])
                             and found, timeout=30)
        assert restarted["controller-manager"] == first["controller-manager"]
        message = f"the scheduler (pid {first['scheduler']}) exited with status -9"
        assert wait_for(lambda: message in server.log_tail(20000), timeout=10)

        server.stop()  # SIGTERM: the server stops its children first
        assert not any(alive(child) for child in restarted.values())
    finally:
        server.stop()


def test_a_killed_server_leaves_no_children(tmp_path) -> None:
    server = ServerProcess(tmp_path / "server")
    server.start()
    try:
        assert server.process is not None
        found = wait_for(lambda: (found := children(server.process.pid)) and len(found) == 2 and found, timeout=30)
        server.kill()
        deadline = time.monotonic() + 15
        while any(alive(child) for child in found.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(child) for child in found.values())
    finally:
        server.stop()
