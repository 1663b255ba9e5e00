"""``skiff compose`` end to end: the real ``skiff`` command against a real ``skiff engine``.

The app: ``web`` (busybox httpd serving a named volume on a published 127.0.0.1 port) waits for ``seed``
(writes the page into the volume, must complete successfully) and ``db`` (must be healthy: its health
check passes once it has "started"). What Docker Compose v2 would leave on the engine is checked through the
Engine API (docker-py): names, labels, networks, volumes; ``up`` twice changes nothing; a change to one
service recreates only it; ``down -v`` removes everything the project made.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.image.testimages import BUSYBOX, TestImageUnavailable, busybox_docker_archive

REPO = Path(__file__).resolve().parents[2]
SKIFF = [str(REPO / ".venv/bin/skiff")] if (REPO / ".venv/bin/skiff").exists() else [sys.executable, "-m",
                                                                                     "skiff.cli.main"]
Compose = Callable[..., subprocess.CompletedProcess]

APP = f"""
services:
  web:
    image: {BUSYBOX}
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    ports: ["127.0.0.1:${{WEB_PORT:?set WEB_PORT}}:80"]
    volumes: ["site:/www"]
    environment:
      GREETING: ${{GREETING:-hello}}
    depends_on:
      seed: {{condition: service_completed_successfully}}
      db: {{condition: service_healthy}}
  db:
    image: {BUSYBOX}
    command: ["sh", "-c", "sleep 1; touch /tmp/ready; exec sleep 300"]
    healthcheck:
      test: ["CMD", "test", "-e", "/tmp/ready"]
      interval: 200ms
      retries: 50
  seed:
    image: {BUSYBOX}
    command: ["sh", "-c", "echo seeding; echo hello-from-compose > /www/index.html"]
    volumes: ["site:/www"]
