"""Driving OCI runtimes (Skiff's and runc) through their command line, for the runtime tests.

``Runtime`` wraps one runtime command with its own ``--root``; every container it creates gets a
unique id and ``linux.cgroupsPath = /skiff-test/<id>`` (absolute, so the session's leak check sees
it) and is remembered so ``cleanup()`` can force-delete it and check nothing remains.
``ConsoleSocket`` is a tiny ``recvtty``: it receives the pty master a runtime sends over
``--console-socket`` and collects what the container writes to its terminal.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.leakcheck import CGROUP_MARKER, SESSION_TAG, cgroup_hierarchies

REPO = Path(__file__).resolve().parents[2]

# The ``bundle`` fixture: bundle(args, terminal=False, **spec_overrides) -> Path.
BundleFactory = Callable[..., Path]


def _find_runc() -> str | None:
    """The peer runc: ``SKIFF_TEST_RUNC`` (a path; empty means "pretend it is missing"), else PATH."""
    explicit = os.environ.get("SKIFF_TEST_RUNC")
    if explicit is not None:
        return explicit if explicit and os.access(explicit, os.X_OK) else None
    return shutil.which("runc") or ("/usr/sbin/runc" if os.access("/usr/sbin/runc", os.X_OK) else None)


RUNC = _find_runc()
DEFAULT_TIMEOUT = 60.0
_ids = itertools.count(1)


def skiff_command() -> list[str]:
    """How to start Skiff's runtime: ``SKIFF_RUNTIME_CMD``, the venv's ``skiff-runtime``, or ``-m``."""
    explicit = os.environ.get("SKIFF_RUNTIME_CMD")
    if explicit:
        return shlex.split(explicit)
    beside = Path(sys.executable).parent / "skiff-runtime"
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-m", "skiff.runtime.cli"]


def runtime_commands() -> dict[str, list[str] | None]:
    """Every runtime the suite knows, by name; None when it is not installed."""
    return {"runc": [RUNC] if RUNC else None, "skiff": skiff_command()}


def selected_runtimes() -> list[str]:
    """Runtimes chosen with ``SKIFF_TEST_RUNTIMES=runc,skiff`` (default: both)."""
    raw = os.environ.get("SKIFF_TEST_RUNTIMES", "runc,skiff")
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = set(names) - set(runtime_commands())
    if unknown:
        raise ValueError(f"SKIFF_TEST_RUNTIMES: unknown runtime(s) {sorted(unknown)}; known: runc, skiff")
    return names


def cgroup_dirs(cgroups_path: str) -> list[str]:
    """The directories ``cgroups_path`` (absolute) names in every mounted hierarchy, existing or not."""
    return [os.path.join(h.mountpoint, cgroups_path.lstrip("/")) for h in cgroup_hierarchies()]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def force_remove_cgroup(cgroups_path: str) -> None:
    """Thaw, SIGKILL every process in, and remove ``cgroups_path`` in every hierarchy (best effort)."""
    dirs = [d for d in cgroup_dirs(cgroups_path) if os.path.isdir(d)]
    for d in dirs:
        with contextlib.suppress(OSError):
            Path(d, "freezer.state").write_text("THAWED")
        with contextlib.suppress(OSError):
            Path(d, "cgroup.freeze").write_text("0")
    for d in dirs:
        for sub, _dirs, _files in os.walk(d):
            with contextlib.suppress(OSError):
                for pid in Path(sub, "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), 9)
    for d in dirs:
        for sub, _dirs, _files in sorted(os.walk(d), key=lambda e: -e[0].count("/")):
            wait_for(lambda s=sub: _try_rmdir(s), timeout=5)


def _try_rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


class CommandFailed(AssertionError):
    """A runtime command that had to succeed did not."""


class Runtime:
    """One OCI runtime command line (runc's), with its own state directory."""

    def __init__(self, name: str, cmd: Sequence[str], root: Path) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.root = Path(root)
        self.created: list[str] = []
        self.env = dict(os.environ)
        if self.cmd[1:3] == ["-m", "skiff.runtime.cli"]:  # not installed: run from the checkout
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), self.env.get("PYTHONPATH")]))

    def __repr__(self) -> str:
        return f"Runtime({self.name!r}, root={str(self.root)!r})"

    # --- raw command line --------------------------------------------------------------------

    def __call__(self, *args: str, timeout: float | None = DEFAULT_TIMEOUT, input: str | None = None,
                 **kw: Any) -> subprocess.CompletedProcess[str]:
        """``<runtime> --root ROOT ARGS...``, output captured as text, stdin empty unless given.

        Output goes to files, not pipes: a detached container inherits the runtime's stdio, and a
        pipe would keep us waiting for an EOF until the container exits.
        """
        argv = [*self.cmd, "--root", str(self.root), *args]
        if input is None:
            kw.setdefault("stdin", subprocess.DEVNULL)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            r = subprocess.run(argv, stdout=out, stderr=err, timeout=timeout, input=input,
                               env=self.env, text=input is not None, **kw)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(argv, r.returncode, out.read().decode(errors="replace"),
                                               err.read().decode(errors="replace"))

    def ok(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Like calling, but the command must exit 0."""
        r = self(*args, **kw)
        if r.returncode != 0:
            raise CommandFailed(f"{self.name} {' '.join(args)} exited {r.returncode}\n"
                                f"stdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    # --- containers --------------------------------------------------------------------------

    def new_id(self, hint: str = "c") -> str:
        return f"{SESSION_TAG}-{next(_ids)}-{self.name}-{hint}"[:60]

    def prepare(self, bundle: str | os.PathLike[str], cid: str) -> None:
        """Point the bundle's cgroupsPath at /skiff-test/<cid> and remember the id for cleanup."""
        path = Path(bundle) / "config.json"
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError):
            spec = None  # a deliberately broken bundle: leave it as it is
        linux = spec.setdefault("linux", {}) if isinstance(spec, dict) else None
        # A test that set its own cgroupsPath keeps it; ours is rewritten for each new container.
        if isinstance(linux, dict) and str(linux.get("cgroupsPath") or f"/{CGROUP_MARKER}/").startswith(
                f"/{CGROUP_MARKER}/"):
            linux["cgroupsPath"] = f"/{CGROUP_MARKER}/{cid}"
            path.write_text(json.dumps(spec, indent=2))
        if cid not in self.created:
            self.created.append(cid)

    def run(self, bundle: str | os.PathLike[str], cid: str | None = None, *extra: str,
            detach: bool = False, timeout: float | None = DEFAULT_TIMEOUT,
            **kw: Any) -> subprocess.CompletedProcess[str]:
        cid = cid or self.new_id("run")
        self.prepare(bundle, cid)
        flags = ["-d"] if detach else []
        return self("run", "--bundle", str(bundle), *flags, *extra, cid, timeout=timeout, **kw)

    def create(self, bundle: str | os.PathLike[str], cid: str | None = None, *extra: str,
               **kw: Any) -> subprocess.CompletedProcess[str]:
        cid = cid or self.new_id("create")
        self.prepare(bundle, cid)
        return self("create", "--bundle", str(bundle), *extra, cid, **kw)

    def state(self, cid: str) -> dict[str, Any]:
        return json.loads(self.ok("state", cid).stdout)

    def status(self, cid: str) -> str | None:
        r = self("state", cid)
        return json.loads(r.stdout)["status"] if r.returncode == 0 else None

    def wait_status(self, cid: str, status: str, timeout: float = 10.0) -> str | None:
        """Poll until the container reports ``status``; returns the last status seen."""
        last: list[str | None] = [None]

        def reached() -> bool:
            last[0] = self.status(cid)
            return last[0] == status

        wait_for(reached, timeout)
        return last[0]

    def list_json(self) -> list[dict[str, Any]]:
        return json.loads(self.ok("list", "--format", "json").stdout) or []

    def cleanup(self) -> list[str]:
        """Force-delete every container this runtime made; return what could not be cleaned."""
        problems = []
        for cid in self.created:
            try:
                r = self("delete", "--force", cid, timeout=30)
            except subprocess.TimeoutExpired:
                problems.append(f"{self.name}: delete --force {cid} timed out")
                continue
            if r.returncode != 0 and self.status(cid) is not None:
                problems.append(f"{self.name}: delete --force {cid} failed: {r.stderr.strip()}")
            if (self.root / cid).exists():
                problems.append(f"{self.name}: state dir {self.root / cid} remains")
            left = wait_for(lambda c=cid: not [d for d in cgroup_dirs(f"/{CGROUP_MARKER}/{c}")
                                               if os.path.isdir(d)], timeout=5)
            if not left:
                problems += [f"{self.name}: cgroup {d} remains" for d in cgroup_dirs(f"/{CGROUP_MARKER}/{cid}")
                             if os.path.isdir(d)]
                # Reported; now clear it away so one broken container does not disturb the next tests.
                force_remove_cgroup(f"/{CGROUP_MARKER}/{cid}")
        try:
            listed = [c["id"] for c in self.list_json() if c.get("id") in self.created]
        except (CommandFailed, ValueError, subprocess.TimeoutExpired) as e:
            listed = []
            if self.root.exists():
                problems.append(f"{self.name}: list failed after cleanup: {e}")
        problems += [f"{self.name}: {cid} still listed" for cid in listed]
        self.created.clear()
        return problems


