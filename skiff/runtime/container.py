"""The runtime's operations on containers: the parent side of create, start, run, exec and the rest.

Each public method is one command of runc's command line. The container's processes are made in
``skiff.runtime.init``; this module owns the state directory, the cgroups, the hooks that run in the
runtime's namespaces, and waiting.
"""

from __future__ import annotations

import _signal as signal  # the C module: `signal` imports enum, which costs start-up time
import os
import time

from skiff import errors
from skiff.atomicfile import write_atomically
from skiff.runtime import init, state, sync
from skiff.runtime.cgroups import DEFAULT_DEVICE_RULES, Cgroup
from skiff.runtime.spec import load_bundle, root_path, validate_process
from skiff.runtime.state import CREATED, PAUSED, RUNNING, STOPPED, ContainerState

_FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
                      signal.SIGUSR2, signal.SIGCONT, signal.SIGALRM)


def parse_signal(value: str | int) -> int:
    text = str(value).upper()
    if text.isdigit():
        number = int(text)
    else:
        name = text if text.startswith("SIG") else "SIG" + text
        number = getattr(signal, name, None) if not name.startswith("SIG_") else None
        if not isinstance(number, int):
            raise errors.InvalidArgument(f"unknown signal {value!r}")
    if not 0 <= int(number) < signal.NSIG:  # 0 probes that the process exists, as kill(2) does
        raise errors.InvalidArgument(f"invalid signal {value!r}")
    return int(number)