volumes:
  site:
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def loaded(engine, tmp_path_factory: pytest.TempPathFactory) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("running containers needs root")
    try:
        archive = busybox_docker_archive(str(tmp_path_factory.mktemp("busybox") / "busybox.tar"))
    except TestImageUnavailable as e:
        pytest.skip(str(e))
    result = subprocess.run([*SKIFF, "-H", engine.host, "load", "-i", archive], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "Demo.App"
    directory.mkdir()
    (directory / "compose.yaml").write_text(textwrap.dedent(APP))
    (directory / ".env").write_text(f"WEB_PORT={free_port()}\n")
    return directory


@pytest.fixture
def compose(engine, loaded, app_dir: Path) -> Iterator[Compose]:  # type: ignore[no-untyped-def]
    """``compose(*args, check=True)``: ``skiff compose`` in the app's directory; ``down -v`` at the end."""
    env = {k: v for k, v in os.environ.items() if k not in ("SKIFF_HOST", "COMPOSE_PROJECT_NAME", "WEB_PORT")}
    env["PYTHONPATH"] = str(REPO)

    def run(*args: str, check: bool = True, timeout: float = 120, cwd: Path | None = None,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([*SKIFF, "-H", engine.host, "compose", *args], capture_output=True, text=True,
                                cwd=cwd or app_dir, env={**env, **(extra_env or {})}, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            pytest.fail(f"skiff compose {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    yield run
    run("down", "-v", "--remove-orphans", check=False)


@pytest.fixture
def client(engine):  # type: ignore[no-untyped-def]
    docker = pytest.importorskip("docker")
    c = docker.APIClient(base_url=engine.host, version="auto", timeout=60)
    yield c
    c.close()


def project_containers(client, project: str = "demoapp") -> dict[str, dict]:  # type: ignore[no-untyped-def]
    found = client.containers(all=True, filters={"label": f"com.docker.compose.project={project}"})
    return {c["Names"][0].lstrip("/"): c for c in found}


def http_get(port: int, path: str = "/index.html") -> str:
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def web_port(app_dir: Path) -> int:
    return int((app_dir / ".env").read_text().split("=", 1)[1])


def test_up_wait_serves_and_is_idempotent_and_down_removes_everything(compose: Compose, client,  # type: ignore
                                                                      app_dir: Path) -> None:
    result = compose("up", "-d", "--wait")
    assert " Network demoapp_default  Created" in result.stderr
    assert ' Volume "demoapp_site"  Created' in result.stderr
    assert " Container demoapp-db-1  Healthy" in result.stderr

    # Docker Compose v2's names and labels
    containers = project_containers(client)
    assert set(containers) == {"demoapp-web-1", "demoapp-db-1", "demoapp-seed-1"}
    web = client.inspect_container("demoapp-web-1")
    labels = web["Config"]["Labels"]
    assert labels["com.docker.compose.project"] == "demoapp"
    assert labels["com.docker.compose.service"] == "web"
    assert labels["com.docker.compose.container-number"] == "1"
    assert labels["com.docker.compose.oneoff"] == "False"
    assert labels["com.docker.compose.project.working_dir"] == str(app_dir)
    assert len(labels["com.docker.compose.config-hash"]) == 64
    assert "GREETING=hello" in web["Config"]["Env"]
    assert set(web["NetworkSettings"]["Networks"]) == {"demoapp_default"}
    assert "web" in (web["NetworkSettings"]["Networks"]["demoapp_default"]["Aliases"] or [])
    assert client.inspect_network("demoapp_default")["Labels"]["com.docker.compose.network"] == "default"
    assert client.inspect_volume("demoapp_site")["Labels"]["com.docker.compose.volume"] == "site"
    # the dependencies' conditions held before web started
    db = client.inspect_container("demoapp-db-1")
    seed = client.inspect_container("demoapp-seed-1")
    assert db["State"]["Health"]["Status"] == "healthy"
    assert seed["State"]["Status"] == "exited" and seed["State"]["ExitCode"] == 0
    assert seed["State"]["FinishedAt"] <= web["State"]["StartedAt"]

    # the web answers through its published port, from the named volume
    assert http_get(web_port(app_dir)) == "hello-from-compose\n"

    ps = compose("ps").stdout.splitlines()
    assert ps[0].split() == ["NAME", "IMAGE", "COMMAND", "SERVICE", "CREATED", "STATUS", "PORTS"]
    rows = {line.split()[0]: line for line in ps[1:]}
    assert set(rows) == {"demoapp-web-1", "demoapp-db-1"}
    assert "(healthy)" in rows["demoapp-db-1"]
    assert f"127.0.0.1:{web_port(app_dir)}->80/tcp" in rows["demoapp-web-1"]
    assert compose("port", "web", "80").stdout.strip() == f"127.0.0.1:{web_port(app_dir)}"
    assert compose("exec", "-T", "web", "cat", "/www/index.html").stdout == "hello-from-compose\n"
    assert compose("logs", "seed", "db").stdout == "seed-1  | seeding\n"
    assert compose("logs", "--no-log-prefix", "seed").stdout == "seeding\n"
    assert compose("run", "--rm", "-T", "web", "sh", "-c", "echo $GREETING from run").stdout == "hello from run\n"
    assert set(project_containers(client)) == {"demoapp-web-1", "demoapp-db-1", "demoapp-seed-1"}  # --rm

    # up again: nothing changes
    ids = {name: c["Id"] for name, c in project_containers(client).items()}
    again = compose("up", "-d", "--wait")
    assert "Recreate" not in again.stderr and "Creating" not in again.stderr
    assert {name: c["Id"] for name, c in project_containers(client).items()} == ids

    # a change to one service recreates that service only
    changed = compose("up", "-d", "--wait", extra_env={"GREETING": "bonjour"})
    assert " Container demoapp-web-1  Recreate" in changed.stderr
    after = {name: c["Id"] for name, c in project_containers(client).items()}
    assert after["demoapp-web-1"] != ids["demoapp-web-1"]
    assert after["demoapp-db-1"] == ids["demoapp-db-1"] and after["demoapp-seed-1"] == ids["demoapp-seed-1"]
    assert "GREETING=bonjour" in client.inspect_container("demoapp-web-1")["Config"]["Env"]
    assert http_get(web_port(app_dir)) == "hello-from-compose\n"  # the volume kept the page

    # down -v: containers, the network and the volume are gone
    compose("down", "-v")
    assert project_containers(client) == {}
    assert not client.networks(names=["demoapp_default"])
    assert "demoapp_site" not in {v["Name"] for v in client.volumes().get("Volumes") or []}


def test_scale_stop_start_and_orphans(compose: Compose, client, app_dir: Path) -> None:  # type: ignore
    compose("up", "-d", "--wait", "--scale", "db=2", "db")
    assert {"demoapp-db-1", "demoapp-db-2"} <= set(project_containers(client))
    compose("up", "-d", "--scale", "db=1", "db")
    assert "demoapp-db-2" not in project_containers(client)

    compose("stop", "db")
    assert project_containers(client)["demoapp-db-1"]["State"] == "exited"
    compose("start", "db")
    assert project_containers(client)["demoapp-db-1"]["State"] == "running"

    # a service removed from the file leaves an orphan: warned about, removed with --remove-orphans
    text = (app_dir / "compose.yaml").read_text()
    (app_dir / "compose.yaml").write_text(text.replace("  db:\n", "  database:\n").replace("db: {condition",
                                                                                            "database: {condition"))
    warned = compose("up", "-d", "database")
    assert "Found orphan containers ([demoapp-db-1])" in warned.stderr
    compose("up", "-d", "--remove-orphans", "database")
    assert "demoapp-db-1" not in project_containers(client)


def test_bad_files_are_clear_errors_and_leave_nothing(compose: Compose, client, app_dir: Path) -> None:  # type: ignore
    (app_dir / "compose.yaml").write_text("services:\n  web:\n    image: busybox\n    imagee: typo\n")
    result = compose("up", "-d", check=False)
    assert result.returncode == 1
    assert "services.web Additional property imagee is not allowed" in result.stderr
    (app_dir / "compose.yaml").write_text(textwrap.dedent("""
        services:
          a: {image: busybox, depends_on: [b]}
          b: {image: busybox, depends_on: [a]}
    """))
    result = compose("up", "-d", check=False)
    assert result.returncode == 1 and "dependency cycle detected: a -> b -> a" in result.stderr
    (app_dir / "compose.yaml").write_text(textwrap.dedent(APP))
    (app_dir / ".env").write_text("")
    result = compose("config", check=False)
    assert result.returncode == 1
    assert "required variable WEB_PORT is missing a value: set WEB_PORT" in result.stderr
    assert project_containers(client) == {}
    assert not client.networks(names=["demoapp_default"])


def test_config_prints_the_canonical_project(compose: Compose, app_dir: Path) -> None:
    out = compose("config").stdout
    assert out.startswith("name: demoapp\nservices:\n")
    assert f"published: '{web_port(app_dir)}'" in out
    assert compose("config", "--services").stdout.split() == ["web", "db", "seed"]
    assert compose("config", "--volumes").stdout.split() == ["site"]
    assert compose("-p", "other", "config").stdout.startswith("name: other\n")


BUILT_APP = f"""
services:
  web:
    build:
      context: ./web
      args: {{PAGE: built-page}}
    ports: ["127.0.0.1:${{WEB_PORT}}:80"]
    volumes: ["data:/data"]
    secrets: [token]
    networks:
      default:
      back: {{aliases: [database-alias]}}
    depends_on:
      db: {{condition: service_healthy}}
  db:
    image: {BUSYBOX}
    command: ["sleep", "300"]
    networks: [back]
    healthcheck:
      test: ["CMD-SHELL", "test -e /etc/hostname"]
      interval: 200ms
volumes:
  data:
networks:
  back:
secrets:
  token:
    file: ./token.txt
"""

DOCKERFILE = f"""FROM {BUSYBOX}
ARG PAGE=default
RUN mkdir -p /www && echo "$PAGE" > /www/index.html
HEALTHCHECK --interval=200ms CMD test -e /www/index.html
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
"""


def test_built_web_with_secret_network_alias_and_rmi(compose: Compose, client, app_dir: Path) -> None:  # type: ignore
    """The issue's app with its web built from a Dockerfile (POST /build), plus a secret from a file and a second
    network where the dependency has an alias; ``down -v --rmi local`` removes the built image too."""
    (app_dir / "compose.yaml").write_text(textwrap.dedent(BUILT_APP))
    (app_dir / "web").mkdir()
    (app_dir / "web" / "Dockerfile").write_text(DOCKERFILE)
    (app_dir / "token.txt").write_text("s3cret\n")
    result = compose("up", "-d", "--wait")
    assert " Service web  Built" in result.stderr
    assert http_get(web_port(app_dir)) == "built-page\n"
    image = client.inspect_image("demoapp-web")
    assert image["Config"]["Healthcheck"]["Test"] == ["CMD-SHELL", "test -e /www/index.html"]
    assert client.inspect_container("demoapp-web-1")["State"]["Health"]["Status"] == "healthy"
    assert compose("exec", "-T", "web", "cat", "/run/secrets/token").stdout == "s3cret\n"
    networks = client.inspect_container("demoapp-web-1")["NetworkSettings"]["Networks"]
    assert set(networks) == {"demoapp_default", "demoapp_back"}
    assert "database-alias" in networks["demoapp_back"]["Aliases"]
    ping = compose("exec", "-T", "db", "ping", "-c", "1", "-W", "3", "database-alias", check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    ids = {name: c["Id"] for name, c in project_containers(client).items()}
    again = compose("up", "-d", "--wait")
    assert "Built" not in again.stderr  # the image exists: no rebuild without --build
    assert {name: c["Id"] for name, c in project_containers(client).items()} == ids

    # --build with a changed Dockerfile: a new image, so web (only) is recreated
    (app_dir / "web" / "Dockerfile").write_text(DOCKERFILE.replace("ARG PAGE=default", "ARG PAGE=default\nENV V=2"))
    rebuilt = compose("up", "-d", "--wait", "--build")
    assert " Service web  Built" in rebuilt.stderr and " Container demoapp-web-1  Recreate" in rebuilt.stderr
    after = {name: c["Id"] for name, c in project_containers(client).items()}
    assert after["demoapp-web-1"] != ids["demoapp-web-1"] and after["demoapp-db-1"] == ids["demoapp-db-1"]
    assert "V=2" in client.inspect_container("demoapp-web-1")["Config"]["Env"]

    compose("down", "-v", "--rmi", "local")
    assert project_containers(client) == {}
    assert not client.networks(names=["demoapp_default"]) and not client.networks(names=["demoapp_back"])
    assert "demoapp_data" not in {v["Name"] for v in client.volumes().get("Volumes") or []}
    assert not client.images(name="demoapp-web")
    assert client.images(name=BUSYBOX)  # not built by the project: kept


def test_failed_dependencies_stop_up(compose: Compose, client, app_dir: Path) -> None:  # type: ignore
    (app_dir / "compose.yaml").write_text(textwrap.dedent(f"""
        services:
          app:
            image: {BUSYBOX}
            command: ["sleep", "300"]
            depends_on:
              sick: {{condition: service_healthy}}
          sick:
            image: {BUSYBOX}
            command: ["sleep", "300"]
            healthcheck: {{test: ["CMD", "false"], interval: 100ms, retries: 2}}
    """))
    result = compose("up", "-d", check=False)
    assert result.returncode == 1
    assert "dependency failed to start: container demoapp-sick-1 is unhealthy" in result.stderr
    assert "demoapp-app-1" not in project_containers(client)  # never created: its dependency failed first

    (app_dir / "compose.yaml").write_text(textwrap.dedent(f"""
        services:
          app:
            image: {BUSYBOX}
            command: ["sleep", "300"]
            depends_on:
              migrate: {{condition: service_completed_successfully}}
          migrate:
            image: {BUSYBOX}
            command: ["sh", "-c", "exit 3"]
    """))
    result = compose("up", "-d", "--remove-orphans", check=False)
    assert result.returncode == 1
    assert "service \"migrate\" didn't complete successfully: exit 3" in result.stderr


def test_lifecycle_verbs(compose: Compose, client, app_dir: Path) -> None:  # type: ignore
    compose("up", "-d", "--wait")
    top = compose("top", "db").stdout
    assert top.startswith("demoapp-db-1\n") and "sleep 300" in top
    images = compose("images").stdout.splitlines()
    assert images[0].split() == ["CONTAINER", "REPOSITORY", "TAG", "IMAGE", "ID", "SIZE"]
    assert any(line.startswith("demoapp-web-1") and "skiff-test/busybox" in line for line in images[1:])
    started = client.inspect_container("demoapp-db-1")["State"]["StartedAt"]
    compose("restart", "-t", "1", "db")
    assert client.inspect_container("demoapp-db-1")["State"]["StartedAt"] != started
    compose("stop", "-t", "1")
    assert all(c["State"] == "exited" for c in project_containers(client).values())
    assert compose("ps", "-q").stdout == ""
    assert len(compose("ps", "-a", "-q").stdout.split()) == 3
    compose("rm", "-f", "web")
    assert "demoapp-web-1" not in project_containers(client)


def test_up_in_the_foreground_streams_logs_until_interrupted(compose: Compose, client, engine,  # type: ignore
                                                             app_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SKIFF_HOST", "WEB_PORT")}
    process = subprocess.Popen([*SKIFF, "-H", engine.host, "compose", "up"], cwd=app_dir, text=True,
                               env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line == "seed-1  | seeding\n"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and project_containers(client).get("demoapp-web-1", {}).get("State") \
                != "running":
            time.sleep(0.1)
        process.send_signal(2)  # Ctrl-C
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Gracefully stopping..." in err
    assert all(c["State"] == "exited" for c in project_containers(client).values())


OPTIONS_APP = f"""
services:
  tool:
    image: {BUSYBOX}
    container_name: demo-tool
    hostname: toolbox
    working_dir: /work
    user: "1000:1000"
    init: true
    read_only: true
    tmpfs: [/scratch]
    extra_hosts: ["db.internal=10.9.8.7"]
    labels: {{team: infra}}
    env_file: tool.env
    restart: unless-stopped
    command: ["sleep", "300"]
    volumes:
      - type: volume
        source: shared
        target: /shared
        read_only: true
    deploy:
      resources:
        limits: {{memory: 64m, pids: 100, cpus: "0.5"}}
volumes:
  shared:
    external: true
    name: demo-external-volume
"""


def test_service_options_reach_the_container(compose: Compose, client, app_dir: Path) -> None:  # type: ignore
    (app_dir / "compose.yaml").write_text(textwrap.dedent(OPTIONS_APP))
    (app_dir / "tool.env").write_text("FROM_FILE=yes\n")
    missing = compose("up", "-d", check=False)
    assert missing.returncode == 1 and 'external volume "demo-external-volume" not found' in missing.stderr
    client.create_volume("demo-external-volume")
    try:
        compose("up", "-d", "--wait")
        doc = client.inspect_container("demo-tool")
        config, host = doc["Config"], doc["HostConfig"]
        assert config["Hostname"] == "toolbox" and config["WorkingDir"] == "/work" and config["User"] == "1000:1000"
        assert config["Labels"]["team"] == "infra" and "FROM_FILE=yes" in config["Env"]
        assert host["Init"] is True and host["ReadonlyRootfs"] is True and "/scratch" in host["Tmpfs"]
        assert host["ExtraHosts"] == ["db.internal:10.9.8.7"]
        assert host["RestartPolicy"]["Name"] == "unless-stopped"
        assert host["Memory"] == 64 << 20 and host["PidsLimit"] == 100 and host["NanoCpus"] == 500_000_000
        assert [m["Name"] for m in doc["Mounts"] if m["Type"] == "volume"] == ["demo-external-volume"]
        shell = compose("exec", "-T", "tool", "sh", "-c", "id -u; pwd; hostname; grep db.internal /etc/hosts; "
                        "touch /scratch/ok && echo tmpfs-ok; touch /ro 2>/dev/null || echo read-only").stdout
        assert shell.split("\n")[:3] == ["1000", "/work", "toolbox"]
        assert "10.9.8.7\tdb.internal" in shell and "tmpfs-ok" in shell and "read-only" in shell
        compose("down", "-v")
        # external: never removed by the project
        assert client.inspect_volume("demo-external-volume")["Name"] == "demo-external-volume"
    finally:
        compose("down", check=False)
        client.remove_volume("demo-external-volume")
