"""Volumes and mounts through the Docker Engine API: the real docker CLI and docker-py against a real ``skiff engine``.

Each test types what a user would (``docker volume ...``, ``docker run -v/--mount/--tmpfs/--volumes-from``) and
checks what the CLI prints, what the container sees and what is left on the host. Every test leaves no container,
no volume and no mount behind (``_clean``); the session's leak check confirms the mounts.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.engine.conftest import DockerRunner, EngineProcess, docker_runner
from tests.image import testimages

IMAGE = "busybox"
CONTENT_IMAGE = "withcontent"  # busybox plus files under /srv/content, declared a VOLUME
IMPORT_CHANGES = ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["sh"]')


# ---------------------------------------------------------------------------------------------- fixtures


def _content_tar(busybox_tar: str, path: str) -> str:
    """busybox's rootfs and /srv/content: owned files, modes, a symlink, a hard link and a subdirectory."""
    def entry(name: str, kind: bytes, mode: int, size: int = 0, link: str = "", uid: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.size, info.linkname, info.uid, info.gid, info.mtime = (
            kind, mode, size, link, uid, uid, 1_700_000_000)
        return info

    with tarfile.open(busybox_tar) as source, tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for member in source.getmembers():
            tar.addfile(member, source.extractfile(member) if member.isfile() else None)
        hello = b"hello from the image\n"
        tar.addfile(entry("srv", tarfile.DIRTYPE, 0o755))
        tar.addfile(entry("srv/content", tarfile.DIRTYPE, 0o750, uid=1000))
        tar.addfile(entry("srv/content/hello", tarfile.REGTYPE, 0o640, len(hello), uid=1000), io.BytesIO(hello))
        tar.addfile(entry("srv/content/link", tarfile.SYMTYPE, 0o777, link="hello"))
        tar.addfile(entry("srv/content/hard", tarfile.LNKTYPE, 0o640, link="srv/content/hello", uid=1000))
        tar.addfile(entry("srv/content/sub", tarfile.DIRTYPE, 0o700, uid=33))
        tar.addfile(entry("srv/content/sub/deep", tarfile.REGTYPE, 0o600, 0, uid=33), io.BytesIO(b""))
    return path


@pytest.fixture(scope="module")
def images(engine: EngineProcess, tmp_path_factory: pytest.TempPathFactory) -> None:
    if os.geteuid() != 0:
        pytest.skip("running containers needs root")
    work = tmp_path_factory.mktemp("img")
    try:
        busybox = testimages.busybox_rootfs_tar(str(work / "busybox.tar"))
    except testimages.TestImageUnavailable as e:
        pytest.skip(str(e))
    run = docker_runner(engine.host, work / "cfg")
    changes = [a for change in IMPORT_CHANGES for a in ("-c", change)]
    run("import", *changes, busybox, IMAGE, check=True)
    run("import", *changes, "-c", "VOLUME /srv/content", _content_tar(busybox, str(work / "content.tar")),
        CONTENT_IMAGE, check=True)


def _remove_everything(engine: EngineProcess) -> None:
    for c in engine.request("GET", "/containers/json?all=1").json():
        engine.request("DELETE", f"/containers/{c['Id']}?force=1&v=1")
    for v in engine.request("GET", "/volumes").json()["Volumes"]:
        engine.request("DELETE", f"/volumes/{v['Name']}?force=1")


@pytest.fixture(autouse=True)
def _clean(engine: EngineProcess, images: None) -> Iterator[None]:
    yield
    _remove_everything(engine)
    left = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(engine.data_root) in line.split()[4]]
    assert not left, f"mounts left behind: {left}"


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def fails(result: subprocess.CompletedProcess, message: str, code: int = 1) -> None:
    assert result.returncode == code, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert message in result.stderr, result.stderr


def volume_names(docker: DockerRunner) -> list[str]:
    return ok(docker("volume", "ls", "-q")).split()


def inspect(docker: DockerRunner, name: str, template: str = "{{json .}}") -> object:
    return json.loads(ok(docker("inspect", "--format", template, name)))


# ---------------------------------------------------------------------------------------------- the verbs


