"""``kubectl logs``, ``kubectl exec`` and ``kubectl attach`` through the API server to the agent's kubelet API,
with the real kubectl 1.32 (WebSocket ``v5.channel.k8s.io``), a real engine and a real agent; and the kubelet
API's own door: only the API server's kubelet-client certificate (or a system:masters one) gets in.

The agent serves on 127.0.0.1 with an ephemeral port (published in the Node's daemonEndpoints) and a serving
certificate the cluster CA signed for 127.0.0.1, so the API server verifies it as it would any node's.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skiff.cluster.api.certs import ClusterPKI
from tests.cluster.api.conftest import KUBECTL, ServerProcess, k8s  # noqa: F401 - a fixture
from tests.cluster.kubelet.conftest import (
    NODE,
    AgentProcess,
    Api,
    EngineProcess,
    KubectlRun,
    condition,
    container_status,
    pod_manifest,
    pod_path,
    started,
    unmount_below,
    wait_for,
    wait_pod,
)

TICKER = "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.3; done"
CHATTY = "for i in 1 2 3 4 5; do echo line-$i; done; echo to-stderr >&2; sleep 3600"


class ServingAgent(AgentProcess):
    """The agent (its kubelet API on 127.0.0.1, any port) with a serving certificate from the cluster CA."""

    def command(self) -> list[str]:
        serving = ClusterPKI(self.server.data_dir / "tls").kubelet_serving_credentials(NODE, ["127.0.0.1"])
        return [*super().command(), "--tls-cert-file", str(serving.cert_path),
                "--tls-private-key-file", str(serving.key_path)]


@pytest.fixture(scope="module")
def agent(api_server: ServerProcess, busybox_engine: EngineProcess,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    with started(ServingAgent(tmp_path_factory.mktemp("agent"), api_server, busybox_engine)) as process:
        yield process


def create(api: Api, manifest: dict[str, Any]) -> dict[str, Any]:
    return api("POST", "/api/v1/namespaces/default/pods", manifest)


def running(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and condition(pod, "Ready") == "True"


@pytest.fixture(scope="module")
def chatty(agent: AgentProcess, api: Api) -> str:
    """A running pod with two containers: ``talk`` printed five lines and one on stderr; ``tick`` ticks."""
    create(api, pod_manifest("chatty", [{"name": "talk", "command": ["sh", "-c", CHATTY]},
                                        {"name": "tick", "command": ["sh", "-c", TICKER]}]))
    wait_pod(api, "chatty", running, agent=agent)
    return "chatty"


@pytest.fixture(scope="module")
def shell(agent: AgentProcess, api: Api) -> str:
    """A running one-container pod to exec into."""
    create(api, pod_manifest("shell", [{"name": "sh", "command": ["sleep", "3600"]}]))
    wait_pod(api, "shell", running, agent=agent)
    return "shell"


def stopped_later(process: subprocess.Popen[str], seconds: float = 30) -> threading.Timer:
    """A timer that ends ``process`` (so a blocked readline returns and the test fails instead of hanging)."""
    timer = threading.Timer(seconds, process.terminate)
    timer.start()
    return timer


def kubelet_port(api: Api) -> int:
    return api("GET", f"/api/v1/nodes/{NODE}")["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]


# --- the kubelet API's door ---------------------------------------------------------------------------------

def kubelet_get(port: int, path: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=20, context=context)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def client_context(server: ServerProcess, cert: str | None) -> ssl.SSLContext:
    tls = server.data_dir / "tls"
    context = ssl.create_default_context(cafile=str(tls / "ca.crt"))
    if cert:
        context.load_cert_chain(tls / f"{cert}.crt", tls / f"{cert}.key")
    return context


def test_node_publishes_the_kubelet_port_and_only_the_api_server_gets_in(agent: AgentProcess, api: Api,
                                                                          api_server: ServerProcess,
                                                                          tmp_path: Path) -> None:
    port = kubelet_port(api)
    assert port not in (0, 10250)
    pki = ClusterPKI(api_server.data_dir / "tls")
    pki.kubelet_client_credentials()
    pki.node_credentials("intruder")
    assert kubelet_get(port, "/healthz", client_context(api_server, "kubelet-client")) == (200, b"ok")
    status, body = kubelet_get(port, "/pods", client_context(api_server, "kubelet-client"))
    assert status == 200 and json.loads(body)["kind"] == "PodList"
    status, body = kubelet_get(port, "/healthz", client_context(api_server, None))
    assert status == 401 and json.loads(body)["reason"] == "Unauthorized"
    status, body = kubelet_get(port, "/containerLogs/default/x/y", client_context(api_server, "node-intruder"))
    assert status == 403 and "user=system:node:intruder" in json.loads(body)["message"]
    # a certificate from another CA does not even finish the handshake
    foreign = ClusterPKI(tmp_path / "other")
    foreign.ensure(["127.0.0.1"])
    context = ssl.create_default_context(cafile=str(api_server.data_dir / "tls" / "ca.crt"))
    context.load_cert_chain(foreign.admin.cert_path, foreign.admin.key_path)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        kubelet_get(port, "/healthz", context)


# --- logs ---------------------------------------------------------------------------------------------------

def test_logs_all_tail_timestamps_and_container(chatty: str, kubectl: KubectlRun, api_server: ServerProcess) -> None:
    out = wait_for(lambda: (r := kubectl("logs", chatty, "-c", "talk").stdout).count("line-") == 5 and r)
    assert out.splitlines() == ["line-1", "line-2", "line-3", "line-4", "line-5", "to-stderr"]
    assert kubectl("logs", chatty, "-c", "talk", "--tail", "2").stdout.splitlines() == ["line-5", "to-stderr"]
    stamped = kubectl("logs", chatty, "-c", "talk", "--timestamps", "--tail", "1").stdout
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z to-stderr\n", stamped), stamped
    assert "tick-" in kubectl("logs", chatty, "-c", "tick").stdout
    assert kubectl("logs", chatty, "-c", "talk", "--limit-bytes", "9").stdout == "line-1\nli"
    assert kubectl("logs", chatty, "-c", "talk", "--since", "1h").stdout.count("line-") == 5
    # without a container kubectl picks the first; the API itself insists, as kube's does
    response = api_server.request("GET", pod_path(chatty) + "/log")
    assert response.status == 400
    assert response.json()["message"] == "a container name must be specified for pod chatty, choose one of: [talk tick]"
    failed = kubectl("logs", chatty, "-c", "nope", check=False)
    assert failed.returncode != 0 and "container nope is not valid for pod chatty" in failed.stderr


def test_logs_follow_streams_new_lines(chatty: str, api_server: ServerProcess, kubectl_cache: Path) -> None:
    command = [KUBECTL, "--kubeconfig", str(api_server.kubeconfig), "--cache-dir", str(kubectl_cache), "logs", "-f",
               chatty, "-c", "tick", "--tail", "1"]
    follower = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, HOME=str(kubectl_cache)))
    timer = stopped_later(follower)
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()
        assert first.startswith("tick-"), first + (follower.stderr.read() if follower.poll() is not None else "")
        numbers = [int(first.split("-")[1])]
        for _ in range(4):  # lines written after the request began: the stream is live
            numbers.append(int(follower.stdout.readline().split("-")[1]))
        assert numbers == list(range(numbers[0], numbers[0] + 5))
        assert follower.poll() is None
    finally:
        timer.cancel()
        follower.terminate()
        follower.wait(10)


def test_logs_previous_after_a_restart(agent: AgentProcess, api: Api, kubectl: KubectlRun) -> None:
    script = ("n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; echo attempt-$n; "
              "if [ $n -ge 2 ]; then exec sleep 3600; fi; exit 1")
    manifest = pod_manifest("again", [{"name": "c", "command": ["sh", "-c", script],
                                       "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                            volumes=[{"name": "data", "emptyDir": {}}])
    create(api, manifest)
    wait_pod(api, "again", lambda p: container_status(p, "c").get("restartCount") == 1 and running(p), agent=agent)
    assert kubectl("logs", "again", "--previous").stdout == "attempt-1\n"
    assert kubectl("logs", "again").stdout == "attempt-2\n"
    failed = kubectl("logs", "shell-less-pod", check=False)
    assert failed.returncode != 0 and 'pods "shell-less-pod" not found' in failed.stderr


def test_logs_previous_without_a_restart_is_an_error(shell: str, kubectl: KubectlRun) -> None:
    failed = kubectl("logs", shell, "--previous", check=False)
    assert failed.returncode != 0
    assert 'previous terminated container "sh" in pod "shell" not found' in failed.stderr


# --- exec ---------------------------------------------------------------------------------------------------

def test_exec_both_streams_and_the_exit_code(shell: str, kubectl: KubectlRun) -> None:
    result = kubectl("exec", shell, "--", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert result.returncode == 3, result.stderr
    assert result.stdout == "out\n"
    assert "err\n" in result.stderr and "command terminated with exit code 3" in result.stderr
    ok = kubectl("exec", shell, "--", "hostname")
    assert ok.stdout == "shell\n" and ok.returncode == 0


def test_exec_with_piped_stdin_ends_at_its_eof(shell: str, kubectl: KubectlRun) -> None:
    text = "".join(f"line {i} of stdin\n" for i in range(2000))  # more than one WebSocket message
    result = kubectl("exec", "-i", shell, "--", "sh", "-c", "cat; echo after-eof", input=text, timeout=60)
    assert result.stdout == text + "after-eof\n"
    counted = kubectl("exec", "-i", shell, "--", "wc", "-l", input="a\nb\nc\n")
    assert counted.stdout.strip() == "3"
    # the process ends while stdin still comes: its output and exit code arrive all the same
    early = kubectl("exec", "-i", shell, "--", "sh", "-c", "head -c 5; exit 4", input="x" * 4_000_000, check=False,
                    timeout=60)
    assert (early.returncode, early.stdout) == (4, "xxxxx"), early.stderr


def test_kubectl_cp_both_ways(shell: str, kubectl: KubectlRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``kubectl cp`` is tar over exec: stdout one way, stdin (ended by v5's close) the other."""
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    (tmp_path / "up.bin").write_bytes(payload)
    monkeypatch.chdir(tmp_path)  # kubectl cp takes local paths as given; relative ones keep tar's warnings away
    kubectl("cp", "up.bin", f"{shell}:/tmp/up.bin")
    assert kubectl("exec", shell, "--", "md5sum", "/tmp/up.bin").stdout.split()[0] == hashlib.md5(payload).hexdigest()
    kubectl("cp", f"{shell}:/tmp/up.bin", "down.bin")
    assert (tmp_path / "down.bin").read_bytes() == payload


