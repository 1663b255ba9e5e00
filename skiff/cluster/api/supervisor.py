"""Child processes of ``skiff server``: the scheduler and the controller manager, each a ``skiff`` command of its
own, started, watched and stopped by the server.

They run apart from the API server so that a 2-core machine runs both at once: the server's request handling
and the scheduler's decisions each have a core (one Python process is one core: the GIL). They are plain API
clients with their own credentials, exactly as ``skiff scheduler`` / ``skiff controller-manager`` run by hand.

A child that exits while the server runs is logged at ERROR with its exit status and started again after a
back-off (1 s doubling to 30 s; back to 1 s once a run has lasted a minute), as a service manager would: a
control plane without its scheduler binds nothing, so giving up is never better. Each child starts through
this module's ``__main__``, which asks the kernel for SIGTERM when the server dies (``PR_SET_PDEATHSIG``) before
it runs the command, so even a SIGKILLed server leaves no orphans (and no code runs between fork and exec,
which a server with threads must avoid). Stopping sends SIGTERM and, after ``STOP_TIMEOUT``, SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import runpy
import signal
import sys
import time
from pathlib import Path

from skiff.aiotasks import cancel_and_wait

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0  # seconds a child gets to stop on SIGTERM before SIGKILL
FIRST_BACKOFF, MAX_BACKOFF = 1.0, 30.0
STABLE_RUN = 60.0  # a run this long resets the back-off
_PR_SET_PDEATHSIG = 1
_SKIFF_ROOT = str(Path(__file__).resolve().parents[3])  # the directory holding the ``skiff`` package


class ChildProcess:
    """One ``skiff <argv>`` command kept running until ``stop()``."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name, self.argv = name, argv
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"child {self.name}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        # The same interpreter and the same ``skiff`` package as the server, whatever its sys.path was.
        path = os.pathsep.join(p for p in (_SKIFF_ROOT, os.environ.get("PYTHONPATH")) if p)
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, str(os.getpid()), *self.argv, stdin=asyncio.subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=path), start_new_session=True)  # a terminal's ^C is the server's alone

    async def _supervise(self) -> None:
        backoff = FIRST_BACKOFF
        while True:
            started = time.monotonic()
            try:
                self.process = await self._spawn()
            except OSError as exc:
                log.error("skiff server: cannot start the %s: %s; retrying in %.0fs", self.name, exc, backoff)
            else:
                try:
                    code = await self.process.wait()
                except asyncio.CancelledError:
                    await _terminate(self.name, self.process)
                    raise
                if time.monotonic() - started >= STABLE_RUN:
                    backoff = FIRST_BACKOFF
                log.error("skiff server: the %s (pid %d) exited with status %s; restarting it in %.0fs",
                          self.name, self.process.pid, code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            self.restarts += 1

    async def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after ``STOP_TIMEOUT``) and stop restarting it."""
        await cancel_and_wait(self._task)
        self._task = None


async def _terminate(name: str, process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
    except TimeoutError:
        log.error("skiff server: the %s (pid %d) did not stop in %.0fs; killing it", name, process.pid, STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def _run_child(server_pid: int, argv: list[str]) -> None:
    """In the child: SIGTERM when the server goes, however it goes; then ``skiff <argv>``."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != server_pid:
        sys.exit("skiff server is gone")  # it died before the request above took effect
    sys.argv = ["skiff", *argv]
    runpy.run_module("skiff.cli.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _run_child(int(sys.argv[1]), sys.argv[2:])
