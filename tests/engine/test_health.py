"""Health checks run by the engine, driven by the real docker CLI and docker-py against a real ``skiff engine``.

The checks use short intervals (100-300ms) and poll inspect for the state they expect; nothing here asserts
a timing. Every container is removed after its test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from skiff import errors
from skiff.engine import health
from skiff.engine.api.containers import status_text
from skiff.engine.containers import Container, ContainerState
from tests.engine.conftest import DockerRunner, EngineProcess, Engines, docker_runner
from tests.image import testimages

REPO = Path(__file__).resolve().parents[2]
IMAGE = "busybox"
HEALTHY_IMAGE = "busybox-healthcheck"
IMPORT_CHANGES = ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["sh"]')
FAST = ("--health-interval", "150ms", "--health-timeout", "2s")


# ---------------------------------------------------------------------------------------------- units


def test_validate_refuses_what_dockerd_refuses() -> None:
    health.validate(None)
    health.validate({"Test": ["CMD", "true"], "Interval": 1_000_000, "Retries": 0})
    for body, message in (({"Interval": 5}, "Interval in Healthcheck cannot be less than 1ms"),
                          ({"Timeout": 999_999}, "Timeout in Healthcheck cannot be less than 1ms"),
                          ({"StartPeriod": 1}, "StartPeriod in Healthcheck cannot be less than 1ms"),
                          ({"StartInterval": 1}, "StartInterval in Healthcheck cannot be less than 1ms"),
                          ({"Retries": -1}, "Retries in Healthcheck cannot be negative"),
                          ({"Test": "true"}, "Healthcheck.Test must be a list of strings")):
        with pytest.raises(errors.InvalidArgument, match=message):
            health.validate(body)


def test_probe_command_cmd_shell_none() -> None:
    assert health.probe_command({"Healthcheck": {"Test": ["CMD", "cat", "/x"]}}) == ["cat", "/x"]
    assert health.probe_command({"Healthcheck": {"Test": ["CMD-SHELL", "test -e /x"]}}) == ["/bin/sh", "-c",
                                                                                            "test -e /x"]
    assert health.probe_command({"Shell": ["/bin/ash", "-ec"], "Healthcheck": {"Test": ["CMD-SHELL", "x"]}}) == [
        "/bin/ash", "-ec", "x"]
    for test in (["NONE"], [], ["CMD"], ["HTTP", "x"]):
        assert health.probe_command({"Healthcheck": {"Test": test}}) is None
    assert health.probe_command({}) is None


def test_go_duration_and_status_texts() -> None:
    assert [health.go_duration(s) for s in (30, 1.5, 0.5, 90, 3600)] == ["30s", "1.5s", "500ms", "1m30s", "1h0m0s"]
    c = Container(id="a" * 64, name="/x", created=0, image_id="", config={}, host_config={},
                  state=ContainerState(status="running", started_at=time.time() - 3))
    assert status_text(c) == "Up 3 seconds"
    for status, text in (("starting", "Up 3 seconds (health: starting)"), ("healthy", "Up 3 seconds (healthy)"),
                         ("unhealthy", "Up 3 seconds (unhealthy)")):
        c.health = {"Status": status, "FailingStreak": 0, "Log": []}
        assert status_text(c) == text
    assert health.filter_value(None) == "none"


# ---------------------------------------------------------------------------------------------- fixtures


def import_image(run: DockerRunner, tar: str, name: str, *changes: str) -> None:
    args = [a for change in (*IMPORT_CHANGES, *changes) for a in ("-c", change)]
    run("import", *args, tar, name, check=True)


@pytest.fixture(scope="module")
def rootfs_tar(tmp_path_factory: pytest.TempPathFactory) -> str:
    if os.geteuid() != 0:
        pytest.skip("running containers needs root")
    try:
        return testimages.busybox_rootfs_tar(str(tmp_path_factory.mktemp("img") / "busybox.tar"))
    except testimages.TestImageUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def images(engine: EngineProcess, rootfs_tar: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    run = docker_runner(engine.host, tmp_path_factory.mktemp("cfg"))
    import_image(run, rootfs_tar, IMAGE)
    import_image(run, rootfs_tar, HEALTHY_IMAGE,
                 "HEALTHCHECK --interval=150ms --timeout=2s --retries=2 CMD test -e /tmp/ok")


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> Iterator[None]:
    if not {"docker", "docker_client"} & set(request.fixturenames):
        yield
        return
    request.getfixturevalue("images")
    engine: EngineProcess = request.getfixturevalue("engine")
    yield
    for c in engine.request("GET", "/containers/json?all=1").json():
        engine.request("DELETE", f"/containers/{c['Id']}?force=1")


def inspect(engine: EngineProcess, cid: str) -> dict:
    response = engine.request("GET", f"/containers/{cid}/json")
    assert response.status == 200, response.body
    return response.json()


def wait_for(what: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def unix_time(rfc3339: str) -> float:
    """``2026-01-02T03:04:05.123456789Z`` (nanoseconds cut to micro) as Unix seconds."""
    whole, _, fraction = rfc3339.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp() + float(f"0.{fraction or 0}")


def health_of(engine: EngineProcess, cid: str) -> dict | None:
    return inspect(engine, cid)["State"].get("Health")


def wait_status(engine: EngineProcess, cid: str, status: str, timeout: float = 30.0) -> dict:
    return wait_for(lambda: (h := health_of(engine, cid)) and h["Status"] == status and h, timeout)  # type: ignore


def ps_status(docker: DockerRunner, cid: str) -> str:
    return docker("ps", "-a", "--filter", f"id={cid}", "--format", "{{.Status}}", check=True).stdout.strip()


# ---------------------------------------------------------------------------------------------- the docker CLI


def test_health_cmd_starting_healthy_unhealthy(docker: DockerRunner, engine: EngineProcess) -> None:
    """--health-cmd: starting, then healthy once the check passes, unhealthy after --health-retries failures;
    inspect, ps's Status, the health filter and the health_status events all say so."""
    since = str(time.time() - 1)
    cid = docker("run", "-d", "--health-cmd", "test -e /tmp/ok", *FAST, "--health-retries", "2",
                 "--health-start-period", "1h", "--health-start-interval", "100ms",
                 IMAGE, "sleep", "300", check=True).stdout.strip()
    config = inspect(engine, cid)["Config"]["Healthcheck"]
    assert config == {"Test": ["CMD-SHELL", "test -e /tmp/ok"], "Interval": 150_000_000, "Timeout": 2_000_000_000,
                      "StartPeriod": 3_600_000_000_000, "StartInterval": 100_000_000, "Retries": 2}
    # In the start period, failures do not count: it stays starting.
    wait_for(lambda: len((health_of(engine, cid) or {}).get("Log") or []) >= 3)
    state = health_of(engine, cid)
    assert state is not None and state["Status"] == "starting" and state["FailingStreak"] == 0
    assert "(health: starting)" in ps_status(docker, cid)
    assert docker("ps", "-q", "--no-trunc", "--filter", "health=starting", check=True).stdout.split() == [cid]
    assert docker("ps", "-q", "--filter", "health=healthy", check=True).stdout.split() == []

    docker("exec", cid, "touch", "/tmp/ok", check=True)
    state = wait_status(engine, cid, "healthy")
    assert state["FailingStreak"] == 0
    last = state["Log"][-1]
    assert last["ExitCode"] == 0 and last["Output"] == "" and last["Start"] <= last["End"]
    assert len(state["Log"]) <= 5
    assert ps_status(docker, cid).endswith("(healthy)")
    assert docker("ps", "-q", "--no-trunc", "--filter", "health=healthy", check=True).stdout.split() == [cid]
    assert docker("ps", "-q", "--filter", "health=none", check=True).stdout.split() == []

    # The start period was 1h: a healthy container's failures count at once.
    docker("exec", cid, "rm", "/tmp/ok", check=True)
    state = wait_status(engine, cid, "unhealthy")
    assert state["FailingStreak"] >= 2 and state["Log"][-1]["ExitCode"] == 1
    assert ps_status(docker, cid).endswith("(unhealthy)")

    events = docker("events", "--since", since, "--until", str(time.time()), "--filter", f"container={cid}",
                    "--format", "{{json .}}", check=True).stdout.splitlines()
    actions = [json.loads(line)["Action"] for line in events]
    statuses = [a for a in actions if a.startswith("health_status")]
    assert statuses[:2] == ["health_status: healthy", "health_status: unhealthy"]
    # probes are execs, with dockerd's exec events
    assert "exec_create: /bin/sh -c test -e /tmp/ok" in actions
    assert "exec_start: /bin/sh -c test -e /tmp/ok" in actions
    assert any(a == "exec_die" for a in actions)
    # finished probes do not pile up in the container's exec list
    assert len(inspect(engine, cid)["ExecIDs"] or []) <= 3


