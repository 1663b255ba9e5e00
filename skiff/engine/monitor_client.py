"""The daemon's asyncio handle on a per-container monitor (the process and its wire protocol: monitor.py).

``Monitor.launch`` starts a monitor and returns once the runtime has created the container;
``Monitor.connect`` finds a running one again after a daemon restart. Requests (start, kill, resize,
status, wait) each use a short-lived connection, so any number may be in flight at once; attach and
exec sessions hold their own connection for their streams. When the monitor has gone, ``wait`` and
``exit_status`` read the ``exit`` file it left.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import skiff
from skiff import errors
from skiff.engine.logs import parse_size
from skiff.engine.monitor import (
    EXIT,
    EXIT_FILE,
    HEADER,
    MONITOR_LOG,
    REPLY,
    REQUEST,
    SOCKET_NAME,
    STDIN,
    STDIN_EOF,
)

# Started with -I -S: no site-packages, no environment; the monitor needs only the stdlib and skiff.
_BOOT = "import sys; sys.path[:0] = [{root!r}]; from skiff.engine.monitor import main; main()"
_SPAWNER_BOOT = ("import sys; sys.path[:0] = [{root!r}]; from skiff.engine.monitor_spawner import serve; "
                 "serve(int(sys.argv[1]))")
SPAWNER_START_TIMEOUT = 30.0
SESSION_DRAIN_SECONDS = 2.0
_SKIFF_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(skiff.__file__)))

log = logging.getLogger(__name__)

# What an unread session may buffer in the daemon before it stops reading its socket (the monitor
# then buffers up to its own limit and drops the client: a stuck reader never stalls a container).
_SESSION_BUFFER = 4 << 20


@dataclass(frozen=True)
class ExitStatus:
    """How a container or exec ended, as Docker reports it (128 + signal for a signal)."""

    exit_code: int
    finished_at: str  # RFC 3339 with nanoseconds, UTC
    oom_killed: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExitStatus:
        return cls(int(data["exit_code"]), str(data.get("finished_at") or ""), bool(data.get("oom_killed")))


class _Gone(Exception):
    """The monitor's socket is missing or the connection broke: the monitor has exited (or died)."""


