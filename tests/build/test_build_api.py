"""``POST /build`` as a protocol: the JSON lines Docker's legacy builder writes, its parameters, compressed and
chunked contexts, errors before and after the stream starts, cancellation, ``/build/prune`` and ``/commit``."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import re
import socket
import tarfile
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from tests.build.conftest import DockerRunner, EngineProcess, build_leftovers
from tests.engine.conftest import UnixHTTPConnection

pytestmark = pytest.mark.usefixtures("builder_engine")


def context_tar(files: dict[str, str | bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(raw), 0o644, 1700000000
            tar.addfile(info, io.BytesIO(raw))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size))
    return buf.getvalue()


def post_build(engine: EngineProcess, body: bytes, chunked: bool = False, timeout: float = 120,
               headers: dict[str, str] | None = None, **params: str | list[str]) -> tuple[int, list[dict], bytes]:
    """(status, JSON lines, raw body) of one ``POST /build``."""
    query = urllib.parse.urlencode(params, doseq=True)
    conn = UnixHTTPConnection(str(engine.socket), timeout)
    try:
        head = {"Content-Type": "application/x-tar", **(headers or {})}
        if chunked:
            pieces = (body[i:i + 1000] for i in range(0, len(body), 1000))
            conn.request("POST", f"/v1.41/build?{query}", body=pieces, headers=head, encode_chunked=True)
        else:
            conn.request("POST", f"/v1.41/build?{query}", body=body, headers=head)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    lines = [json.loads(line) for line in raw.splitlines() if line.strip()] if response.status == 200 else []
    return response.status, lines, raw


def stream_text(lines: list[dict]) -> str:
    return "".join(line.get("stream", "") for line in lines)


# ---------------------------------------------------------------------------------------------- the stream

def test_stream_is_dockers_legacy_builder_format(builder_engine: EngineProcess) -> None:
    body = context_tar({"Dockerfile": "FROM busybox\nRUN echo out; echo err >&2\nCMD [\"true\"]\n"})
    status, lines, _ = post_build(builder_engine, body, chunked=True, t=["api:1", "api:2"], version="1")
    assert status == 200
    assert lines[0] == {"stream": "Step 1/3 : FROM busybox"} and lines[1] == {"stream": "\n"}
    assert re.fullmatch(r" ---> [0-9a-f]{12}\n", lines[2]["stream"])
    text = stream_text(lines)
    running = re.search(r" ---> Running in ([0-9a-f]{12})\n", text)
    assert running and "out\n" in text and "err\n" in text
    assert f"Removing intermediate container {running.group(1)}\n" in text
    aux = [line["aux"] for line in lines if "aux" in line]
    assert len(aux) == 1 and re.fullmatch(r"sha256:[0-9a-f]{64}", aux[0]["ID"])
    assert lines[-3:] == [{"stream": f"Successfully built {aux[0]['ID'][7:19]}\n"},
                          {"stream": "Successfully tagged api:1\n"}, {"stream": "Successfully tagged api:2\n"}]
    image = builder_engine.request("GET", "/images/api:2/json").json()
    assert image["Id"] == aux[0]["ID"] and image["Config"]["Cmd"] == ["true"]


def test_quiet_writes_only_the_image_id(builder_engine: EngineProcess) -> None:
    status, lines, _ = post_build(builder_engine, context_tar({"Dockerfile": "FROM busybox\nENV Q=1\n"}), q="1")
    assert status == 200 and len(lines) == 1
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", lines[0]["stream"])


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress], ids=["gzip", "bzip2", "xz"])
def test_compressed_contexts_are_accepted(builder_engine: EngineProcess, compress) -> None:  # type: ignore[no-untyped-def]
    body = compress(context_tar({"Dockerfile": "FROM busybox\nCOPY f /f\n", "f": "compressed\n"}))
    status, lines, raw = post_build(builder_engine, body, t="compressed:1")
    assert status == 200 and "Successfully tagged compressed:1\n" in stream_text(lines), raw


def test_params_dockerfile_target_labels_and_buildargs(builder_engine: EngineProcess) -> None:
    body = context_tar({"build/Custom.df": "FROM busybox AS one\nARG WHO\nRUN echo hello $WHO > /who\n"
                                           "FROM one AS two\nENV TWO=2\n"})
    status, lines, raw = post_build(builder_engine, body, dockerfile="build/Custom.df", target="one",
                                    buildargs=json.dumps({"WHO": "world"}), labels=json.dumps({"a": "b", "c": "d"}),
                                    t="params:1")
    assert status == 200, raw
    text = stream_text(lines)
    assert "Step 4/4 : LABEL \"a\"=\"b\" \"c\"=\"d\"\n" in text and "ENV TWO" not in text
    config = builder_engine.request("GET", "/images/params:1/json").json()["Config"]
    assert config["Labels"] == {"a": "b", "c": "d"} and "TWO=2" not in config["Env"]


def test_errors_before_the_stream_are_http_errors(builder_engine: EngineProcess) -> None:
    body = context_tar({"Dockerfile": "FROM busybox\n"})
    status, _, raw = post_build(builder_engine, body, buildargs="{not json")
    assert status == 400 and json.loads(raw)["message"].startswith("invalid buildargs")
    status, _, raw = post_build(builder_engine, body, dockerfile="Nope")
    assert status == 400 and json.loads(raw)["message"] == "Cannot locate specified Dockerfile: Nope"
    status, _, raw = post_build(builder_engine, body, dockerfile="../../etc/hostname")
    assert status == 400 and "within the build context" in json.loads(raw)["message"]
    status, _, raw = post_build(builder_engine, context_tar({"Dockerfile": "FROM busybox\nBOGUS x\n"}))
    assert status == 400 and json.loads(raw)["message"].startswith("dockerfile parse error on line 2")
    status, _, raw = post_build(builder_engine, body, remote="https://example.invalid/repo.git")
    assert status == 501
    assert builder_engine.request("GET", "/_ping").status == 200


def test_an_escaping_context_entry_is_refused_and_nothing_lands_outside(builder_engine: EngineProcess) -> None:
    evil = tarfile.TarInfo("../../escaped.txt")
    evil.size = 1
    status, _, raw = post_build(builder_engine, context_tar({"Dockerfile": "FROM busybox\n"}, [evil]))
    assert status == 400, raw
    assert not (builder_engine.data_root / "build" / "escaped.txt").exists()
    assert not (builder_engine.data_root / "escaped.txt").exists()
    assert build_leftovers(builder_engine)["contexts"] == []


def test_failed_step_is_the_last_line_with_its_exit_code(builder_engine: EngineProcess) -> None:
    body = context_tar({"Dockerfile": "FROM busybox\nRUN echo partial output; exit 7\n"})
    status, lines, _ = post_build(builder_engine, body, forcerm="1")
    assert status == 200
    assert "partial output\n" in stream_text(lines)
    message = "The command '/bin/sh -c echo partial output; exit 7' returned a non-zero code: 7"
    assert lines[-1] == {"errorDetail": {"code": 7, "message": message}, "error": message}
    assert builder_engine.request("GET", "/containers/json?all=1").json() == []
    assert build_leftovers(builder_engine) == {"snapshots": [], "mounts": [], "contexts": []}


def test_client_going_away_cancels_the_build(builder_engine: EngineProcess) -> None:
    body = context_tar({"Dockerfile": "FROM busybox\nRUN echo started; sleep 60\n"})
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(builder_engine.socket))
    sock.sendall(f"POST /build?t=cancelled HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-tar\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while b'{"stream":"started' not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    sock.close()
    clean = {"snapshots": [], "mounts": [], "contexts": []}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not builder_engine.request("GET", "/containers/json?all=1").json() and \
                build_leftovers(builder_engine) == clean:
            break
        time.sleep(0.2)
    assert builder_engine.request("GET", "/containers/json?all=1").json() == []
    assert builder_engine.request("GET", "/images/cancelled/json").status == 404
    assert build_leftovers(builder_engine) == clean


# ---------------------------------------------------------------------------------------------- images, prune, commit

@pytest.fixture
def cli(docker: DockerRunner) -> Iterator[DockerRunner]:
    yield docker


def test_step_images_are_hidden_until_all_and_pruned_with_the_build_cache(builder_engine: EngineProcess,
                                                                          cli: DockerRunner) -> None:
    body = context_tar({"Dockerfile": "FROM busybox\nENV STEP=1\nENV STEP=2\n"})
    status, lines, _ = post_build(builder_engine, body, t="hidden:1")
    assert status == 200
    base, step, final = re.findall(r"^ ---> ([0-9a-f]{12})$", stream_text(lines), re.M)
    listed = cli("images", "-q", check=True).stdout.split()
    assert final in listed and base in listed and step not in listed
    assert step in cli("images", "-aq", check=True).stdout.split()
    assert builder_engine.request("POST", "/build/prune").json()["SpaceReclaimed"] >= 0
    assert step not in cli("images", "-aq", check=True).stdout.split()
    status, lines, _ = post_build(builder_engine, body, t="hidden:1")
    assert status == 200 and "Using cache" not in stream_text(lines)  # the steps are keyed by their parents


def test_docker_commit(builder_engine: EngineProcess, cli: DockerRunner) -> None:
    cli("run", "--name", "to-commit", "--network", "none", "busybox", "sh", "-c", "echo committed > /c", check=True)
    cli("commit", "-c", 'CMD ["cat", "/c"]', "-m", "a message", "to-commit", "committed:1", check=True)
    assert cli("run", "--rm", "--network", "none", "committed:1", check=True).stdout == "committed\n"
    assert cli("image", "inspect", "-f", "{{.Comment}}", "committed:1", check=True).stdout.strip() == "a message"
    cli("rm", "to-commit", check=True)


def test_a_daemon_killed_mid_build_restarts_clean(engines, busybox_archive: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal

    from tests.build.conftest import load_busybox

    engine = engines.start()
    load_busybox(engine, busybox_archive, tmp_path / "cfg")
    big = {f"many/f{i}": "x" * 1000 for i in range(300)}
    body = context_tar({"Dockerfile": "FROM busybox\nCOPY many /many\nRUN echo started; sleep 60\n", **big})
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(str(engine.socket))
    sock.sendall(f"POST /build HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while b'{"stream":"started' not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    os.kill(engine.pid, signal.SIGKILL)
    engine.process.wait()
    sock.close()
    engine.start()
    assert build_leftovers(engine) == {"snapshots": [], "mounts": [], "contexts": []}
    assert not os.listdir(engine.data_root / "build" / "trash")
    for c in engine.request("GET", "/containers/json?all=1").json():  # the RUN container: restored, as dockerd's
        assert engine.request("DELETE", f"/containers/{c['Id']}?force=1").status == 204


def test_rmi_of_a_built_image_deletes_its_unused_step_parents(builder_engine: EngineProcess, cli: DockerRunner) -> None:
    shared = "FROM busybox\nENV SHARED=1\n"
    _, lines, _ = post_build(builder_engine, context_tar({"Dockerfile": shared + "ENV ONLY=a\nCMD [\"a\"]\n"}),
                             t="rmi:a")
    base, shared_step, only_a, final_a = re.findall(r"^ ---> ([0-9a-f]{12})$", stream_text(lines), re.M)
    _, lines, _ = post_build(builder_engine, context_tar({"Dockerfile": shared + "ENV ONLY=b\n"}), t="rmi:b")
    parent = builder_engine.request("GET", "/images/rmi:a/json").json()["Parent"]
    assert parent.startswith("sha256:" + only_a)  # Docker's Parent of a built image: the step below it
    removed = cli("rmi", "rmi:a", check=True).stdout
    deleted = re.findall(r"^Deleted: sha256:([0-9a-f]{12})", removed, re.M)
    assert deleted == [final_a, only_a]  # the shared step has another child: it stays, as with Docker
    everything = cli("images", "-aq", check=True).stdout.split()
    assert shared_step in everything and base in everything and only_a not in everything
    removed = cli("rmi", "rmi:b", check=True).stdout
    assert shared_step in removed and base not in removed  # busybox has a name: the chain stops there