def test_volume_verbs_print_as_docker(docker: DockerRunner, engine: EngineProcess) -> None:
    assert ok(docker("volume", "create", "myvol")) == "myvol\n"
    assert ok(docker("volume", "create", "--label", "team=db", "--label", "tier", "labelled")) == "labelled\n"
    assert ok(docker("volume", "ls")).splitlines() == ["DRIVER    VOLUME NAME", "local     labelled",
                                                      "local     myvol"]
    [doc] = json.loads(ok(docker("volume", "inspect", "myvol")))
    assert doc["Name"] == "myvol" and doc["Driver"] == "local" and doc["Scope"] == "local"
    assert doc["Mountpoint"] == str(engine.data_root / "volumes" / "myvol" / "_data")
    assert doc["Labels"] is None and doc["Options"] is None and doc["CreatedAt"].startswith("20")
    assert os.path.isdir(doc["Mountpoint"])
    assert inspect(docker, "labelled", "{{json .Labels}}") == {"team": "db", "tier": ""}
    assert ok(docker("volume", "ls", "-q", "--filter", "label=team=db")) == "labelled\n"
    assert ok(docker("volume", "ls", "-q", "--filter", "name=my")) == "myvol\n"
    assert ok(docker("volume", "ls", "-q", "--filter", "dangling=true")).split() == ["labelled", "myvol"]
    assert ok(docker("volume", "ls", "-q", "--filter", "driver=other")) == ""
    assert ok(docker("volume", "create", "myvol")) == "myvol\n"  # an existing name is returned as it is
    assert ok(docker("volume", "rm", "myvol", "labelled")) == "myvol\nlabelled\n"
    assert volume_names(docker) == []
    assert not os.path.exists(doc["Mountpoint"])


def test_volume_errors_are_dockers(docker: DockerRunner, engine: EngineProcess) -> None:
    fails(docker("volume", "inspect", "nothere"), "get nothere: no such volume")
    fails(docker("volume", "rm", "nothere"), "get nothere: no such volume")
    ok(docker("volume", "rm", "-f", "nothere"))
    fails(docker("volume", "create", "bad/name"), 'create bad/name: "bad/name" includes invalid characters for a '
          'local volume name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host directory, '
          "use absolute path")
    fails(docker("volume", "create", "-d", "nosuch", "x"),
          'create x: error looking up volume plugin nosuch: plugin "nosuch" not found')
    fails(docker("volume", "create", "-o", "type=tmpfs", "tv"), 'create tv: missing required option: "device"')
    fails(docker("volume", "create", "-o", "colour=blue", "cv"), 'create cv: invalid option: "colour"')
    assert engine.request("GET", "/volumes/nothere").status == 404
    assert engine.request("GET", "/volumes?filters=" + quote(json.dumps({"colour": ["x"]}))).status == 400
    assert engine.request("POST", "/volumes/create", json.dumps({"Name": "x", "Driver": "nosuch"})).status == 404
    assert volume_names(docker) == []
    assert engine.request("GET", "/_ping").status == 200


def test_docker_py_volumes(docker_client: object) -> None:
    client = docker_client
    volume = client.volumes.create("pyvol", labels={"a": "b"})  # type: ignore[attr-defined]
    assert volume.name == "pyvol" and volume.attrs["Labels"] == {"a": "b"}
    assert [v.name for v in client.volumes.list()] == ["pyvol"]  # type: ignore[attr-defined]
    out = client.containers.run(IMAGE, ["sh", "-c", "echo py > /data/f && cat /data/f"],  # type: ignore[attr-defined]
                                volumes={"pyvol": {"bind": "/data", "mode": "rw"}}, remove=True)
    assert out == b"py\n"
    assert client.volumes.get("pyvol").attrs["Mountpoint"].endswith("/volumes/pyvol/_data")  # type: ignore[attr-defined]
    client.volumes.get("pyvol").remove()  # type: ignore[attr-defined]
    assert client.volumes.list() == []  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- named volumes