def test_exec_into_a_named_container_and_bad_targets(chatty: str, agent: AgentProcess, api: Api,
                                                      kubectl: KubectlRun, api_server: ServerProcess) -> None:
    assert kubectl("exec", chatty, "-c", "tick", "--", "echo", "in-tick").stdout == "in-tick\n"
    failed = kubectl("exec", chatty, "-c", "nope", "--", "true", check=False)
    assert failed.returncode != 0 and "container nope is not valid for pod chatty" in failed.stderr
    create(api, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unbound"},
                 "spec": {"containers": [{"name": "c", "image": "skiff-test/busybox:test"}]}})
    response = api_server.request("GET", pod_path("unbound") + "/log")
    assert response.status == 400 and response.json()["message"] == "pod unbound does not have a host assigned"
    failed = kubectl("logs", "unbound", check=False)
    assert failed.returncode != 0 and "does not have a host assigned" in failed.stderr
    failed = kubectl("exec", "unbound", "--", "true", check=False)
    assert failed.returncode != 0 and "pod unbound does not have a host assigned" in failed.stderr
    failed = kubectl("exec", "nothere", "--", "true", check=False)
    assert failed.returncode != 0 and 'pods "nothere" not found' in failed.stderr
    spdy = api_server.request("POST", pod_path(chatty) + "/exec?container=tick&command=true&stdout=true",
                              headers={"Connection": "Upgrade", "Upgrade": "SPDY/3.1"})
    assert spdy.status == 400 and "SPDY is not served" in spdy.json()["message"]
    missing = kubectl("exec", chatty, "-c", "tick", "--", "no-such-binary", check=False)
    assert missing.returncode == 127 and "executable file not found" in missing.stdout


