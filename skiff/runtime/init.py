"""What runs inside the container while it is being made: the code of the forked processes.

``create`` forks a *bridge* process that enters or makes the namespaces and forks the container's
*init* (pid 1 of a new pid namespace), then exits. Init builds the root filesystem, becomes the spec's
process and waits on the exec fifo until ``start``. The runtime moves init into the container's
cgroups while init builds its mounts: on cgroup v1 that first move waits for an RCU grace period
(about 10 ms here), so doing it in parallel, as runc does, saves most of it.

``exec`` forks a bridge that joins the namespaces of a running container and forks the new process.
Errors travel back to the runtime over the sync pipe as
``{"type": "error", "kind": <skiff.errors name>, "message": ...}``.
"""

from __future__ import annotations

import _signal
import os
import sys

from skiff.runtime import linux, sync

# OCI namespace type -> (clone flag, /proc/<pid>/ns name).
NAMESPACES = {
    "user": (linux.CLONE_NEWUSER, "user"),
    "ipc": (linux.CLONE_NEWIPC, "ipc"),
    "uts": (linux.CLONE_NEWUTS, "uts"),
    "network": (linux.CLONE_NEWNET, "net"),
    "pid": (linux.CLONE_NEWPID, "pid"),
    "mount": (linux.CLONE_NEWNS, "mnt"),
    "cgroup": (linux.CLONE_NEWCGROUP, "cgroup"),
}


def preload(spec_process: dict, seccomp: dict | None, hooks: bool, new_network: bool = False) -> None:
    """Import, before forking, every module the child needs: after pivot_root or setns into the
    container's mount namespace, or as the root of a user namespace, our Python files may no longer
    be reachable."""
    import skiff.runtime.process

    if new_network:
        import _socket  # noqa: F401
        import fcntl  # noqa: F401

    if spec_process.get("terminal"):
        import skiff.runtime.console
    if seccomp:
        from skiff.runtime import seccomp as seccomp_filter

        seccomp_filter.validate(seccomp)  # also opens libseccomp from the host, never the container
    if hooks:
        import subprocess  # noqa: F401

        import skiff.runtime.hooks  # noqa: F401


def report_error(sock: sync.Link, error: BaseException) -> None:
    kind = type(error).__name__
    if isinstance(error, OSError):
        message = linux.describe(error)
        kind = "SystemFailure"
    else:
        message = str(error) or kind
    try:
        sock.send("error", kind=kind, message=message)
    except OSError:
        sys.stderr.write(f"skiff-runtime: {message}\n")


def _join(join_paths: list[tuple[str, str]]) -> None:
    """setns into existing namespaces; the user namespace first, so the others can be entered."""
    fds = [(kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC)) for kind, path in join_paths]
    fds.sort(key=lambda item: item[0] != "user")
    for kind, fd in fds:
        linux.setns(fd, NAMESPACES[kind][0])
        os.close(fd)


def bridge(sock: sync.Link, new: set[str], join_paths: list[tuple[str, str]], child) -> None:
    """Stage one: enter/make namespaces, fork the real process, report its pid, exit. Never returns."""
    try:
        sock.expect("go")
        user_joined = any(kind == "user" for kind, _ in join_paths)
        if user_joined:
            _join([p for p in join_paths if p[0] == "user"])
        if "user" in new:
            linux.unshare(linux.CLONE_NEWUSER)
            sock.send("userns")
            sock.expect("mapped")
        if "user" in new or user_joined:
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        _join([p for p in join_paths if p[0] != "user"])
        flags = 0
        # The cgroup namespace is made later, by init, once the runtime has moved it into its cgroup.
        for kind in new - {"user", "cgroup"}:
            flags |= NAMESPACES[kind][0]
        if flags:
            linux.unshare(flags)
        gate_r, gate_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(gate_w)
            os.read(gate_r, 1)
            os.close(gate_r)
            try:
                child()
            except BaseException as e:
                report_error(sock, e)
            os._exit(1)
        os.close(gate_r)
        sock.send("pid", pid=pid)
        os.write(gate_w, b"1")
    except BaseException as e:
        report_error(sock, e)
        os._exit(1)
    os._exit(0)