async def _open(state_dir: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    path = os.path.join(state_dir, SOCKET_NAME)
    dirfd = -1
    if len(path.encode()) >= 100:  # the unix socket path limit; reach it through our dir fd
        try:
            dirfd = os.open(state_dir, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _Gone(state_dir) from None
        path = f"/proc/self/fd/{dirfd}/{SOCKET_NAME}"
    try:
        return await asyncio.open_unix_connection(path)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise _Gone(state_dir) from e
    finally:
        if dirfd >= 0:
            os.close(dirfd)


def _frame(kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
    """The next frame, or None at end of stream."""
    try:
        kind, size = HEADER.unpack(await reader.readexactly(HEADER.size))
        return kind, await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def _check(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply's fields, or its error raised with the meaning the monitor gave it."""
    if reply.get("ok"):
        return reply
    kind = getattr(errors, str(reply.get("kind")), None)
    if not (isinstance(kind, type) and issubclass(kind, errors.SkiffError)):
        kind = errors.SystemFailure
    raise kind(str(reply.get("error") or "monitor request failed"))


async def _request(state_dir: str, line: str, body: bytes = b"") -> dict[str, Any]:
    """One request on its own connection; raises ``_Gone`` if the monitor is not (or no longer) there."""
    reader, writer = await _open(state_dir)
    try:
        writer.write(_frame(REQUEST, line.encode() + (b"\n" + body if body else b"")))
        await writer.drain()
        while (frame := await _read_frame(reader)) is not None:
            if frame[0] == REPLY:
                return _check(json.loads(frame[1]))
        raise _Gone(state_dir)
    except ConnectionError as e:
        raise _Gone(state_dir) from e
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _read_exit_file(state_dir: str) -> ExitStatus | None:
    try:
        with open(os.path.join(state_dir, EXIT_FILE)) as f:
            return ExitStatus.from_dict(json.load(f))
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _monitor_options(*, container_id: str, bundle: str, state_dir: str, log_path: str | None, runtime: list[str],
                     runtime_root: str, tty: bool, open_stdin: bool, stdin_once: bool,
                     log_opts: dict[str, Any] | None, in_process: bool = False) -> list[str]:
    """The monitor's command-line options (``monitor.Options``)."""
    argv = ["--id", container_id, "--bundle", os.path.abspath(bundle), "--state-dir", os.path.abspath(state_dir),
            "--runtime-root", os.path.abspath(runtime_root)]
    if log_path:
        argv += ["--log-path", os.path.abspath(log_path)]
    argv += _log_args(log_opts or {})
    argv += [flag for flag, on in (("--tty", tty), ("--stdin", open_stdin), ("--stdin-once", stdin_once),
                                   ("--in-process", in_process)) if on]
    return [*argv, "--", *runtime]


async def _start_monitor_process(options: list[str]) -> tuple[bytes, bytes]:
    """Start a monitor as a new interpreter; (its report line, its stderr before it forked away)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", "-c", _BOOT.format(root=_SKIFF_ROOT), *options,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    # The monitor forks away at once and reports how create went in one line. Read that line, not to
    # EOF: a runtime called in-process forks the container from the monitor, and the container's init
    # holds a copy of the pipe until it execs.
    out = await proc.stdout.readline()
    err = await proc.stderr.read()  # the launched process's own, closed when it forked away
    await proc.wait()
    return out, err


class MonitorSpawner:
    """The daemon's end of the monitor spawner (monitor_spawner.py): one process, started with the daemon,
    that forks each container's monitor from a heap of pre-imported, frozen modules.

    ``spawn`` returns None when the spawner is not running (never started, or died); the caller then
    starts the monitor as its own interpreter. A dead spawner is restarted on the next ``spawn``.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Lock | None = None

    async def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", "-c", _SPAWNER_BOOT.format(root=_SKIFF_ROOT), str(child.fileno()),
                pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL)
        finally:
            child.close()
        parent.setblocking(False)
        try:
            ready = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(parent, 16), SPAWNER_START_TIMEOUT)
        except (TimeoutError, OSError):
            ready = b""
        if ready != b"ready":
            parent.close()
            await self._reap()
            raise errors.SystemFailure("the monitor spawner did not start")
        self._sock = parent

    async def spawn(self, options: list[str]) -> tuple[bytes, bytes] | None:
        """Fork a monitor with ``options``; (its report line, its early stderr), or None without a spawner."""
        if self._sock is None and not await self._restart():
            return None
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            assert self._sock is not None
            self._sock.sendmsg([b"\0".join(o.encode() for o in options)],
                               [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [out_w, err_w]))])
        except OSError as e:
            log.warning("the monitor spawner has gone (%s); starting monitors as processes", e)
            for fd in (out_r, err_r):
                os.close(fd)
            await self.stop()
            return None
        finally:
            os.close(out_w)
            os.close(err_w)
        out = await _read_pipe(out_r, line=True)
        # Its early stderr matters only when it failed, and is read with a deadline: a process the daemon
        # forked meanwhile (netlink helpers) may hold a copy of the write end, so EOF may never come.
        if out.startswith(b"ok "):
            os.close(err_r)
            return out, b""
        try:
            err = await asyncio.wait_for(_read_pipe(err_r, line=False), 2.0)
        except TimeoutError:
            err = b""
        return out, err

    async def _restart(self) -> bool:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._sock is None:
                try:
                    await self.start()
                except (errors.SkiffError, OSError) as e:
                    log.warning("cannot start the monitor spawner: %s", e)
                    return False
        return True

    async def stop(self) -> None:
        """Close our end (the spawner exits on it) and reap the process. Monitors carry on."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        await self._reap()

    async def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), SPAWNER_START_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _read_pipe(fd: int, line: bool) -> bytes:
    """Everything from the pipe ``fd`` until EOF (or the first newline when ``line``); closes ``fd``."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    chunks: list[bytes] = []
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        chunks.append(data)
        if (not data or (line and b"\n" in data)) and not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return b"".join(chunks)


def _log_args(opts: dict[str, Any]) -> list[str]:
    """Docker's json-file ``max-size``/``max-file`` options, checked here so a typo fails the request."""
    args = []
    try:
        if opts.get("max-size"):
            args += ["--log-max-size", str(parse_size(opts["max-size"]))]
        if opts.get("max-file"):
            count = int(opts["max-file"])
            if count < 1:
                raise ValueError(count)
            args += ["--log-max-file", str(count)]
    except (ValueError, TypeError):
        raise errors.InvalidArgument(f"invalid json-file log options: {opts}") from None
    return args