def test_exec_needs_create_on_pods_exec(shell: str, api_server: ServerProcess) -> None:
    """A user who may get pods/exec but not create it is refused, as kube 1.32 does for WebSocket upgrades."""
    headers = {"Authorization": "Bearer jane-token", "Connection": "Upgrade", "Upgrade": "websocket",
               "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
               "Sec-WebSocket-Protocol": "v5.channel.k8s.io"}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "exec-get"},
            "rules": [{"apiGroups": [""], "resources": ["pods", "pods/exec"], "verbs": ["get"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "exec-get"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "exec-get"},
               "subjects": [{"kind": "User", "name": "jane", "apiGroup": "rbac.authorization.k8s.io"}]}
    for path, body in (("roles", role), ("rolebindings", binding)):
        created = api_server.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/default/{path}",
                                     json.dumps(body), {"Content-Type": "application/json"})
        assert created.status == 201, created.body
    path = pod_path(shell) + "/exec?command=true&stdout=true"
    response = wait_for(lambda: (r := api_server.request("GET", path, headers=headers, cert=False)).status == 403
                        and r)
    assert 'cannot create resource "pods/exec"' in response.json()["message"]


def test_exec_it_under_a_real_terminal(shell: str, api_server: ServerProcess, kubectl_cache: Path,
                                       tmp_path: Path) -> None:
    """``kubectl exec -it`` typed into a tmux pane: prompt, echo, the terminal's size, the exit code."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    session = f"skl-{os.getpid()}"
    tmux = ["tmux", "-S", str(tmp_path / "tmux.sock")]
    status = tmp_path / "status"
    command = (f"env HOME={kubectl_cache} {KUBECTL} --kubeconfig {api_server.kubeconfig} --cache-dir {kubectl_cache}"
               f" exec -it {shell} -- sh; echo $? > {status}")
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "90", "-y", "30", command], check=True)
    try:
        def screen() -> str:
            return subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

        def shows(*texts: str, timeout: float = 15) -> None:
            deadline = time.monotonic() + timeout
            while not all(text in screen() for text in texts):
                assert time.monotonic() < deadline, f"{texts} not on the screen:\n{screen()}"
                time.sleep(0.1)

        shows("#", timeout=30)  # busybox sh's root prompt
        subprocess.run([*tmux, "send-keys", "-t", session, "echo typed-$((6*7)); stty size", "Enter"], check=True)
        shows("typed-42", "30 90")
        subprocess.run([*tmux, "resize-window", "-t", session, "-x", "100", "-y", "40"], check=True)
        # the new size travels kubectl -> API server -> kubelet -> engine while we type: ask until it has landed
        deadline = time.monotonic() + 15
        while "40 100" not in screen():
            assert time.monotonic() < deadline, f"the resize never reached the pty:\n{screen()}"
            subprocess.run([*tmux, "send-keys", "-t", session, "clear; stty size", "Enter"], check=True)
            time.sleep(0.5)
        subprocess.run([*tmux, "send-keys", "-t", session, "exit 7", "Enter"], check=True)
        assert wait_for(lambda: status.exists() and status.read_text().strip() == "7", timeout=15), screen()
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


# --- attach -------------------------------------------------------------------------------------------------

def test_attach_streams_the_running_process(chatty: str, api_server: ServerProcess, kubectl_cache: Path) -> None:
    """``kubectl attach`` shows what the main process writes from now on."""
    command = [KUBECTL, "--kubeconfig", str(api_server.kubeconfig), "--cache-dir", str(kubectl_cache), "attach",
               chatty, "-c", "tick"]
    attached = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, HOME=str(kubectl_cache)))
    timer = stopped_later(attached)
    try:
        assert attached.stdout is not None
        lines = [attached.stdout.readline() for _ in range(3)]
        numbers = [int(line.strip().split("-")[1]) for line in lines if line.startswith("tick-")]
        assert len(numbers) == 3 and numbers == list(range(numbers[0], numbers[0] + 3)), lines
    finally:
        timer.cancel()
        attached.terminate()
        attached.wait(10)


def test_exec_with_the_python_client_over_v4(shell: str, k8s: Any) -> None:  # noqa: F811
    """The official Python client offers only ``v4.channel.k8s.io``: the same streams and exit code."""
    from kubernetes import client
    from kubernetes.stream import stream

    api = client.CoreV1Api(k8s)
    session = stream(api.connect_get_namespaced_pod_exec, shell, "default",
                     command=["sh", "-c", "echo out; echo err >&2; exit 2"], stderr=True, stdin=False, stdout=True,
                     tty=False, _preload_content=False)
    session.run_forever(timeout=20)
    assert session.read_stdout() == "out\n"
    assert session.read_stderr() == "err\n"
    assert session.returncode == 2
    echoed = stream(api.connect_get_namespaced_pod_exec, shell, "default", command=["hostname"], stderr=True,
                    stdin=False, stdout=True, tty=False)
    assert echoed == "shell\n"



def test_exec_into_an_exited_container_is_refused_with_the_kubelets_reason(agent: AgentProcess, api: Api,
                                                                            kubectl: KubectlRun) -> None:
    create(api, pod_manifest("halfdone", [{"name": "done", "command": ["sh", "-c", "echo finished"]},
                                          {"name": "live", "command": ["sleep", "3600"]}], restartPolicy="Never"))
    wait_pod(api, "halfdone", lambda p: "terminated" in (container_status(p, "done").get("state") or {})
             and "running" in (container_status(p, "live").get("state") or {}), agent=agent)
    failed = kubectl("exec", "halfdone", "-c", "done", "--", "true", check=False)
    assert failed.returncode != 0 and "container done is not running in pod halfdone" in failed.stderr
    assert kubectl("logs", "halfdone", "-c", "done").stdout == "finished\n"


def test_attach_with_stdin_reaches_the_main_process(agent: AgentProcess, api: Api, api_server: ServerProcess,
                                                     kubectl_cache: Path) -> None:
    create(api, pod_manifest("echoer", [{"name": "echo", "stdin": True,
                                         "command": ["sh", "-c", "while read line; do echo got-$line; done"]}]))
    wait_pod(api, "echoer", running, agent=agent)
    command = [KUBECTL, "--kubeconfig", str(api_server.kubeconfig), "--cache-dir", str(kubectl_cache), "attach",
               "-i", "echoer"]
    attached = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ, HOME=str(kubectl_cache)))
    timer = stopped_later(attached)
    try:
        assert attached.stdin is not None and attached.stdout is not None
        for word in ("hello", "again"):
            attached.stdin.write(word + "\n")
            attached.stdin.flush()
            assert attached.stdout.readline() == f"got-{word}\n"
    finally:
        timer.cancel()
        attached.terminate()
        attached.wait(10)


# --- a kubelet the cluster CA did not certify ----------------------------------------------------------------

def test_a_self_signed_kubelet_is_refused_unless_logs_skip_the_check(chatty: str, agent: AgentProcess,
                                                                    api_server: ServerProcess, api: Api,
                                                                    kubectl: KubectlRun,
                                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    """The node's agent is replaced by one without --tls-cert-file (its own self-signed certificate): the API
    server does not trust it, except for logs asked with insecureSkipTLSVerifyBackend. (Runs late: it swaps
    the module's agent out and back.)"""
    certified_port = kubelet_port(api)
    agent.stop()
    stranger = AgentProcess(tmp_path_factory.mktemp("selfsigned"), api_server, agent.engine)
    try:
        stranger.start()
        assert kubelet_port(api) != certified_port  # the Node now points at the stranger
        assert (stranger.data_dir / "pki" / "kubelet.crt").exists()
        failed = kubectl("logs", chatty, "-c", "talk", check=False)
        assert failed.returncode != 0 and "certificate verify failed" in failed.stderr, failed.stderr
        skipped = kubectl("logs", chatty, "-c", "talk", "--insecure-skip-tls-verify-backend")
        assert skipped.stdout.startswith("line-1\n")
        refused = kubectl("exec", chatty, "-c", "tick", "--", "true", check=False)
        assert refused.returncode != 0 and "certificate verify failed" in refused.stderr, refused.stderr
    finally:
        stranger.stop()
        unmount_below(stranger.data_dir)
        agent.start()
    wait_for(lambda: kubectl("exec", chatty, "-c", "tick", "--", "true", check=False).returncode == 0, 20)


# --- the pieces, without daemons ------------------------------------------------------------------------------

def test_websocket_exec_and_attach_need_create_and_logs_get() -> None:
    from skiff.cluster.api.routing import request_info

    for sub, verb in (("exec", "create"), ("attach", "create"), ("log", "get")):
        assert request_info("GET", f"/api/v1/namespaces/default/pods/p/{sub}", False).verb == verb
    assert request_info("POST", "/api/v1/namespaces/default/pods/p/exec", False).verb == "create"


def test_container_choice_and_kubes_messages() -> None:
    from skiff.cluster.api.podproxy import _container
    from skiff.cluster.api.status import ApiError

    one = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}}
    two = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}],
                                               "initContainers": [{"name": "i"}]}}
    assert _container(one, "") == "a"
    assert _container(two, "i") == "i"
    with pytest.raises(ApiError) as exc:
        _container(two, "")
    assert exc.value.code == 400
    assert exc.value.message == ("a container name must be specified for pod p, choose one of: [a b] or one of the "
                                 "init containers: [i]")
    with pytest.raises(ApiError) as exc:
        _container(one, "z")
    assert exc.value.message == "container z is not valid for pod p"


