"""The engine daemon and the Engine API's HTTP layer, against the real docker CLI and docker-py.

Three kinds of tests:
- a real ``skiff engine`` subprocess (the ``engine`` fixture) driven by the docker CLI, docker-py and raw HTTP:
  version negotiation, errors, headers, start-up and shutdown, locks, sockets, TLS, login;
- the same application served in-process (``build_app``) where a test must publish events as the services
  do, or needs a route of its own to exercise ``hijack``/``json_stream`` (attach and exec are others' routes);
- the helpers and the event bus on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from skiff import errors
from skiff.engine.api import build_app
from skiff.engine.api.common import (
    API_VERSION,
    frame,
    hijack,
    json_stream,
    parse_filters,
    parse_timestamp,
    query_bool,
    query_int,
    read_json,
    rfc3339_nano,
    unix_time,
)
from skiff.engine.daemon import Engine, EngineConfig, ListenAddress, resolve_runtime
from skiff.engine.events import QUEUE_LIMIT, EventBus, make_event
from tests.engine.conftest import DOCKER, EngineProcess, Engines, UnixHTTPConnection, docker_runner, request

JSON = "application/json"


# ---------------------------------------------------------------------------------------- the daemon, via the CLI

def test_docker_version_shows_client_and_server(docker) -> None:
    result = docker("version")
    assert result.returncode == 0, result.stderr
    assert "Client:" in result.stdout and "Server: Skiff Engine" in result.stdout
    assert re.search(rf"API version: +{API_VERSION} \(minimum version 1\.24\)", result.stdout)
    assert re.search(rf"API version: +{API_VERSION} \(downgraded from", result.stdout)  # the client negotiated down
    assert "linux/" in result.stdout


def test_docker_info_prints_our_fields(docker, engine: EngineProcess) -> None:
    result = docker("info")
    assert result.returncode == 0, result.stderr
    for line in ("Server Version: 26.1.0-skiff", "Storage Driver: overlay2", "Cgroup Driver: cgroupfs",
                 f"Docker Root Dir: {engine.data_root}", "Swarm: inactive", "Default Runtime: skiff",
                 "Operating System:", "Kernel Version:", "Live Restore Enabled: true"):
        assert line in result.stdout, result.stdout
    assert "ERROR" not in result.stderr and "error" not in result.stdout.lower()
    info = json.loads(docker("info", "--format", "{{json .}}", check=True).stdout)
    assert info["CgroupVersion"] in ("1", "2") and info["NCPU"] >= 1 and info["MemTotal"] > 0
    assert info["RegistryConfig"]["IndexConfigs"]["docker.io"]["Official"] is True
    assert info["ID"] and info["Containers"] >= 0


def test_docker_py_version_ping_info(docker_client, engine: EngineProcess) -> None:
    assert docker_client.api.api_version == API_VERSION  # negotiated from an unversioned GET /version
    assert docker_client.ping() is True
    version = docker_client.version()
    assert version["ApiVersion"] == API_VERSION and version["MinAPIVersion"] == "1.24"
    assert version["Os"] == "linux" and version["GoVersion"].startswith("python3")
    assert {c["Name"] for c in version["Components"]} >= {"Engine", "skiff"}
    info = docker_client.info()
    assert info["Driver"] == "overlay2" and info["DockerRootDir"] == str(engine.data_root)
    assert info["Swarm"]["LocalNodeState"] == "inactive"


def test_docker_py_from_env(engine: EngineProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    docker_py = pytest.importorskip("docker")
    monkeypatch.setenv("DOCKER_HOST", engine.host)
    client = docker_py.from_env()
    try:
        assert client.version()["ApiVersion"] == API_VERSION
    finally:
        client.close()


def test_docker_system_df(docker) -> None:
    result = docker("system", "df")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:5] == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]


def test_docker_inspect_of_nothing_falls_through_every_404(docker) -> None:
    result = docker("inspect", "nothing-by-this-name")
    assert result.returncode == 1
    assert "No such object: nothing-by-this-name" in result.stderr


# ---------------------------------------------------------------------------------------- HTTP details

def _assert_common_headers(headers) -> None:  # type: ignore[no-untyped-def]
    assert headers["Api-Version"] == API_VERSION
    assert headers["Server"] == "Docker/26.1.0-skiff (linux)"
    assert headers["Ostype"] == "linux" and headers["Docker-Experimental"] == "false"


def test_ping_headers(engine: EngineProcess) -> None:
    for method in ("HEAD", "GET"):
        r = engine.request(method, "/_ping")
        assert r.status == 200
        _assert_common_headers(r.headers)
        assert r.headers["Builder-Version"] == "1" and r.headers["Swarm"] == "inactive"
        assert "no-cache" in r.headers["Cache-Control"] and r.headers["Pragma"] == "no-cache"
        assert r.body == (b"OK" if method == "GET" else b"")


def test_versioned_and_unversioned_paths(engine: EngineProcess) -> None:
    bodies = []
    for prefix in ("", "/v1.24", "/v1.41", f"/v{API_VERSION}"):
        r = engine.request("GET", prefix + "/version")
        assert r.status == 200, r.body
        assert r.headers["Content-Type"] == JSON
        _assert_common_headers(r.headers)
        bodies.append({k: v for k, v in r.json().items() if k != "Components"})
        assert engine.request("GET", prefix + "/_ping").body == b"OK"
    assert all(b == bodies[0] for b in bodies)


@pytest.mark.parametrize(("version", "words"), [("1.99", "is too new. Maximum supported API version is 1.45"),
                                                 ("2.0", "is too new"),
                                                 ("1.12", "is too old. Minimum supported API version is 1.24")])
def test_versions_out_of_range_are_refused(engine: EngineProcess, version: str, words: str) -> None:
    r = engine.request("GET", f"/v{version}/version")
    assert r.status == 400
    assert r.headers["Content-Type"] == JSON
    message = r.json()["message"]
    assert message.startswith(f"client version {version} ") and words in message


def test_unknown_path_and_method_answer_json(engine: EngineProcess) -> None:
    for path in ("/nothing/here", "/v1.45/nothing/here", "/v1.45", "/vfoo/version"):
        r = engine.request("GET", path)
        assert (r.status, r.headers["Content-Type"], r.json()) == (404, JSON, {"message": "page not found"})
        _assert_common_headers(r.headers)
    r = engine.request("DELETE", "/v1.45/version")
    assert (r.status, r.headers["Content-Type"], r.json()) == (405, JSON, {"message": "method not allowed"})


def test_malformed_json_body_is_400(engine: EngineProcess) -> None:
    for body in ("{not json", "[1, 2]", '"text"'):
        r = engine.request("POST", "/v1.45/auth", body, {"Content-Type": JSON})
        assert r.status == 400, r.body
        assert r.headers["Content-Type"] == JSON
        assert r.json()["message"].startswith("invalid JSON")


def test_chunked_request_body_is_read(engine: EngineProcess) -> None:
    conn = UnixHTTPConnection(str(engine.socket))
    try:
        chunks = [b'{"serveraddress": "127.0.0.1:1", ', b'"username": "u", ', b'"password": "p"}']
        conn.request("POST", "/v1.45/auth", body=iter(chunks), headers={"Content-Type": JSON}, encode_chunked=True)
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    if resp.status == 501:
        pytest.skip("the image service is not installed")
    # The whole body was parsed: the login was tried against the (closed) loopback port it named.
    assert resp.status >= 400 and "127.0.0.1:1" in body["message"]


def test_the_daemon_keeps_serving_after_errors(engine: EngineProcess) -> None:
    with socket.socket(socket.AF_UNIX) as s:  # not HTTP at all
        s.connect(str(engine.socket))
        s.sendall(b"\x16\x03\x01 garbage\r\n\r\n")
        s.settimeout(5)
        with contextlib.suppress(OSError):
            s.recv(1024)
    engine.request("GET", "/v1.99/info")
    engine.request("POST", "/auth", "{")
    assert engine.alive()
    assert engine.request("GET", "/_ping").body == b"OK"


def test_event_filters_are_validated(engine: EngineProcess) -> None:
    r = engine.request("GET", "/events?filters=" + _quote({"nonsense": ["x"]}))
    assert (r.status, r.json()) == (400, {"message": "invalid filter 'nonsense'"})
    r = engine.request("GET", "/events?filters=%7Bbroken")
    assert r.status == 400 and r.json()["message"].startswith("invalid filter")
    r = engine.request("GET", "/events?since=yesterday")
    assert r.status == 400 and "invalid timestamp" in r.json()["message"]


def test_events_until_in_the_past_ends_at_once(docker) -> None:
    now = int(time.time())
    started = time.monotonic()
    result = docker("events", "--since", str(now - 60), "--until", str(now - 1), timeout=20)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10


def test_image_events_reach_docker_events(docker, engine: EngineProcess, tmp_path: Path) -> None:
    """The engine wires the image service's events to the bus: load and tag, then replay them."""
    from tests.image.testimages import busybox_docker_archive

    since = str(int(time.time()) - 1)
    loaded = docker("load", "-i", busybox_docker_archive(str(tmp_path / "busybox.tar")))
    if "page not found" in loaded.stderr:
        pytest.skip("the images API is not installed")
    assert loaded.returncode == 0, loaded.stderr
    name = loaded.stdout.split("Loaded image: ", 1)[1].strip()
    docker("tag", name, "events-test:1", check=True)
    result = docker("events", "--since", since, "--until", str(int(time.time()) + 1), "--filter", "type=image",
                    "--format", "{{.Action}} {{.Actor.Attributes.name}}", timeout=30)
    assert result.returncode == 0, result.stderr
    assert "tag events-test:1" in result.stdout.splitlines(), result.stdout


