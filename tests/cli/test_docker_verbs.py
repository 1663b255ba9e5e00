"""``skiff <verb>``: docker's verbs as a subprocess against a real ``skiff engine``, compared with the real docker
CLI on the same daemon where one is installed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.engine.conftest import DOCKER, docker_runner
from tests.image.testimages import BUSYBOX, TestImageUnavailable, busybox_docker_archive

REPO = Path(__file__).resolve().parents[2]
# the installed entry point, as users run it (the module, where the venv has no script)
SKIFF = [str(REPO / ".venv/bin/skiff")] if (REPO / ".venv/bin/skiff").exists() else [sys.executable, "-m",
                                                                                     "skiff.cli.main"]

Runner = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def peer(engine, tmp_path: Path) -> Runner | None:  # type: ignore[no-untyped-def]
    """The real docker CLI on the same engine, or None where it is not installed (comparisons are skipped)."""
    if not os.path.exists(DOCKER):
        return None
    return docker_runner(engine.host, tmp_path / "docker-config")


@pytest.fixture(scope="module")
def skiff(engine, tmp_path_factory: pytest.TempPathFactory) -> Runner:  # type: ignore[no-untyped-def]
    """``skiff(*args, input=None, check=True)``: the skiff CLI against the module's engine, busybox loaded."""
    config = tmp_path_factory.mktemp("skiff-config")
    env = dict(os.environ, DOCKER_CONFIG=str(config), PYTHONPATH=str(REPO))
    env.pop("SKIFF_HOST", None)

    def run(*args: str, input: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run([*SKIFF, "-H", engine.host, *args], input=input, capture_output=True, text=True,
                                timeout=timeout, env=env, cwd=REPO,
                                stdin=None if input is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            pytest.fail(f"skiff {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    try:
        archive = busybox_docker_archive(str(tmp_path_factory.mktemp("busybox") / "busybox.tar"))
    except TestImageUnavailable as e:
        pytest.skip(str(e))
    assert f"Loaded image: {BUSYBOX}" in run("load", "-i", archive).stdout
    return run


def test_the_dispatcher_stays_light() -> None:
    """`skiff runtime` pays for none of the CLI's dependencies: main.py loads click and docker-py only for a verb."""
    code = ("import sys; from skiff.cli import main; main.main(['--help']); "
            "print(' '.join(sorted(sys.modules)), file=sys.stderr)")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                                env=dict(os.environ, PYTHONPATH=str(REPO))).stderr.split())
    assert loaded & {"click", "docker", "requests", "rich", "json", "skiff.cli.dockercli"} == set()


def test_formatting_follows_docker() -> None:
    from skiff.cli.dockercli import formatting as fmt

    # Go's tabwriter as docker configures it: minwidth 10, padding 3, the last column unpadded
    assert fmt.tabwrite([["A", "LONGER HEADER", "Z"], ["x", "y", "last"]]) == \
        "A         LONGER HEADER   Z\nx         y               last\n"
    assert [fmt.human_size(n) for n in (0, 999, 2_052_000, 1_500_000_000)] == ["0B", "999B", "2.05MB", "1.5GB"]
    assert fmt.human_size(2_052_000, 4) == "2.052MB"
    assert [fmt.human_duration(s) for s in (0.5, 1, 59, 60, 3000, 3600, 7200, 86400 * 3)] == [
        "Less than a second", "1 second", "59 seconds", "About a minute", "50 minutes", "About an hour",
        "2 hours", "3 days"]
    item = {"ID": "abc", "Names": "web", "Labels": {"a": "1"}, "List": ["x", "y"]}
    render = fmt.Template
    assert render("{{.ID}}: {{.Names}}").render(item) == "abc: web"
    assert render("{{json .}}").render({"a": "<b>"}) == '{"a":"\\u003cb\\u003e"}'
    assert render("{{json .Labels}} {{index .Labels \"a\"}} {{join .List \",\"}} {{upper .Names}}").render(item) \
        == '{"a":"1"} 1 x,y WEB'
    assert render("{{.Names | upper}} {{len .List}}").render(item) == "WEB 2"
    assert fmt.render("table {{.ID}}\\t{{.Names}}", [item], {"ID": "CONTAINER ID"}) == \
        "CONTAINER ID   NAMES\nabc            web\n"
    with pytest.raises(fmt.TemplateError):
        render("{{.Nope}}").render(item)


def test_version_and_info(skiff: Runner, engine) -> None:  # type: ignore[no-untyped-def]
    version = skiff("version").stdout
    assert version.startswith("Client:\n Version:")
    assert "\nServer: " in version and "API version:" in version
    assert skiff("version", "--format", "{{.Server.ApiVersion}}").stdout.strip() == "1.45"
    info = skiff("info").stdout
    assert re.search(r"^ Containers: \d+$", info, re.M) and re.search(r"^ Images: [1-9]", info, re.M)
    assert json.loads(skiff("info", "--format", "{{json .}}").stdout)["Images"] >= 1


def test_the_host_comes_from_skiff_host_too(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = dict(os.environ, SKIFF_HOST=engine.host, PYTHONPATH=str(REPO), DOCKER_CONFIG=str(tmp_path))
    result = subprocess.run([*SKIFF, "version", "--format", "{{.Server.ApiVersion}}"], capture_output=True,
                            text=True, env=env, timeout=30)
    assert result.stdout.strip() == "1.45"
    env["SKIFF_HOST"] = f"unix://{tmp_path}/nothing.sock"
    result = subprocess.run([*SKIFF, "ps"], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 1 and "Cannot connect to the Skiff daemon" in result.stderr


def test_run_rm_exit_codes_and_errors(skiff: Runner) -> None:
    hi = skiff("run", "--rm", "-e", "GREETING=hi", BUSYBOX, "sh", "-c", "echo $GREETING; echo oops >&2")
    assert (hi.stdout, hi.stderr) == ("hi\n", "oops\n")
    assert skiff("run", "--rm", BUSYBOX, "sh", "-c", "exit 3", check=False).returncode == 3
    missing = skiff("run", "--rm", BUSYBOX, "nosuchcmd", check=False)
    assert missing.returncode == 127
    assert missing.stderr.startswith("skiff: Error response from daemon:") and "nosuchcmd" in missing.stderr
    bad = skiff("run", "--rm", "skiff-test/no-such-image-here:latest", "true", check=False)
    assert bad.returncode == 125 and "Error response from daemon" in bad.stderr
    assert skiff("rm", "no-such-container", check=False).stderr == \
        "Error response from daemon: No such container: no-such-container\n"
    assert skiff("ps", "--bogus-flag", check=False).returncode == 125


def test_run_flags_reach_the_container(skiff: Runner, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=yes\n")
    out = skiff("run", "--rm", "--env-file", str(env_file), "-u", "65534", "-w", "/tmp", "--memory", "64m",
                "--cpus", "0.5", "--pids-limit", "50", "--entrypoint", "sh", BUSYBOX,
                "-c", "echo $FROM_FILE $(id -u) $(pwd)").stdout
    assert out == "yes 65534 /tmp\n"
    # -i forwards stdin through the hijacked attach stream and half-closes it at EOF
    assert skiff("run", "--rm", "-i", BUSYBOX, "sh", "-c", "tr a-z A-Z", input="piped in\n").stdout == "PIPED IN\n"


def test_run_proxies_signals_to_the_container(skiff: Runner, engine) -> None:  # type: ignore[no-untyped-def]
    script = 'trap "echo got TERM; exit 42" TERM; echo ready; while :; do sleep 0.1; done'
    command = [*SKIFF, "-H", engine.host, "run", "--rm", "--name", "cli-sig", BUSYBOX, "sh", "-c", script]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert (proc.returncode, out) == (42, "got TERM\n"), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert skiff("ps", "-aq", "--filter", "name=cli-sig").stdout == ""


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_run_it_on_a_real_terminal(engine) -> None:  # type: ignore[no-untyped-def]
    """-it: raw mode, keystrokes through the hijacked stream, the terminal's size now and after SIGWINCH."""
    import select

    master, slave = os.openpty()
    _set_winsize(slave, 30, 100)
    proc = subprocess.Popen([*SKIFF, "-H", engine.host, "run", "--rm", "-it", BUSYBOX, "sh"], stdin=slave,
                            stdout=slave, stderr=slave, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            start_new_session=True)
    os.close(slave)
    seen = b""

    def read_until(marker: bytes, timeout: float = 20) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        assert marker in seen, seen

    try:
        read_until(b"# ")
        os.write(master, b"stty size; echo $((6*7))\r")
        read_until(b"30 100")
        read_until(b"42")
        _set_winsize(master, 40, 120)
        proc.send_signal(signal.SIGWINCH)
        time.sleep(0.3)
        os.write(master, b"stty size\r")
        read_until(b"40 120")
        os.write(master, b"exit 5\r")
        assert proc.wait(timeout=20) == 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_detached_container_lifecycle(skiff: Runner, peer: Runner | None) -> None:
    cid = skiff("run", "-d", "--name", "cli-web", "-l", "role=web", BUSYBOX, "sh", "-c",
                "echo started; echo to-stderr >&2; trap 'exit 0' TERM; while true; do sleep 0.1; done").stdout.strip()
    try:
        assert re.fullmatch(r"[0-9a-f]{64}", cid)
        table = skiff("ps").stdout.splitlines()
        assert re.match(r"CONTAINER ID\s{3,}IMAGE\s{3,}COMMAND\s{3,}CREATED\s{3,}STATUS\s{3,}PORTS\s{3,}NAMES$",
                        table[0])
        row = next(line for line in table if line.startswith(cid[:12]))
        assert BUSYBOX in row and row.endswith("cli-web") and "Up " in row
        assert skiff("ps", "-q").stdout.split() == [cid[:12]]
        assert skiff("ps", "-q", "--no-trunc", "--filter", "label=role=web").stdout.split() == [cid]
        assert skiff("ps", "-q", "--filter", "name=nobody-by-this-name").stdout == ""
        assert skiff("ps", "--format", "{{.ID}} {{.Names}} {{.State}}").stdout == f"{cid[:12]} cli-web running\n"
        as_json = json.loads(skiff("ps", "--format", "{{json .}}").stdout)
        assert as_json["Names"] == "cli-web" and as_json["ID"] == cid[:12]
        assert skiff("ps", "--format", "table {{.Names}}\\t{{.Image}}").stdout == \
            f"NAMES     IMAGE\ncli-web   {BUSYBOX}\n"

        deadline = time.monotonic() + 10
        while "started" not in (logs := skiff("logs", "cli-web")).stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (logs.stdout, logs.stderr) == ("started\n", "to-stderr\n")
        assert re.fullmatch(r"\S+Z to-stderr\n", skiff("logs", "-t", "--tail", "1", "cli-web").stderr)

        ran = skiff("exec", "-e", "X=1", "-u", "nobody", "cli-web", "sh", "-c", "echo $X $(id -un); exit 4",
                    check=False)
        assert (ran.returncode, ran.stdout) == (4, "1 nobody\n")
        assert skiff("exec", "cli-web", "nosuchcmd", check=False).returncode == 127
        assert skiff("exec", "-t", "cli-web", "tty").stdout.startswith("/dev/pts/")
        assert skiff("exec", "-i", "cli-web", "cat", input="through exec\n").stdout == "through exec\n"
        assert "sleep" in skiff("top", "cli-web").stdout or "sh" in skiff("top", "cli-web").stdout
        assert skiff("inspect", "-f", "{{.State.Status}} {{.Name}}", "cli-web").stdout == "running /cli-web\n"
        assert json.loads(skiff("inspect", "cli-web").stdout)[0]["Id"] == cid

        if peer is not None:  # the real docker CLI sees the same container the same way
            theirs = peer("ps", "--format", "{{.ID}} {{.Image}} {{.Command}} {{.Names}}", check=True).stdout
            assert skiff("ps", "--format", "{{.ID}} {{.Image}} {{.Command}} {{.Names}}").stdout == theirs
            theirs_table = peer("ps", check=True).stdout.splitlines()
            ours_table = skiff("ps").stdout.splitlines()
            assert ours_table[0] == theirs_table[0]
            assert ours_table[1].split()[:2] == theirs_table[1].split()[:2]
            assert ours_table[1].split()[-1] == theirs_table[1].split()[-1]
            assert skiff("logs", "cli-web").stdout == peer("logs", "cli-web").stdout

        assert skiff("stop", "-t", "5", "cli-web").stdout == "cli-web\n"
        assert skiff("wait", "cli-web").stdout == "0\n"
        assert "Exited (0)" in skiff("ps", "-a", "--format", "{{.Status}}", "--filter", f"id={cid}").stdout
    finally:
        assert skiff("rm", "-f", "cli-web").stdout == "cli-web\n"
    assert skiff("ps", "-aq").stdout == ""


def test_images_tag_rmi_and_save_load_round_trip(skiff: Runner, peer: Runner | None, tmp_path: Path) -> None:
    listing = skiff("images").stdout.splitlines()
    assert re.match(r"REPOSITORY\s+TAG\s+IMAGE ID\s+CREATED\s+SIZE$", listing[0])
    assert any(line.split()[:2] == BUSYBOX.split(":") for line in listing[1:])
    image_id = skiff("images", "-q", BUSYBOX).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{12}", image_id)
    if peer is not None:
        assert skiff("images").stdout == peer("images", check=True).stdout

    skiff("tag", BUSYBOX, "cli-copy:v1")
    assert skiff("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", "cli-copy").stdout == \
        f"cli-copy:v1 {image_id}\n"
    archive = tmp_path / "saved.tar"
    skiff("save", "-o", str(archive), "cli-copy:v1")
    assert archive.stat().st_size > 1_000_000
    assert skiff("rmi", "cli-copy:v1").stdout == "Untagged: cli-copy:v1\n"
    assert skiff("images", "-q", "cli-copy").stdout == ""
    assert skiff("load", "-i", str(archive)).stdout == "Loaded image: cli-copy:v1\n"
    assert skiff("images", "-q", "cli-copy:v1").stdout.strip() == image_id
    skiff("rmi", "cli-copy:v1")
    missing = skiff("rmi", "cli-copy:v1", check=False)
    assert missing.returncode == 1 and missing.stderr.startswith("Error response from daemon:")


def test_events_for_a_run(skiff: Runner, peer: Runner | None) -> None:
    since = f"{time.time() - 1:.3f}"
    skiff("run", "--rm", "--name", "cli-events", BUSYBOX, "true")
    until = f"{time.time() + 1:.3f}"
    lines = skiff("events", "--since", since, "--until", until, "--filter", "container=cli-events").stdout.splitlines()
    actions = [line.split()[2] for line in lines]
    for action in ("create", "start", "die", "destroy"):
        assert action in actions, lines
    assert all("name=cli-events" in line for line in lines)
    as_json = skiff("events", "--since", since, "--until", until, "--filter", "container=cli-events",
                    "--format", "{{json .}}").stdout.splitlines()
    assert [json.loads(line)["Action"] for line in as_json] == actions
    if peer is not None:
        theirs = peer("events", "--since", since, "--until", until, "--filter", "container=cli-events",
                        check=True).stdout.splitlines()
        assert lines == theirs


def test_create_start_attach_and_the_other_lifecycle_verbs(skiff: Runner, peer: Runner | None,
                                                           tmp_path: Path) -> None:
    cid = skiff("create", "--name", "cli-once", BUSYBOX, "sh", "-c", "echo once; exit 7").stdout.strip()
    try:
        assert skiff("ps", "-a", "--filter", "name=cli-once", "--format", "{{.State}}").stdout == "created\n"
        started = skiff("start", "-a", "cli-once", check=False)
        assert (started.returncode, started.stdout) == (7, "once\n")
        assert skiff("rename", "cli-once", "cli-renamed").stdout == ""
        assert skiff("inspect", "--format", "{{.Id}} {{.State.ExitCode}}", "cli-renamed").stdout == f"{cid} 7\n"
    finally:
        skiff("rm", cid)

    skiff("run", "-d", "--name", "cli-sleeper", BUSYBOX, "sleep", "300")
    try:
        assert skiff("pause", "cli-sleeper").stdout == "cli-sleeper\n"
        assert "(Paused)" in skiff("ps", "--format", "{{.Status}}", "--filter", "name=cli-sleeper").stdout
        assert skiff("unpause", "cli-sleeper").stdout == "cli-sleeper\n"
        stats = skiff("stats", "--no-stream", "cli-sleeper").stdout.splitlines()
        assert stats[0].split("   ")[0] == "CONTAINER ID" and "cli-sleeper" in stats[1]
        if peer is not None:
            assert skiff("top", "cli-sleeper").stdout == peer("top", "cli-sleeper", check=True).stdout
        skiff("restart", "-t", "0", "cli-sleeper")
        assert skiff("kill", "-s", "KILL", "cli-sleeper").stdout == "cli-sleeper\n"
        assert skiff("wait", "cli-sleeper").stdout == "137\n"
        removed = skiff("rm", "cli-sleeper", "no-such-one", check=False)
        assert (removed.returncode, removed.stdout) == (1, "cli-sleeper\n")
    finally:
        skiff("rm", "-f", "cli-sleeper", check=False)

    # logs -f follows until the container exits
    skiff("run", "-d", "--name", "cli-counter", BUSYBOX, "sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.2; done")
    try:
        assert skiff("logs", "-f", "cli-counter", timeout=20).stdout == "1\n2\n3\n"
    finally:
        skiff("rm", "-f", "cli-counter")

    # import: a one-file rootfs from a tar on stdin, with a --change
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    archive = tmp_path / "rootfs.tar"
    archive.write_bytes(buf.getvalue())
    imported = skiff("import", "-c", "ENV FOO=bar", str(archive), "cli-imported:v1").stdout.strip()
    assert imported.startswith("sha256:")
    assert skiff("inspect", "--format", "{{json .Config.Env}}", "cli-imported:v1").stdout.strip() == '["FOO=bar"]'
    skiff("rmi", "cli-imported:v1")


def test_attach_to_a_running_container(skiff: Runner, peer: Runner | None) -> None:
    """``attach`` joins a running container's streams: stdin reaches it, its output comes back, and the verb
    exits with the container's code; a stopped container is refused as docker refuses it."""
    skiff("run", "-d", "-i", "--name", "cli-attach", BUSYBOX, "sh", "-c", "read line; echo got $line; exit 4")
    try:
        attached = skiff("attach", "cli-attach", input="hello\n", check=False, timeout=30)
        assert (attached.returncode, attached.stdout) == (4, "got hello\n")
        refused = skiff("attach", "cli-attach", check=False)
        assert refused.returncode == 1
        assert "You cannot attach to a stopped container, start it first" in refused.stderr
        if peer is not None:
            assert peer("attach", "cli-attach").stderr.strip().endswith(
                "You cannot attach to a stopped container, start it first")
    finally:
        skiff("rm", "-f", "cli-attach", check=False)


def test_login_push_pull_logout_with_skiff_registry(skiff: Runner, tmp_path: Path) -> None:
    """A registry on loopback with htpasswd auth: credentials go to DOCKER_CONFIG/config.json and are used."""
    bcrypt = pytest.importorskip("bcrypt")
    from tests.registry.servers import start_skiff

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{bcrypt.hashpw(b's3cret', bcrypt.gensalt(rounds=4)).decode()}\n")
    (tmp_path / "reg").mkdir()
    registry = start_skiff(tmp_path / "reg" / "data", "--htpasswd", str(htpasswd))
    ref = f"{registry.host}/cli/busybox:v1"
    try:
        denied = skiff("login", "-u", "alice", "--password-stdin", registry.host, input="wrong\n", check=False)
        assert denied.returncode == 1 and "Error response from daemon" in denied.stderr
        assert skiff("login", "-u", "alice", "--password-stdin", registry.host, input="s3cret\n").stdout == \
            "Login Succeeded\n"
        skiff("tag", BUSYBOX, ref)
        pushed = skiff("push", ref).stdout
        assert re.search(r"^v1: digest: sha256:[0-9a-f]{64} size: \d+$", pushed, re.M), pushed
        skiff("rmi", ref)
        pulled = skiff("pull", ref).stdout
        assert pulled.endswith(f"Status: Downloaded newer image for {ref}\n{ref}\n"), pulled
        skiff("rmi", ref)
        assert skiff("logout", registry.host).stdout == f"Removing login credentials for {registry.host}\n"
        anonymous = skiff("pull", ref, check=False)
        assert anonymous.returncode == 1
    finally:
        registry.stop()


def test_system_df_prune_and_nothing_left_behind(skiff: Runner) -> None:
    cid = skiff("create", BUSYBOX, "true").stdout.strip()
    pruned = skiff("system", "prune", "-f").stdout
    assert f"Deleted Containers:\n{cid}\n" in pruned and "Total reclaimed space:" in pruned
    df = skiff("system", "df").stdout.splitlines()
    assert df[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert skiff("ps", "-aq").stdout == ""
    assert skiff("images", "--format", "{{.Repository}}:{{.Tag}}").stdout == f"{BUSYBOX}\n"