def test_exit_status_is_what_kubectl_decodes() -> None:
    from skiff.cluster.kubelet.server import exit_status

    assert exit_status(0) == {"metadata": {}, "status": "Success"}
    failed = exit_status(3)
    assert failed["status"] == "Failure" and failed["reason"] == "NonZeroExitCode"
    assert failed["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


def test_discovery_lists_the_pod_subresources(api_server: ServerProcess) -> None:
    resources = {r["name"]: r for r in api_server.request("GET", "/api/v1").json()["resources"]}
    assert resources["pods/log"]["verbs"] == ["get"] and resources["pods/log"]["kind"] == "Pod"
    assert sorted(resources["pods/exec"]["verbs"]) == ["create", "get"]
    assert resources["pods/exec"]["kind"] == "PodExecOptions"
    assert resources["pods/attach"]["kind"] == "PodAttachOptions"


def test_self_signed_fallback_is_made_once_and_names_the_node(tmp_path: Path) -> None:
    from cryptography import x509

    from skiff.cluster.kubelet.server import self_signed_certificate

    cert_path, key_path = self_signed_certificate(tmp_path / "pki", "n9", "10.1.2.3")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in names] == ["n9", "10.1.2.3"]
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    first = cert_path.read_bytes()
    assert self_signed_certificate(tmp_path / "pki", "n9", "10.1.2.3") == (cert_path, key_path)
    assert cert_path.read_bytes() == first  # a restart keeps it


