"""Health checks run by the engine, as dockerd runs them: a container's ``Healthcheck`` (the image's
HEALTHCHECK, or ``--health-*`` in the create body) is executed as an exec in the container every interval.

The state is Docker's ``State.Health``, kept on the container record (``Container.health``):
``{"Status": "starting"|"healthy"|"unhealthy", "FailingStreak": n, "Log": [last 5 results]}`` with each
result's ``Start``/``End`` in Unix seconds (the API layer writes them as RFC 3339). Rules, from dockerd:

- A start (or restart, or the daemon reconnecting to a running container) sets ``starting``, streak 0, and
  starts one probing task; an exit or a pause stops it (the status stays as it was); an unpause resumes it.
- The first probe runs one interval after the start; during the start period the interval is the start
  interval while still ``starting``, and a failure there does not count towards ``Retries``.
- Exit 0 is healthy and resets the streak; anything else (a timeout is -1) adds to the streak, and
  ``Retries`` failures in a row make it ``unhealthy``. A change of status is a ``health_status: <s>`` event.
- A probe is an ordinary exec (``exec_create``/``exec_start``/``exec_die`` events, as dockerd's), dropped
  from the container's exec list when done so probes do not pile up. Like dockerd, the status is not
  written to disk at each probe: it is saved with the record's next write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import TYPE_CHECKING, Any

from skiff import errors

if TYPE_CHECKING:
    from skiff.engine.containers import Container, ContainerService, Exec

log = logging.getLogger(__name__)

STARTING, HEALTHY, UNHEALTHY, NONE = "starting", "healthy", "unhealthy", "none"
STATUSES = (STARTING, HEALTHY, UNHEALTHY, NONE)  # the values of the ``health`` list filter

DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_START_PERIOD = 0.0
DEFAULT_START_INTERVAL = 5.0
DEFAULT_RETRIES = 3
EXEC_START_TIMEOUT = 30.0  # starting the exec does not count towards the probe's timeout, but is bounded
MAX_LOG_ENTRIES = 5
MAX_OUTPUT = 4096
MINIMUM_DURATION_NS = 1_000_000  # 1ms, dockerd's minimum for every duration
_NS = 1e9


# --------------------------------------------------------------------------------------------------
# The configuration
# --------------------------------------------------------------------------------------------------


def validate(healthcheck: dict | None) -> None:
    """Refuse a create body's ``Healthcheck`` as dockerd does (durations in nanoseconds, at least 1ms)."""
    if healthcheck is None:
        return
    if not isinstance(healthcheck, dict):
        raise errors.InvalidArgument("Healthcheck must be an object")
    test = healthcheck.get("Test")
    if test is not None and (not isinstance(test, list) or not all(isinstance(t, str) for t in test)):
        raise errors.InvalidArgument("Healthcheck.Test must be a list of strings")
    for key in ("Interval", "Timeout", "StartPeriod", "StartInterval"):
        value = healthcheck.get(key) or 0
        if not isinstance(value, int):
            raise errors.InvalidArgument(f"{key} in Healthcheck must be an integer (nanoseconds)")
        if value != 0 and value < MINIMUM_DURATION_NS:
            raise errors.InvalidArgument(f"{key} in Healthcheck cannot be less than 1ms")
    retries = healthcheck.get("Retries") or 0
    if not isinstance(retries, int):
        raise errors.InvalidArgument("Retries in Healthcheck must be an integer")
    if retries < 0:
        raise errors.InvalidArgument("Retries in Healthcheck cannot be negative")


def probe_command(config: dict) -> list[str] | None:
    """The command a probe runs, or None when the container has no health check (none, NONE, unknown)."""
    test = (config.get("Healthcheck") or {}).get("Test") or []
    if not test or len(test) < 2:
        return None
    if test[0] == "CMD":
        return list(test[1:])
    if test[0] == "CMD-SHELL":
        return [*(config.get("Shell") or ["/bin/sh", "-c"]), *test[1:]]
    return None


def _seconds(config: dict, key: str, default: float) -> float:
    value = (config.get("Healthcheck") or {}).get(key) or 0
    return value / _NS if value else default


def go_duration(seconds: float) -> str:
    """Go's ``time.Duration`` text for the durations a health check has (``30s``, ``1.5s``, ``500ms``, ``1m0s``)."""
    if seconds < 1:
        return f"{round(seconds * 1000, 6):g}ms"
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{round(rest, 9):g}s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


def status_suffix(health: dict | None) -> str:
    """What ``docker ps`` appends to ``Up ...``: ``(healthy)``, ``(unhealthy)``, ``(health: starting)``."""
    if not health:
        return ""
    status = health.get("Status") or UNHEALTHY
    return f" (health: {status})" if status == STARTING else f" ({status})"


def filter_value(health: dict | None) -> str:
    """The container's value for ``--filter health=...``."""
    return (health.get("Status") or UNHEALTHY) if health else NONE


# --------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------


