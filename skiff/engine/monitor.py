"""The per-container monitor: Skiff's conmon / containerd-shim, one process per container.

It owns everything about a container that must outlive the daemon: the container's stdio, its log,
its exit status. The daemon starts it (``monitor_client.Monitor.launch``); it forks away into its own
session (so a daemon restart does not touch it) and, as a child subreaper, becomes the parent of the
container's init and of every exec'd process, so it reaps them and learns their exact exit status.

Life of a monitor::

    launch ─▶ runtime create (our pipes / console socket as the container's stdio)
          ─▶ report "ok <init pid>" to the launcher, serve <state>/monitor.sock
          ─▶ start / kill / resize / attach / exec requests ... init exits, is reaped
          ─▶ output drained, log flushed, `runtime delete`, <state>/exit written atomically
          ─▶ EXIT sent to every client ─▶ socket removed, monitor exits (no zombies, no fds)

If the daemon dies, the monitor carries on; a new daemon reconnects to the socket, or reads the
``exit`` file once the monitor is gone: ``{"exit_code":N,"finished_at":"<RFC3339Nano>",
"oom_killed":bool,"started_at":"..."}``.

Wire protocol on ``<state>/monitor.sock`` (unix stream). Every message is a frame::

    type: u8 | length: u32 big-endian | payload[length]

    client -> monitor                      monitor -> client
    3 STDIN      bytes for stdin           0 TTY     raw terminal output
    4 STDIN_EOF  "done with stdin"         1 STDOUT  a chunk of stdout
    5 REQUEST    "op arg ...[\\n body]"     2 STDERR  a chunk of stderr
                                           6 REPLY   JSON {"ok": true, ...} or
                                                     {"ok": false, "kind": <skiff.errors name>, "error": text}
                                           7 EXIT    JSON {"exit_code", "finished_at", "oom_killed"}; then EOF

Requests (ASCII words; every one gets exactly one REPLY, ``wait``'s when the container has exited):

    status                  pid, monitor_pid, status (created|running|exited), exit_code, started_at,
                            finished_at, oom_killed, tty
    start                   `runtime start`; replies once started (a failed start kills the container)
    kill SIGNAL             `runtime kill ID SIGNAL` (numbers)
    resize HEIGHT WIDTH     TIOCSWINSZ on the terminal (no-op without one)
    close_stdin             close the container's stdin once what is buffered has been written
    wait                    reply {"exit_code", "finished_at", "oom_killed"} when the container has exited
    attach STDIN STDOUT STDERR   (0|1 each) this connection now streams output from this moment on
                            (stream 0 for a tty, else 1/2) and may send STDIN/STDIN_EOF; EXIT ends it
    exec ID TTY STDIN [STDOUT STDERR]\\n<process.json>
                            bind this connection to a new exec session (created, not started): output
                            (the streams asked for; default both) and stdin as for attach; then on
                            the same connection ``start`` runs `runtime exec --detach` and replies
                            {"pid"}; ``resize``, ``kill SIGNAL`` and ``close_stdin`` address the exec;
                            its EXIT carries its exit code.

STDIN_EOF closes the container's stdin when it was created with StdinOnce (an exec's always). A
connection closing counts as STDIN_EOF for what it had attached. Output a client does not read
piles up to 8 MiB, then that client is dropped: a stuck client never stalls the container or its log.
Stdin sent before ``start`` is kept and delivered (``echo x | docker run -i``).

Start-up is on the container start path, so this module imports only C-backed standard modules (no
json, socket, signal, subprocess, selectors, typing: each costs milliseconds through ``re`` or
``enum``) and runs the runtime with ``posix_spawn``. Runtime commands run asynchronously from one
epoll loop, and one reaper hands every child's exit status to whoever waits for that pid (statuses
of pids nobody claimed yet are kept, because a short exec can exit before its pid file is read).
"""

from __future__ import annotations

import _signal
import _socket
import errno
import fcntl
import os
import select
import struct
import sys
import termios
import time
from _json import encode_basestring

from skiff.atomicfile import write_atomically
from skiff.engine.logs import STDERR, STDOUT, JsonFileWriter, format_time, parse_size

TYPE_CHECKING = False  # typing itself costs the monitor milliseconds
if TYPE_CHECKING:
    from collections.abc import Callable

    from skiff.runtime.container import Runtime

# Frame types (see the module docstring).
TTY, OUT, ERR, STDIN, STDIN_EOF, REQUEST, REPLY, EXIT = range(8)
HEADER = struct.Struct(">BI")
MAX_FRAME = 16 << 20
CLIENT_BACKLOG_LIMIT = 8 << 20

SOCKET_NAME = "monitor.sock"
EXIT_FILE = "exit"
PID_FILE = "init.pid"
MONITOR_LOG = "monitor.log"

# After a process exits, how long its output may keep coming (from children still holding the
# pipes) before we stop reading; and how long a finished monitor waits for slow clients.
DRAIN_SECONDS = 2.0
LINGER_SECONDS = 5.0
UNCLAIMED_SECONDS = 10.0
SCRATCH_FALLBACK = "/tmp"  # for a runtime call's log and stderr when the state dir is gone
_EPOLLIN, _EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
_SUBREAPER = 36  # PR_SET_CHILD_SUBREAPER


def _now() -> str:
    return format_time(time.time_ns())


def _json(fields: dict[str, object]) -> bytes:
    """A flat JSON object (str, int, bool, None values): the monitor writes JSON but never parses it."""
    parts = []
    for key, value in fields.items():
        if value is None or isinstance(value, bool):
            text = {None: "null", True: "true", False: "false"}[value]
        elif isinstance(value, int):
            text = str(value)
        else:
            text = encode_basestring(str(value))
        parts.append(f'"{key}":{text}')
    return ("{" + ",".join(parts) + "}").encode()