def test_health_timeout_is_a_failure(docker: DockerRunner, engine: EngineProcess) -> None:
    cid = docker("run", "-d", "--health-cmd", "echo started; sleep 31", "--health-interval", "100ms",
                 "--health-timeout", "300ms", "--health-retries", "1", IMAGE, "sleep", "300", check=True).stdout.strip()
    state = wait_status(engine, cid, "unhealthy")
    result = state["Log"][-1]
    assert result["ExitCode"] == -1
    assert result["Output"] == "Health check exceeded timeout (300ms): started\n"
    # overrun probes are killed: at most the one under way now is left in the container
    time.sleep(1)
    assert docker("top", cid, check=True).stdout.count("sleep 31") <= 1


def test_image_healthcheck_and_no_healthcheck(docker: DockerRunner, engine: EngineProcess) -> None:
    """The image's HEALTHCHECK runs unless --no-healthcheck."""
    cid = docker("run", "-d", HEALTHY_IMAGE, "sh", "-c", "touch /tmp/ok; sleep 300", check=True).stdout.strip()
    assert inspect(engine, cid)["Config"]["Healthcheck"]["Test"] == ["CMD-SHELL", "test -e /tmp/ok"]
    wait_status(engine, cid, "healthy")

    plain = docker("run", "-d", "--no-healthcheck", HEALTHY_IMAGE, "sleep", "300", check=True).stdout.strip()
    doc = inspect(engine, plain)
    # dockerd's merge fills the fields the user left unset from the image's, even under NONE
    assert doc["Config"]["Healthcheck"] == {"Test": ["NONE"], "Interval": 150_000_000, "Timeout": 2_000_000_000,
                                            "Retries": 2}
    assert "Health" not in doc["State"]
    assert docker("ps", "-q", "--no-trunc", "--filter", "health=none", check=True).stdout.split() == [plain]
    assert ps_status(docker, plain).startswith("Up ") and "(" not in ps_status(docker, plain)

    conflict = docker("run", "-d", "--no-healthcheck", "--health-cmd", "true", IMAGE, "true")
    assert conflict.returncode == 125 and "--no-healthcheck conflicts with --health-* options" in conflict.stderr