class Monitor:
    """The daemon's handle on one container's monitor. Cheap: it holds no connection of its own."""

    def __init__(self, state_dir: str, pid: int, monitor_pid: int) -> None:
        self.state_dir = state_dir
        self.pid = pid  # the container's init, as the host sees it
        self.monitor_pid = monitor_pid
        self._sessions: set[AttachSession] = set()

    @classmethod
    async def launch(cls, *, container_id: str, bundle: str, state_dir: str, log_path: str | None,
                     runtime: list[str], runtime_root: str, tty: bool, open_stdin: bool, stdin_once: bool,
                     log_opts: dict[str, Any] | None = None, in_process: bool = False,
                     spawner: MonitorSpawner | None = None) -> Monitor:
        """Start a monitor that runs `runtime create`; return once the container is created.

        Raises ``SystemFailure`` with the runtime's one-line error if create fails. ``log_opts``
        takes Docker's json-file options ``max-size`` and ``max-file``. ``in_process``: the runtime is
        Skiff's own, which the monitor then calls as a library instead of running its command.
        ``spawner``: fork the monitor from it (fast, shared memory); without one, or when it has
        failed, the monitor is started as a new interpreter.
        """
        os.makedirs(state_dir, exist_ok=True)
        options = _monitor_options(container_id=container_id, bundle=bundle, state_dir=state_dir,
                                   log_path=log_path, runtime=runtime, runtime_root=runtime_root, tty=tty,
                                   open_stdin=open_stdin, stdin_once=stdin_once, log_opts=log_opts,
                                   in_process=in_process)
        report = await spawner.spawn(options) if spawner is not None else None
        if report is None:
            report = await _start_monitor_process(options)
        out, err = report
        words = out.decode(errors="replace").strip().split(" ", 2)
        if words[0] == "ok" and len(words) == 3:
            return cls(state_dir, int(words[1]), int(words[2]))
        message = " ".join(words[1:]) if words[0] == "error" else ""
        message = message or _last_line_of(err) or _last_line(os.path.join(state_dir, MONITOR_LOG))
        raise errors.SystemFailure(message or f"the monitor for {container_id} exited without reporting")

    @classmethod
    async def connect(cls, state_dir: str) -> Monitor | None:
        """The monitor serving ``state_dir`` (after a daemon restart), or None if it is gone."""
        try:
            status = await _request(state_dir, "status")
        except _Gone:
            return None
        return cls(state_dir, int(status["pid"]), int(status["monitor_pid"]))

    async def status(self) -> dict[str, Any]:
        """pid, monitor_pid, status (created|running|exited), exit_code, started_at, finished_at,
        oom_killed, tty."""
        return await self._call("status")

    async def start(self) -> None:
        """`runtime start`; raises ``SystemFailure`` with the runtime's error (the container is then
        killed by its monitor, and ``wait`` returns)."""
        await self._call("start")

    async def kill(self, signal: int) -> None:
        await self._call(f"kill {int(signal)}")

    async def resize(self, height: int, width: int) -> None:
        await self._call(f"resize {int(height)} {int(width)}")

    async def close_stdin(self) -> None:
        """Close the container's stdin (after what attach clients sent has been written)."""
        await self._call("close_stdin")

    async def wait(self) -> ExitStatus:
        """Wait for the container to exit (and its runtime state to be deleted)."""
        try:
            return ExitStatus.from_dict(await _request(self.state_dir, "wait"))
        except _Gone:
            status = self.exit_status()
            if status is None:
                raise errors.SystemFailure(f"the monitor in {self.state_dir} died before the container exited") \
                    from None
            return status

    def exit_status(self) -> ExitStatus | None:
        """The recorded exit, without waiting (None while the container has not exited)."""
        return _read_exit_file(self.state_dir)

    @staticmethod
    def read_exit(state_dir: str) -> ExitStatus | None:
        """The exit a monitor recorded in ``state_dir`` (for a monitor that is gone: no handle needed)."""
        return _read_exit_file(state_dir)

    async def attach(self, stdin: bool, stdout: bool, stderr: bool) -> AttachSession:
        """Stream the container's output from now on (and feed its stdin if ``stdin``)."""
        session = await AttachSession.open(self.state_dir, f"attach {int(stdin)} {int(stdout)} {int(stderr)}")
        self._track(session)
        return session

    async def exec(self, exec_id: str, process: dict[str, Any], tty: bool, open_stdin: bool, *,
                   stdout: bool = True, stderr: bool = True) -> ExecSession:
        """Create an exec session (``process`` is an OCI process object); ``start`` runs it.

        ``stdout``/``stderr`` False leave those streams unsent (a detached exec nobody reads).
        """
        body = json.dumps({**process, "terminal": tty}).encode()
        line = f"exec {exec_id} {int(tty)} {int(open_stdin)} {int(stdout)} {int(stderr)}"
        session = await ExecSession.open(self.state_dir, line, body)
        self._track(session)
        return session

    async def close(self) -> None:
        """Drop this handle and the sessions it opened; the monitor and container carry on."""
        for session in list(self._sessions):
            await session.close()

    async def close_after_exit(self, timeout: float = SESSION_DRAIN_SECONDS) -> None:
        """``close``, once the process has exited: first let every session receive what the monitor still
        sends it (the last output and the EXIT travel on each session's own connection, and may arrive
        after ``wait`` has returned on another), for at most ``timeout`` seconds."""
        readers = [session._pump for session in self._sessions]
        if readers:
            await asyncio.wait(readers, timeout=timeout)
        await self.close()

    def _track(self, session: AttachSession) -> None:
        self._sessions.add(session)
        session._on_close = self._sessions.discard

    async def _call(self, line: str) -> dict[str, Any]:
        try:
            return await _request(self.state_dir, line)
        except _Gone:
            if self.exit_status() is not None:
                raise errors.Conflict("container is not running") from None
            raise errors.SystemFailure(f"the monitor in {self.state_dir} is gone") from None


