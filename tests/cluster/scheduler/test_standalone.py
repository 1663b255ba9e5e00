"""``skiff scheduler`` alone against a ``skiff server --disable-scheduler``: nothing binds pods until it runs,
it binds only pods that name it, and it stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.api.conftest import REPO, KubectlRun, ServerProcess, wait_for


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("no-scheduler"), "--disable-scheduler")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pod(name: str, scheduler: str | None = None) -> str:
    spec: dict = {"containers": [{"name": "main", "image": "busybox"}]}
    if scheduler:
        spec["schedulerName"] = scheduler
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


def node_of(kubectl: KubectlRun, name: str) -> str:
    return kubectl("get", "pod", name, "-o", "jsonpath={.spec.nodeName}").stdout


@pytest.mark.usefixtures("hollow_nodes")
def test_the_scheduler_alone_binds_the_pods_that_name_it(kubectl: KubectlRun, api_server: ServerProcess,
                                                         tmp_path: Path) -> None:
    kubectl("apply", "-f", "-", input=pod("waiting"))
    kubectl("apply", "-f", "-", input=pod("custom", scheduler="my-scheduler"))
    kubectl("apply", "-f", "-", input=pod("foreign", scheduler="someone-else"))
    time.sleep(1.0)
    assert node_of(kubectl, "waiting") == ""  # no scheduler in the server

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    log = tmp_path / "scheduler.log"
    with open(log, "ab") as out:
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "skiff.cli.main", "scheduler", "--kubeconfig", str(api_server.kubeconfig),
             "--scheduler-name", "default-scheduler", "--scheduler-name", "my-scheduler"],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        assert wait_for(lambda: node_of(kubectl, "waiting"), timeout=30).startswith("hollow-node-")
        assert wait_for(lambda: node_of(kubectl, "custom"), timeout=30).startswith("hollow-node-")
        time.sleep(1.0)
        assert node_of(kubectl, "foreign") == ""  # another scheduler's pod is left alone
    finally:
        scheduler.send_signal(signal.SIGTERM)
        try:
            code = scheduler.wait(15)
        except subprocess.TimeoutExpired:
            scheduler.kill()
            scheduler.wait()
            raise
        kubectl("delete", "pod", "waiting", "custom", "foreign", "--wait=false")
    assert code == 0, log.read_text()


def test_a_bad_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "skiff.cli.main", "scheduler", "--kubeconfig",
                             str(tmp_path / "missing")], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 1 and result.stderr.startswith("skiff scheduler: ")