def test_named_volume_written_then_read_and_kept(docker: DockerRunner, engine: EngineProcess) -> None:
    since = f"{time.time() - 1:.0f}"
    ok(docker("run", "--name", "writer", "-v", "data:/data", IMAGE, "sh", "-c", "echo x > /data/f"))
    assert ok(docker("run", "--rm", "-v", "data:/data", IMAGE, "cat", "/data/f")) == "x\n"
    ok(docker("rm", "-v", "writer"))  # -v removes anonymous volumes only
    assert volume_names(docker) == ["data"]
    assert ok(docker("run", "--rm", "-v", "data:/data:ro", IMAGE, "cat", "/data/f")) == "x\n"
    ok(docker("volume", "rm", "data"))
    events = ok(docker("events", "--since", since, "--until", f"{time.time() + 1:.0f}", "--filter", "type=volume",
                       "--format", "{{.Action}} {{.Actor.ID}} {{.Actor.Attributes.destination}}")).splitlines()
    assert [e for e in events if e.split()[1] == "data"] == [
        "create data <no value>", *["mount data /data", "unmount data <no value>"] * 3, "destroy data <no value>"]


def test_volume_data_survives_daemon_sigkill(docker: DockerRunner, engine: EngineProcess) -> None:
    ok(docker("run", "-d", "--name", "holder", "-v", "keep:/data", IMAGE, "sh", "-c",
              "echo before > /data/f; sleep 300"))
    os.kill(engine.pid, signal.SIGKILL)
    engine.process.wait()  # type: ignore[union-attr]
    engine.start()
    assert volume_names(docker) == ["keep"]
    fails(docker("volume", "rm", "keep"), "remove keep: volume is in use - [")
    assert ok(docker("exec", "holder", "cat", "/data/f")) == "before\n"
    ok(docker("rm", "-f", "holder"))
    assert ok(docker("run", "--rm", "-v", "keep:/data", IMAGE, "cat", "/data/f")) == "before\n"


def test_volume_in_use_is_refused_with_dockers_message(docker: DockerRunner) -> None:
    cid = ok(docker("create", "-v", "busy:/data", IMAGE, "true")).strip()  # never started: still a user
    result = docker("volume", "rm", "busy")
    fails(result, f"remove busy: volume is in use - [{cid}]")
    fails(docker("volume", "rm", "-f", "busy"), "volume is in use")
    assert ok(docker("volume", "ls", "-q", "--filter", "dangling=false")) == "busy\n"
    ok(docker("rm", cid))
    ok(docker("volume", "rm", "busy"))


# ---------------------------------------------------------------------------------------------- copy-up


def test_copy_up_into_a_new_named_volume(docker: DockerRunner, engine: EngineProcess) -> None:
    listing = ok(docker("run", "--rm", "-v", "fresh:/srv/content", CONTENT_IMAGE, "sh", "-c",
                        "cat /srv/content/link; ls -lnd /srv/content; ls -ln /srv/content /srv/content/sub"))
    assert listing.startswith("hello from the image\n")
    data = engine.data_root / "volumes" / "fresh" / "_data"
    root = os.stat(data)
    assert (root.st_uid, root.st_mode & 0o7777) == (1000, 0o750)  # the volume takes the directory's owner and mode
    hello = os.stat(data / "hello")
    assert (hello.st_uid, hello.st_gid, hello.st_mode & 0o7777) == (1000, 1000, 0o640)
    assert os.readlink(data / "link") == "hello"
    assert os.stat(data / "hard").st_ino == hello.st_ino and hello.st_nlink == 2
    assert (os.stat(data / "sub").st_uid, os.stat(data / "sub").st_mode & 0o777) == (33, 0o700)
    # Not empty any more: a new container sees what is there, not the image's content again.
    ok(docker("run", "--rm", "-v", "fresh:/srv/content", CONTENT_IMAGE, "rm", "/srv/content/hello"))
    assert "hello" not in ok(docker("run", "--rm", "-v", "fresh:/srv/content", CONTENT_IMAGE, "ls", "/srv/content"))


def test_no_copy_up_with_nocopy_or_into_a_volume_with_data(docker: DockerRunner) -> None:
    assert ok(docker("run", "--rm", "-v", "empty:/srv/content:nocopy", CONTENT_IMAGE, "ls", "-A", "/srv/content")) == ""
    ok(docker("run", "--rm", "-v", "used:/x", IMAGE, "touch", "/x/mine"))
    assert ok(docker("run", "--rm", "-v", "used:/srv/content", CONTENT_IMAGE, "ls", "/srv/content")) == "mine\n"
    out = ok(docker("run", "--rm", "--mount", "type=volume,src=nc,dst=/srv/content,volume-nocopy", CONTENT_IMAGE,
                    "ls", "-A", "/srv/content"))
    assert out == ""