def test_stop_pause_restart_stop_and_resume_checks(docker: DockerRunner, engine: EngineProcess) -> None:
    cid = docker("run", "-d", "--health-cmd", "true", *FAST, IMAGE, "sleep", "300", check=True).stdout.strip()
    wait_status(engine, cid, "healthy")
    docker("pause", cid, check=True)
    paused = len(health_of(engine, cid)["Log"]), health_of(engine, cid)["Log"][-1]["End"]  # type: ignore[index]
    time.sleep(0.6)
    assert (len(health_of(engine, cid)["Log"]), health_of(engine, cid)["Log"][-1]["End"]) == paused  # type: ignore
    docker("unpause", cid, check=True)
    wait_for(lambda: health_of(engine, cid)["Log"][-1]["End"] != paused[1])  # type: ignore[index]

    docker("stop", "-t", "1", cid, check=True)
    stopped = health_of(engine, cid)
    assert stopped is not None and stopped["Status"] == "healthy"  # kept, as dockerd keeps it
    time.sleep(0.6)
    assert health_of(engine, cid) == stopped
    assert docker("ps", "-aq", "--no-trunc", "--filter", "health=healthy", check=True).stdout.split() == [cid]

    docker("start", cid, check=True)
    assert health_of(engine, cid)["Status"] in ("starting", "healthy")  # type: ignore[index]
    wait_for(lambda: health_of(engine, cid)["Log"][-1]["End"] != stopped["Log"][-1]["End"])  # type: ignore
    wait_status(engine, cid, "healthy")


