"""Docker's create body + image config -> OCI spec: the rules dockerd applies, checked one by one."""

from __future__ import annotations

import pytest

from skiff.engine import ocispec
from skiff.engine.ocispec import BundlePaths, SpecOptions
from skiff.errors import InvalidArgument

CID = "0123456789abcdef" * 4
PATHS = BundlePaths("/r/rootfs", "/r/hostname", "/r/hosts", "/r/resolv.conf")
IMAGE = {"Env": ["PATH=/usr/bin:/bin", "LANG=C"], "Cmd": ["sh"], "Entrypoint": None, "WorkingDir": "/srv",
         "Labels": {"from": "image", "both": "image"}, "StopSignal": "SIGQUIT"}


def spec(config: dict | None = None, host_config: dict | None = None, image: dict | None = None,
         options: SpecOptions | None = None) -> dict:
    merged = ocispec.merge_image_config({"Image": "x", **(config or {})}, IMAGE if image is None else image)
    hc = ocispec.adapt_host_config(host_config)
    ocispec.validate_host_config(hc)
    return ocispec.build_spec(CID, merged, hc, PATHS, options or SpecOptions())


# ---- entrypoint and cmd


@pytest.mark.parametrize(("image", "config", "argv"), [
    ({"Cmd": ["sh"]}, {}, ["sh"]),
    ({"Cmd": ["sh"]}, {"Cmd": ["echo", "hi"]}, ["echo", "hi"]),
    ({"Entrypoint": ["/ep"], "Cmd": ["--x"]}, {}, ["/ep", "--x"]),
    ({"Entrypoint": ["/ep"], "Cmd": ["--x"]}, {"Cmd": ["--y"]}, ["/ep", "--y"]),
    # an explicit entrypoint drops the image's Cmd
    ({"Entrypoint": ["/ep"], "Cmd": ["--x"]}, {"Entrypoint": ["/other"]}, ["/other"]),
    ({"Cmd": ["sh"]}, {"Entrypoint": ["env"], "Cmd": ["-i"]}, ["env", "-i"]),
    # --entrypoint "" resets the image's entrypoint; the user's Cmd runs alone
    ({"Entrypoint": ["/ep"], "Cmd": ["--x"]}, {"Entrypoint": [""], "Cmd": ["ls"]}, ["ls"]),
])
def test_entrypoint_and_cmd_follow_docker(image: dict, config: dict, argv: list[str]) -> None:
    assert spec(config, image=image)["process"]["args"] == argv


def test_no_command_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="No command specified"):
        ocispec.merge_image_config({"Image": "x"}, {})
    with pytest.raises(InvalidArgument, match="No command specified"):
        ocispec.merge_image_config({"Entrypoint": [""]}, {"Entrypoint": ["/ep"]})


def test_path_and_args() -> None:
    assert ocispec.entrypoint_and_args({"Entrypoint": ["a", "b"], "Cmd": ["c"]}) == ("a", ["b", "c"])
    assert ocispec.entrypoint_and_args({"Cmd": ["c", "d"]}) == ("c", ["d"])


# ---- environment, user, cwd, hostname


def test_env_order_and_overrides() -> None:
    s = spec({"Env": ["LANG=de", "A=1"], "Hostname": "h1", "Tty": True})
    # PATH from the image replaces the default in place; HOSTNAME and TERM are dockerd's.
    assert s["process"]["env"] == ["PATH=/usr/bin:/bin", "HOSTNAME=h1", "TERM=xterm", "LANG=de", "A=1"]
    assert s["process"]["terminal"] is True


def test_default_path_without_image_env() -> None:
    env = spec({"Cmd": ["true"]}, image={})["process"]["env"]
    assert env[0] == f"PATH={ocispec.DEFAULT_PATH}"
    assert "TERM=xterm" not in env


def test_bare_env_name_removes_it() -> None:
    assert ocispec.replace_or_append_env(["A=1", "B=2"], ["A", "C=3"]) == ["B=2", "C=3"]


def test_labels_merge_user_wins() -> None:
    merged = ocispec.merge_image_config({"Cmd": ["x"], "Labels": {"both": "user"}}, IMAGE)
    assert merged["Labels"] == {"from": "image", "both": "user"}
    assert merged["StopSignal"] == "SIGQUIT"
    assert ocispec.stop_signal(merged) == 3