# ---------------------------------------------------------------------------------------------- anonymous volumes


def test_anonymous_volume_from_image_removed_by_rm_v(docker: DockerRunner, engine: EngineProcess) -> None:
    ok(docker("run", "--name", "anon", CONTENT_IMAGE, "cat", "/srv/content/hello"))
    [mount] = inspect(docker, "anon", "{{json .Mounts}}")  # type: ignore[misc]
    name = mount["Name"]
    assert len(name) == 64 and mount["Destination"] == "/srv/content" and mount["Mode"] == ""
    assert inspect(docker, name, "{{json .Labels}}") == {"com.docker.volume.anonymous": ""}
    assert os.path.exists(os.path.join(mount["Source"], "hello"))  # copied up too
    ok(docker("rm", "anon"))
    assert volume_names(docker) == [name]  # rm without -v keeps it
    ok(docker("run", "--name", "anon2", "-v", "/scratch", IMAGE, "touch", "/scratch/x"))
    [second] = inspect(docker, "anon2", "{{json .Mounts}}")  # type: ignore[misc]
    ok(docker("rm", "-v", "anon2"))
    assert second["Name"] not in volume_names(docker)
    assert ok(docker("volume", "prune", "-f")).startswith(f"Deleted Volumes:\n{name}\n")
    assert volume_names(docker) == []


def test_run_rm_removes_anonymous_volumes_not_named_ones(docker: DockerRunner) -> None:
    ok(docker("run", "--rm", "-v", "/anon", "-v", "named:/named", CONTENT_IMAGE, "true"))
    assert volume_names(docker) == ["named"]


def test_prune_keeps_named_unless_all(docker: DockerRunner) -> None:
    ok(docker("volume", "create", "kept"))
    ok(docker("create", "-v", "/used", IMAGE, "true"))
    gone = ok(docker("run", "--rm", "-d", "-v", "/gone", IMAGE, "true")).strip()
    # --rm removes the container and its anonymous volume after the exit: wait for that, or prune races it
    deadline = time.monotonic() + 30
    while ok(docker("ps", "-aq", "--filter", f"id={gone}")).strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    out = ok(docker("volume", "prune", "-f"))
    assert out.strip().endswith("Total reclaimed space: 0B")
    assert "kept" in volume_names(docker) and len(volume_names(docker)) == 2  # named + the one in use
    assert "kept" in ok(docker("volume", "prune", "-af"))
    assert len(volume_names(docker)) == 1


# ---------------------------------------------------------------------------------------------- binds


def test_bind_mounts_read_only_and_read_write(docker: DockerRunner, tmp_path: Path) -> None:
    host = tmp_path / "shared"
    host.mkdir()
    (host / "in").write_text("from host\n")
    assert ok(docker("run", "--rm", "-v", f"{host}:/b", IMAGE, "sh", "-c", "cat /b/in; echo back > /b/out")) \
        == "from host\n"
    assert (host / "out").read_text() == "back\n"
    result = docker("run", "--rm", "-v", f"{host}:/b:ro", IMAGE, "touch", "/b/nope")
    assert result.returncode == 1 and "Read-only file system" in result.stderr
    assert ok(docker("run", "--rm", "-v", f"{host}:/b:ro,rprivate", IMAGE, "cat", "/b/in")) == "from host\n"
    assert ok(docker("run", "--rm", "--mount", f"type=bind,src={host},dst=/b,bind-propagation=rslave", IMAGE,
                     "cat", "/b/in")) == "from host\n"
    result = docker("run", "--rm", "--mount", f"type=bind,src={host},dst=/b,readonly", IMAGE, "touch", "/b/nope")
    assert "Read-only file system" in result.stderr
    missing = tmp_path / "made" / "by-docker"
    ok(docker("run", "--rm", "-v", f"{missing}:/m", IMAGE, "true"))  # -v makes a missing source, as dockerd
    assert missing.is_dir()


