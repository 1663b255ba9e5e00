"""Containers through the Docker Engine API: the real docker CLI and docker-py against a real ``skiff engine``.

Each test runs the flows a user types (docker-api-notes.md) and checks what the CLI prints and exits with.
Every test leaves no container behind (``_clean``); the module removes the cgroup parent its containers
were created under, when it made it, so the session's leak check sees nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skiff.engine.api.containers import DetachScanner, human_duration, parse_detach_keys, point_in_time, status_text
from skiff.engine.containers import Container, ContainerState, parse_ps, start_error_exit_code
from tests.engine.conftest import (
    DockerRunner,
    EngineProcess,
    Engines,
    cgroup_parents,
    docker_runner,
    remove_cgroup_parents,
)
from tests.image import testimages

IMAGE = "busybox"
IMPORT_CHANGES = ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["sh"]')


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _cgroup_parents() -> Iterator[None]:
    """Also for the daemons this module starts without the shared fixtures."""
    before = cgroup_parents()
    yield
    remove_cgroup_parents(cgroup_parents() - before)


@pytest.fixture(scope="module")
def rootfs_tar(tmp_path_factory: pytest.TempPathFactory) -> str:
    try:
        return testimages.busybox_rootfs_tar(str(tmp_path_factory.mktemp("img") / "busybox.tar"))
    except testimages.TestImageUnavailable as e:
        pytest.skip(str(e))


def import_busybox(run: DockerRunner, tar: str) -> None:
    args = [a for change in IMPORT_CHANGES for a in ("-c", change)]
    run("import", *args, tar, IMAGE, check=True)


@pytest.fixture(scope="module")
def image(engine: EngineProcess, rootfs_tar: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    if os.geteuid() != 0:
        pytest.skip("running containers needs root")
    import_busybox(docker_runner(engine.host, tmp_path_factory.mktemp("cfg")), rootfs_tar)
    return IMAGE


def remove_all(engine: EngineProcess) -> None:
    for c in engine.request("GET", "/containers/json?all=1").json():
        engine.request("DELETE", f"/containers/{c['Id']}?force=1")


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests that talk to the engine get the image, and leave no container behind."""
    if not {"docker", "engine", "docker_client"} & set(request.fixturenames):
        yield
        return
    engine = request.getfixturevalue("engine")
    request.getfixturevalue("image")
    yield
    remove_all(engine)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def inspect(docker: DockerRunner, name: str, template: str) -> str:
    return ok(docker("inspect", name, "--format", template)).strip()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def in_pty(command: str, rows: int = 40, cols: int = 100, timeout: float = 30) -> str:
    """Run ``command`` with a terminal of the given size (util-linux ``script``), returning what it printed."""
    if shutil.which("script") is None:
        pytest.skip("script (util-linux) is not installed")
    result = subprocess.run(["script", "-qec", f"stty rows {rows} cols {cols}; {command}", "/dev/null"],
                            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return "\n".join(line for line in result.stdout.replace("\r\n", "\n").splitlines() if line.strip())


# ---------------------------------------------------------------------------------------------- run


def test_run_rm_prints_and_leaves_nothing(docker: DockerRunner, engine: EngineProcess) -> None:
    assert ok(docker("run", "--rm", IMAGE, "echo", "hi")) == "hi\n"
    assert ok(docker("ps", "-aq")) == ""
    assert os.listdir(engine.data_root / "containers") == []


def test_run_exit_code_and_streams(docker: DockerRunner) -> None:
    result = docker("run", "--rm", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_stdin_piped(docker: DockerRunner) -> None:
    assert ok(docker("run", "--rm", "-i", IMAGE, "cat", input="x\ny\n")) == "x\ny\n"


def test_detached_logs(docker: DockerRunner) -> None:
    script = "for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; sleep 0.3; echo late"
    cid = ok(docker("run", "-d", "--name", "logger", IMAGE, "sh", "-c", script)).strip()
    assert len(cid) == 64
    followed = ok(docker("logs", "-f", "logger", timeout=20))  # -f ends when the container exits
    assert followed.splitlines() == [f"line {i}" for i in range(1, 6)] + ["late"]
    assert ok(docker("logs", "--tail", "3", "logger")) == "line 5\nlate\n"  # oops (stderr) counts too
    stamped = ok(docker("logs", "-t", "--tail", "1", "logger")).strip()
    stamp, text = stamped.split(" ", 1)
    assert text == "late" and stamp.endswith("Z") and len(stamp) == len("2024-01-01T00:00:00.000000000Z")
    assert docker("logs", "logger").stderr == "oops\n"


def test_ps_columns_and_filters(docker: DockerRunner) -> None:
    ok(docker("run", "-d", "--name", "sleeper", "--label", "tier=web", IMAGE, "sleep", "60"))
    assert docker("run", "--name", "done", IMAGE, "sh", "-c", "exit 2").returncode == 2
    header, *rows = ok(docker("ps")).splitlines()
    assert header.split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    assert len(rows) == 1 and rows[0].split()[-1] == "sleeper" and '"sleep 60"' in rows[0] and " Up " in rows[0]
    everything = ok(docker("ps", "-a", "--format", "{{.Names}}|{{.Status}}|{{.Image}}")).splitlines()
    assert everything[0].startswith("done|Exited (2) ") and everything[0].endswith(" ago|busybox")
    assert everything[1].startswith("sleeper|Up ")
    fmt = ("--format", "{{.Names}}")
    assert ok(docker("ps", "-a", "--filter", "exited=2", *fmt)) == "done\n"
    assert ok(docker("ps", "--filter", "label=tier=web", *fmt)) == "sleeper\n"
    assert ok(docker("ps", "-a", "--filter", "status=exited", *fmt)) == "done\n"
    assert ok(docker("ps", "-a", "--filter", "ancestor=busybox", *fmt)).split() == ["done", "sleeper"]
    assert ok(docker("ps", "-n", "1", *fmt)) == "done\n"


def test_name_conflict(docker: DockerRunner) -> None:
    cid = ok(docker("create", "--name", "twin", IMAGE, "true")).strip()
    result = docker("run", "--name", "twin", IMAGE, "true")
    assert result.returncode == 125
    assert (f'Conflict. The container name "/twin" is already in use by container "{cid}". You have to remove '
            "(or rename) that container to be able to reuse that name.") in result.stderr


def test_missing_image_is_404(engine: EngineProcess) -> None:
    r = engine.request("POST", "/containers/create", json.dumps({"Image": "nope:1"}),
                       {"Content-Type": "application/json"})
    assert r.status == 404 and r.json() == {"message": "No such image: nope:1"}


# ---------------------------------------------------------------------------------------------- start failures


def test_start_failures_map_to_cli_exit_codes(docker: DockerRunner) -> None:
    missing = docker("run", "--rm", IMAGE, "no-such-command")
    assert missing.returncode == 127 and "executable file not found" in missing.stderr
    other = docker("run", "--rm", "--network", "host", "--sysctl", "net.ipv4.ip_forward=1", IMAGE, "true")
    assert other.returncode == 125, other.stderr
    assert ok(docker("ps", "-aq")) == ""  # --rm removed both, and the CLI's removed-wait ended


def test_failed_start_is_recorded(docker: DockerRunner) -> None:
    docker("create", "--name", "broken", IMAGE, "/nowhere")
    assert docker("start", "broken").returncode != 0
    assert inspect(docker, "broken", "{{.State.Status}} {{.State.ExitCode}}") == "created 127"
    assert "no such file or directory" in inspect(docker, "broken", "{{.State.Error}}")


def test_permission_denied_is_126(docker: DockerRunner) -> None:
    assert docker("run", "--rm", IMAGE, "/etc/passwd").returncode == 126


# ---------------------------------------------------------------------------------------------- lifecycle


def test_stop_kill_rm_wait(docker: DockerRunner, engine: EngineProcess) -> None:
    polite = "trap 'exit 7' TERM; while :; do sleep 0.1; done"
    cid = ok(docker("run", "-d", "--name", "victim", IMAGE, "sh", "-c", polite)).strip()
    removal = docker("rm", "victim")
    assert removal.returncode == 1
    assert (f"You cannot remove a running container {cid}. Stop the container before attempting removal or "
            "force remove") in removal.stderr
    assert ok(docker("stop", "victim")) == "victim\n"
    assert inspect(docker, "victim", "{{.State.Status}} {{.State.ExitCode}}") == "exited 7"
    assert engine.request("POST", f"/containers/{cid}/stop").status == 304
    assert ok(docker("wait", "victim")) == "7\n"
    assert engine.request("POST", f"/containers/{cid}/start").status == 204
    assert engine.request("POST", f"/containers/{cid}/start").status == 304
    ok(docker("kill", "-s", "TERM", "victim"))
    assert ok(docker("wait", "victim")) == "7\n"
    ok(docker("start", "victim"))
    ok(docker("kill", "victim"))
    assert ok(docker("wait", "victim")) == "137\n"
    ok(docker("start", "victim"))
    assert ok(docker("rm", "-f", "victim")) == "victim\n"
    assert ok(docker("ps", "-aq")) == ""


def test_stop_timeout_then_sigkill(docker: DockerRunner) -> None:
    ok(docker("run", "-d", "--name", "stubborn", IMAGE, "sleep", "60"))  # pid 1 ignores SIGTERM
    started = time.monotonic()
    ok(docker("stop", "-t", "1", "stubborn"))
    assert 0.9 < time.monotonic() - started < 5
    assert inspect(docker, "stubborn", "{{.State.ExitCode}}") == "137"


def test_wait_conditions(engine: EngineProcess, docker: DockerRunner) -> None:
    cid = ok(docker("create", IMAGE, "sh", "-c", "exit 5")).strip()
    r = engine.request("POST", f"/containers/{cid}/wait?condition=bogus")
    assert r.status == 400
    assert engine.request("POST", f"/containers/{cid}/wait").json() == {"Error": None, "StatusCode": 0}
    ok(docker("start", cid))
    assert ok(docker("wait", cid)) == "5\n"


def test_restart_policy_on_failure(docker: DockerRunner) -> None:
    ok(docker("run", "-d", "--name", "flaky", "--restart", "on-failure:2", IMAGE, "sh", "-c", "echo run; exit 1"))
    assert wait_until(lambda: inspect(docker, "flaky", "{{.RestartCount}} {{.State.Status}}") == "2 exited")
    assert inspect(docker, "flaky", "{{.State.ExitCode}}") == "1"
    assert ok(docker("logs", "flaky")) == "run\nrun\nrun\n"


def test_restart_and_rename_and_pause(docker: DockerRunner) -> None:
    ok(docker("run", "-d", "--name", "old", IMAGE, "sleep", "60"))
    first = inspect(docker, "old", "{{.State.Pid}}")
    ok(docker("restart", "-t", "0", "old"))
    assert inspect(docker, "old", "{{.State.Status}}") == "running"
    assert inspect(docker, "old", "{{.State.Pid}}") != first
    ok(docker("rename", "old", "new"))
    assert inspect(docker, "new", "{{.Name}}") == "/new"
    assert docker("inspect", "old").returncode == 1
    ok(docker("pause", "new"))
    assert inspect(docker, "new", "{{.State.Status}} {{.State.Paused}}") == "paused true"
    assert "(Paused)" in ok(docker("ps", "--format", "{{.Status}}"))
    state = Path(f"/proc/{inspect(docker, 'new', '{{.State.Pid}}')}/status").read_text()
    assert "\nState:\tD" in state or "\nState:\tS" in state  # frozen in the kernel's freezer
    ok(docker("unpause", "new"))
    assert inspect(docker, "new", "{{.State.Status}}") == "running"


def test_auto_remove_after_stop(docker: DockerRunner) -> None:
    ok(docker("run", "-d", "--rm", "--name", "ephemeral", IMAGE, "sleep", "60"))
    ok(docker("stop", "-t", "0", "ephemeral"))
    assert wait_until(lambda: ok(docker("ps", "-aq")) == "")


def test_prune(docker: DockerRunner) -> None:
    ok(docker("create", "--name", "junk", "--label", "tmp=1", IMAGE, "true"))
    ok(docker("create", "--name", "keeper", IMAGE, "true"))
    ok(docker("run", "-d", "--name", "alive", "--label", "tmp=1", IMAGE, "sleep", "60"))
    out = ok(docker("container", "prune", "-f", "--filter", "label=tmp=1"))
    assert out.startswith("Deleted Containers:") and "Total reclaimed space:" in out
    assert ok(docker("ps", "-a", "--format", "{{.Names}}")).split() == ["alive", "keeper"]


# ---------------------------------------------------------------------------------------------- tty and exec


def test_tty_resize(docker_client) -> None:  # type: ignore[no-untyped-def]
    c = docker_client.containers.run(IMAGE, ["sh", "-c", "sleep 0.5; stty size; tty"], tty=True, detach=True)
    c.resize(30, 90)
    assert c.wait()["StatusCode"] == 0
    assert c.logs() == b"30 90\r\n/dev/pts/0\r\n"


def test_run_t_through_a_terminal(docker: DockerRunner, engine: EngineProcess) -> None:
    out = in_pty(f"DOCKER_HOST={engine.host} docker run --rm -t {IMAGE} sh -c 'stty size; tty'", rows=41, cols=101)
    assert out.splitlines()[-2:] == ["41 101", "/dev/pts/0"]


def _read_pty(fd: int, until: bytes, timeout: float = 10.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while until not in out and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                out += os.read(fd, 4096)
            except OSError:  # the CLI exited: its terminal is gone
                break
    return out


def test_run_it_interactive_then_detach(docker: DockerRunner, engine: EngineProcess) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the docker CLI on a terminal
        os.environ["DOCKER_HOST"] = engine.host
        os.execv(shutil.which("docker") or "/usr/local/bin/docker",
                 ["docker", "run", "-it", "--name", "chatty", IMAGE, "sh"])
    try:
        assert b"# " in _read_pty(fd, b"# ")
        os.write(fd, b"echo $((6*7))\r")
        assert b"42" in _read_pty(fd, b"42")
        os.write(fd, b"\x10\x11")  # ctrl-p ctrl-q: the CLI leaves, the shell keeps running
        _read_pty(fd, b"never", timeout=1.0)
        assert wait_until(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid)
    finally:
        os.close(fd)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):  # a failed test must not leave the CLI
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert inspect(docker, "chatty", "{{.State.Status}}") == "running"


def test_exec(docker: DockerRunner, engine: EngineProcess) -> None:
    ok(docker("run", "-d", "--name", "host1", "-e", "WHO=world", IMAGE, "sleep", "60"))
    result = docker("exec", "host1", "sh", "-c", "echo hello $WHO; echo warn >&2; exit 4")
    assert (result.returncode, result.stdout, result.stderr) == (4, "hello world\n", "warn\n")
    assert ok(docker("exec", "-i", "host1", "cat", input="piped\n")) == "piped\n"
    assert ok(docker("exec", "-u", "nobody", "-w", "/tmp", "host1", "sh", "-c", "id -u; pwd")) == "65534\n/tmp\n"
    assert docker("exec", "host1", "no-such-command").returncode == 127
    # (sleep: skiff-runtime does not apply process.consoleSize, so the size arrives with the CLI's resize)
    out = in_pty(f"DOCKER_HOST={engine.host} docker exec -t host1 sh -c 'sleep 0.3; tty; stty size'")
    assert out.splitlines()[-2:] == ["/dev/pts/0", "40 100"]
    ok(docker("exec", "-d", "host1", "touch", "/tmp/detached"))
    assert wait_until(lambda: docker("exec", "host1", "test", "-e", "/tmp/detached").returncode == 0)


def test_exec_inspect(engine: EngineProcess, docker: DockerRunner) -> None:
    cid = ok(docker("run", "-d", IMAGE, "sleep", "60")).strip()
    body = json.dumps({"Cmd": ["sh", "-c", "exit 3"], "AttachStdout": True})
    exec_id = engine.request("POST", f"/containers/{cid}/exec", body, {"Content-Type": "application/json"}).json()["Id"]
    r = engine.request("POST", f"/exec/{exec_id}/start", json.dumps({"Detach": True}),
                       {"Content-Type": "application/json"})
    assert r.status == 200
    doc = wait_until(lambda: (d := engine.request("GET", f"/exec/{exec_id}/json").json())["ExitCode"] is not None
                     and d)
    assert doc["ExitCode"] == 3 and doc["Running"] is False and doc["ContainerID"] == cid
    assert doc["ProcessConfig"]["entrypoint"] == "sh"
    assert engine.request("GET", "/exec/nope/json").status == 404


# ---------------------------------------------------------------------------------------------- configuration


def test_container_settings(docker: DockerRunner) -> None:
    run = ("run", "--rm")
    assert ok(docker(*run, "--user", "1000", IMAGE, "id", "-u")) == "1000\n"
    assert ok(docker(*run, "--user", "nobody", IMAGE, "id", "-un")) == "nobody\n"
    assert ok(docker(*run, "--workdir", "/made/here", IMAGE, "pwd")) == "/made/here\n"
    env = ok(docker(*run, "-e", "FOO=bar", "--hostname", "box", IMAGE, "env")).splitlines()
    assert "FOO=bar" in env and "HOSTNAME=box" in env and any(e.startswith("PATH=") for e in env)
    assert ok(docker(*run, "--entrypoint", "echo", IMAGE, "a", "b")) == "a b\n"
    assert docker(*run, "--read-only", IMAGE, "touch", "/x").returncode == 1
    assert ok(docker(*run, "--read-only", IMAGE, "touch", "/tmp/../dev/shm/x")) == ""
    assert docker(*run, "--cap-drop", "ALL", IMAGE, "chown", "1", "/tmp").returncode == 1
    assert ok(docker(*run, "--cap-add", "SYS_ADMIN", IMAGE, "sh", "-c", "grep CapEff /proc/self/status"))
    assert "Operation not permitted" in docker(*run, IMAGE, "unshare", "-n", "true").stderr  # seccomp + caps
    privileged = ok(docker(*run, "--privileged", IMAGE, "sh", "-c", "mount -t tmpfs none /tmp && echo mounted"))
    assert privileged == "mounted\n"
    hostname, hosts = ok(docker(*run, IMAGE, "sh", "-c", "cat /etc/hostname; cat /etc/hosts")).split("\n", 1)
    assert len(hostname) == 12 and f"\t{hostname}\n" in hosts and "127.0.0.1\tlocalhost\n" in hosts
    assert ok(docker(*run, "--network", "none", IMAGE, "cat", "/proc/net/dev")).count(":") == 1  # lo only
    assert "PID" in ok(docker(*run, "--init", IMAGE, "ps")) and "docker-init" in ok(docker(*run, "--init", IMAGE,
                                                                                            "ps"))


def test_sharing_another_containers_namespaces(docker: DockerRunner) -> None:
    ok(docker("run", "-d", "--name", "sandbox", IMAGE, "sleep", "60"))
    show = "hostname; readlink /proc/self/ns/net; readlink /proc/self/ns/ipc"
    theirs = ok(docker("exec", "sandbox", "sh", "-c", show))
    mine = ok(docker("run", "--rm", "--network", "container:sandbox", "--ipc", "container:sandbox", IMAGE,
                     "sh", "-c", show))
    assert mine == theirs
    ok(docker("stop", "-t", "0", "sandbox"))
    refused = docker("run", "--rm", "--network", "container:sandbox", IMAGE, "true")
    assert refused.returncode == 125 and "cannot join network of a non running container" in refused.stderr


def test_pids_limit(docker: DockerRunner) -> None:
    result = docker("run", "--rm", "--pids-limit", "3", IMAGE, "sh", "-c",
                    "for i in 1 2 3 4 5; do sleep 1 & done; wait")
    assert "can't fork" in result.stderr


def test_oom_killed(docker: DockerRunner) -> None:
    result = docker("run", "--name", "hog", "--memory", "16m", IMAGE, "sh", "-c", "tail /dev/zero")
    assert result.returncode == 137
    assert inspect(docker, "hog", "{{.State.OOMKilled}} {{.State.ExitCode}}") == "true 137"


def test_inspect_fields(docker: DockerRunner, engine: EngineProcess) -> None:
    ok(docker("run", "-d", "--name", "seen", "--label", "a=b", "-e", "X=1", "--memory", "64m", IMAGE,
              "sleep", "60"))
    doc = json.loads(ok(docker("inspect", "seen")))[0]
    assert doc["Name"] == "/seen" and doc["Path"] == "sleep" and doc["Args"] == ["60"]
    assert doc["State"]["Status"] == "running" and doc["State"]["Running"] is True and doc["State"]["Pid"] > 0
    assert doc["Created"].endswith("Z") and doc["State"]["FinishedAt"] == "0001-01-01T00:00:00Z"
    assert doc["Image"].startswith("sha256:") and doc["Config"]["Image"] == IMAGE
    assert doc["Config"]["Labels"] == {"a": "b"} and "X=1" in doc["Config"]["Env"]
    assert doc["Config"]["Cmd"] == ["sleep", "60"] and doc["Config"]["Hostname"] == doc["Id"][:12]
    assert doc["HostConfig"]["Memory"] == 64 << 20 and doc["HostConfig"]["MemorySwap"] == 128 << 20
    assert doc["Driver"] == "overlay2" and doc["RestartCount"] == 0 and doc["Mounts"] == []
    assert os.path.exists(doc["LogPath"]) and os.path.exists(doc["HostsPath"])
    assert doc["HostConfig"]["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    assert engine.request("GET", "/containers/nothere/json").json() == {"message": "No such container: nothere"}


def test_top_stats_update(docker: DockerRunner) -> None:
    ok(docker("run", "-d", "--name", "busy", IMAGE, "sleep", "60"))
    header, *rows = ok(docker("top", "busy")).splitlines()
    assert "PID" in header.split() and len(rows) == 1 and rows[0].endswith("sleep 60")
    stats = ok(docker("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}} {{.PIDs}}", "busy")).split()
    assert stats[0] == "busy" and stats[-1] == "1" and stats[2] == "/"
    ok(docker("update", "--memory", "32m", "--memory-swap", "64m", "busy"))
    assert inspect(docker, "busy", "{{.HostConfig.Memory}}") == str(32 << 20)
    stats = ok(docker("stats", "--no-stream", "--format", "{{.MemUsage}}", "busy"))
    assert stats.strip().endswith("/ 32MiB")


def test_docker_py(docker_client) -> None:  # type: ignore[no-untyped-def]
    assert docker_client.containers.run(IMAGE, ["sh", "-c", "echo out; echo err >&2"], remove=True) == b"out\n"
    c = docker_client.containers.run(IMAGE, ["sleep", "60"], detach=True, name="pyc", labels={"k": "v"})
    assert [x.id for x in docker_client.containers.list(filters={"name": "pyc"})] == [c.id]
    assert c.exec_run(["sh", "-c", "echo hi; exit 2"]) == (2, b"hi\n")
    assert c.exec_run(["sh", "-c", "echo o; echo e >&2"], demux=True).output == (b"o\n", b"e\n")
    c.stop(timeout=0)
    assert c.wait()["StatusCode"] == 137
    c.remove()


# ---------------------------------------------------------------------------------------------- daemon restarts


@pytest.fixture
def own_engine(engines: Engines, rootfs_tar: str, tmp_path: Path) -> Iterator[tuple[EngineProcess, DockerRunner]]:
    if os.geteuid() != 0:
        pytest.skip("running containers needs root")
    e = engines.start()
    run = docker_runner(e.host, tmp_path / "cfg")
    import_busybox(run, rootfs_tar)
    yield e, run
    if e.alive():
        remove_all(e)


def test_runc_as_the_runtime(engines: Engines, rootfs_tar: str, tmp_path: Path) -> None:
    """The engine drives any runc-compatible runtime: users are resolved by the engine, not the runtime."""
    if os.geteuid() != 0 or shutil.which("runc") is None:
        pytest.skip("needs root and runc")
    e = engines.start("--runtime", "runc")
    docker = docker_runner(e.host, tmp_path / "cfg")
    import_busybox(docker, rootfs_tar)
    try:
        assert ok(docker("run", "--rm", "--user", "nobody", IMAGE, "id", "-u")) == "65534\n"
        assert ok(docker("run", "--rm", "-i", IMAGE, "cat", input="via runc\n")) == "via runc\n"
        assert docker("run", "--rm", IMAGE, "no-such-command").returncode == 127
        ok(docker("run", "-d", "--name", "r1", IMAGE, "sleep", "60"))
        assert ok(docker("exec", "r1", "echo", "hi")) == "hi\n"
        ok(docker("pause", "r1"))
        ok(docker("unpause", "r1"))
    finally:
        remove_all(e)


def test_daemon_restart_keeps_containers(own_engine: tuple[EngineProcess, DockerRunner]) -> None:
    e, docker = own_engine
    ticker = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done"
    ok(docker("run", "-d", "--name", "ticker", IMAGE, "sh", "-c", ticker))
    ok(docker("run", "-d", "--name", "brief", IMAGE, "sh", "-c", "sleep 1; exit 4"))
    pid = int(inspect(docker, "ticker", "{{.State.Pid}}"))
    e.stop()  # SIGTERM: containers carry on under their monitors
    time.sleep(1.5)  # "brief" exits while no daemon runs
    os.kill(pid, 0)
    e.start()
    assert inspect(docker, "ticker", "{{.State.Status}} {{.State.Pid}}") == f"running {pid}"
    assert inspect(docker, "brief", "{{.State.Status}} {{.State.ExitCode}}") == "exited 4"
    assert ok(docker("exec", "ticker", "echo", "still")) == "still\n"
    os.kill(e.pid, signal.SIGKILL)  # a crash: the next start must find the same state
    e.process.wait()  # type: ignore[union-attr]
    e.start()
    lines = ok(docker("logs", "ticker")).splitlines()
    assert lines[0] == "tick 0" and len(lines) > 15  # written before, during and after the restarts
    ok(docker("stop", "-t", "1", "ticker"))
    assert inspect(docker, "ticker", "{{.State.Status}}") == "exited"


# ---------------------------------------------------------------------------------------------- units


@pytest.mark.parametrize(("seconds", "text"), [
    (0.5, "Less than a second"), (1, "1 second"), (59, "59 seconds"), (60, "About a minute"),
    (300, "5 minutes"), (3600, "About an hour"), (7200, "2 hours"), (3 * 86400, "3 days"),
    (20 * 86400, "2 weeks"), (90 * 86400, "3 months"), (800 * 86400, "2 years"),
])
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_status_text() -> None:
    c = Container(id="a" * 64, name="/x", created=0, image_id="sha256:0", config={}, host_config={})
    assert status_text(c, now=100) == "Created"
    c.state = ContainerState(status="running", started_at=97)
    assert status_text(c, now=100) == "Up 3 seconds"
    c.state = ContainerState(status="paused", started_at=40)
    assert status_text(c, now=100) == "Up About a minute (Paused)"
    c.state = ContainerState(status="exited", exit_code=2, started_at=1, finished_at=98)
    assert status_text(c, now=100) == "Exited (2) 2 seconds ago"


def test_parse_ps_keeps_the_containers_rows() -> None:
    out = "UID PID PPID CMD\nroot 10 1 sleep 60 --long arg\nroot 11 1 other\n"
    assert parse_ps(out, [10]) == {"Titles": ["UID", "PID", "PPID", "CMD"],
                                   "Processes": [["root", "10", "1", "sleep 60 --long arg"]]}


def test_start_error_exit_codes() -> None:
    assert start_error_exit_code('exec: "x": executable file not found in $PATH') == 127
    assert start_error_exit_code("stat /x: no such file or directory") == 127
    assert start_error_exit_code("open /x: permission denied") == 126
    assert start_error_exit_code("sysctl not allowed") == 128


def test_detach_keys() -> None:
    assert parse_detach_keys(None) == b"\x10\x11"
    assert parse_detach_keys("ctrl-a,x") == b"\x01x"
    scanner = DetachScanner(b"\x10\x11")
    assert scanner.feed(b"ab\x10") == (b"ab", False)  # may begin the sequence: held back
    assert scanner.feed(b"c") == (b"\x10c", False)
    assert scanner.feed(b"d\x10") == (b"d", False)
    assert scanner.feed(b"\x11rest") == (b"", True)


def test_point_in_time() -> None:
    assert point_in_time("1h30m", now=10_000) == 10_000 - 5400
    assert point_in_time("1700000000") == 1_700_000_000
    assert point_in_time("2024-01-01T00:00:00Z") == 1_704_067_200


def test_exec_it_under_a_real_terminal_in_tmux(docker: DockerRunner, engine: EngineProcess, tmp_path: Path) -> None:
    """`docker exec -it` typed into a tmux pane, as a person would: prompt, echo, terminal size, exit code."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    ok(docker("run", "-d", "--name", "tmuxed", IMAGE, "sleep", "300"))
    session = f"skt-{os.getpid()}"
    socket_name = str(tmp_path / "tmux.sock")
    tmux = ["tmux", "-S", socket_name]
    status = tmp_path / "status"
    env = f"DOCKER_HOST={engine.host} DOCKER_CONFIG={tmp_path / 'cfg'} DOCKER_CLI_HINTS=false"
    command = f"env {env} docker exec -it tmuxed sh; echo $? > {status}"
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "90", "-y", "30", command], check=True)
    try:
        def screen() -> str:
            return subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

        assert wait_until(lambda: "#" in screen(), timeout=20), screen()  # busybox sh's root prompt
        subprocess.run([*tmux, "send-keys", "-t", session, "echo typed-$((6*7)); stty size; hostname", "Enter"],
                       check=True)
        assert wait_until(lambda: "typed-42" in screen() and "30 90" in screen(), timeout=10), screen()
        subprocess.run([*tmux, "send-keys", "-t", session, "exit 7", "Enter"], check=True)
        assert wait_until(status.exists, timeout=10), screen()
        assert wait_until(lambda: status.read_text().strip() == "7", timeout=5)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