IMAGE_HEALTH = {"Test": ["CMD-SHELL", "check"], "Interval": 30_000_000_000, "Retries": 3}


@pytest.mark.parametrize(("user", "expected"), [
    (None, IMAGE_HEALTH),  # the image's applies
    ({"Retries": 5}, {**IMAGE_HEALTH, "Retries": 5}),  # --health-retries alone keeps the image's test
    ({"Test": ["CMD", "other"], "Interval": 0}, {**IMAGE_HEALTH, "Test": ["CMD", "other"]}),
    ({"Test": ["NONE"]}, {**IMAGE_HEALTH, "Test": ["NONE"]}),  # --no-healthcheck wins
])
def test_healthcheck_fields_fill_in_from_the_image(user: dict | None, expected: dict) -> None:
    config = {"Cmd": ["x"], **({"Healthcheck": user} if user is not None else {})}
    assert ocispec.merge_image_config(config, {**IMAGE, "Healthcheck": IMAGE_HEALTH})["Healthcheck"] == expected


@pytest.mark.parametrize(("user", "expected"), [
    ("", {"uid": 0, "gid": 0}),
    ("1000", {"uid": 1000, "gid": 0, "username": "1000"}),
    ("1000:50", {"uid": 1000, "gid": 50}),
    ("nobody", {"uid": 0, "gid": 0, "username": "nobody"}),
    ("app:staff", {"uid": 0, "gid": 0, "username": "app:staff"}),
])
def test_user(user: str, expected: dict) -> None:
    assert ocispec.parse_user(user) == expected


def test_workdir_hostname_root() -> None:
    s = spec({"WorkingDir": "/work"}, {"ReadonlyRootfs": True})
    assert s["process"]["cwd"] == "/work"
    assert s["hostname"] == CID[:12]
    assert s["root"] == {"path": "/r/rootfs", "readonly": True}
    assert spec()["process"]["cwd"] == "/srv"  # the image's


# ---- capabilities and privileges


def test_default_capabilities_are_dockers_fourteen() -> None:
    caps = spec()["process"]["capabilities"]
    assert len(caps["bounding"]) == 14
    assert set(caps["bounding"]) == set(ocispec.DEFAULT_CAPABILITIES)
    assert caps["bounding"] == caps["effective"] == caps["permitted"]
    assert "CAP_SYS_ADMIN" not in caps["bounding"]


def test_cap_add_and_drop() -> None:
    caps = spec(host_config={"CapAdd": ["sys_admin"], "CapDrop": ["NET_RAW", "CAP_MKNOD"]})["process"]["capabilities"]
    assert "CAP_SYS_ADMIN" in caps["bounding"]
    assert "CAP_NET_RAW" not in caps["bounding"] and "CAP_MKNOD" not in caps["bounding"]


def test_cap_drop_all_keeps_only_adds() -> None:
    assert ocispec.capabilities(["CHOWN"], ["ALL"], False) == ["CAP_CHOWN"]
    assert ocispec.capabilities([], ["ALL"], False) == []


def test_cap_add_all_minus_drops() -> None:
    caps = ocispec.capabilities(["ALL"], ["SYS_ADMIN"], False)
    assert "CAP_SYS_ADMIN" not in caps and "CAP_NET_ADMIN" in caps and "CAP_SYS_MODULE" in caps


def test_unknown_capability_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="unknown capability"):
        ocispec.validate_host_config(ocispec.adapt_host_config({"CapAdd": ["NOPE"]}))


