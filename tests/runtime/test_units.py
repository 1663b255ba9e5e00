"""Unit tests for the runtime's pure parts: JSON, the command line, mount options, path joins, ids."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiff.errors import AlreadyExists, InvalidArgument
from skiff.rootpath import resolve_in_root
from skiff.runtime import linux, quickjson, state
from skiff.runtime.cli import parse_args, parse_size
from skiff.runtime.container import exit_code, parse_signal
from skiff.runtime.rootfs import MountOptions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(json_values)
def test_quickjson_round_trips_like_json(value):
    assert quickjson.loads(quickjson.dumps(value)) == json.loads(json.dumps(value))
    assert quickjson.loads(json.dumps(value, indent=2)) == value or value != value


@pytest.mark.parametrize("text", ["{bad", '{"a": 1} trailing', "[1, 2", "", "nul"])
def test_quickjson_rejects_what_json_rejects(text):
    with pytest.raises(ValueError):
        quickjson.loads(text)


def test_cli_parses_runc_style_flags():
    a = parse_args(["--root", "/r", "run", "-d", "--bundle=/b", "--pid-file", "p", "c1"])
    assert (a.root, a.command, a.detach, a.bundle, a.pid_file, a.id) == ("/r", "run", True, "/b", "p", "c1")
    a = parse_args(["exec", "-t", "-e", "A=1", "-e", "B=2", "--user", "1000:1000", "c1", "sh", "-c", "echo -n"])
    assert a.tty and a.env == ["A=1", "B=2"] and a.user == "1000:1000" and a.args == ["sh", "-c", "echo -n"]
    a = parse_args(["kill", "c1"])
    assert a.signal == "SIGTERM" and a.all is False
    assert parse_args(["kill", "--all", "c1", "KILL"]).signal == "KILL"


@pytest.mark.parametrize("argv", [["run"], ["bogus", "x"], ["run", "--nope", "x"], ["run", "--pid-file"],
                                  ["start", "a", "b"], ["create", "--preserve-fds", "x", "c"]])
def test_cli_rejects_bad_command_lines(argv):
    with pytest.raises(InvalidArgument):
        parse_args(argv)


def test_sizes_signals_and_exit_codes():
    assert parse_size("64m") == 64 << 20 and parse_size("1GiB") == 1 << 30 and parse_size("-1") == -1
    with pytest.raises(InvalidArgument):
        parse_size("lots")
    assert parse_signal("TERM") == parse_signal("SIGTERM") == parse_signal("15") == 15
    assert parse_signal("0") == 0  # a liveness probe, as with kill(2)
    for bad in ("SIGNOPE", "-1", "999", "SIG_DFL"):
        with pytest.raises(InvalidArgument):
            parse_signal(bad)
    assert exit_code(3 << 8) == 3 and exit_code(9) == 137


def test_mount_options_split_flags_propagation_and_data():
    o = MountOptions(["nosuid", "ro", "rw", "rbind", "rslave", "mode=755", "size=64k", "tmpcopyup"])
    assert o.flags == linux.MS_NOSUID | linux.MS_BIND | linux.MS_REC
    assert o.propagation == [linux.MS_SLAVE | linux.MS_REC]
    assert o.data == "mode=755,size=64k" and o.is_bind


def test_resolve_in_root_never_leaves_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/etc", root / "abs")
    os.symlink("../../../../..", root / "up")
    os.symlink("loop", root / "loop")
    assert resolve_in_root(str(root), "/abs/passwd") == str(root / "etc/passwd")
    assert resolve_in_root(str(root), "/up/etc") == str(root / "etc")
    assert resolve_in_root(str(root), "../../x") == str(root / "x")
    with pytest.raises(InvalidArgument):
        resolve_in_root(str(root), "/loop/x")


def test_container_ids_are_checked_and_claimed_once(tmp_path):
    for bad in ("", ".", "..", "a/b", "a b", "x\n"):
        with pytest.raises(InvalidArgument):
            state.check_id(bad)
    state.reserve(str(tmp_path), "ok-1.2_x+y")
    with pytest.raises(AlreadyExists):
        state.reserve(str(tmp_path), "ok-1.2_x+y")
    state.remove(str(tmp_path), "ok-1.2_x+y")
    assert not os.listdir(tmp_path)


def test_the_start_path_imports_nothing_heavy():
    """The runtime's start-up budget: none of these may load on `run` (each costs milliseconds)."""
    import subprocess
    import sys

    code = ("import sys; import skiff.runtime.cli, skiff.runtime.container, skiff.runtime.rootfs, "
            "skiff.runtime.process; print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {ROOT!r}); {code}"],
                                capture_output=True, text=True, check=True).stdout.split())
    heavy = {"json", "re", "enum", "typing", "argparse", "dataclasses", "socket", "signal", "subprocess",
             "datetime", "platform", "shutil", "inspect"}
    assert loaded & heavy == set()
