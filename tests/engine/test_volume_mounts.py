"""The mount planner's parsing and OCI output, and the volume service's own rules, without a daemon.

The messages are dockerd's (moby's volume/mounts parser and local driver); the docker CLI prints them as they are.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from skiff import errors
from skiff.engine import mounts
from skiff.engine.volumes import ANONYMOUS_LABEL, VolumeService, created_at, is_mounted


def test_binds_in_every_form() -> None:
    named = mounts.parse_bind("data:/data")
    assert (named["Type"], named["Name"], named["Destination"], named["RW"], named["Mode"]) == (
        "volume", "data", "/data", True, "")
    bind = mounts.parse_bind("/srv/x:/x/:ro,rslave")
    assert (bind["Type"], bind["Source"], bind["Destination"], bind["RW"], bind["Propagation"], bind["Mode"]) == (
        "bind", "/srv/x", "/x", False, "rslave", "ro,rslave")
    assert bind["CreateSource"]
    assert mounts.parse_bind("/srv/x:/x")["Propagation"] == "rprivate"
    anonymous = mounts.parse_bind("/only")
    assert (anonymous["Type"], anonymous["Name"], anonymous["Destination"]) == ("volume", "", "/only")
    assert mounts.parse_bind("cache:/c:nocopy")["CopyData"] is False
    assert mounts.parse_bind("v:/v:z,rw")["RW"] is True
    assert mounts.parse_bind("v:/v", "mydriver")["Driver"] == "mydriver"


@pytest.mark.parametrize(("raw", "message"), [
    ("/a:/b:c:d", "invalid volume specification: '/a:/b:c:d'"),
    (":/b", "invalid volume specification: ':/b'"),
    ("/a:rw", "invalid volume specification: '/a:rw'"),
    ("/a:/b:bogus", "invalid mode: bogus"),
    ("/a:/b:ro,rw", "invalid mode: ro,rw"),
    ("/a:/b:shared,slave", "invalid mode: shared,slave"),
    ("/a:relative", "invalid volume specification: '/a:relative': invalid mount config for type \"bind\": invalid "
                    "mount path: 'relative' mount path must be absolute"),
    ("/a:/", "invalid volume specification: '/a:/': invalid mount config for type \"bind\": invalid specification: "
             "destination can't be '/'"),
])
def test_bad_binds(raw: str, message: str) -> None:
    with pytest.raises(errors.InvalidArgument) as e:
        mounts.parse_bind(raw)
    assert str(e.value) == message


@pytest.mark.parametrize(("mount", "message"), [
    ({"Type": "bind", "Source": "/nonexistent-skiff", "Target": "/x"},
     'invalid mount config for type "bind": bind source path does not exist: /nonexistent-skiff'),
    ({"Type": "bind", "Target": "/x"}, 'invalid mount config for type "bind": field Source must not be empty'),
    ({"Type": "bind", "Source": "/", "Target": "/x", "BindOptions": {"Propagation": "sideways"}},
     'invalid mount config for type "bind": invalid propagation mode: sideways'),
    ({"Type": "bind", "Source": "/", "Target": "/x", "VolumeOptions": {}},
     'invalid mount config for type "bind": field VolumeOptions must not be specified'),
    ({"Type": "volume", "Target": ""}, 'invalid mount config for type "volume": field Target must not be empty'),
    ({"Type": "volume", "Target": "/x", "TmpfsOptions": {}},
     'invalid mount config for type "volume": field TmpfsOptions must not be specified'),
    ({"Type": "tmpfs", "Source": "x", "Target": "/x"},
     'invalid mount config for type "tmpfs": field Source must not be specified'),
    ({"Type": "npipe", "Target": "/x"}, 'invalid mount config for type "npipe": mount type unknown'),
])
def test_bad_mounts(mount: dict, message: str) -> None:
    with pytest.raises(errors.InvalidArgument) as e:
        mounts.parse_mount(mount)
    assert str(e.value) == message


def test_mounts_that_are_fine() -> None:
    created = mounts.parse_mount({"Type": "bind", "Source": "/nonexistent-skiff", "Target": "/x",
                                  "BindOptions": {"CreateMountpoint": True}})
    assert created["CreateSource"] and created["Propagation"] == "rprivate"
    volume = mounts.parse_mount({"Type": "volume", "Source": "v", "Target": "/v", "ReadOnly": True,
                                 "VolumeOptions": {"NoCopy": True, "DriverConfig": {"Name": "local"}}})
    assert (volume["RW"], volume["CopyData"], volume["Driver"]) == (False, False, "local")
    tmpfs = mounts.parse_mount({"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 3 << 20,
                                                                                 "Mode": 0o1777}})
    assert tmpfs["TmpfsData"] == "mode=1777,size=3m"


def test_tmpfs_options() -> None:
    assert mounts.tmpfs_data({"SizeBytes": 1 << 30}, True) == "ro,size=1g"
    assert mounts.tmpfs_data({"SizeBytes": 1000}, False) == "size=1000"
    assert mounts.merge_tmpfs_options(["noexec", "nosuid", "nodev", "rprivate", "exec", "size=1m", "size=2m"]) == [
        "nosuid", "nodev", "rprivate", "exec", "size=2m"]
    with pytest.raises(errors.InvalidArgument, match=r'invalid tmpfs option \["bogus"\]'):
        mounts.merge_tmpfs_options(["bogus"])


def test_volumes_from_modes() -> None:
    assert mounts.parse_volumes_from("c") == ("c", "rw")
    assert mounts.parse_volumes_from("c:ro") == ("c", "ro")
    for bad in ("c:rshared", "c:nocopy", "c:bogus"):
        with pytest.raises(errors.InvalidArgument, match="invalid mode"):
            mounts.parse_volumes_from(bad)
    with pytest.raises(errors.InvalidArgument, match="cannot be an empty string"):
        mounts.parse_volumes_from("")


def test_oci_mounts_parents_first_with_dockers_options() -> None:
    records = [mounts.parse_bind("/h/deep:/a/b/c"), mounts.parse_bind("/h/top:/a:ro"),
               {**mounts.parse_bind("v:/a/b"), "Source": "/vol/_data"}]
    oci = mounts.oci_mounts(records, {"/a/b/t": "size=1m"})
    assert [m["destination"] for m in oci] == ["/a", "/a/b", "/a/b/c", "/a/b/t"]
    assert oci[0]["options"] == ["rbind", "ro", "rprivate"]
    assert oci[1] == {"destination": "/a/b", "type": "bind", "source": "/vol/_data", "options": ["rbind"]}
    assert oci[3]["options"] == ["noexec", "nosuid", "nodev", "rprivate", "size=1m"]
    assert mounts.root_propagation(mounts.oci_mounts([mounts.parse_bind("/h:/x:rshared")])) == "shared"
    assert mounts.root_propagation(oci) is None


# ---------------------------------------------------------------------------------------------- the service


class _Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def publish(self, kind: str, action: str, actor: str, attributes: dict | None = None) -> None:
        self.seen.append((kind, action, actor))


def _service(root: Path, containers: list | None = None) -> VolumeService:
    holder = SimpleNamespace(all=lambda: containers or [])
    engine = SimpleNamespace(config=SimpleNamespace(data_root=root), events=_Events(), containers=holder)
    service = VolumeService(engine)
    service.start()
    return service


def test_service_keeps_volumes_across_restarts(tmp_path: Path) -> None:
    service = _service(tmp_path)
    service.create("keep", labels={"a": "b"})
    anonymous = service.create(None, labels={ANONYMOUS_LABEL: ""})
    assert len(anonymous.name) == 64 and anonymous.anonymous
    again = _service(tmp_path)
    assert [v.name for v in again.list()] == sorted(["keep", anonymous.name])
    assert again.get("keep").labels == {"a": "b"}
    assert again.get("keep").doc()["CreatedAt"] == created_at(service.get("keep").created)


def test_service_references_come_from_container_records(tmp_path: Path) -> None:
    user = SimpleNamespace(id="c" * 64, state=SimpleNamespace(running=False),
                           mounts=[{"Type": "volume", "Name": "used", "Destination": "/u"}])
    service = _service(tmp_path, [user])
    service.create("used")
    service.create("free")
    with pytest.raises(errors.Conflict, match=f"remove used: volume is in use - \\[{'c' * 64}\\]"):
        service.remove("used")
    assert [v.name for v in service.list({"dangling": ["true"]})] == ["free"]
    service.claim("free", "d" * 64)
    with pytest.raises(errors.Conflict):
        service.remove("free")
    service.settle("d" * 64)
    service.remove("free")
    assert service.usage(service.get("used"))["RefCount"] == 1


def test_service_prune_only_anonymous_unless_all(tmp_path: Path) -> None:
    service = _service(tmp_path)
    service.create("named")
    anonymous = service.create(None, labels={ANONYMOUS_LABEL: ""})
    Path(anonymous.mountpoint, "f").write_bytes(b"x" * 10)
    assert service.prune() == ([anonymous.name], 10)
    assert service.prune({"all": ["true"], "label!": ["keep"]}) == (["named"], 0)
    with pytest.raises(errors.InvalidArgument, match="invalid filter 'colour'"):
        service.prune({"colour": ["x"]})


def test_service_refuses_to_delete_through_a_bind(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    device = tmp_path / "device"
    device.mkdir()
    (device / "precious").write_text("keep me")
    service = _service(tmp_path / "root")
    volume = service.create("bound", driver_opts={"type": "none", "o": "bind", "device": str(device)})
    assert service.mount("bound", "c1") == volume.mountpoint
    try:
        assert is_mounted(volume.mountpoint)  # a bind within one filesystem: os.path.ismount would say no
        service.release(["bound"], "c1")
        assert not is_mounted(volume.mountpoint)
        service.mount("bound", "c1")
        service.remove("bound")  # unmounted first, then the directory goes
        assert not is_mounted(volume.mountpoint) and (device / "precious").read_text() == "keep me"
    finally:
        if is_mounted(volume.mountpoint):
            subprocess.run(["umount", volume.mountpoint], check=False)
