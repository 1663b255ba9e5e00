"""skiff.runtime.seccomp against the real kernel and libseccomp.

Every filter is loaded in a forked child, never in the test process: the child sets no_new_privs,
loads the profile, tries some syscalls and reports through its exit status.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from skiff.errors import InvalidArgument, SystemFailure, Unsupported
from skiff.runtime import seccomp

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWUTS = 0x04000000
X32 = 0x40000000  # x32 syscalls carry this bit in their number
UNISTD_64 = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
FAILED = 250  # the child raised


def run_filtered(profile: dict, body: Callable[[], int]) -> int:
    """Fork; in the child load ``profile`` and exit with ``body()``. Returns the raw wait status."""
    seccomp.validate(profile)
    pid = os.fork()
    if pid == 0:
        code = FAILED
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a SIGSYS death must not leave a core file
            ul = ctypes.c_ulong
            if _libc.prctl(PR_SET_NO_NEW_PRIVS, ul(1), ul(0), ul(0), ul(0)) != 0:
                os._exit(FAILED - 1)
            seccomp.load(profile)
            code = body()
        except BaseException:
            traceback.print_exc()  # shows in the test's captured output
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def exit_code(profile: dict, body: Callable[[], int]) -> int:
    status = run_filtered(profile, body)
    assert os.WIFEXITED(status), f"child died by signal {os.WTERMSIG(status)}"
    return os.WEXITSTATUS(status)


def errno_of(call: Callable[[], Any]) -> int:
    """0 if ``call`` succeeded, else its errno."""
    try:
        call()
    except OSError as e:
        return e.errno or FAILED
    return 0


def mkdir_errno(path: Path) -> Callable[[], int]:
    return lambda: errno_of(lambda: os.mkdir(path))


def arg(index: int, value: int, op: str, value_two: int = 0) -> dict:
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def errno_read(*args: Any) -> dict:
    """A profile whose one rule makes read(2) fail when ``args`` match."""
    return allow_default({"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": list(args)})


def allow_default(*rules: dict, **extra: Any) -> dict:
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": list(rules), **extra}


MKDIR = ["mkdir", "mkdirat"]


def all_syscalls() -> list[str]:
    return re.findall(r"#define __NR_(\w+) \d+", UNISTD_64.read_text())


# --- actions ------------------------------------------------------------------------------------------


def test_errno_blocks_mkdir_with_eperm_and_leaves_the_rest(tmp_path: Path) -> None:
    profile = allow_default({"names": MKDIR, "action": "SCMP_ACT_ERRNO"})

    def body() -> int:
        if errno_of(lambda: os.mkdir(tmp_path / "d")) != errno.EPERM:
            return 1
        (tmp_path / "f").write_text("still works")
        return 0 if os.getpid() > 0 and os.listdir(tmp_path) == ["f"] else 2

    assert exit_code(profile, body) == 0
    assert not (tmp_path / "d").exists()


def test_custom_errno_ret(tmp_path: Path) -> None:
    profile = allow_default({"names": MKDIR, "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    assert exit_code(profile, mkdir_errno(tmp_path / "d")) == errno.ENOSYS


def test_trace_without_a_tracer_fails_the_syscall_with_enosys(tmp_path: Path) -> None:
    profile = allow_default({"names": MKDIR, "action": "SCMP_ACT_TRACE"})
    assert exit_code(profile, mkdir_errno(tmp_path / "d")) == errno.ENOSYS


def test_log_lets_the_syscall_run(tmp_path: Path) -> None:
    profile = allow_default({"names": MKDIR, "action": "SCMP_ACT_LOG"})
    assert exit_code(profile, mkdir_errno(tmp_path / "d")) == 0
    assert (tmp_path / "d").is_dir()


@pytest.mark.parametrize("action", ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"])
def test_kill_actions_kill_the_child_with_sigsys(tmp_path: Path, action: str) -> None:
    status = run_filtered(allow_default({"names": MKDIR, "action": action}), mkdir_errno(tmp_path / "d"))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS
    assert not (tmp_path / "d").exists()


def test_trap_delivers_sigsys_to_a_handler(tmp_path: Path) -> None:
    def body() -> int:
        caught = []
        signal.signal(signal.SIGSYS, lambda *_: caught.append(1))
        errno_of(lambda: os.mkdir(tmp_path / "d"))
        return 0 if caught else 1

    assert exit_code(allow_default({"names": MKDIR, "action": "SCMP_ACT_TRAP"}), body) == 0
    assert not (tmp_path / "d").exists()


def test_proc_status_shows_filter_mode() -> None:
    def body() -> int:
        status = Path("/proc/self/status").read_text()
        return 0 if "Seccomp:\t2\n" in status and "Seccomp_filters:\t1\n" in status else 1

    assert exit_code(allow_default({"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}), body) == 0


def test_a_disabled_profile_loads_nothing() -> None:
    def body() -> int:
        return 0 if "Seccomp:\t0\n" in Path("/proc/self/status").read_text() else 1

    assert exit_code({}, body) == 0
    assert exit_code({"defaultAction": "", "syscalls": []}, body) == 0


# --- arguments ----------------------------------------------------------------------------------------


def personality(persona: int) -> int:
    _libc.personality.restype = ctypes.c_int
    ctypes.set_errno(0)
    rc = _libc.personality(ctypes.c_ulong(persona))
    return ctypes.get_errno() if rc == -1 else 0


def test_arg_filter_blocks_only_the_matching_value() -> None:
    rule = {
        "names": ["personality"],
        "action": "SCMP_ACT_ERRNO",
        "args": [arg(0, 0xFFFFFFFF, "SCMP_CMP_EQ")],
    }

    def body() -> int:
        return 0 if personality(0xFFFFFFFF) == errno.EPERM and personality(0) == 0 else 1

    assert exit_code(allow_default(rule), body) == 0


def open_socket(family: int, kind: int = socket.SOCK_STREAM) -> Callable[[], int]:
    return lambda: errno_of(lambda: socket.socket(family, kind).close())


def test_socket_blocked_for_inet_but_not_unix() -> None:
    rule = {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "args": [arg(0, socket.AF_INET, "SCMP_CMP_EQ")]}

    def body() -> int:
        return 0 if open_socket(socket.AF_INET)() == errno.EPERM and open_socket(socket.AF_UNIX)() == 0 else 1

    assert exit_code(allow_default(rule), body) == 0


def test_args_on_different_indexes_are_anded() -> None:
    # UDP over IPv4 only; SOCK_CLOEXEC rides in the type argument, hence the mask.
    rule = {
        "names": ["socket"],
        "action": "SCMP_ACT_ERRNO",
        "args": [arg(0, socket.AF_INET, "SCMP_CMP_EQ"), arg(1, 0xF, "SCMP_CMP_MASKED_EQ", socket.SOCK_DGRAM)],
    }

    def body() -> int:
        udp = open_socket(socket.AF_INET, socket.SOCK_DGRAM)()
        tcp = open_socket(socket.AF_INET, socket.SOCK_STREAM)()
        unix_dgram = open_socket(socket.AF_UNIX, socket.SOCK_DGRAM)()
        return 0 if (udp, tcp, unix_dgram) == (errno.EPERM, 0, 0) else 1

    assert exit_code(allow_default(rule), body) == 0


def test_args_sharing_an_index_are_ored_like_runc() -> None:
    rule = {
        "names": ["socket"],
        "action": "SCMP_ACT_ERRNO",
        "args": [arg(0, socket.AF_INET, "SCMP_CMP_EQ"), arg(0, socket.AF_INET6, "SCMP_CMP_EQ")],
    }

    def body() -> int:
        results = [open_socket(f)() for f in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)]
        return 0 if results == [errno.EPERM, errno.EPERM, 0] else 1

    assert exit_code(allow_default(rule), body) == 0


# --- names and redundancy -----------------------------------------------------------------------------


def test_unknown_syscall_names_are_skipped(tmp_path: Path) -> None:
    rule = {"names": ["no_such_syscall_at_all", *MKDIR], "action": "SCMP_ACT_ERRNO"}
    assert exit_code(allow_default(rule), mkdir_errno(tmp_path / "d")) == errno.EPERM


def test_rule_repeating_the_default_action_is_skipped(tmp_path: Path) -> None:
    profile = allow_default(
        {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
        {"names": MKDIR, "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES},
    )
    assert exit_code(profile, mkdir_errno(tmp_path / "d")) == errno.EACCES


def test_extra_architectures_and_flags_load(tmp_path: Path) -> None:
    profile = allow_default(
        {"names": MKDIR, "action": "SCMP_ACT_ERRNO"},
        architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        flags=["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
    )
    assert exit_code(profile, mkdir_errno(tmp_path / "d")) == errno.EPERM


# --- default deny -------------------------------------------------------------------------------------


def test_default_errno_with_a_tiny_allow_list_can_still_exit() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["exit", "exit_group"], "action": "SCMP_ACT_ALLOW"}],
    }
    assert exit_code(profile, lambda: 42) == 42


def raw_syscall(nr: int) -> int:
    """errno of a raw syscall with no arguments (0 on success)."""
    ctypes.set_errno(0)
    rc = _libc.syscall(ctypes.c_long(nr), ctypes.c_long(0), ctypes.c_long(0))
    return ctypes.get_errno() if rc == -1 else 0


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 syscall numbers")
def test_default_errno_gives_enosys_for_syscalls_newer_than_the_profile(tmp_path: Path) -> None:
    # exit_group (231) is the highest syscall the profile names: getuid (102) gets the default action,
    # numbers above 231 get ENOSYS (runc's patched filter), for x86_64 and for x32 (bit 30 set) alike.
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EACCES,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["exit_group", "mkdir"], "action": "SCMP_ACT_ALLOW"}],
    }

    def body() -> int:
        results = [raw_syscall(nr) for nr in (102, 232, 1000, X32 | 102, X32 | 1000)]
        return 0 if results == [errno.EACCES, errno.ENOSYS, errno.ENOSYS, errno.EACCES, errno.ENOSYS] else 1

    assert exit_code(profile, body) == 0


@pytest.mark.skipif(not UNISTD_64.exists() or os.uname().machine != "x86_64", reason="x86_64 unistd_64.h")
def test_default_kill_spares_syscalls_newer_than_the_profile() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_KILL_PROCESS",
        "syscalls": [{"names": [n for n in all_syscalls() if n != "getuid"], "action": "SCMP_ACT_ALLOW"}],
    }
    assert exit_code(profile, lambda: 0 if raw_syscall(1000) == errno.ENOSYS else 1) == 0
    status = run_filtered(profile, lambda: raw_syscall(102))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


@pytest.mark.skipif(not UNISTD_64.exists() or os.uname().machine != "x86_64", reason="x86_64 unistd_64.h")
def test_docker_like_profile_runs_python() -> None:
    deny = {
        "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
        "finit_module", "get_kernel_syms", "init_module", "ioperm", "iopl", "kcmp", "kexec_file_load",
        "kexec_load", "keyctl", "lookup_dcookie", "mount", "move_mount", "open_tree", "fsopen", "fsmount",
        "name_to_handle_at", "nfsservctl", "open_by_handle_at", "perf_event_open", "pivot_root",
        "process_vm_readv", "process_vm_writev", "ptrace", "query_module", "quotactl", "reboot",
        "request_key", "setns", "settimeofday", "swapon", "swapoff", "sysfs", "_sysctl", "umount2",
        "unshare", "uselib", "userfaultfd", "ustat", "vhangup", "clone3",
    }
    allow = [n for n in all_syscalls() if n not in deny]
    assert len(allow) > 300
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EPERM,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": allow, "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
        ],
    }

    def body() -> int:
        ctypes.set_errno(0)
        if os.getpid() <= 0 or _libc.unshare(CLONE_NEWUTS) != -1 or ctypes.get_errno() != errno.EPERM:
            return 1
        # A whole new interpreter (and a thread, which glibc starts with clone3) under the filter.
        code = "import os, threading; t = threading.Thread(target=os.getpid); t.start(); t.join()"
        return subprocess.run([sys.executable, "-c", code], check=False).returncode

    assert exit_code(profile, body) == 0


# --- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"defaultAction": "SCMP_ACT_BOGUS"}, "unknown action 'SCMP_ACT_BOGUS'"),
        (allow_default({"names": ["read"], "action": "SCMP_ACT_NOPE"}), "syscalls[0].action: unknown action"),
        (allow_default(architectures=["SCMP_ARCH_Z80"]), "unknown architecture 'SCMP_ARCH_Z80'"),
        (errno_read(arg(0, 1, "SCMP_CMP_XX")), "unknown operator 'SCMP_CMP_XX'"),
        (errno_read(*(arg(i % 6, i, "SCMP_CMP_EQ") for i in range(7))), "has 7 conditions; at most 6"),
        (errno_read(arg(6, 1, "SCMP_CMP_EQ")), "args[0].index: must be an integer in 0..5"),
        (errno_read(arg(0, -1, "SCMP_CMP_EQ")), "args[0].value"),
        (errno_read(arg(0, 1 << 64, "SCMP_CMP_EQ")), "args[0].value"),
        (errno_read({"index": 0, "value": 1}), "unknown operator None"),
        (errno_read("SCMP_CMP_EQ"), "args[0]: must be an object"),
        (allow_default(flags=["SECCOMP_FILTER_FLAG_BOGUS"]), "unknown flag"),
        (allow_default(flags=[["SECCOMP_FILTER_FLAG_LOG"]]), "unknown flag"),
        (allow_default(architectures=[{"arch": "x86"}]), "unknown architecture"),
        ({"defaultAction": ["SCMP_ACT_ALLOW"]}, "unknown action"),
        (allow_default({"names": "read", "action": "SCMP_ACT_ERRNO"}), "syscalls[0].names"),
        (allow_default({"names": ["re\0ad"], "action": "SCMP_ACT_ERRNO"}), "syscalls[0].names"),
        (allow_default({"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": "EPERM"}), "errno"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}, "syscalls: must be a list"),
        ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO"}]}, "defaultAction: is required"),
        ("SCMP_ACT_ALLOW", "must be an object"),
    ],
)
def test_validate_rejects(profile: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)) as info:
        seccomp.validate(profile)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "profile",
    [
        {"defaultAction": "SCMP_ACT_NOTIFY"},
        allow_default({"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}, listenerPath="/run/agent.sock"),
        allow_default(flags=["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]),
    ],
)
def test_validate_refuses_notify(profile: dict) -> None:
    with pytest.raises(Unsupported, match="notify"):
        seccomp.validate(profile)


def test_an_architecture_this_libseccomp_lacks_fails_in_validate() -> None:
    # libseccomp 2.5 predates loongarch64; a newer library accepts it.
    profile = allow_default(architectures=["SCMP_ARCH_LOONGARCH64"])
    if seccomp._lib().seccomp_arch_resolve_name(b"loongarch64"):
        seccomp.validate(profile)
    else:
        with pytest.raises(Unsupported, match="SCMP_ARCH_LOONGARCH64"):
            seccomp.validate(profile)


def test_load_rejects_what_validate_rejects() -> None:
    with pytest.raises(InvalidArgument):
        seccomp.load({"defaultAction": "SCMP_ACT_BOGUS"})


def test_load_never_opens_libseccomp_itself() -> None:
    # In the container's init a dlopen would search the container's filesystem, so load() relies on
    # the mapping validate() made before fork. Simulate a process that skipped validate().
    def body() -> int:
        seccomp._lib_handle = None
        try:
            seccomp.load(allow_default({"names": MKDIR, "action": "SCMP_ACT_ERRNO"}))
        except SystemFailure as e:
            return 0 if "validate" in str(e) else 2
        return 1

    assert exit_code({}, body) == 0


def test_importing_does_not_open_libseccomp() -> None:
    code = "import skiff.runtime.seccomp; print(open('/proc/self/maps').read())"
    maps = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "libseccomp" not in maps.stdout