def test_bind_of_a_file_and_read_only_rootfs(docker: DockerRunner, tmp_path: Path) -> None:
    config = tmp_path / "app.conf"
    config.write_text("setting=1\n")
    out = ok(docker("run", "--rm", "--read-only", "-v", f"{config}:/etc/app.conf:ro", "-v", "rw:/data", IMAGE,
                    "sh", "-c", "cat /etc/app.conf; echo ok > /data/f && cat /data/f; touch /x 2>&1 || true"))
    assert out.startswith("setting=1\nok\n") and "Read-only file system" in out


# ---------------------------------------------------------------------------------------------- tmpfs, --mount


def test_tmpfs_flag_and_mount(docker: DockerRunner) -> None:
    out = ok(docker("run", "--rm", "--tmpfs", "/run:size=1m", IMAGE, "sh", "-c",
                    "df -k /run | tail -1; grep ' /run ' /proc/mounts"))
    size_line, mount_line = out.splitlines()
    assert size_line.split()[1] == "1024"
    assert mount_line.startswith("tmpfs /run tmpfs") and "nosuid" in mount_line and "noexec" in mount_line
    out = ok(docker("run", "--rm", "--mount", "type=tmpfs,dst=/scratch,tmpfs-size=2097152,tmpfs-mode=1770", IMAGE,
                    "sh", "-c", "df -k /scratch | tail -1; stat -c %a /scratch"))
    assert out.split()[1] == "2048" and out.split()[-1] == "1770"


def test_mount_flag_volume_with_labels(docker: DockerRunner) -> None:
    ok(docker("run", "--rm", "--mount", "type=volume,src=mv,dst=/v,volume-label=owner=me", IMAGE,
              "sh", "-c", "echo hi > /v/f"))
    assert inspect(docker, "mv", "{{json .Labels}}") == {"owner": "me"}
    assert ok(docker("run", "--rm", "--mount", "source=mv,target=/v,readonly", IMAGE, "cat", "/v/f")) == "hi\n"


# ---------------------------------------------------------------------------------------------- --volumes-from