def exit_code(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def _now() -> str:
    """RFC 3339 with nanoseconds in UTC, as runc writes ``created``."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"


def _reraise(error: sync.ChildFailed | Exception, kind: str | None = None) -> None:
    cls = getattr(errors, kind or "", None)
    if not (isinstance(cls, type) and issubclass(cls, errors.SkiffError)):
        cls = errors.SystemFailure
    raise cls(str(error))


def validate_spec(spec: dict) -> None:
    """The checks that need more than the JSON shape; all before anything is created."""
    from skiff.runtime.hooks import validate_hooks
    from skiff.runtime.process import validate_rlimits

    linux_spec = spec.get("linux") or {}
    namespaces = {ns["type"] for ns in linux_spec.get("namespaces") or []}
    if "mount" not in namespaces:
        raise errors.InvalidArgument("a new mount namespace is required (pivot_root needs one)")
    validate_rlimits(spec["process"])
    validate_hooks(spec)
    if linux_spec.get("seccomp"):
        from skiff.runtime import seccomp

        seccomp.validate(linux_spec["seccomp"])
    for key in linux_spec.get("sysctl") or {}:
        _check_sysctl(key, namespaces)


def _check_sysctl(key: str, namespaces: set[str]) -> None:
    ipc = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax",
           "kernel.shmmni", "kernel.shm_rmid_forced")
    if key in ipc or key.startswith("fs.mqueue."):
        needed = "ipc"
    elif key.startswith("net."):
        needed = "network"
    elif key in ("kernel.hostname", "kernel.domainname"):
        needed = "uts"
    else:
        raise errors.InvalidArgument(f"sysctl {key!r} is not in a separate kernel namespace")
    if needed not in namespaces:
        raise errors.InvalidArgument(f"sysctl {key!r} is not allowed: the container shares the host's {needed} "
                                     "namespace")


class Runtime:
    """runc's commands over one state root."""

    def __init__(self, root: str = state.DEFAULT_ROOT) -> None:
        self.root = root

    # -- create / start / run ------------------------------------------------------------------------
    def create(self, container_id: str, bundle: str, pid_file: str | None = None,
               console_socket: str | None = None, preserve_fds: int = 0,
               _console: object = None, _spec: dict | None = None) -> ContainerState:
        bundle = os.path.abspath(bundle)
        spec = _spec if _spec is not None else load_bundle(bundle)
        validate_spec(spec)
        if spec["process"].get("terminal") and not (console_socket or _console):
            raise errors.InvalidArgument("cannot allocate tty if runc will detach without setting console socket")
        state.reserve(self.root, container_id)
        st = ContainerState(id=container_id, root=self.root, bundle=bundle, rootfs=root_path(spec, bundle),
                            created=_now(), spec=spec)
        cgroup = None
        try:
            os.mkfifo(st.fifo, 0o622)
            os.chmod(st.fifo, 0o622)  # past the umask: init may write it as a non-root user
            linux_spec = spec.get("linux") or {}
            cgroup = Cgroup.for_container(linux_spec.get("cgroupsPath"), container_id)
            cgroup.create()
            resources = dict(linux_spec.get("resources") or {})
            resources["devices"] = list(resources.get("devices") or []) + list(DEFAULT_DEVICE_RULES)
            cgroup.apply(resources)
            st.cgroup_paths = cgroup.paths
            # A first record, before any process exists: if this command is killed from here on,
            # `delete` still finds the cgroups (and whatever runs in them) and removes everything.
            st.save()
            self._spawn_init(st, spec, cgroup, console_socket, _console, preserve_fds)
            st.save()
            if pid_file:
                write_atomically(os.path.abspath(pid_file), str(st.pid).encode(), durable=False)
        except BaseException:
            self._abort(st, cgroup)
            raise
        return st

    def _abort(self, st: ContainerState, cgroup: Cgroup | None) -> None:
        if st.pid:
            try:
                os.kill(st.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(st.pid, st.start_time)
        if cgroup is not None:
            try:
                cgroup.kill_all(signal.SIGKILL)
                cgroup.destroy()
            except errors.SkiffError:
                pass
        state.remove(self.root, st.id)

    def _spawn_init(self, st: ContainerState, spec: dict, cgroup: Cgroup,
                    console_socket: str | None, console: object, preserve_fds: int) -> None:
        from skiff.runtime.rootfs import RootfsBuilder

        linux_spec = spec.get("linux") or {}
        new = {ns["type"] for ns in linux_spec.get("namespaces") or [] if not ns.get("path")}
        join = [(ns["type"], ns["path"]) for ns in linux_spec.get("namespaces") or [] if ns.get("path")]
        if spec["process"].get("terminal") and console is None:
            from skiff.runtime.console import connect

            console = connect(console_socket)
        builder = RootfsBuilder(spec, st.rootfs, st.bundle, cgroup.paths, new)
        init.preload(spec["process"], linux_spec.get("seccomp"), bool(spec.get("hooks")), "network" in new)
        parent, child = sync.pair()
        fifo_fd = os.open(st.fifo, os.O_PATH | os.O_CLOEXEC)
        try:
            bridge = os.fork()
            if bridge == 0:
                sync.keep_child(parent, child)
                init.bridge(child, new, join, lambda: init.container_init(
                    child, spec, builder, new, fifo_fd, console, preserve_fds))
            sync.keep_parent(parent, child)
            if console is not None:
                console.close()
            self._guide_init(st, spec, cgroup, parent, bridge, "user" in new)
        finally:
            os.close(fifo_fd)
            parent.close()

    def _guide_init(self, st: ContainerState, spec: dict, cgroup: Cgroup, sock, bridge: int,
                    user_ns: bool) -> None:
        """The runtime's half of the setup conversation with the bridge and init."""
        from skiff.runtime.hooks import run_hooks

        try:
            sock.send("go")
            if user_ns:
                sock.expect("userns")
                _write_id_maps(bridge, spec["linux"])
                sock.send("mapped")
            st.pid = sock.expect("pid")["pid"]
            st.start_time = state.process_start_time(st.pid) or 0
            os.waitpid(bridge, 0)
            _join_cgroup(cgroup, st.pid, sock)  # init builds its mounts meanwhile
            sock.expect("hooks")
            hook_state = st.oci_state("creating")
            run_hooks(spec, "prestart", hook_state)
            run_hooks(spec, "createRuntime", hook_state)
            sock.send("hooks-done", state=st.oci_state(CREATED))
            message = sock.recv()
        except sync.ChildFailed as e:
            _reap(bridge)
            _reraise(e, e.kind)
        if message is None or message["type"] != "ready":
            _reap(bridge)
            if message is None:
                raise errors.SystemFailure("container init exited during setup")
            _reraise(Exception(message.get("message")), message.get("kind"))

    def start(self, container_id: str) -> None:
        st = ContainerState.load(self.root, container_id)
        status = self._status(st)
        if status == STOPPED:
            raise errors.Conflict("cannot start a container that has stopped")
        if status != CREATED:
            raise errors.Conflict("cannot start an already running container")
        _release_fifo(st)
        from skiff.runtime.hooks import run_hooks

        # runc hands poststart hooks the state it had before start: "created" (kept for compatibility).
        run_hooks(st.spec, "poststart", st.oci_state(CREATED))

    def run(self, container_id: str, bundle: str, pid_file: str | None = None,
            console_socket: str | None = None, detach: bool = False, preserve_fds: int = 0) -> int:
        from skiff.runtime import linux

        spec = load_bundle(os.path.abspath(bundle))  # read once, handed to create
        relay_console = None
        if spec["process"].get("terminal") and not console_socket:
            if detach:
                raise errors.InvalidArgument("cannot allocate tty if runc will detach without setting console socket")
            from skiff.runtime.console import pair

            relay_console = pair()
        if not detach:
            linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
        st = self.create(container_id, bundle, pid_file, console_socket, preserve_fds,
                         _console=relay_console[1] if relay_console else None, _spec=spec)
        if detach:
            self.start(container_id)
            return 0
        try:
            master = None
            if relay_console:
                from skiff.runtime.console import receive_master

                master = receive_master(relay_console[0])
            self.start(container_id)
            return _wait_foreground(st.pid, master)
        finally:
            try:
                self.delete(container_id, force=True)
            except errors.NotFound:
                pass

    # -- exec ----------------------------------------------------------------------------------------
    def exec(self, container_id: str, process: dict, detach: bool = False, pid_file: str | None = None,
             console_socket: str | None = None, preserve_fds: int = 0) -> int:
        from skiff.runtime import linux

        st = ContainerState.load(self.root, container_id)
        status = self._status(st)
        if status == STOPPED:
            raise errors.Conflict("cannot exec in a stopped container")
        if status == PAUSED:
            raise errors.Conflict("cannot exec in a paused container")
        validate_process(process)
        console = relay = None
        if process.get("terminal"):
            if console_socket:
                from skiff.runtime.console import connect

                console = connect(console_socket)
            elif detach:
                raise errors.InvalidArgument("cannot allocate tty if runc will detach without setting console socket")
            else:
                from skiff.runtime.console import pair

                relay = pair()
                console = relay[1]
        if not detach:
            linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
        join = self._namespace_paths(st)
        cgroup = Cgroup.from_paths(st.cgroup_paths)
        seccomp = (st.spec.get("linux") or {}).get("seccomp")
        init.preload(process, seccomp, hooks=False)
        parent, child = sync.pair()
        bridge = os.fork()
        if bridge == 0:
            sync.keep_child(parent, child)
            init.bridge(child, set(), join, lambda: init.exec_child(child, process, seccomp, console, preserve_fds))
        sync.keep_parent(parent, child)
        if console is not None:
            console.close()
        try:
            parent.send("go")
            pid = parent.expect("pid")["pid"]
            os.waitpid(bridge, 0)
            _join_cgroup(cgroup, pid, parent)  # the process sets itself up meanwhile, and waits for this
            message = parent.recv()  # EOF: the process exec'd
            if message is not None:
                _reraise(Exception(message.get("message")), message.get("kind"))
        except sync.ChildFailed as e:
            _reap(bridge)
            _reraise(e, e.kind)
        finally:
            parent.close()
        if pid_file:
            write_atomically(os.path.abspath(pid_file), str(pid).encode(), durable=False)
        if detach:
            return 0
        master = None
        if relay:
            from skiff.runtime.console import receive_master

            master = receive_master(relay[0])
        return _wait_foreground(pid, master)

    def _namespace_paths(self, st: ContainerState) -> list[tuple[str, str]]:
        """The container's namespaces that differ from ours, as /proc paths of its init."""
        paths = []
        for kind, (_, name) in init.NAMESPACES.items():
            theirs = f"/proc/{st.pid}/ns/{name}"
            try:
                if os.stat(theirs).st_ino != os.stat(f"/proc/self/ns/{name}").st_ino:
                    paths.append((kind, theirs))
            except FileNotFoundError:
                continue
        return paths

    # -- inspection and control ----------------------------------------------------------------------
    def _status(self, st: ContainerState) -> str:
        frozen = False
        if st.alive() and st.cgroup_paths:
            try:
                frozen = Cgroup.from_paths(st.cgroup_paths).frozen()
            except errors.SkiffError:
                frozen = False
        return st.status(frozen)

    def state(self, container_id: str) -> dict:
        st = ContainerState.load(self.root, container_id)
        return st.oci_state(self._status(st))

    def list(self) -> list[dict]:
        result = []
        import pwd

        for container_id in state.list_ids(self.root):
            try:
                entry = self.state(container_id)
                uid = os.stat(os.path.join(self.root, container_id)).st_uid
            except (errors.NotFound, FileNotFoundError):
                continue
            try:
                entry["owner"] = pwd.getpwuid(uid).pw_name  # as runc: the state dir's owner, by name
            except KeyError:
                entry["owner"] = f"#{uid}"
            result.append(entry)
        return result

    def kill(self, container_id: str, sig: str | int = "SIGTERM", all_processes: bool = False) -> None:
        st = ContainerState.load(self.root, container_id)
        number = parse_signal(sig)
        if self._status(st) == STOPPED:
            raise errors.Conflict("container not running")
        if all_processes:
            Cgroup.from_paths(st.cgroup_paths).kill_all(number)
            return
        try:
            os.kill(st.pid, number)
        except ProcessLookupError:
            raise errors.Conflict("container not running") from None

    def delete(self, container_id: str, force: bool = False) -> None:
        try:
            st = ContainerState.load(self.root, container_id)
        except errors.NotFound:
            if force:
                # As runc: `delete --force` is idempotent. A directory without state.json is what a
                # create killed in its first instant leaves: it holds nothing else, so clear it.
                state.remove(self.root, container_id)
                return
            raise
        status = self._status(st)
        if status in (RUNNING, PAUSED) and not force:
            raise errors.Conflict(f"cannot delete container {container_id} that is not stopped: {status}")
        cgroup = Cgroup.from_paths(st.cgroup_paths)
        if status != STOPPED:
            try:
                os.kill(st.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if status == PAUSED:
            cgroup.thaw()
        if st.pid == 0 or not _has_own_pid_ns(st.spec) or status != STOPPED:  # pid 0: create was interrupted
            cgroup.kill_all(signal.SIGKILL)
        _wait_gone(st.pid, st.start_time)
        cgroup.destroy()
        from skiff.runtime.hooks import run_hooks

        try:
            run_hooks(st.spec, "poststop", st.oci_state(STOPPED))
        finally:
            state.remove(self.root, container_id)

    def pause(self, container_id: str) -> None:
        st = ContainerState.load(self.root, container_id)
        if self._status(st) != RUNNING:
            raise errors.Conflict("container not running")
        Cgroup.from_paths(st.cgroup_paths).freeze()

    def resume(self, container_id: str) -> None:
        st = ContainerState.load(self.root, container_id)
        if self._status(st) != PAUSED:
            raise errors.Conflict("container not paused")
        Cgroup.from_paths(st.cgroup_paths).thaw()

    def pids(self, container_id: str) -> list[int]:
        st = ContainerState.load(self.root, container_id)
        return Cgroup.from_paths(st.cgroup_paths).pids()

    def update(self, container_id: str, resources: dict) -> None:
        st = ContainerState.load(self.root, container_id)
        if self._status(st) == STOPPED:
            raise errors.Conflict("container not running")
        Cgroup.from_paths(st.cgroup_paths).apply(resources)
        current = st.spec.setdefault("linux", {}).setdefault("resources", {})
        for key, value in resources.items():
            if isinstance(value, dict):
                current.setdefault(key, {}).update(value)
            else:
                current[key] = value
        st.save()


# -- helpers -----------------------------------------------------------------------------------------
def _has_own_pid_ns(spec: dict) -> bool:
    return any(ns["type"] == "pid" and not ns.get("path") for ns in (spec.get("linux") or {}).get("namespaces") or [])


def _write_id_maps(pid: int, linux_spec: dict) -> None:
    def lines(mappings: list[dict[str, int]]) -> bytes:
        return "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in mappings).encode()

    with open(f"/proc/{pid}/uid_map", "wb") as f:
        f.write(lines(linux_spec["uidMappings"]))
    with open(f"/proc/{pid}/gid_map", "wb") as f:
        f.write(lines(linux_spec["gidMappings"]))


def _join_cgroup(cgroup: Cgroup, pid: int, link: sync.Link) -> None:
    """Move a setting-up process into the container's cgroups and tell it so.

    If it failed meanwhile (it is gone, or stopped listening), its own error message says why.
    """
    try:
        cgroup.add(pid)
        link.send("joined")
    except (errors.SkiffError, BrokenPipeError) as failure:
        if not isinstance(failure, BrokenPipeError) and state.process_start_time(pid) is not None:
            # The cgroup failed (e.g. removed under us), not the process: it is waiting for "joined" and
            # would wait forever, as would we for its error. It cannot become the container now.
            os.kill(pid, signal.SIGKILL)
            raise errors.SystemFailure(f"cannot move the container process into its cgroup: {failure}") from failure
        message = link.recv()
        if message is not None and message["type"] == "error":
            _reraise(Exception(message["message"]), message.get("kind"))
        raise errors.SystemFailure(f"container process {pid} exited during setup") from failure


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _wait_gone(pid: int, start_time: int, timeout: float = 10.0) -> None:
    """Wait until a process that is not our child has died (it may stay a zombie: that counts)."""
    deadline = time.monotonic() + timeout
    while state.process_start_time(pid) == start_time and pid > 0:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if time.monotonic() > deadline:
            raise errors.SystemFailure(f"process {pid} did not exit after SIGKILL")
        time.sleep(0.002)


def _release_fifo(st: ContainerState) -> None:
    """Open the exec fifo's read side: init, blocked on the write side, writes "0" and execs."""
    import select

    fd = os.open(st.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        got = b""
        while not got:
            select.select([fd], [], [], 0.05)
            try:
                got = os.read(fd, 1)
            except BlockingIOError:
                got = b""
            if not got:
                if not st.alive():
                    raise errors.Conflict("cannot start a container that has stopped")
                time.sleep(0.0005)
        os.set_blocking(fd, True)
        while os.read(fd, 4096):  # EOF when init execs (its fifo fd is close-on-exec)
            pass
    finally:
        os.close(fd)
    os.unlink(st.fifo)


def _wait_foreground(pid: int, master: int | None) -> int:
    """Wait for a process we are the (sub)reaper of, forwarding our signals to it; its exit code."""
    previous = {}

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in _FORWARDED_SIGNALS:
        previous[sig] = signal.signal(sig, forward)
    try:
        if master is not None:
            from skiff.runtime.console import relay

            done: dict[int, int] = {}

            def exited() -> bool:
                return _reap_until(pid, done, block=False)

            relay(master, exited)
            _reap_until(pid, done, block=True)
            os.close(master)
            return exit_code(done[pid])
        done = {}
        _reap_until(pid, done, block=True)
        return exit_code(done[pid])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _reap_until(pid: int, done: dict[int, int], block: bool) -> bool:
    """Reap children (orphans re-parented to us included) until ``pid`` has exited."""
    while pid not in done:
        try:
            wpid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            raise errors.SystemFailure(f"lost track of process {pid}") from None
        if wpid == 0:
            return False
        done[wpid] = status
    return True