class HealthChecks:
    """One probing task per running container that has a health check."""

    def __init__(self, service: ContainerService) -> None:
        self.service = service
        self._tasks: dict[str, asyncio.Task] = {}

    def started(self, c: Container) -> None:
        """A run began (start, restart, or the daemon found it running): ``starting``, then probe."""
        self.stopped(c)
        if probe_command(c.config) is None:
            return
        c.health = {"Status": STARTING, "FailingStreak": 0, "Log": list((c.health or {}).get("Log") or [])}
        self.resumed(c)

    def resumed(self, c: Container) -> None:
        """Probe again after a pause (the status is kept)."""
        if c.health is None or c.id in self._tasks or probe_command(c.config) is None:
            return
        task = self.service.track(self._probe_loop(c))
        self._tasks[c.id] = task
        task.add_done_callback(lambda t, cid=c.id: self._tasks.pop(cid, None) if self._tasks.get(cid) is t else None)

    def stopped(self, c: Container) -> None:
        """The run ended, or it was paused: no more probes (a probe under way is killed)."""
        task = self._tasks.pop(c.id, None)
        if task is not None:
            task.cancel()

    # ---- the loop

    def _next_interval(self, c: Container) -> float:
        """dockerd's: the interval; within the start period, the start interval while ``starting``, and never
        past the start period's end."""
        interval = _seconds(c.config, "Interval", DEFAULT_INTERVAL)
        start_period = _seconds(c.config, "StartPeriod", DEFAULT_START_PERIOD)
        elapsed = time.time() - c.state.started_at
        if elapsed >= start_period:
            return interval
        remaining = start_period - elapsed
        if remaining < interval:
            return remaining
        if c.health and c.health.get("Status") == STARTING:
            return _seconds(c.config, "StartInterval", DEFAULT_START_INTERVAL)
        return interval

    async def _probe_loop(self, c: Container) -> None:
        while True:
            await asyncio.sleep(self._next_interval(c))
            if c.state.status != "running":
                return
            started = time.time()
            try:
                code, output = await self._probe(c)
            except errors.SkiffError as e:
                log.warning("health check for container %s: %s", c.id[:12], e)
                code, output = -1, str(e)
            self._record(c, {"Start": started, "End": time.time(), "ExitCode": code, "Output": output})

    async def _probe(self, c: Container) -> tuple[int, str]:
        """Run the check once: (exit code, output), -1 with a message when it exceeded its timeout."""
        command = probe_command(c.config)
        assert command is not None
        svc = self.service
        e = svc.create_exec(c.id, {"Cmd": command, "AttachStdout": True, "AttachStderr": True, "Tty": False,
                                   "User": c.config.get("User") or "", "WorkingDir": c.config.get("WorkingDir") or ""})
        try:
            session = await asyncio.wait_for(svc.start_exec(e, tty=False), EXEC_START_TIMEOUT)
        except TimeoutError:
            svc.forget_exec(e)
            raise errors.SystemFailure(f"timed out starting health check for container {c.id}") from None
        except BaseException:
            svc.forget_exec(e)
            raise
        output = bytearray()
        timeout = _seconds(c.config, "Timeout", DEFAULT_TIMEOUT)
        try:
            await asyncio.wait_for(self._collect(session, output), timeout)
            code = await svc.finish_exec(e)
        except TimeoutError:
            await self._kill(e, session)
            text = _output_text(output)
            message = f"Health check exceeded timeout ({go_duration(timeout)})"
            return -1, f"{message}: {text}" if text else message
        except asyncio.CancelledError:
            await asyncio.shield(self._kill(e, session))
            raise
        finally:
            with contextlib.suppress(Exception):
                await session.close()
            svc.forget_exec(e)
        return code, _output_text(output)

    @staticmethod
    async def _collect(session: Any, output: bytearray) -> None:
        while (item := await session.read()) is not None:
            room = MAX_OUTPUT + 1 - len(output)  # one byte more than kept: tells that it was cut
            if room > 0:
                output += item[1][:room]

    async def _kill(self, e: Exec, session: Any) -> None:
        """End a probe that overran (or whose checks stopped), and record its exit, as dockerd waits for it."""
        with contextlib.suppress(errors.SkiffError, OSError):
            await session.kill(signal.SIGKILL)
        with contextlib.suppress(errors.SkiffError, OSError, TimeoutError):
            await asyncio.wait_for(self.service.finish_exec(e), 5)

    def _record(self, c: Container, result: dict) -> None:
        """dockerd's handleProbeResult."""
        health = c.health
        if health is None or c.id not in self._tasks:
            return  # checks were stopped while this probe ran
        old = health["Status"]
        health["Log"] = [*health.get("Log", []), result][-MAX_LOG_ENTRIES:]
        if result["ExitCode"] == 0:
            health["FailingStreak"] = 0
            health["Status"] = HEALTHY
        else:
            start_period = _seconds(c.config, "StartPeriod", DEFAULT_START_PERIOD)
            in_grace = old == STARTING and result["Start"] - c.state.started_at < start_period
            if not in_grace:
                health["FailingStreak"] += 1
                retries = (c.config.get("Healthcheck") or {}).get("Retries") or DEFAULT_RETRIES
                if health["FailingStreak"] >= retries:
                    health["Status"] = UNHEALTHY
        if health["Status"] != old:
            self.service.event(c, f"health_status: {health['Status']}")


def _output_text(output: bytearray) -> str:
    text = bytes(output[:MAX_OUTPUT]).decode(errors="replace")
    return text + "..." if len(output) > MAX_OUTPUT else text