def test_volumes_from(docker: DockerRunner, engine: EngineProcess, tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    ok(docker("create", "--name", "store", "-v", "vf:/data", "-v", "/anon", "-v", f"{tmp_path / 'b'}:/bind",
              IMAGE, "true"))
    ok(docker("run", "--rm", "--volumes-from", "store", IMAGE, "sh", "-c", "echo 1 > /data/f; echo 2 > /anon/g"))
    out = ok(docker("run", "--rm", "--volumes-from", "store:ro", IMAGE, "sh", "-c",
                    "cat /data/f /anon/g; touch /data/x 2>&1 || true; ls /bind"))
    assert out.startswith("1\n2\n") and "Read-only file system" in out
    # (through the API: on a 404 the CLI would go and pull the image, as it does against dockerd)
    r = engine.request("POST", "/containers/create", json.dumps({"Image": IMAGE, "HostConfig": {
        "VolumesFrom": ["nosuch"]}}), {"Content-Type": "application/json"})
    assert (r.status, r.json()["message"]) == (404, "No such container: nosuch")
    ok(docker("rm", "-v", "store"))
    assert volume_names(docker) == ["vf"]


# ---------------------------------------------------------------------------------------------- local driver options


def test_local_driver_tmpfs_volume_mounted_while_used(docker: DockerRunner, engine: EngineProcess) -> None:
    ok(docker("volume", "create", "-o", "type=tmpfs", "-o", "device=tmpfs", "-o", "o=size=2m", "tv"))
    assert inspect(docker, "tv", "{{json .Options}}") == {"device": "tmpfs", "o": "size=2m", "type": "tmpfs"}
    mountpoint = inspect(docker, "tv", "{{json .Mountpoint}}")
    assert not os.path.ismount(mountpoint)  # type: ignore[arg-type]
    ok(docker("run", "-d", "--name", "t1", "-v", "tv:/t", IMAGE, "sleep", "300"))
    assert os.path.ismount(mountpoint)  # type: ignore[arg-type]
    assert ok(docker("exec", "t1", "sh", "-c", "df -k /t | tail -1")).split()[1] == "2048"
    ok(docker("run", "--rm", "-v", "tv:/t", IMAGE, "sh", "-c", "echo shared > /t/f"))
    assert os.path.ismount(mountpoint)  # type: ignore[arg-type]  # t1 still uses it
    assert ok(docker("exec", "t1", "cat", "/t/f")) == "shared\n"
    ok(docker("stop", "-t", "0", "t1"))
    assert not os.path.ismount(mountpoint)  # type: ignore[arg-type]  # the last user stopped


def test_local_driver_bind_volume(docker: DockerRunner, tmp_path: Path) -> None:
    device = tmp_path / "device"
    device.mkdir()
    ok(docker("volume", "create", "--driver", "local", "-o", "type=none", "-o", "o=bind", "-o", f"device={device}",
              "bv"))
    ok(docker("run", "--rm", "-v", "bv:/b", IMAGE, "sh", "-c", "echo through > /b/f"))
    assert (device / "f").read_text() == "through\n"
    ok(docker("volume", "rm", "bv"))
    assert (device / "f").exists()  # removing the volume never deletes its device's data


# ---------------------------------------------------------------------------------------------- inspect and df


def test_inspect_mounts_as_docker_fills_them(docker: DockerRunner, engine: EngineProcess, tmp_path: Path) -> None:
    ok(docker("create", "--name", "mm", "-v", "named:/named", "-v", f"{tmp_path}:/host:ro", "-v", "/anon",
              "--mount", "type=tmpfs,dst=/tmp/t", "--tmpfs", "/run", IMAGE, "true"))
    mounts = {m["Destination"]: m for m in inspect(docker, "mm", "{{json .Mounts}}")}  # type: ignore[union-attr]
    volumes = engine.data_root / "volumes"
    assert mounts["/named"] == {"Type": "volume", "Name": "named", "Source": str(volumes / "named" / "_data"),
                                "Destination": "/named", "Driver": "local", "Mode": "z", "RW": True,
                                "Propagation": ""}
    assert mounts["/host"] == {"Type": "bind", "Source": str(tmp_path), "Destination": "/host", "Mode": "ro",
                               "RW": False, "Propagation": "rprivate"}
    anon = mounts["/anon"]
    assert anon["Type"] == "volume" and anon["Mode"] == "" and anon["Driver"] == "local" and anon["RW"]
    assert mounts["/tmp/t"] == {"Type": "tmpfs", "Source": "", "Destination": "/tmp/t", "Mode": "", "RW": True,
                                "Propagation": ""}
    assert "/run" not in mounts  # --tmpfs is HostConfig.Tmpfs, not a mount point (as dockerd shows it)
    assert ok(docker("ps", "-a", "-q", "--filter", "volume=named")).strip() == \
        inspect(docker, "mm", "{{json .Id}}")[:12]  # type: ignore[index]


def test_system_df_counts_volumes(docker: DockerRunner) -> None:
    ok(docker("run", "--name", "ww", "-v", "sized:/d", IMAGE, "sh", "-c", "head -c 4096 /dev/zero > /d/z"))
    ok(docker("volume", "create", "idle"))
    out = ok(docker("system", "df", "-v", "--format", "{{json .Volumes}}"))
    by_name = {v["Name"]: v for v in json.loads(out)}
    assert by_name["sized"]["Links"] == "1" and by_name["idle"]["Links"] == "0"
    assert by_name["sized"]["Size"] == "4.096kB"


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_mounts_are_refused_with_dockers_messages(docker: DockerRunner, engine: EngineProcess,
                                                        tmp_path: Path) -> None:
    fails(docker("run", "--rm", "--mount", "type=bind,src=/nonexistent-skiff-x,dst=/x", IMAGE, "true"),
          'invalid mount config for type "bind": bind source path does not exist: /nonexistent-skiff-x', 125)
    fails(docker("run", "--rm", "-v", "va:/data", "--mount", "src=vb,dst=/data", IMAGE, "true"),
          "Duplicate mount point: /data", 125)
    fails(docker("run", "--rm", "-v", f"{tmp_path}:/d", "--tmpfs", "/d", IMAGE, "true"), "Duplicate mount point: /d",
          125)
    fails(docker("run", "--rm", "-v", f"{tmp_path}:/b:bogus", IMAGE, "true"), "invalid mode: bogus", 125)
    fails(docker("run", "--rm", "-v", "bad/name:/x", IMAGE, "true"), "includes invalid characters for a local "
          "volume name", 125)

    def create(host_config: dict) -> tuple[int, str]:
        r = engine.request("POST", "/containers/create", json.dumps({"Image": IMAGE, "HostConfig": host_config}),
                           {"Content-Type": "application/json"})
        return r.status, r.json().get("message", "")

    assert create({"Binds": ["va:/data", "vb:/data"]}) == (400, "Duplicate mount point: /data")
    assert create({"Binds": ["/a:/b:c:d"]}) == (400, "invalid volume specification: '/a:/b:c:d'")
    assert create({"Binds": ["/a:rw"]}) == (400, "invalid volume specification: '/a:rw'")
    assert create({"Mounts": [{"Type": "bind", "Source": "relative/dir", "Target": "/x"}]}) == (
        400, "invalid mount config for type \"bind\": invalid mount path: 'relative/dir' mount path must be absolute")
    assert create({"Mounts": [{"Type": "volume", "Target": "/x", "ReadOnly": True}]}) == (
        400, 'invalid mount config for type "volume": must not set ReadOnly mode when using anonymous volumes')
    assert create({"Mounts": [{"Type": "tmpfs", "Target": "/"}]}) == (
        400, "invalid mount config for type \"tmpfs\": invalid specification: destination can't be '/'")
    assert create({"Mounts": [{"Type": "nfs", "Target": "/x"}]}) == (
        400, 'invalid mount config for type "nfs": mount type unknown')
    assert create({"Binds": ["v:/x"], "VolumeDriver": "nosuch"}) == (
        404, 'create v: error looking up volume plugin nosuch: plugin "nosuch" not found')
    assert create({"Tmpfs": {"/t": "size=1m,bogus"}}) == (400, 'invalid tmpfs option ["bogus"]')
    assert create({"VolumesFrom": ["x:rshared"]}) == (400, "invalid mode: rshared")
    # Nothing half-made: no container, no volume (a and b above were created by the failing runs? no: refused)
    assert engine.request("GET", "/containers/json?all=1").json() == []
    assert [v["Name"] for v in engine.request("GET", "/volumes").json()["Volumes"]] == []


# ---------------------------------------------------------------------------------------------- the skiff CLI


def test_skiff_volume_verbs_match_docker(docker: DockerRunner, engine: EngineProcess, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, DOCKER_CONFIG=str(tmp_path / "cfg"), PYTHONPATH=str(repo))

    def skiff(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "skiff.cli.main", "-H", engine.host, *args], capture_output=True,
                              text=True, timeout=60, env=env, cwd=repo, stdin=subprocess.DEVNULL)

    assert ok(skiff("volume", "create", "--label", "k=v", "-o", "type=tmpfs", "-o", "device=tmpfs", "sv")) == "sv\n"
    assert ok(skiff("volume", "ls")) == ok(docker("volume", "ls"))
    assert json.loads(ok(skiff("volume", "inspect", "sv"))) == json.loads(ok(docker("volume", "inspect", "sv")))
    assert ok(skiff("volume", "ls", "-q", "--filter", "label=k")) == "sv\n"
    out = ok(skiff("run", "--rm", "-v", "sv:/t", "-v", "/anon", "--tmpfs", "/run:size=1m", "--mount",
                   f"type=bind,src={tmp_path},dst=/host,readonly", IMAGE, "sh", "-c",
                   "df -k /run | tail -1; touch /host/x 2>&1; echo ok > /t/f && cat /t/f"))
    assert out.split()[1] == "1024" and "Read-only file system" in out and out.endswith("ok\n")
    ok(skiff("create", "--name", "src", "-v", "vf:/data", IMAGE, "true"))
    assert ok(skiff("run", "--rm", "--volumes-from", "src:ro", IMAGE, "sh", "-c", "touch /data/x 2>&1 || true")) \
        .strip().endswith("Read-only file system")
    fails(skiff("volume", "rm", "vf"), "remove vf: volume is in use - [")
    ok(skiff("rm", "-v", "src"))
    assert ok(skiff("volume", "prune", "-f")) == "Total reclaimed space: 0B\n"
    assert "sv" in ok(skiff("volume", "prune", "-a", "-f"))
    assert ok(skiff("volume", "rm", "-f", "nothere")) == "nothere\n"
    assert volume_names(docker) == []