def _exit_code(status: int) -> int:
    """A wait status as Docker reports it: the exit code, or 128 + the signal that killed it."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class ShortPath:
    """A unix socket path under the 108-byte limit: ``/proc/<pid>/fd/<dirfd>/<name>`` when too long.

    The runtime connects to the console socket by path, so the directory fd is named through our
    own pid and kept open for as long as the path is in use.
    """

    def __init__(self, path: str) -> None:
        self.full, self._dirfd = path, -1
        self.path = path
        if len(path.encode()) >= 100:
            self._dirfd = os.open(os.path.dirname(path), os.O_PATH | os.O_CLOEXEC)
            self.path = f"/proc/{os.getpid()}/fd/{self._dirfd}/{os.path.basename(path)}"

    def close(self) -> None:
        if self._dirfd >= 0:
            os.close(self._dirfd)
            self._dirfd = -1


def _listen(path: str, backlog: int) -> _socket.socket:
    """A listening unix socket at ``path`` (a stale one from an earlier monitor is replaced)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    short = ShortPath(path)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.bind(short.path)
    finally:
        short.close()
    os.chmod(path, 0o600)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def _receive_fd(listener: _socket.socket) -> int:
    """Accept the runtime's connection on a console socket and take the pty master it sent (or -1).

    Called after the runtime exited: its connection and message wait in the socket's queue.
    """
    try:
        fd, _ = listener._accept()
    except BlockingIOError:
        return -1
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
    try:
        conn.settimeout(1.0)
        _, ancillary, _, _ = conn.recvmsg(4096, _socket.CMSG_SPACE(16), _socket.MSG_CMSG_CLOEXEC)
    finally:
        conn.close()
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += struct.unpack(f"{len(data) // 4}i", data[:len(data) // 4 * 4])
    for extra in fds[1:]:
        os.close(extra)
    return fds[0] if fds else -1


# --- the event loop --------------------------------------------------------------------------------

class Loop:
    """epoll plus timers: the monitor's only thread. A failing handler is logged, never fatal."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._timers: list[list] = []  # [deadline, callback or None when cancelled]
        self.stopped = False

    def add(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        self._epoll.register(fd, events)
        self._handlers[fd] = handler

    def modify(self, fd: int, events: int) -> None:
        self._epoll.modify(fd, events)

    def remove(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def later(self, delay: float, callback: Callable[[], None]) -> list:
        timer = [time.monotonic() + delay, callback]
        self._timers.append(timer)
        return timer

    @staticmethod
    def cancel(timer: list | None) -> None:
        if timer is not None:
            timer[1] = None

    def run(self) -> None:
        while True:
            timeout = self._run_due_timers()
            if self.stopped:  # a timer or handler ended the monitor
                return
            for fd, events in self._epoll.poll(timeout):
                handler = self._handlers.get(fd)
                if handler is not None:
                    self.call(handler, events)

    def _run_due_timers(self) -> float:
        """Run timers that are due; return the poll timeout until the next one (-1: none)."""
        now = time.monotonic()
        due, pending = [], []
        for timer in self._timers:
            if timer[1] is not None:
                (due if timer[0] <= now else pending).append(timer)
        self._timers = pending
        for _, callback in due:
            self.call(callback)
        if self._timers:
            return max(0.0, min(t[0] for t in self._timers) - time.monotonic())
        return -1

    @staticmethod
    def call(fn: Callable, *args: object) -> None:
        try:
            fn(*args)
        except Exception:  # a bug in one handler must not orphan the container
            import traceback

            traceback.print_exc()


class Reaper:
    """Reaps every child the subreaper gets and hands each status to whoever watches that pid."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self._watchers: dict[int, Callable[[int], None]] = {}
        self._unclaimed: dict[int, tuple[int, float]] = {}  # pid -> (status, when) of unwatched exits
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup = r
        _signal.set_wakeup_fd(w)
        _signal.signal(_signal.SIGCHLD, lambda *_: None)  # the C handler writes to the wakeup fd
        loop.add(r, _EPOLLIN, self._woken)

    def watch(self, pid: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(wait_status)`` when ``pid`` exits (soon, if it has already).

        An exit is kept unclaimed only briefly: long enough for a pid file to be read after a short
        process ended, too short for the pid number to have been reused by a new child since.
        """
        exited = self._unclaimed.pop(pid, None)
        if exited is not None and time.monotonic() - exited[1] < UNCLAIMED_SECONDS:
            self.loop.later(0, lambda: callback(exited[0]))
        else:
            self._watchers[pid] = callback

    def _woken(self, _events: int) -> None:
        try:
            while os.read(self._wakeup, 512):
                pass
        except BlockingIOError:
            pass
        self.reap()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            callback = self._watchers.pop(pid, None)
            if callback is not None:
                self.loop.call(callback, status)
                continue
            self._unclaimed[pid] = (status, time.monotonic())  # e.g. runtime helpers reparented to us
            if len(self._unclaimed) > 256:
                del self._unclaimed[next(iter(self._unclaimed))]


# --- running the OCI runtime -------------------------------------------------------------------------

class RuntimeCall:
    """One `runtime ...` command, run without blocking the loop; ``done(exit_code, error_text)``.

    Errors come from the runtime's ``--log`` (JSON records; runc and Skiff's runtime both write
    ``"msg"``), falling back to its stderr, so a failure reads as the runtime's one-line message.
    """

    _seq = 0

    def __init__(self, mon: ContainerMonitor, args: list[str], done: Callable[[int, str], None],
                 stdio: tuple[int, int, int] | None = None) -> None:
        RuntimeCall._seq += 1
        self.mon, self.done, self.name = mon, done, args[0]
        # The state dir, unless someone removed it (a wiped exec root): the container must still be deleted.
        scratch = mon.opts.state_dir if os.path.isdir(mon.opts.state_dir) else SCRATCH_FALLBACK
        self._log = os.path.join(scratch, f"runtime-{os.getpid()}-{RuntimeCall._seq}.log")
        # Its stderr is caught unless it is the process's own (create/exec: the container's stdio).
        self._stderr = _scratch_file(scratch) if stdio is None else -1
        argv = [*mon.opts.runtime, "--root", mon.opts.runtime_root, "--log", self._log, "--log-format", "json",
                *args]
        stdin, stdout, stderr = stdio or (mon.null_r, mon.null_w, self._stderr)
        actions = [(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, stdout, 1),
                   (os.POSIX_SPAWN_DUP2, stderr, 2)]
        spawn = os.posix_spawn if "/" in argv[0] else os.posix_spawnp
        mon.calls += 1
        try:
            # Signals Python ignores (SIGPIPE, SIGXFSZ) would stay ignored in the container: reset them.
            pid = spawn(argv[0], argv, os.environ, file_actions=actions,
                        setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ))
        except OSError as e:
            message = f"cannot run the runtime {argv[0]}: {e.strerror}"
            mon.loop.later(0, lambda: self._finish(127, message))
            return
        mon.reaper.watch(pid, self._exited)

    def _exited(self, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        self._finish(code, self._error_text(code) if code else "")

    def _finish(self, code: int, message: str) -> None:
        if self._stderr >= 0:
            os.close(self._stderr)
        try:
            os.unlink(self._log)
        except FileNotFoundError:
            pass
        self.mon.calls -= 1
        self.done(code, message)

    def _error_text(self, code: int) -> str:
        try:
            with open(self._log, encoding="utf-8", errors="replace") as f:
                text = _last_error(f.read())
        except FileNotFoundError:
            text = ""
        if not text and self._stderr >= 0:
            os.lseek(self._stderr, 0, os.SEEK_SET)
            lines = os.read(self._stderr, 65536).decode(errors="replace").strip().splitlines()
            text = lines[-1] if lines else ""
        return text or f"runtime {self.name} failed with exit status {code}"


class CommandRuntime:
    """An OCI runtime run as a command, per runc's command-line contract (runc, crun, any compatible binary)."""

    def __init__(self, mon: ContainerMonitor) -> None:
        self.mon = mon

    def create(self, pid_file: str, console_socket: str | None, stdio: tuple[int, int, int],
               done: Callable[[int, str], None]) -> None:
        args = ["create", "--bundle", self.mon.opts.bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        RuntimeCall(self.mon, [*args, self.mon.opts.container_id], done, stdio)

    def start(self, done: Callable[[int, str], None]) -> None:
        RuntimeCall(self.mon, ["start", self.mon.opts.container_id], done)

    def kill(self, signal: int, done: Callable[[int, str], None]) -> None:
        RuntimeCall(self.mon, ["kill", self.mon.opts.container_id, str(signal)], done)

    def delete(self, done: Callable[[int, str], None]) -> None:
        RuntimeCall(self.mon, ["delete", "--force", self.mon.opts.container_id], done)


class LibraryRuntime(CommandRuntime):
    """Skiff's own runtime called as a library for create, start, kill and delete: the same code, state
    files and semantics as `skiff-runtime`, without starting a Python for each command (about 30 ms
    each, four per container run). Exec still runs the command: it is off the start path.
    (start, kill and delete fork nothing, so they can run in this process.)

    Every call runs in a forked child, as a runtime command would run beside us: the memory it touches
    (the runtime's code paths, its state files parsed into objects) is then the child's, gone when it
    exits, instead of becoming private pages of this long-lived process — start alone dirtied ~0.6 MiB
    here, a quarter of a monitor. A fork costs well under a millisecond; the container's init,
    orphaned when create's child exits, comes to us as the subreaper exactly as with a runtime command.
    """

    def _runtime(self) -> Runtime:
        """The runtime, made in the child that calls it (its objects then die with the child)."""
        from skiff.runtime.container import Runtime

        return Runtime(self.mon.opts.runtime_root)

    def create(self, pid_file: str, console_socket: str | None, stdio: tuple[int, int, int],
               done: Callable[[int, str], None]) -> None:
        from skiff.runtime.cgroups import warm_attach_lock

        def create() -> None:
            warm_attach_lock()  # its child comes to our reaper when this one exits
            st = self._runtime().create(self.mon.opts.container_id, self.mon.opts.bundle, None, console_socket)
            write_atomically(pid_file, str(st.pid).encode(), durable=False)

        self._call_in_child(create, done, stdio)

    def start(self, done: Callable[[int, str], None]) -> None:
        self._call_in_child(lambda: self._runtime().start(self.mon.opts.container_id), done)

    def kill(self, signal: int, done: Callable[[int, str], None]) -> None:
        self._call_in_child(lambda: self._runtime().kill(self.mon.opts.container_id, signal), done)

    def delete(self, done: Callable[[int, str], None]) -> None:
        self._call_in_child(lambda: self._runtime().delete(self.mon.opts.container_id, force=True), done)

    def _call_in_child(self, work: Callable[[], None], done: Callable[[int, str], None],
                       stdio: tuple[int, int, int] | None = None) -> None:
        errors_r, errors_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(errors_r)
                for n, fd in enumerate(stdio or ()):  # the container inherits create's stdio
                    os.dup2(fd, n)
                work()
            except BaseException as e:
                os.write(errors_w, _runtime_error_text(e).encode(errors="replace"))
                code = 1
            os._exit(code)
        os.close(errors_w)
        self.mon.calls += 1

        def exited(status: int) -> None:
            # Non-blocking: the container's init holds a copy of the write end until it execs. What
            # the child wrote before it exited is in the pipe already.
            try:
                os.set_blocking(errors_r, False)
                message = os.read(errors_r, 65536).decode(errors="replace")
            except BlockingIOError:
                message = ""
            finally:
                os.close(errors_r)
            self.mon.calls -= 1
            code = os.waitstatus_to_exitcode(status)
            done(code, message or (f"runtime create failed with exit status {code}" if code else ""))

        self.mon.reaper.watch(pid, exited)


def _runtime_error_text(error: BaseException) -> str:
    """The one line `skiff-runtime` would have logged for ``error``."""
    from skiff import errors

    if isinstance(error, OSError):
        from skiff.runtime.linux import describe

        return describe(error)
    if isinstance(error, errors.SkiffError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _scratch_file(directory: str) -> int:
    """An unnamed file to catch a runtime's stderr (a named one, unlinked, where O_TMPFILE is missing)."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        path = os.path.join(directory, f".stderr-{os.getpid()}-{time.monotonic_ns()}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.unlink(path)
        return fd


def _last_error(log: str) -> str:
    """The ``msg`` of the last error record in a runtime's JSON log (no json module needed)."""
    from _json import scanstring

    for line in reversed(log.splitlines()):
        if '"error"' not in line or (key := line.find('"msg"')) < 0:
            continue
        quote = line.find('"', line.find(":", key) + 1)
        try:
            return scanstring(line, quote + 1)[0]
        except (ValueError, IndexError):
            continue
    return ""


# --- sessions: the container's init and each exec -------------------------------------------------

class Stdio:
    """One process's stdio as the monitor holds it: pipes, or the pty master the runtime sends.

    ``child`` are the fds the runtime gets as its stdio (the process inherits them); they are
    closed here as soon as the runtime runs, so end-of-file means the process side has gone.
    """

    def __init__(self, tty: bool, open_stdin: bool, null_r: int, null_w: int) -> None:
        self.tty = tty
        self.master = -1
        self.outputs: dict[int, int] = {}  # our read fd -> stream (0 tty, 1 stdout, 2 stderr)
        self.stdin = -1  # where stdin bytes go
        if tty:
            self.child: tuple[int, int, int] = (null_r, null_w, null_w)
            self._owned: list[int] = []
            return
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        in_r = null_r
        if open_stdin:
            in_r, self.stdin = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(self.stdin, False)
        self.outputs = {out_r: STDOUT, err_r: STDERR}
        self.child = (in_r, out_w, err_w)
        self._owned = [fd for fd in self.child if fd not in (null_r, null_w)]
        for fd in self._owned:
            # A container user other than root reopens /proc/self/fd/N (/dev/stdout): let it.
            os.fchmod(fd, 0o777)
        for fd in self.outputs:
            os.set_blocking(fd, False)

    def runtime_started(self) -> None:
        """The runtime holds the child ends now (or failed): ours must go for EOF to mean anything."""
        for fd in self._owned:
            os.close(fd)
        self._owned = []

    def set_master(self, master: int, open_stdin: bool) -> None:
        os.set_blocking(master, False)
        self.master = master
        self.outputs = {master: TTY}
        if open_stdin:
            self.stdin = os.dup(master)  # its own fd, so epoll can watch it for writing separately


class Session:
    """A process the monitor supervises: its stdio, the clients attached to it, and its exit.

    ``finished(session)`` is called once the process has exited and its output has been read to
    the end (or for ``DRAIN_SECONDS`` after the exit, if something else still holds the pipes).
    """

    def __init__(self, mon: ContainerMonitor, stdio: Stdio, *, log: JsonFileWriter | None,
                 stdin_once: bool, finished: Callable[[Session], None]) -> None:
        self.mon, self.stdio, self.log = mon, stdio, log
        self.stdin_once = stdin_once
        self.finished_cb = finished
        self.clients: list[Client] = []
        self.pid = 0
        self.exit_code: int | None = None
        self.done = False
        self._pending = bytearray()
        self._stdin_closing = False
        self._watching_stdin = False
        self._drain_timer: list | None = None

    # output
    def watch_outputs(self) -> None:
        for fd, stream in self.stdio.outputs.items():
            self.mon.loop.add(fd, _EPOLLIN, lambda _ev, fd=fd, stream=stream: self._read(fd, stream))

    def _read(self, fd: int, stream: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:  # EIO: a pty whose slave side is all closed
                raise
            data = b""
        if not data:
            self._close_output(fd, stream)
            self._maybe_done()
            return
        if self.log is not None:
            self.log.write(stream or STDOUT, data)
        for client in list(self.clients):
            client.output(stream, data)

    def _close_output(self, fd: int, stream: int) -> None:
        self.mon.loop.remove(fd)
        del self.stdio.outputs[fd]
        if self.log is not None:
            self.log.flush(stream or STDOUT)
        if fd != self.stdio.master:
            os.close(fd)

    # stdin
    def feed_stdin(self, data: bytes) -> None:
        if self.stdio.stdin < 0 or self._stdin_closing:
            return
        self._pending += data
        self._write_stdin()

    def end_stdin(self) -> None:
        """Close stdin once what is buffered is written. A terminal stays open: closing the master
        would hang up the whole session, and Docker does not either."""
        if self.stdio.tty:
            return
        self._stdin_closing = True
        self._write_stdin()

    def client_stdin_done(self) -> None:
        if self.stdin_once:
            self.end_stdin()

    def _write_stdin(self, _events: int = 0) -> None:
        fd = self.stdio.stdin
        if fd < 0:
            return
        try:
            while self._pending:
                del self._pending[:os.write(fd, self._pending)]
        except BlockingIOError:
            pass
        except OSError:  # EPIPE: the reader is gone; nobody will read what is left
            self._pending.clear()
            self._stdin_closing = True
        self._watch_stdin(bool(self._pending))
        if not self._pending and self._stdin_closing:
            self._close_stdin()

    def _watch_stdin(self, want: bool) -> None:
        if want and not self._watching_stdin:
            self.mon.loop.add(self.stdio.stdin, _EPOLLOUT, self._write_stdin)
        elif not want and self._watching_stdin:
            self.mon.loop.remove(self.stdio.stdin)
        self._watching_stdin = want

    def _close_stdin(self) -> None:
        if self.stdio.stdin >= 0:
            self._watch_stdin(False)
            os.close(self.stdio.stdin)
            self.stdio.stdin = -1

    # terminal
    def resize(self, height: int, width: int) -> None:
        if self.stdio.master >= 0:
            fcntl.ioctl(self.stdio.master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    # exit
    def process_exited(self, status: int) -> None:
        self.exit_code = _exit_code(status)
        self._drain_timer = self.mon.loop.later(DRAIN_SECONDS, self._finish)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.exit_code is not None and not self.stdio.outputs and not self.done:
            self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        Loop.cancel(self._drain_timer)
        for fd, stream in list(self.stdio.outputs.items()):
            self._close_output(fd, stream)
        self._pending.clear()
        self._close_stdin()
        if self.stdio.master >= 0:
            os.close(self.stdio.master)
            self.stdio.master = -1
        self.finished_cb(self)

    def discard(self) -> None:
        """Forget a session whose process never ran (a failed start): close everything quietly."""
        self.stdio.runtime_started()
        for fd in list(self.stdio.outputs):
            os.close(fd)
        self.stdio.outputs.clear()
        self._close_stdin()
        if self.stdio.master >= 0:
            os.close(self.stdio.master)
        self.done = True


# --- clients ---------------------------------------------------------------------------------------

class Client:
    """One connection to monitor.sock: requests, and optionally an attached session's streams."""

    def __init__(self, mon: ContainerMonitor, sock: _socket.socket) -> None:
        self.mon, self.sock, self.fd = mon, sock, sock.fileno()
        self._in = bytearray()
        self._out = bytearray()
        self._closing = False
        self._draining = False
        self.closed = False
        self.session: Session | None = None  # attached to (the container's or its exec)
        self.streams: frozenset[int] = frozenset()
        self.stdin = False
        self.exec: ExecSession | None = None  # the exec this connection created
        mon.loop.add(self.fd, _EPOLLIN, self._event)

    def attach(self, session: Session, streams: frozenset[int], stdin: bool) -> None:
        self.session, self.streams, self.stdin = session, streams, stdin
        session.clients.append(self)

    def output(self, stream: int, data: bytes) -> None:
        if stream in self.streams:
            self.send(stream, data)

    def reply(self, **fields: object) -> None:
        self.send(REPLY, _json({"ok": True, **fields}))

    def fail(self, kind: str, message: str) -> None:
        self.send(REPLY, _json({"ok": False, "kind": kind, "error": message}))

    def send(self, kind: int, payload: bytes) -> None:
        if self.closed:
            return
        self._out += HEADER.pack(kind, len(payload))
        self._out += payload
        if len(self._out) > CLIENT_BACKLOG_LIMIT:
            print(f"monitor: dropping a client {len(self._out)} bytes behind", file=sys.stderr)
            self.close()
            return
        self._flush()

    def close_when_flushed(self) -> None:
        self._closing = True
        if not self._out:
            self._finish_sending()

    def _finish_sending(self) -> None:
        """Everything is sent: half-close, then hang up when the client does. Closing at once could
        discard what the client sent meanwhile unread, and the kernel then flags the client's end with
        ECONNRESET, which its reader may report before our last frames (asyncio's does)."""
        if self._draining:
            return
        self._draining = True
        try:
            self.sock.shutdown(_socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self.mon.loop.modify(self.fd, _EPOLLIN)

    def _event(self, events: int) -> None:
        if events & _EPOLLOUT:
            self._flush()
        if not self.closed and events & ~_EPOLLOUT:
            self._receive()

    def _flush(self) -> None:
        try:
            while self._out:
                del self._out[:self.sock.send(self._out)]
        except BlockingIOError:
            pass
        except OSError:
            self.close()
            return
        if self._closing and not self._out:
            self._finish_sending()
            return
        self.mon.loop.modify(self.fd, _EPOLLIN | (_EPOLLOUT if self._out else 0))

    def _receive(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        if self._draining:
            return  # what a client sends after we said our last is of no use any more
        self._in += data
        while len(self._in) >= HEADER.size and not self.closed:
            kind, size = HEADER.unpack_from(self._in)
            if size > MAX_FRAME:
                self.close()
                return
            if len(self._in) < HEADER.size + size:
                break
            payload = bytes(self._in[HEADER.size:HEADER.size + size])
            del self._in[:HEADER.size + size]
            self.mon.dispatch(self, kind, payload)

    def close(self) -> None:
        """Hang up; what this client had attached sees its stdin end (StdinOnce applies)."""
        if self.closed:
            return
        self.closed = True
        self.mon.loop.remove(self.fd)
        self.sock.close()
        if self.session is not None:
            if self in self.session.clients:
                self.session.clients.remove(self)
            if self.stdin:
                self.session.client_stdin_done()
        self.mon.client_closed(self)


class ExecSession(Session):
    """An exec: its process file and, once started, the exec'd process. Owned by one connection."""

    def __init__(self, mon: ContainerMonitor, exec_id: str, stdio: Stdio, open_stdin: bool) -> None:
        super().__init__(mon, stdio, log=None, stdin_once=True, finished=mon.exec_finished)
        self.exec_id = exec_id
        self.open_stdin = open_stdin
        self.started = False
        base = os.path.join(mon.opts.state_dir, f"exec-{exec_id}")
        self.process_file, self.pid_file = f"{base}.json", f"{base}.pid"
        self.console: _socket.socket | None = None
        self.console_path: ShortPath | None = None

    def remove_files(self) -> None:
        for path in (self.process_file, self.pid_file):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        _close_console(self)


def _close_console(holder: ExecSession | ContainerMonitor) -> None:
    if holder.console is not None:
        holder.console.close()
        holder.console = None
    if holder.console_path is not None:
        try:
            os.unlink(holder.console_path.full)
        except FileNotFoundError:
            pass
        holder.console_path.close()
        holder.console_path = None


# --- the monitor -----------------------------------------------------------------------------------

class Options:
    """The monitor's command line (argparse would cost milliseconds; this is all it needs)::

        --id ID --bundle DIR --state-dir DIR --runtime-root DIR [--log-path FILE] [--log-max-size N]
        [--log-max-file N] [--tty] [--stdin] [--stdin-once] [--in-process] -- RUNTIME [ARGS...]

    ``--in-process``: RUNTIME is Skiff's own; call it as a library for create/start/kill/delete.
    """

    _VALUES = {"--id": "container_id", "--bundle": "bundle", "--state-dir": "state_dir",
               "--runtime-root": "runtime_root", "--log-path": "log_path", "--log-max-size": "log_max_size",
               "--log-max-file": "log_max_files"}
    _FLAGS = {"--tty": "tty", "--stdin": "open_stdin", "--stdin-once": "stdin_once", "--in-process": "in_process"}

    def __init__(self, argv: list[str]) -> None:
        self.container_id = self.bundle = self.state_dir = self.runtime_root = self.log_path = ""
        self.log_max_size = ""
        self.log_max_files = "1"
        self.tty = self.open_stdin = self.stdin_once = self.in_process = False
        self.runtime: list[str] = []
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg == "--":
                self.runtime = argv[i + 1:]
                break
            if arg in self._FLAGS:
                setattr(self, self._FLAGS[arg], True)
                i += 1
            elif arg in self._VALUES and i + 1 < len(argv):
                setattr(self, self._VALUES[arg], argv[i + 1])
                i += 2
            else:
                raise SystemExit(f"monitor: unexpected argument {arg!r}")
        if not (self.container_id and self.bundle and self.state_dir and self.runtime_root and self.runtime):
            raise SystemExit("monitor: --id, --bundle, --state-dir, --runtime-root and -- RUNTIME are required")


class ContainerMonitor:
    """The container: its create/start/exit life, its exec sessions, and the control socket."""

    def __init__(self, opts: Options, report_fd: int) -> None:
        self.opts = opts
        self._report_fd = report_fd
        self.loop = Loop()
        self.reaper = Reaper(self.loop)
        self.null_r = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        self.null_w = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
        self.calls = 0  # runtime commands in flight; `delete` waits for them
        self.state = "creating"
        self.started_at = ""
        self.exit: dict[str, object] | None = None
        self.clients: list[Client] = []
        self.waiters: list[Client] = []
        self.execs: dict[str, ExecSession] = {}
        self._exit: dict[str, object] = {}
        self.shutting_down = False
        self.runtime = LibraryRuntime(self) if opts.in_process else CommandRuntime(self)
        log = None
        if opts.log_path:
            log = JsonFileWriter(opts.log_path, max_size=parse_size(opts.log_max_size),
                                 max_files=int(opts.log_max_files or 1))
        self.log = log
        stdio = Stdio(opts.tty, opts.open_stdin, self.null_r, self.null_w)
        self.container = Session(self, stdio, log=log, stdin_once=opts.stdin_once, finished=self._container_finished)
        try:  # an earlier run's exit must not be taken for this one's
            os.unlink(os.path.join(opts.state_dir, EXIT_FILE))
        except FileNotFoundError:
            pass
        self.socket_path = os.path.join(opts.state_dir, SOCKET_NAME)
        self.listener = _listen(self.socket_path, 64)
        self.console: _socket.socket | None = None
        self.console_path: ShortPath | None = None
        self._oom_file: str | None = None
        self._oom_before = 0
        self._ops = {"status": self._op_status, "start": self._op_start, "kill": self._op_kill,
                     "resize": self._op_resize, "close_stdin": self._op_close_stdin, "wait": self._op_wait,
                     "attach": self._op_attach, "exec": self._op_exec}

    # --- create ------------------------------------------------------------------------------------
    def create(self) -> None:
        console_socket = None
        if self.opts.tty:
            self.console, self.console_path = self._console_socket("console.sock")
            console_socket = self.console_path.path
        self.runtime.create(os.path.join(self.opts.state_dir, PID_FILE), console_socket, self.container.stdio.child,
                            self._created)
        self.container.stdio.runtime_started()

    def _console_socket(self, name: str) -> tuple[_socket.socket, ShortPath]:
        path = os.path.join(self.opts.state_dir, name)
        return _listen(path, 1), ShortPath(path)

    def _created(self, code: int, message: str) -> None:
        if code == 0:
            try:
                self._take_container(int(_read(os.path.join(self.opts.state_dir, PID_FILE))))
                return
            except (OSError, ValueError) as e:
                message = f"runtime create succeeded but left no usable container: {e}"
        self._report(f"error {message}")
        # A failed create may leave runtime state behind (a half-made container): remove it.
        self.runtime.delete(lambda *_: self._stop_now())

    def _take_container(self, pid: int) -> None:
        if self.opts.tty:
            master = _receive_fd(self.console)  # type: ignore[arg-type]
            _close_console(self)
            if master < 0:
                raise OSError("the runtime sent no terminal on the console socket")
            self.container.stdio.set_master(master, self.opts.open_stdin)
        self.container.pid = pid
        self._oom_file = _oom_counter_file(pid)
        self._oom_before = _oom_kills(self._oom_file)
        self.reaper.watch(pid, self.container.process_exited)
        self.container.watch_outputs()
        self.state = "created"
        self.loop.add(self.listener.fileno(), _EPOLLIN, self._accept)
        self._report(f"ok {pid} {os.getpid()}")

    def _report(self, line: str) -> None:
        """Tell the launcher how create went (one line), then let go of its pipe."""
        if self._report_fd >= 0:
            try:
                os.write(self._report_fd, (line.replace("\n", " ") + "\n").encode())
            except OSError:
                pass  # the daemon went away meanwhile: the socket and exit file still tell
            os.close(self._report_fd)
            self._report_fd = -1

    # --- requests ----------------------------------------------------------------------------------
    def _accept(self, _events: int) -> None:
        while True:
            try:
                fd, _ = self.listener._accept()
            except BlockingIOError:
                return
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
            sock.setblocking(False)
            self.clients.append(Client(self, sock))

    def dispatch(self, client: Client, kind: int, payload: bytes) -> None:
        if kind == REQUEST:
            head, _, body = payload.partition(b"\n")
            words = head.decode("ascii", "replace").split()
            op = self._ops.get(words[0] if words else "")
            if op is None:
                client.fail("InvalidArgument", f"unknown request {head[:40]!r}")
                return
            try:
                op(client, words[1:], body)
            except (ValueError, IndexError):
                client.fail("InvalidArgument", f"malformed request {head[:80]!r}")
        elif kind in (STDIN, STDIN_EOF) and client.stdin and client.session is not None:
            if kind == STDIN:
                client.session.feed_stdin(payload)
            else:
                client.session.client_stdin_done()

    def _status(self) -> dict[str, object]:
        exit_ = self.exit or {}
        return {"pid": self.container.pid, "monitor_pid": os.getpid(), "status": self.state,
                "exit_code": exit_.get("exit_code"), "started_at": self.started_at,
                "finished_at": exit_.get("finished_at", ""), "oom_killed": bool(exit_.get("oom_killed")),
                "tty": self.opts.tty}

    def _op_status(self, client: Client, _args: list[str], _body: bytes) -> None:
        client.reply(**self._status())

    def _op_start(self, client: Client, _args: list[str], _body: bytes) -> None:
        if client.exec is not None:
            self._start_exec(client, client.exec)
            return
        if self.state != "created":
            client.fail("Conflict", f"container is {self.state}, not created")
            return
        self.state = "running"  # from the moment start is asked: init may exit before start returns
        self.started_at = _now()

        def done(code: int, message: str) -> None:
            if code != 0:
                self.started_at = ""
                client.fail("SystemFailure", message)
                self._kill_init()  # a container that cannot start must not linger half-made
                return
            client.reply()

        self.runtime.start(done)

    def _kill_init(self) -> None:
        # init is our unreaped child, so its pid cannot have been reused.
        if self.container.exit_code is None:
            try:
                os.kill(self.container.pid, _signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _op_kill(self, client: Client, args: list[str], _body: bytes) -> None:
        signal = int(args[0])
        if client.exec is not None:
            self._kill_exec(client, client.exec, signal)
            return
        if self.exit is not None or self.container.exit_code is not None or self.state == "creating":
            client.fail("Conflict", "container is not running")
            return

        def done(code: int, message: str) -> None:
            if code == 0:
                client.reply()
            elif self.container.exit_code is not None:
                client.fail("Conflict", "container is not running")
            else:
                client.fail("SystemFailure", message)

        self.runtime.kill(signal, done)

    def _op_resize(self, client: Client, args: list[str], _body: bytes) -> None:
        height, width = int(args[0]), int(args[1])
        target = client.exec or self.container
        if target.done:
            client.fail("Conflict", "the process has exited")
            return
        target.resize(height, width)
        client.reply()

    def _op_close_stdin(self, client: Client, _args: list[str], _body: bytes) -> None:
        (client.exec or self.container).end_stdin()
        client.reply()

    def _op_wait(self, client: Client, _args: list[str], _body: bytes) -> None:
        if self.exit is not None:
            client.reply(**self.exit)
        else:
            self.waiters.append(client)

    def _op_attach(self, client: Client, args: list[str], _body: bytes) -> None:
        stdin, stdout, stderr = (a == "1" for a in args[:3])
        if client.session is not None:
            client.fail("InvalidArgument", "attach STDIN STDOUT STDERR, once per connection")
            return
        streams = ({TTY} if stdout or stderr else set()) if self.opts.tty else \
            {s for s, on in ((STDOUT, stdout), (STDERR, stderr)) if on}
        client.attach(self.container, frozenset(streams), stdin and self.opts.open_stdin)
        client.reply()
        if self.exit is not None:
            client.send(EXIT, _json(self.exit))
            client.close_when_flushed()

    # --- exec --------------------------------------------------------------------------------------
    def _op_exec(self, client: Client, args: list[str], body: bytes) -> None:
        exec_id, tty, open_stdin = args[0], args[1] == "1", args[2] == "1"
        wanted = {STDOUT: args[3:4] != ["0"], STDERR: args[4:5] != ["0"]}
        if not exec_id.replace("-", "").replace("_", "").isalnum() or client.session is not None:
            client.fail("InvalidArgument", f"bad exec request for {exec_id!r}")
        elif exec_id in self.execs:
            client.fail("AlreadyExists", f"exec {exec_id} exists")
        elif self.state != "running" or self.container.exit_code is not None:
            client.fail("Conflict", "container is not running")
        else:
            session = ExecSession(self, exec_id, Stdio(tty, open_stdin, self.null_r, self.null_w), open_stdin)
            with open(session.process_file, "wb") as f:  # read once by `runtime exec`: no fsync
                f.write(body)
            self.execs[exec_id] = session
            client.exec = session
            streams = ({TTY} if any(wanted.values()) else set()) if tty else {s for s, on in wanted.items() if on}
            client.attach(session, frozenset(streams), open_stdin)
            client.reply()

    def _start_exec(self, client: Client, session: ExecSession) -> None:
        if session.started:
            client.fail("Conflict", f"exec {session.exec_id} has been started already")
            return
        session.started = True
        args = ["exec", "--process", session.process_file, "--detach", "--pid-file", session.pid_file]
        if session.stdio.tty:
            session.console, session.console_path = self._console_socket(f"exec-{session.exec_id}.sock")
            args += ["--console-socket", session.console_path.path]

        def done(code: int, message: str) -> None:
            if code == 0:
                try:
                    self._exec_running(session, int(_read(session.pid_file)))
                    client.reply(pid=session.pid)
                    return
                except (OSError, ValueError) as e:
                    message = f"runtime exec succeeded but left no usable process: {e}"
            client.fail("SystemFailure", message)
            self._drop_exec(session)
            client.close_when_flushed()  # the session is over before it began

        RuntimeCall(self, [*args, self.opts.container_id], done, session.stdio.child)
        session.stdio.runtime_started()

    def _exec_running(self, session: ExecSession, pid: int) -> None:
        if session.stdio.tty:
            master = _receive_fd(session.console)  # type: ignore[arg-type]
            _close_console(session)
            if master < 0:
                os.kill(pid, _signal.SIGKILL)  # reaped below; its session ends with 137
                raise OSError("the runtime sent no terminal on the console socket")
            session.stdio.set_master(master, session.open_stdin)
        session.pid = pid
        session.watch_outputs()
        self.reaper.watch(pid, session.process_exited)
        if not session.clients:  # its client left before the start finished
            session.end_stdin()

    def _kill_exec(self, client: Client, session: ExecSession, signal: int) -> None:
        if not session.pid or session.exit_code is not None:
            client.fail("Conflict", "exec is not running")
            return
        os.kill(session.pid, signal)  # our unreaped child: the pid is still its own
        client.reply()

    def exec_finished(self, session: Session) -> None:
        assert isinstance(session, ExecSession)
        session.remove_files()  # before the EXIT: whoever hears of it finds nothing left
        self.execs.pop(session.exec_id, None)
        status = {"exit_code": session.exit_code, "finished_at": _now(), "oom_killed": False}
        for client in list(session.clients):
            client.send(EXIT, _json(status))
            client.close_when_flushed()
        self._maybe_stop()

    def _drop_exec(self, session: ExecSession) -> None:
        if not session.done:
            session.discard()
        session.remove_files()
        self.execs.pop(session.exec_id, None)
        self._maybe_stop()

    def client_closed(self, client: Client) -> None:
        if client in self.clients:
            self.clients.remove(client)
        if client in self.waiters:
            self.waiters.remove(client)
        session = client.exec
        if session is not None and not session.started:
            self._drop_exec(session)  # created but never started: nothing else will end it
        self._maybe_stop()

    # --- exit --------------------------------------------------------------------------------------
    def _container_finished(self, session: Session) -> None:
        """init has exited and its output is in: record the exit, but announce it only once the
        runtime has deleted the container and the exit file is written (``_deleted``)."""
        self._exit = {"exit_code": session.exit_code, "finished_at": _now(), "oom_killed": self._oom_killed()}
        if self.log is not None:
            self.log.close()
        self._delete_when_idle()

    def _oom_killed(self) -> bool:
        return _oom_kills(self._oom_file) > self._oom_before

    def _delete_when_idle(self) -> None:
        """`runtime delete` once no other runtime command is in flight (a start may still be)."""
        if self.calls:
            self.loop.later(0.02, self._delete_when_idle)
            return
        try:
            self.runtime.delete(self._deleted)
        except Exception as e:  # whatever failed, the exit is still recorded and the monitor ends
            self._deleted(1, f"runtime delete: {e}")

    def _deleted(self, code: int, message: str) -> None:
        if code:
            print(f"monitor: runtime delete: {message}", file=sys.stderr)
        self.exit = {**self._exit, "started_at": self.started_at}
        self.state = "exited"
        # No fsync: the state dir is under the exec root (/run), describing processes a power loss ends.
        try:
            write_atomically(os.path.join(self.opts.state_dir, EXIT_FILE), _json(self.exit) + b"\n",
                             durable=False)
        except OSError as e:  # the state dir removed under us: no record to keep, but the monitor still ends
            print(f"monitor: cannot record the exit: {e}", file=sys.stderr)
        self._stop_serving()  # whoever learns of the exit finds the exit file and no socket
        for client in self.waiters:
            client.reply(**self.exit)
        self.waiters.clear()
        for client in list(self.container.clients):
            client.send(EXIT, _json(self.exit))
            client.close_when_flushed()
        self._shut_down()

    def _shut_down(self) -> None:
        """Stop serving; exit once every client has its replies (or after ``LINGER_SECONDS``)."""
        self.shutting_down = True
        for client in list(self.clients):
            if client.exec is None or client.exec.done:
                client.close_when_flushed()
        self.loop.later(LINGER_SECONDS, self._stop_now)
        self._maybe_stop()

    def _stop_serving(self) -> None:
        if self.listener.fileno() >= 0:
            self.loop.remove(self.listener.fileno())
            self.listener.close()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def _maybe_stop(self) -> None:
        if self.shutting_down and not self.clients and not self.execs:
            self._stop_now()

    def _stop_now(self) -> None:
        self._stop_serving()
        self.reaper.reap()
        self.loop.stopped = True


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _oom_counter_file(pid: int) -> str | None:
    """Where the kernel counts OOM kills for ``pid``'s cgroup (v1 memory controller or v2)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    unified = None
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return f"/sys/fs/cgroup/memory{path}/memory.oom_control"
        if hierarchy == "0" and not controllers:
            unified = f"/sys/fs/cgroup{path}/memory.events"
    return unified


def _oom_kills(path: str | None) -> int:
    if path is None:
        return 0
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


# --- entry point -----------------------------------------------------------------------------------

_prctl: Callable[..., int] | None = None


def prctl_function() -> Callable[..., int]:
    """libc's prctl, which the standard library does not wrap; built once (the spawner builds it before
    it forks monitors: making the ctypes classes dirtied ~0.2 MiB of every monitor's heap).

    Through ``_ctypes`` directly: ``import ctypes`` costs ~3 ms of the container start path for
    classes we do not use. This is the few lines of ctypes/__init__.py that a call needs.
    """
    global _prctl
    if _prctl is not None:
        return _prctl
    import _ctypes

    class CInt(_ctypes._SimpleCData):
        _type_ = "i"

    class Function(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = CInt

    class Libc:
        _handle = _ctypes.dlopen(None, os.RTLD_NOW)

    _prctl = Function(("prctl", Libc()))
    return _prctl


def _subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): orphans in our subtree (the container's init) become our children."""
    if prctl_function()(_SUBREAPER, 1, 0, 0, 0) != 0:
        import _ctypes

        raise OSError(_ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def rehearse(scratch: str, rounds: int = 10) -> None:
    """Run a monitor's own code paths on scratch files, for a spawner to call before it forks monitors.

    CPython 3.11 rewrites a function's bytecode in place while it warms up (quickening, then counters in
    the instructions), so a monitor forked before its code ever ran copies every page holding a code
    object it runs: ~0.15 MiB of each monitor. Rehearsed here, that code is already specialised and stays
    shared. The rehearsal builds a monitor (epoll loop, reaper, pipes, log, control socket), answers a
    ``status`` request from a client and carries a line of output to the log and the attached client;
    then it undoes everything it changed in this process: fds, the SIGCHLD handler, the wakeup fd.
    """
    fds_before = set(os.listdir("/proc/self/fd"))
    sigchld = _signal.getsignal(_signal.SIGCHLD)
    try:
        for _ in range(rounds):
            args = ["--id", "rehearsal", "--bundle", scratch, "--state-dir", scratch, "--runtime-root", scratch,
                    "--log-path", os.path.join(scratch, "log"), "--in-process", "--stdin", "--", "rehearsal"]
            mon = ContainerMonitor(Options(args), -1)
            ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
            client = Client(mon, ours)
            theirs.sendall(HEADER.pack(REQUEST, 6) + b"status")
            client._event(_EPOLLIN)
            client.attach(mon.container, frozenset((OUT, ERR)), stdin=False)
            out_w = mon.container.stdio.child[1]
            os.write(out_w, b"rehearsal\n")
            for fd, stream in mon.container.stdio.outputs.items():
                mon.container._read(fd, stream)
            theirs.recv(65536)
            mon.log.flush()  # type: ignore[union-attr]
            # Objects that close their fd when collected are closed here; the raw fds are swept below.
            for owner in (theirs, ours, mon.listener, mon.loop._epoll):
                owner.close()
    finally:
        _signal.set_wakeup_fd(-1)
        _signal.signal(_signal.SIGCHLD, sigchld)
        for fd in set(os.listdir("/proc/self/fd")) - fds_before:
            try:
                os.close(int(fd))
            except OSError:
                pass  # the listing's own fd, gone already


def _daemonize(state_dir: str) -> int:
    """Leave the launcher: fork (the parent exits at once), new session, stdio away from its pipes.

    Returns the fd of the launcher's pipe, on which ``_report`` answers once create is done.
    """
    if os.fork():
        os._exit(0)
    os.setsid()
    report = os.dup(1)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    # Our own diagnostics (tracebacks, dropped clients) go to a file beside the state.
    err = os.open(os.path.join(state_dir, MONITOR_LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(err, 2)
    os.close(err)
    os.chdir("/")
    return report


def main(argv: list[str] | None = None) -> None:
    opts = Options(sys.argv[1:] if argv is None else argv)
    report = _daemonize(opts.state_dir)
    try:
        _subreaper()
        monitor = ContainerMonitor(opts, report)
        monitor.create()
    except Exception as e:
        os.write(report, f"error monitor: {e}\n".encode())
        raise
    monitor.loop.run()
    sys.stderr.flush()
    os._exit(0)  # nothing to tear down that exit does not release, and teardown costs milliseconds


if __name__ == "__main__":
    main()