def _last_line_of(data: bytes) -> str:
    lines = [ln for ln in data.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


class AttachSession:
    """A connection streaming one process's output (and taking its stdin).

    A reader task turns frames into ``read()`` items and request replies; it stops reading the
    socket while more than ``_SESSION_BUFFER`` bytes wait to be read.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._items: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self._buffered = 0
        self._room = asyncio.Event()
        self._room.set()
        self._replies: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._exit: asyncio.Future[ExitStatus | None] = asyncio.get_running_loop().create_future()
        self._lock = asyncio.Lock()
        self._on_close: Callable[[AttachSession], None] | None = None
        self._pump = asyncio.create_task(self._run())

    @classmethod
    async def open(cls, state_dir: str, line: str, body: bytes = b"") -> Self:
        try:
            reader, writer = await _open(state_dir)
        except _Gone:
            raise errors.Conflict("container is not running") from None
        session = cls(reader, writer)
        try:
            await session._request(line, body)
        except BaseException:
            await session.close()
            raise
        return session

    async def read(self) -> tuple[int, bytes] | None:
        """``(1 stdout | 2 stderr | 0 tty, data)``, or None at the end (the process exited)."""
        item = await self._items.get()
        if item is None:
            self._items.put_nowait(None)  # every later read ends too
            return None
        self._buffered -= len(item[1])
        if self._buffered <= _SESSION_BUFFER:
            self._room.set()
        return item

    async def write(self, data: bytes) -> None:
        if data:
            await self._send(_frame(STDIN, data))

    async def close_stdin(self) -> None:
        """End of our input: the process's stdin closes if StdinOnce (an exec's always)."""
        await self._send(_frame(STDIN_EOF))

    async def close(self) -> None:
        self._pump.cancel()
        self._writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await self._writer.wait_closed()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        if self._on_close is not None:
            self._on_close(self)

    async def _send(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except ConnectionError:
            raise errors.Conflict("the process has exited") from None

    async def _request(self, line: str, body: bytes = b"") -> dict[str, Any]:
        async with self._lock:  # replies come in order: one request at a time
            await self._send(_frame(REQUEST, line.encode() + (b"\n" + body if body else b"")))
            reply = await self._replies.get()
        if reply is None:
            raise errors.Conflict("the process has exited")
        return _check(reply)

    async def _run(self) -> None:
        try:
            while (frame := await _read_frame(self._reader)) is not None:
                kind, payload = frame
                if kind == REPLY:
                    self._replies.put_nowait(json.loads(payload))
                elif kind == EXIT:
                    if not self._exit.done():
                        self._exit.set_result(ExitStatus.from_dict(json.loads(payload)))
                elif kind <= 2:
                    await self._room.wait()
                    self._buffered += len(payload)
                    if self._buffered > _SESSION_BUFFER:
                        self._room.clear()
                    self._items.put_nowait((kind, payload))
        finally:
            if not self._exit.done():
                self._exit.set_result(None)
            self._replies.put_nowait(None)
            self._items.put_nowait(None)


class ExecSession(AttachSession):
    """An exec: created by ``Monitor.exec``; ``start`` runs it, ``wait`` gives its exit."""

    pid = 0

    async def start(self) -> None:
        """`runtime exec`; raises ``SystemFailure`` with the runtime's error (e.g. executable not found)."""
        self.pid = int((await self._request("start"))["pid"])

    async def resize(self, height: int, width: int) -> None:
        await self._request(f"resize {int(height)} {int(width)}")

    async def kill(self, signal: int) -> None:
        await self._request(f"kill {int(signal)}")

    async def wait(self) -> ExitStatus:
        """The exec's exit (its output may still be queued for ``read``)."""
        status = await asyncio.shield(self._exit)
        if status is None:
            raise errors.SystemFailure("the monitor connection closed before the exec exited")
        return status