def test_engine_frames_split_anywhere_come_out_whole_and_in_order() -> None:
    import asyncio
    import struct

    from skiff.cluster.kubelet.server import _frames

    def frame(stream: int, data: bytes) -> bytes:
        return bytes([stream, 0, 0, 0]) + struct.pack(">I", len(data)) + data

    wire = frame(1, b"a\n") + frame(1, b"b\n") + frame(2, b"err\n") + frame(1, b"c\n") + frame(1, b"")
    for cut in range(1, 7):
        async def chunks(size: int = cut) -> Any:
            for i in range(0, len(wire), size):
                yield wire[i:i + size]

        async def collect() -> list[tuple[int, bytes]]:
            return [item async for item in _frames(chunks())]

        merged: list[tuple[int, bytes]] = []
        for stream, data in asyncio.run(collect()):
            if merged and merged[-1][0] == stream:
                merged[-1] = (stream, merged[-1][1] + data)
            else:
                merged.append((stream, data))
        assert [(s, d) for s, d in merged if d] == [(1, b"a\nb\n"), (2, b"err\n"), (1, b"c\n")], cut


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    import asyncio
    import socket

    from skiff.cluster.kubelet.runtime import EngineRuntime
    from skiff.cluster.kubelet.server import KubeletServer, ServingOptions
    from skiff.errors import SystemFailure

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]

    async def start() -> str:
        runtime = EngineRuntime(f"unix://{tmp_path}/no-engine.sock", threads=1)
        server = KubeletServer(runtime, "n9", "127.0.0.1", lambda ns, name: None,
                               ServingOptions(address="127.0.0.1", port=port), tmp_path, list)
        try:
            await server.start()
            return "started"
        except SystemFailure as exc:
            return str(exc)
        finally:
            await server.stop()
            runtime.close()

    try:
        message = asyncio.run(start())
        assert message.startswith(f"cannot serve the kubelet API on 127.0.0.1:{port}: ")
        assert "address already in use" in message.lower()
    finally:
        holder.close()