# ---------------------------------------------------------------------------------------- start-up, shutdown, locks

def test_socket_mode_group_pidfile_and_clean_shutdown(engines: Engines) -> None:
    engine = engines.start("--group", "daemon")
    info = os.stat(engine.socket)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == grp.getgrnam("daemon").gr_gid
    assert not [p for p in engine.root.iterdir() if p.name.startswith(".skiff-sock-")]  # staging dir removed
    pidfile = engine.exec_root / "engine.pid"
    assert pidfile.read_text().strip() == str(engine.pid)
    assert engine.stop() == 0
    assert not engine.socket.exists() and not pidfile.exists()
    assert "shutting down" in engine.log_text()


def test_shutdown_ends_event_streams_promptly(engines: Engines) -> None:
    engine = engines.start()
    conn = UnixHTTPConnection(str(engine.socket), timeout=30)
    conn.request("GET", "/events")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.headers["Content-Type"] == JSON
    started = time.monotonic()
    assert engine.stop() == 0
    assert resp.read() == b""  # the stream ended cleanly (final chunk), not cut off
    conn.close()
    assert time.monotonic() - started < 5


def test_a_second_daemon_on_the_same_data_root_is_refused(engines: Engines) -> None:
    first = engines.start()
    second = engines.create()
    result = subprocess.run(
        [*_command(first.data_root, second.exec_root, second.socket)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"another engine (pid {first.pid}) is using {first.data_root}" in result.stderr
    assert first.alive() and not second.socket.exists()
    assert first.request("GET", "/_ping").status == 200


def test_a_live_socket_is_not_stolen_but_a_stale_one_is_replaced(engines: Engines) -> None:
    first = engines.start()
    other = engines.create()
    result = subprocess.run(_command(other.data_root, other.exec_root, first.socket),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and f"{first.socket} is in use" in result.stderr
    # SIGKILL leaves the socket file behind; the next start replaces it, and the engine ID survives.
    engine_id = first.request("GET", "/info").json()["ID"]
    os.kill(first.pid, 9)
    first.process.wait()
    assert first.socket.exists()
    first.start()
    assert first.request("GET", "/info").json()["ID"] == engine_id


def test_a_file_in_the_sockets_place_is_not_removed(engines: Engines) -> None:
    engine = engines.create()
    engine.socket.write_text("not a socket")
    result = subprocess.run(_command(engine.data_root, engine.exec_root, engine.socket),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "exists and is not a socket" in result.stderr
    assert engine.socket.read_text() == "not a socket"


@pytest.mark.parametrize(("flags", "message"), [
    (["-H", "tcp://127.0.0.1:2375"], "refusing to listen on tcp://127.0.0.1:2375 without TLS client authentication"),
    (["--runtime", "no-such-runtime"], "unknown runtime 'no-such-runtime'"),
    (["--runtime", "/nonexistent/runc"], "is not an executable file"),
    (["-H", "http://x"], "want unix:///PATH or tcp://HOST:PORT"),
    (["--tlscert", "x"], "need --tlsverify"),
    (["--group", "no-such-group-here"], "group 'no-such-group-here' does not exist"),
])
def test_bad_configuration_fails_with_one_clear_line(tmp_path: Path, flags: list[str], message: str) -> None:
    result = subprocess.run(_command(tmp_path / "d", tmp_path / "x", tmp_path / "s.sock") + flags,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode in (1, 2)
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_tcp_with_tls_client_certificates(engines: Engines, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    certs = _make_certs(tmp_path / "certs")
    port = _free_port()
    engine = engines.start("-H", f"tcp://127.0.0.1:{port}", "--tlsverify", "--tlscacert", str(certs / "ca.pem"),
                           "--tlscert", str(certs / "server-cert.pem"), "--tlskey", str(certs / "server-key.pem"))
    run = docker_runner(f"tcp://127.0.0.1:{port}", tmp_path / "cfg")
    tls = ["--tlsverify", "--tlscacert", str(certs / "ca.pem"), "--tlscert", str(certs / "cert.pem"),
           "--tlskey", str(certs / "key.pem")]
    result = run(*tls, "version", "--format", "{{.Server.APIVersion}}")
    assert result.returncode == 0, result.stderr + engine.log_text()
    assert result.stdout.strip() == API_VERSION
    no_cert = run("--tlsverify", "--tlscacert", str(certs / "ca.pem"), "version")
    assert no_cert.returncode != 0  # a client without a certificate is turned away


def test_the_runtime_name_resolves_to_a_command() -> None:
    assert Path(resolve_runtime("skiff")[0]).name in ("skiff-runtime", Path(sys.executable).name)
    with pytest.raises(errors.InvalidArgument):
        resolve_runtime("kata")
    assert ListenAddress.parse("unix:///run/x.sock").path == "/run/x.sock"
    assert ListenAddress.parse("tcp://0.0.0.0:2376").port == 2376


# ---------------------------------------------------------------------------------------- login (POST /auth)

def test_docker_login_checks_credentials_with_the_registry(docker, engine: EngineProcess, tmp_path: Path) -> None:
    if engine.request("POST", "/auth", "{}").status == 501:
        pytest.skip("the image service is not installed")
    from tests.registry import servers
    from tests.registry.test_skopeo import write_htpasswd

    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "s3cret"})
    registry = servers.start_skiff(tmp_path / "registry", "--htpasswd", str(htpasswd))
    try:
        ok = docker("login", "-u", "alice", "--password-stdin", registry.host, input="s3cret\n")
        assert ok.returncode == 0, ok.stderr
        assert "Login Succeeded" in ok.stdout
        bad = docker("login", "-u", "alice", "--password-stdin", registry.host, input="wrong\n")
        assert bad.returncode == 1
        assert "Error response from daemon" in bad.stderr
    finally:
        registry.stop()
    assert engine.alive()


# ---------------------------------------------------------------------------------------- in-process apps

@contextlib.asynccontextmanager
async def serve(app: web.Application, path: Path) -> AsyncIterator[str]:
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    try:
        yield str(path)
    finally:
        await runner.cleanup()


def _engine(tmp_path: Path) -> Engine:
    config = EngineConfig(data_root=tmp_path / "data", exec_root=tmp_path / "exec",
                          hosts=[f"unix://{tmp_path}/api.sock"])
    return Engine(config)


async def _docker_async(host: str, config: Path, *args: str, timeout: float = 30) -> tuple[int, str, str]:
    config.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", ""), "DOCKER_HOST": host, "DOCKER_CONFIG": str(config), "HOME": str(config)}
    process = await asyncio.create_subprocess_exec(DOCKER, *args, env=env, stdin=subprocess.DEVNULL,
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, out.decode(), err.decode()


@pytest.mark.asyncio
async def test_docker_events_since_until_replays_published_events(tmp_path: Path) -> None:
    if not os.path.exists(DOCKER):
        pytest.skip("the docker CLI is not installed")
    engine = _engine(tmp_path)
    start = time.time()
    engine.events.publish("container", "create", "c0ffee" * 10 + "abcd", {"name": "web", "image": "busybox"})
    engine.events.publish("container", "start", "c0ffee" * 10 + "abcd", {"name": "web", "image": "busybox"})
    engine.events.publish("network", "create", "feed" * 16, {"name": "mynet", "type": "bridge"})
    async with serve(build_app(engine, modules=("system",)), tmp_path / "api.sock") as path:
        host = f"unix://{path}"
        since, until = str(int(start) - 1), str(int(time.time()) + 1)
        rc, out, err = await _docker_async(host, tmp_path / "cfg", "events", "--since", since, "--until", until,
                                           "--format", "{{json .}}")
        assert rc == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        assert [(e["Type"], e["Action"]) for e in events] == [
            ("container", "create"), ("container", "start"), ("network", "create")]
        assert events[0]["from"] == "busybox" and events[0]["Actor"]["Attributes"]["name"] == "web"
        rc, out, _ = await _docker_async(host, tmp_path / "cfg", "events", "--since", since, "--until", until,
                                         "--filter", "type=network", "--format", "{{.Actor.Attributes.name}}")
        assert (rc, out.split()) == (0, ["mynet"])
        rc, out, _ = await _docker_async(host, tmp_path / "cfg", "events", "--since", since, "--until", until,
                                         "--filter", "container=we", "--filter", "event=start",
                                         "--format", "{{.Action}}")
        assert (rc, out.split()) == (0, ["start"])


@pytest.mark.asyncio
async def test_docker_events_streams_live_events_until_until(tmp_path: Path) -> None:
    if not os.path.exists(DOCKER):
        pytest.skip("the docker CLI is not installed")
    engine = _engine(tmp_path)
    async with serve(build_app(engine, modules=("system",)), tmp_path / "api.sock") as path:
        until = str(int(time.time()) + 4)
        cli = asyncio.create_task(_docker_async(f"unix://{path}", tmp_path / "cfg", "events", "--until", until,
                                                "--format", "{{.Type}} {{.Action}} {{.Actor.ID}}"))
        await _wait_for(lambda: engine.events.subscriber_count == 1)
        engine.events.publish("volume", "create", "vol1", {"driver": "local"})
        engine.events.publish("container", "die", "abc", {"name": "x", "image": "busybox", "exitCode": "3"})
        rc, out, err = await cli
        assert rc == 0, err
        assert out.splitlines() == ["volume create vol1", "container die abc"]
        await _wait_for(lambda: engine.events.subscriber_count == 0)


@pytest.mark.asyncio
async def test_events_are_flushed_one_by_one_and_a_leaving_client_unsubscribes(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    async with serve(build_app(engine, modules=("system",)), tmp_path / "api.sock") as path:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"GET /v1.45/events?filters=%7B%22type%22%3A%7B%22image%22%3Atrue%7D%7D HTTP/1.1\r\n"
                     b"Host: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"200 OK" in head and b"Transfer-Encoding: chunked" in head
        assert b"Content-Type: application/json\r\n" in head
        await _wait_for(lambda: engine.events.subscriber_count == 1)
        engine.events.publish("container", "start", "c1", {"image": "busybox"})  # filtered out
        engine.events.publish("image", "pull", "busybox:latest", {"name": "busybox:latest"})
        event = json.loads(await _read_chunk(reader))
        assert (event["status"], event["id"], event["Type"]) == ("pull", "busybox:latest", "image")
        assert "from" not in event and event["scope"] == "local"
        assert event["time"] == event["timeNano"] // 10**9
        writer.close()
        await _wait_for(lambda: engine.events.subscriber_count == 0, timeout=5)


@pytest.mark.asyncio
async def test_json_stream_errors_after_start_become_an_error_line(tmp_path: Path) -> None:
    async def pull(request: web.Request) -> web.StreamResponse:
        stream = await json_stream(request)
        await stream.send({"status": "Pulling fs layer", "id": "abc"})
        raise errors.NotFound("manifest unknown")

    async def forgets_to_return(request: web.Request) -> None:
        stream = await json_stream(request)
        await stream.send({"status": "done"})

    app = build_app(None, modules=())
    app.router.add_post("/images/create", pull)
    app.router.add_get("/forgets", forgets_to_return)  # type: ignore[arg-type]
    async with serve(app, tmp_path / "api.sock") as path:
        r = await asyncio.to_thread(request, path, "POST", "/v1.45/images/create")
        assert r.status == 200 and r.headers["Content-Type"] == JSON
        lines = [json.loads(line) for line in r.body.splitlines()]
        assert lines == [{"status": "Pulling fs layer", "id": "abc"},
                         {"errorDetail": {"message": "manifest unknown"}, "error": "manifest unknown"}]
        r = await asyncio.to_thread(request, path, "GET", "/forgets")
        assert (r.status, r.body) == (200, b'{"status":"done"}\n')


# ---------------------------------------------------------------------------------------- hijack

async def _echo(request: web.Request, body: dict | None = None) -> web.StreamResponse:
    """Test-only attach: echoes stdin framed on stdout; at stdin's end says so on stderr, then hangs up."""
    stream = await hijack(request)
    if body:
        await stream.write(frame(2, json.dumps(body).encode()))
    while data := await stream.read():
        await stream.write(frame(1, data))
    await stream.write(frame(2, b"stdin closed\n"))
    return stream


async def _exec_echo(request: web.Request) -> web.StreamResponse:
    """Test-only exec start: its JSON body first, then the same echo."""
    return await _echo(request, await read_json(request))


def _echo_app() -> web.Application:
    app = build_app(None, modules=())
    app.router.add_post("/containers/{id}/attach", _echo)
    app.router.add_post("/exec/{id}/start", _exec_echo)
    return app


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await asyncio.wait_for(reader.readexactly(8), 5)
    kind, length = struct.unpack(">BxxxI", header)
    return kind, await asyncio.wait_for(reader.readexactly(length), 5)


UPGRADE = b"Connection: Upgrade\r\nUpgrade: tcp\r\n"


@pytest.mark.asyncio
async def test_hijack_keeps_stdin_sent_with_the_request_and_survives_a_half_close(tmp_path: Path) -> None:
    async with serve(_echo_app(), tmp_path / "api.sock") as path:
        reader, writer = await asyncio.open_unix_connection(path)
        # stdin right behind the headers, in the same write, before the 101 was even sent
        writer.write(b"POST /v1.45/containers/c1/attach?stdin=1&stdout=1&stream=1 HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 0\r\nContent-Type: text/plain\r\n" + UPGRADE + b"\r\nhello ")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 UPGRADED\r\n")
        for header in (b"Content-Type: application/vnd.docker.raw-stream", b"Connection: Upgrade", b"Upgrade: tcp",
                       b"Api-Version: " + API_VERSION.encode()):
            assert header in head
        assert b"Transfer-Encoding" not in head and b"Content-Length" not in head
        assert await _read_frame(reader) == (1, b"hello ")
        writer.write(b"GET / HTTP/1.1\r\n\r\n")  # not a request any more: just stdin
        assert await _read_frame(reader) == (1, b"GET / HTTP/1.1\r\n\r\n")
        big = os.urandom(1 << 20)
        writer.write(big)
        received = b""
        while len(received) < len(big):
            _, data = await _read_frame(reader)
            received += data
        assert received == big
        writer.write_eof()  # stdin EOF; output must keep flowing
        assert await _read_frame(reader) == (2, b"stdin closed\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server hung up: end of output
        writer.close()


@pytest.mark.asyncio
async def test_hijack_after_a_json_body_keeps_the_stdin_behind_it(tmp_path: Path) -> None:
    async with serve(_echo_app(), tmp_path / "api.sock") as path:
        reader, writer = await asyncio.open_unix_connection(path)
        body = b'{"Detach":false,"Tty":true}'
        writer.write(b"POST /v1.45/exec/e1/start HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n".encode() + UPGRADE + b"\r\n" + body + b"ls\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 UPGRADED")
        assert await _read_frame(reader) == (2, b'{"Detach": false, "Tty": true}')
        assert await _read_frame(reader) == (1, b"ls\n")
        writer.write_eof()
        assert await _read_frame(reader) == (2, b"stdin closed\n")
        writer.close()


@pytest.mark.asyncio
async def test_hijack_without_upgrade_streams_a_200(tmp_path: Path) -> None:
    async with serve(_echo_app(), tmp_path / "api.sock") as path:
        r = await asyncio.to_thread(request, path, "POST", "/containers/c1/attach", b"abc",
                                    {"Content-Type": "text/plain"})
        assert r.status == 200 and r.headers["Content-Type"] == "application/vnd.docker.raw-stream"
        assert r.body == frame(1, b"abc") + frame(2, b"stdin closed\n")


@pytest.mark.asyncio
async def test_hijack_with_docker_py_attach_socket(tmp_path: Path) -> None:
    docker_py = pytest.importorskip("docker")
    async with serve(_echo_app(), tmp_path / "api.sock") as path:
        def talk() -> bytes:
            client = docker_py.APIClient(base_url=f"unix://{path}", version=API_VERSION)
            try:
                sock = client.attach_socket("c1", params={"stdin": 1, "stdout": 1, "stream": 1})
                raw = sock._sock  # docker-py hands out a SocketIO over the hijacked socket
                raw.sendall(b"from docker-py\n")
                raw.shutdown(socket.SHUT_WR)
                chunks = []
                while data := raw.recv(65536):
                    chunks.append(data)
                sock.close()
                return b"".join(chunks)
            finally:
                client.close()

        output = await asyncio.to_thread(talk)
        assert output == frame(1, b"from docker-py\n") + frame(2, b"stdin closed\n")


@pytest.mark.asyncio
async def test_hijacked_handler_learns_at_its_next_write_that_the_client_left(tmp_path: Path) -> None:
    finished = asyncio.Event()

    async def attach(request: web.Request) -> web.StreamResponse:
        stream = await hijack(request)
        with contextlib.suppress(ConnectionResetError):
            while not stream.closed:
                await stream.write(frame(1, b"tick\n"))
                await asyncio.sleep(0.05)
        await stream.wait_closed()
        finished.set()
        return stream

    app = build_app(None, modules=())
    app.router.add_post("/containers/{id}/attach", attach)
    async with serve(app, tmp_path / "api.sock") as path:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"POST /containers/c/attach HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n" + UPGRADE + b"\r\n")
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert await _read_frame(reader) == (1, b"tick\n")
        writer.close()
        await asyncio.wait_for(finished.wait(), 5)


# ---------------------------------------------------------------------------------------- helpers on their own

def _fake_request(query: str = "") -> web.Request:
    from aiohttp.test_utils import make_mocked_request

    return make_mocked_request("GET", "/x" + (f"?{query}" if query else ""))


def test_query_bool_reads_what_clients_send() -> None:
    for text in ("1", "true", "True", "yes", "anything"):
        assert query_bool(_fake_request(f"b={text}"), "b") is True
    for text in ("0", "false", "False", "no", "", "none"):
        assert query_bool(_fake_request(f"b={text}"), "b", default=True) is False
    assert query_bool(_fake_request(), "b", default=True) is True


def test_query_int() -> None:
    assert query_int(_fake_request("t=10&limit=-1"), "t") == 10
    assert query_int(_fake_request("limit=-1"), "limit") == -1
    assert query_int(_fake_request("t="), "t", 5) == 5
    with pytest.raises(errors.InvalidArgument, match="invalid value for t"):
        query_int(_fake_request("t=ten"), "t")


def test_parse_filters_map_and_list_forms() -> None:
    assert parse_filters(_fake_request("filters=" + _quote({"name": {"x": True}, "label": {"a=b": True}}))) == {
        "name": ["x"], "label": ["a=b"]}
    assert parse_filters(_fake_request("filters=" + _quote({"name": ["x", "y"]}))) == {"name": ["x", "y"]}
    assert parse_filters(_fake_request("filters=")) == {}
    for bad in ("%7Bnope", _quote([1]), _quote({"name": "x"}), _quote({"name": [1]})):
        with pytest.raises(errors.InvalidArgument, match="invalid filter"):
            parse_filters(_fake_request("filters=" + bad))
    with pytest.raises(errors.InvalidArgument, match="invalid filter 'colour'"):
        parse_filters(_fake_request("filters=" + _quote({"colour": ["red"]})), accepted={"name"})


def test_docker_time_formats() -> None:
    assert rfc3339_nano(ns=1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert rfc3339_nano(ns=1_700_000_000_120_000_000) == "2023-11-14T22:13:20.12Z"
    assert rfc3339_nano(1_700_000_000) == "2023-11-14T22:13:20Z"
    assert rfc3339_nano(None) == rfc3339_nano(0) == "0001-01-01T00:00:00Z"
    assert unix_time("2023-11-14T22:13:20.5Z") == unix_time(1_700_000_000.9) == 1_700_000_000
    assert parse_timestamp("1700000000.5") == 1_700_000_000.5
    assert parse_timestamp("2023-11-14T23:13:20+01:00") == 1_700_000_000
    with pytest.raises(errors.InvalidArgument):
        parse_timestamp("10m")


def test_the_server_parser_keeps_upgraded_bytes() -> None:
    from aiohttp import web_protocol

    from skiff.engine.api.common import _parser_upgrades_tcp

    build_app(None, modules=())
    assert _parser_upgrades_tcp(web_protocol.HttpRequestParser)


def test_frame_header() -> None:
    assert frame(1, b"hi") == b"\x01\x00\x00\x00\x00\x00\x00\x02hi"
    assert frame(2, b"x" * 300)[:8] == b"\x02\x00\x00\x00\x00\x00\x01\x2c"


@pytest.mark.asyncio
async def test_read_json_empty_and_malformed(tmp_path: Path) -> None:
    seen: list[dict] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(await read_json(request))
        return web.Response(status=204)

    app = build_app(None, modules=())
    app.router.add_post("/x", handler)
    async with serve(app, tmp_path / "api.sock") as path:
        assert (await asyncio.to_thread(request, path, "POST", "/x")).status == 204
        assert (await asyncio.to_thread(request, path, "POST", "/x", b'{"a": 1}')).status == 204
        r = await asyncio.to_thread(request, path, "POST", "/x", b"\xff\xfe")
        assert r.status == 400 and r.json()["message"].startswith("invalid JSON")
    assert seen == [{}, {"a": 1}]


# ---------------------------------------------------------------------------------------- the event bus

def test_event_shapes() -> None:
    container = make_event("container", "start", "abc", {"name": "web", "image": "busybox"}, time_ns=1_500_000_000)
    assert container == {"status": "start", "id": "abc", "from": "busybox", "Type": "container", "Action": "start",
                         "Actor": {"ID": "abc", "Attributes": {"name": "web", "image": "busybox"}},
                         "scope": "local", "time": 1, "timeNano": 1_500_000_000}
    image = make_event("image", "tag", "sha256:1", {"name": "x:1"})
    assert image["status"] == "tag" and image["id"] == "sha256:1" and "from" not in image
    network = make_event("network", "connect", "n1", {"container": "abc", "name": "mynet"})
    assert "status" not in network and "id" not in network and network["Actor"]["ID"] == "n1"


async def _collect(subscription, limit: int = 100) -> list[dict]:  # type: ignore[no-untyped-def]
    return [e async for e in _take(subscription, limit)]


async def _take(iterator, limit: int):  # type: ignore[no-untyped-def]
    count = 0
    async for item in iterator:
        yield item
        count += 1
        if count >= limit:
            return


def _publish_sample(bus: EventBus) -> None:
    bus.publish("container", "create", "1111", {"name": "web", "image": "busybox:1", "com.x": "y"})
    bus.publish("container", "exec_start: sh -c ls", "1111", {"name": "web", "image": "busybox:1"})
    bus.publish("container", "start", "2222", {"name": "db", "image": "postgres"})
    bus.publish("image", "tag", "sha256:aa", {"name": "busybox:1"})
    bus.publish("network", "create", "3333", {"name": "webnet"})
    bus.publish("volume", "create", "data", {"driver": "local"})


@pytest.mark.asyncio
@pytest.mark.parametrize(("filters", "expected"), [
    ({}, ["create", "exec_start: sh -c ls", "start", "tag", "create", "create"]),
    ({"type": ["container"]}, ["create", "exec_start: sh -c ls", "start"]),
    ({"event": ["create"]}, ["create", "create", "create"]),
    ({"event": ["exec_start"]}, ["exec_start: sh -c ls"]),
    ({"container": ["we"]}, ["create", "exec_start: sh -c ls", "create"]),  # prefix of a name ("webnet" too)
    ({"container": ["2222"]}, ["start"]),
    ({"image": ["busybox"]}, ["create", "exec_start: sh -c ls", "tag"]),
    ({"image": ["busybox:1"], "type": ["image"]}, ["tag"]),
    ({"label": ["com.x"]}, ["create"]),
    ({"label": ["com.x=z"]}, []),
    ({"network": ["webnet"]}, ["create"]),
    ({"volume": ["data"]}, ["create"]),
    ({"type": ["container", "volume"], "event": ["start", "create"]}, ["create", "start", "create"]),
])
async def test_event_filters(filters: dict, expected: list[str]) -> None:
    bus = EventBus()
    _publish_sample(bus)
    with bus.subscribe(since=0, until=time.time() + 1, filters=filters) as sub:
        assert [e["Action"] for e in await _collect(sub)] == expected


@pytest.mark.asyncio
async def test_subscriptions_replay_then_follow_and_end_at_until() -> None:
    bus = EventBus(history=3)
    for i in range(5):
        bus.publish("volume", "create", f"v{i}")
    assert [e["Actor"]["ID"] for e in bus.history()] == ["v2", "v3", "v4"]
    with bus.subscribe() as live:  # no since: nothing replayed
        bus.publish("volume", "create", "v5")
        assert (await asyncio.wait_for(anext(live), 1))["Actor"]["ID"] == "v5"
    with bus.subscribe(since=0) as replay:
        assert [e["Actor"]["ID"] for e in await _collect(replay, 3)] == ["v3", "v4", "v5"]
    started = time.monotonic()
    with bus.subscribe(until=time.time() + 0.3) as bounded:
        assert len(await _collect(bounded)) == 3  # until alone replays everything before it, then waits
    assert 0.2 < time.monotonic() - started < 2
    with pytest.raises(errors.InvalidArgument):
        bus.subscribe(since=10, until=5)
    with pytest.raises(errors.InvalidArgument, match="invalid filter 'bogus'"):
        bus.subscribe(filters={"bogus": ["x"]})


@pytest.mark.asyncio
async def test_closing_the_bus_ends_subscribers_and_slow_ones_are_dropped() -> None:
    bus = EventBus()
    slow = bus.subscribe()
    for i in range(QUEUE_LIMIT + 1):
        bus.publish("volume", "create", f"v{i}")
    assert slow.overflowed and bus.subscriber_count == 0
    assert len(await _collect(slow, QUEUE_LIMIT + 10)) == QUEUE_LIMIT  # what it had queued, then the end
    waiting = bus.subscribe()
    task = asyncio.ensure_future(_collect(waiting))
    await asyncio.sleep(0.01)
    bus.close()
    assert await asyncio.wait_for(task, 1) == []
    assert bus.subscriber_count == 0
    assert await _collect(bus.subscribe()) == []


@pytest.mark.asyncio
async def test_threadsafe_publisher() -> None:
    bus = EventBus()
    publish = bus.threadsafe_publisher("image")
    with bus.subscribe() as sub:
        thread = threading.Thread(target=publish, args=("pull", "busybox:latest", {"name": "busybox:latest"}))
        thread.start()
        thread.join()
        event = await asyncio.wait_for(anext(sub), 2)
    assert (event["Type"], event["Action"], event["id"]) == ("image", "pull", "busybox:latest")


# ---------------------------------------------------------------------------------------- small helpers

def _quote(obj: object) -> str:
    from urllib.parse import quote

    return quote(json.dumps(obj))


def _command(data_root: Path, exec_root: Path, socket_path: Path) -> list[str]:
    from tests.engine.conftest import engine_command

    return engine_command(data_root, exec_root, socket_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait_for(condition, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def _read_chunk(reader: asyncio.StreamReader) -> bytes:
    size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)).strip(), 16)
    data = await asyncio.wait_for(reader.readexactly(size + 2), 5)
    return data[:-2]


def _make_certs(directory: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with the openssl CLI."""
    directory.mkdir()

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=skiff-test-ca")
    for name, cn, ext in (("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                          ("client", "client", "extendedKeyUsage=clientAuth")):
        key, cert = ("server-key.pem", "server-cert.pem") if name == "server" else ("key.pem", "cert.pem")
        (directory / f"{name}.ext").write_text(ext + "\n")
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", f"{name}.ext")
    return directory