def loopback_up() -> None:
    """A new network namespace has ``lo`` down; runc brings it up, so do we."""
    import _socket
    import fcntl

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        ifreq = b"lo".ljust(40, b"\0")
        flags = int.from_bytes(fcntl.ioctl(s.fileno(), siocgifflags, ifreq)[16:18], "little")
        fcntl.ioctl(s.fileno(), siocsifflags, b"lo".ljust(16, b"\0") + (flags | iff_up).to_bytes(2, "little")
                    + bytes(22))
    finally:
        s.close()


def write_sysctls(sysctls: dict[str, str]) -> None:
    for key, value in sysctls.items():
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(str(value))


def reset_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ; ignored dispositions survive exec, so restore them."""
    for sig in (_signal.SIGPIPE, _signal.SIGXFSZ):
        _signal.signal(sig, _signal.SIG_DFL)


def container_init(sock: sync.Link, spec: dict, builder, new: set[str], fifo_fd: int,
                   console: object, preserve_fds: int) -> None:
    """Stage two, pid 1 of the container: rootfs, process, then wait for ``start`` and exec."""
    from skiff.runtime.hooks import run_hooks
    from skiff.runtime.process import ProcessSetup

    os.setsid()
    if "cgroup" in new:
        # Its root must be the container's cgroup: wait until we are in it.
        sock.expect("joined")
        linux.unshare(linux.CLONE_NEWCGROUP)
    if "network" in new:
        loopback_up()
    if "mount" in new:
        builder.prepare()
    if "cgroup" not in new:
        sock.expect("joined")  # the runtime moved us while we built the mounts
    sock.send("hooks")
    state = sock.expect("hooks-done")["state"]
    run_hooks(spec, "createContainer", state)
    if "mount" in new:
        builder.pivot()
    process = spec["process"]
    if process.get("terminal"):
        from skiff.runtime.console import setup_pty

        setup_pty(console, mount_console="mount" in new, size=process.get("consoleSize"))
    if "mount" in new:
        builder.finalize()
    if spec.get("hostname"):
        linux.sethostname(spec["hostname"])
    if spec.get("domainname"):
        linux.setdomainname(spec["domainname"])
    linux_spec = spec.get("linux") or {}
    write_sysctls(linux_spec.get("sysctl") or {})
    if "mount" in new:
        builder.protect_paths()
    setup = ProcessSetup(process)
    seccomp = linux_spec.get("seccomp")
    finish_process_setup(setup, seccomp, preserve_fds)
    path = setup.executable()
    sock.send("ready")
    sock.close()
    # Blocks until `start` opens the other end: this is the "created" state.
    fifo = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
    os.write(fifo, b"0")
    run_hooks(spec, "startContainer", state)
    exec_process(setup, path, seccomp)


def finish_process_setup(setup, seccomp: dict | None, preserve_fds: int) -> None:
    """Everything between a root process in the container and the spec's process, minus the exec."""
    setup.apply_rlimits()
    setup.apply_oom_score()
    setup.resolve_user()
    if setup.process.get("noNewPrivileges"):
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    elif seccomp:
        # Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it before dropping it.
        from skiff.runtime import seccomp as seccomp_filter

        seccomp_filter.load(seccomp)
    from skiff.runtime.process import close_inherited_fds

    close_inherited_fds(2 + preserve_fds)
    setup.become()
    setup.chdir()


def exec_process(setup, path: str, seccomp: dict | None) -> None:
    if seccomp and setup.process.get("noNewPrivileges"):
        # As late as possible, so the runtime's own calls are not filtered.
        from skiff.runtime import seccomp as seccomp_filter

        seccomp_filter.load(seccomp)
    reset_signals()
    try:
        setup.execute(path)
    except OSError as e:
        sys.stderr.write(f"skiff-runtime: exec {path}: {e.strerror}\n")
        os._exit(127)


def exec_child(sock: sync.Link, process: dict, seccomp: dict | None,
               console: object, preserve_fds: int) -> None:
    """The process of ``exec``, already inside every namespace of the container."""
    from skiff.runtime.process import ProcessSetup

    if process.get("terminal"):
        from skiff.runtime.console import setup_pty

        os.setsid()
        setup_pty(console, mount_console=False, size=process.get("consoleSize"))
    setup = ProcessSetup(process)
    finish_process_setup(setup, seccomp, preserve_fds)
    path = setup.executable()
    sock.expect("joined")  # in the container's cgroups before running anything of the container's
    # The sync pipe is close-on-exec: the runtime reads EOF when the exec has happened.
    exec_process(setup, path, seccomp)