def test_default_confinement() -> None:
    s = spec()
    assert "/proc/kcore" in s["linux"]["maskedPaths"]
    assert "/proc/sys" in s["linux"]["readonlyPaths"]
    assert s["process"]["noNewPrivileges"] is False
    denied = s["linux"]["seccomp"]["syscalls"][0]["names"]
    assert {"mount", "unshare", "keyctl", "reboot"} <= set(denied)
    assert s["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


def test_seccomp_lifts_what_capabilities_grant() -> None:
    denied = ocispec.seccomp_profile([*ocispec.DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"])["syscalls"][0]["names"]
    assert "mount" not in denied and "keyctl" in denied


def test_privileged() -> None:
    s = spec(host_config={"Privileged": True})
    assert "CAP_SYS_ADMIN" in s["process"]["capabilities"]["bounding"]
    assert s["linux"]["maskedPaths"] == [] and s["linux"]["readonlyPaths"] == []
    assert "seccomp" not in s["linux"]
    assert s["linux"]["resources"]["devices"][0] == {"allow": True, "access": "rwm"}
    assert any(d["path"] == "/dev/null" for d in s["linux"].get("devices", []))
    sys_mount = next(m for m in s["mounts"] if m["destination"] == "/sys")
    assert "ro" not in sys_mount["options"]


def test_security_opts() -> None:
    s = spec(host_config={"SecurityOpt": ["no-new-privileges", "seccomp=unconfined"]})
    assert s["process"]["noNewPrivileges"] is True
    assert "seccomp" not in s["linux"]
    assert spec(host_config={"SecurityOpt": ["no-new-privileges:true"]})["process"]["noNewPrivileges"] is True


# ---- resources


def test_resources() -> None:
    res = spec(host_config={"Memory": 64 << 20, "NanoCpus": 1_500_000_000, "CpuShares": 512, "PidsLimit": 20,
                            "CpusetCpus": "0", "BlkioWeight": 300})["linux"]["resources"]
    assert res["memory"] == {"limit": 64 << 20, "swap": 128 << 20}  # dockerd's default swap: 2x memory
    assert res["cpu"] == {"period": 100_000, "quota": 150_000, "shares": 512, "cpus": "0"}
    assert res["pids"] == {"limit": 20}
    assert res["blockIO"] == {"weight": 300}


def test_cpu_quota_and_period() -> None:
    res = spec(host_config={"CpuQuota": 50_000, "CpuPeriod": 200_000})["linux"]["resources"]
    assert res["cpu"] == {"quota": 50_000, "period": 200_000}


def test_unlimited_pids_and_no_limits() -> None:
    res = spec(host_config={"PidsLimit": -1})["linux"]["resources"]
    assert "pids" not in res and "memory" not in res and "cpu" not in res


@pytest.mark.parametrize(("host_config", "message"), [
    ({"Memory": 1 << 20}, "Minimum memory limit allowed is 6MB"),
    ({"Memory": 64 << 20, "MemorySwap": 32 << 20}, "Minimum memoryswap limit"),
    ({"NanoCpus": 1_000_000_000, "CpuQuota": 1000}, "Conflicting options"),
    ({"NanoCpus": 10**15}, "Range of CPUs"),
    ({"RestartPolicy": {"Name": "sometimes"}}, "invalid restart policy"),
    ({"RestartPolicy": {"Name": "always"}, "AutoRemove": True}, "AutoRemove"),
])
def test_host_config_refusals(host_config: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        ocispec.validate_host_config(ocispec.adapt_host_config(host_config))


def test_ulimits_sysctls_oom_score() -> None:
    s = spec(host_config={"Ulimits": [{"Name": "nofile", "Soft": 100, "Hard": 200}],
                          "Sysctls": {"net.ipv4.ip_forward": "1"}, "OomScoreAdj": 500})
    assert s["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}]
    assert s["linux"]["sysctl"] == {"net.ipv4.ip_forward": "1"}
    assert s["process"]["oomScoreAdj"] == 500


# ---- namespaces and mounts


def _ns(s: dict) -> set[str]:
    return {n["type"] for n in s["linux"]["namespaces"]}


def test_namespaces() -> None:
    assert _ns(spec(host_config={"NetworkMode": "none"})) >= {"mount", "pid", "ipc", "uts", "network"}
    assert "network" not in _ns(spec(host_config={"NetworkMode": "host"}))
    assert "pid" not in _ns(spec(host_config={"PidMode": "host"}))
    assert "cgroup" in _ns(spec(host_config={"CgroupnsMode": "private"}))


def test_cgroups_path() -> None:
    assert spec()["linux"]["cgroupsPath"] == f"/skiff/{CID}"
    assert spec(options=SpecOptions(cgroup_parent="/t/"))["linux"]["cgroupsPath"] == f"/t/{CID}"


def test_mounts_shm_etc_files_and_init() -> None:
    s = spec(host_config={"ShmSize": 128 << 20, "Init": True, "Tmpfs": {"/run": "size=1m"},
                          "Binds": ["/srv/data:/data:ro"]},
             options=SpecOptions(init_binary="/usr/bin/tini-static"))
    by_dest = {m["destination"]: m for m in s["mounts"]}
    assert f"size={128 << 20}" in by_dest["/dev/shm"]["options"]
    assert by_dest["/etc/hosts"]["source"] == "/r/hosts"
    assert by_dest["/etc/resolv.conf"]["source"] == "/r/resolv.conf"
    assert by_dest["/etc/hostname"]["source"] == "/r/hostname"
    assert by_dest[ocispec.INIT_PATH]["source"] == "/usr/bin/tini-static"
    assert s["process"]["args"] == [ocispec.INIT_PATH, "--", "sh"]
    assert "size=1m" in by_dest["/run"]["options"]
    assert by_dest["/data"]["source"] == "/srv/data" and "ro" in by_dest["/data"]["options"]
    default_shm = {m["destination"]: m for m in spec()["mounts"]}["/dev/shm"]
    assert f"size={64 << 20}" in default_shm["options"]


def test_hosts_and_resolv_conf() -> None:
    hosts = ocispec.hosts_file("abc", None, ["db:10.0.0.2"])
    assert "127.0.0.1\tlocalhost" in hosts and "10.0.0.2\tdb" in hosts and hosts.endswith("127.0.0.1\tabc\n")
    host = "search lan\nnameserver 127.0.0.53\nnameserver 10.1.1.1\noptions edns0\n"
    assert ocispec.resolv_conf(host, "host") == host
    assert ocispec.resolv_conf(host, "none") == "search lan\noptions edns0\nnameserver 10.1.1.1\n"
    only_loopback = ocispec.resolv_conf("nameserver 127.0.0.1\n", "none")
    assert "nameserver 8.8.8.8" in only_loopback and "127.0.0.1" not in only_loopback
    assert "nameserver 1.2.3.4" in ocispec.resolv_conf(host, "none", dns=["1.2.3.4"])


def test_signals() -> None:
    assert ocispec.parse_signal("KILL") == 9
    assert ocispec.parse_signal("SIGUSR1") == 10
    assert ocispec.parse_signal("15") == 15
    with pytest.raises(InvalidArgument):
        ocispec.parse_signal("NOPE")


def test_joined_namespaces() -> None:
    joined = {"network": "/proc/42/ns/net", "ipc": "/proc/42/ns/ipc"}
    paths = BundlePaths("/r/rootfs", "/r/hostname", "/r/hosts", "/r/resolv.conf", joined)
    hc = ocispec.adapt_host_config({"NetworkMode": "container:pause", "IpcMode": "container:pause"})
    s = ocispec.build_spec(CID, ocispec.merge_image_config({"Cmd": ["sh"]}, {}), hc, paths)
    by_type = {n["type"]: n for n in s["linux"]["namespaces"]}
    assert by_type["network"] == {"type": "network", "path": "/proc/42/ns/net"}
    assert by_type["ipc"] == {"type": "ipc", "path": "/proc/42/ns/ipc"}
    assert by_type["pid"] == {"type": "pid"}
    assert ocispec.joined_container("container:web") == "web" and ocispec.joined_container("host") is None


PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
GROUP = "root:x:0:\napp:x:1000:\nstaff:x:50:app,other\nvideo:x:44:\n"


@pytest.mark.parametrize(("user", "group_add", "expected"), [
    ("", [], {"uid": 0, "gid": 0}),
    ("app", [], {"uid": 1000, "gid": 1000, "additionalGids": [50]}),
    ("app:video", [], {"uid": 1000, "gid": 44, "additionalGids": [50]}),
    ("1000", [], {"uid": 1000, "gid": 1000, "additionalGids": [50]}),
    ("4242", [], {"uid": 4242, "gid": 0}),
    ("4242:7", ["video", "9"], {"uid": 4242, "gid": 7, "additionalGids": [9, 44]}),
    ("nobody", [], {"uid": 65534, "gid": 65534}),
])
def test_resolve_user(user: str, group_add: list[str], expected: dict) -> None:
    assert ocispec.resolve_user(user, group_add, PASSWD, GROUP) == expected


def test_resolve_unknown_user_or_group() -> None:
    with pytest.raises(InvalidArgument, match="unable to find user ghost"):
        ocispec.resolve_user("ghost", [], PASSWD, GROUP)
    with pytest.raises(InvalidArgument, match="unable to find group ghosts"):
        ocispec.resolve_user("app:ghosts", [], PASSWD, GROUP)