class ConsoleSocket:
    """A ``--console-socket`` receiver (like runc's recvtty): takes the pty master over SCM_RIGHTS
    and reads the container's terminal output until the other side closes."""

    def __init__(self) -> None:
        # sun_path is at most 108 bytes: keep the socket in a short private directory.
        self.dir = tempfile.mkdtemp(prefix="skcs-", dir="/tmp")
        self.path = os.path.join(self.dir, "console.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(1)
        self.sock.settimeout(DEFAULT_TIMEOUT)
        self.master: int | None = None
        self.name = b""
        self.received = threading.Event()
        self.output = bytearray()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with conn:
                msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 4)
                if not fds:
                    raise OSError("no file descriptor received on the console socket")
                for extra in fds[1:]:
                    os.close(extra)
                self.name, self.master = msg, fds[0]
            self.received.set()
            while True:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: every slave end is closed
                    break
                if not chunk:
                    break
                self.output += chunk
        except BaseException as e:  # reported by wait()
            self.error = e
            self.received.set()

    def write(self, data: bytes) -> None:
        assert self.received.wait(DEFAULT_TIMEOUT) and self.master is not None, "no pty received"
        os.write(self.master, data)

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Wait until the terminal closes; the output with CRLF turned back into LF."""
        self._thread.join(timeout)
        if self.error:
            raise self.error
        assert not self._thread.is_alive(), f"terminal still open after {timeout}s: {bytes(self.output)!r}"
        return bytes(self.output).replace(b"\r\n", b"\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a pending accept()
        self.sock.close()
        self._thread.join(2)  # the reader ends once the container is gone
        if self.master is not None:
            with contextlib.suppress(OSError):
                os.close(self.master)
            self.master = None
        shutil.rmtree(self.dir, ignore_errors=True)