def test_bad_healthcheck_in_create_body(engine: EngineProcess, docker: DockerRunner) -> None:
    for health_config, message in (({"Test": ["CMD", "true"], "Interval": 10}, "Interval in Healthcheck cannot "
                                     "be less than 1ms"),
                                   ({"Test": ["CMD", "true"], "Retries": -2}, "Retries in Healthcheck cannot be "
                                    "negative")):
        body = json.dumps({"Image": IMAGE, "Cmd": ["true"], "Healthcheck": health_config})
        response = engine.request("POST", "/containers/create", body, {"Content-Type": "application/json"})
        assert response.status == 400 and message in response.json()["message"]
    bad = docker("ps", "--filter", "health=sick")
    assert bad.returncode != 0 and "Unrecognised filter value for health: sick" in bad.stderr


# ---------------------------------------------------------------------------------------------- skiff run


def skiff_cli(engine: EngineProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skiff.cli.main", "-H", engine.host, *args], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)), stdin=subprocess.DEVNULL)


def test_skiff_run_health_flags(docker: DockerRunner, engine: EngineProcess) -> None:
    """``skiff run --health-*`` sends what the docker CLI sends (StartInterval too) and errors as it does."""
    result = skiff_cli(engine, "run", "-d", "--health-cmd", "true", "--health-interval", "150ms",
                       "--health-timeout", "1s", "--health-retries", "4", "--health-start-period", "1m30s",
                       "--health-start-interval", "100ms", IMAGE, "sleep", "300")
    assert result.returncode == 0, result.stderr
    cid = result.stdout.strip()
    assert inspect(engine, cid)["Config"]["Healthcheck"] == {
        "Test": ["CMD-SHELL", "true"], "Interval": 150_000_000, "Timeout": 1_000_000_000, "Retries": 4,
        "StartPeriod": 90_000_000_000, "StartInterval": 100_000_000}
    wait_status(engine, cid, "healthy")
    assert skiff_cli(engine, "ps", "--filter", "health=healthy", "--format", "{{.Status}}").stdout.strip() \
        .endswith("(healthy)")
    none = skiff_cli(engine, "create", "--no-healthcheck", HEALTHY_IMAGE)
    assert inspect(engine, none.stdout.strip())["Config"]["Healthcheck"]["Test"] == ["NONE"]
    for args, message in ((("--no-healthcheck", "--health-cmd", "x"), "--no-healthcheck conflicts with --health-*"),
                          (("--health-interval", "soon"), 'invalid duration "soon"'),
                          (("--health-retries", "-1"), "--health-retries cannot be negative")):
        bad = skiff_cli(engine, "run", "-d", *args, IMAGE, "true")
        assert bad.returncode == 125 and message in bad.stderr, bad.stderr


# ---------------------------------------------------------------------------------------------- docker-py


def test_docker_py_healthcheck(docker_client, engine: EngineProcess) -> None:  # type: ignore[no-untyped-def]
    container = docker_client.containers.run(
        IMAGE, ["sleep", "300"], detach=True,
        healthcheck={"test": ["CMD", "cat", "/etc/hostname"], "interval": 150_000_000, "retries": 1})
    wait_status(engine, container.id, "healthy")
    container.reload()
    assert container.health == "healthy"
    assert container.attrs["State"]["Health"]["Log"][-1]["Output"].strip() == container.id[:12]
    found = docker_client.containers.list(filters={"health": "healthy"})
    assert [c.id for c in found] == [container.id]


# ---------------------------------------------------------------------------------------------- daemon restart


def test_checks_resume_after_daemon_restart(engines: Engines, rootfs_tar: str, tmp_path) -> None:  # type: ignore
    """The daemon reconnects to the running container and probes it again (starting, then healthy)."""
    engine = engines.start()
    run = docker_runner(engine.host, tmp_path / "cfg")
    import_image(run, rootfs_tar, IMAGE)
    try:
        cid = run("run", "-d", "--health-cmd", "true", *FAST, IMAGE, "sleep", "300", check=True).stdout.strip()
        wait_status(engine, cid, "healthy")
        stopped_at = time.time()
        engine.stop()
        engine.start()
        state = wait_status(engine, cid, "healthy")
        assert unix_time(state["Log"][-1]["Start"]) > stopped_at
        assert inspect(engine, cid)["State"]["Running"]
    finally:
        for c in engine.request("GET", "/containers/json?all=1").json():
            engine.request("DELETE", f"/containers/{c['Id']}?force=1")
