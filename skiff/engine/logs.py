"""Container logs in Docker's json-file format: written by the monitor, read by the daemon for /logs.

One JSON object per line, exactly Docker's field order::

    {"log":"hello\\n","stream":"stdout","time":"2026-01-02T03:04:05.123456789Z"}

Output is split on newlines as Docker's log copier does: a line is written when its newline arrives,
a line longer than 16 KiB is written in 16 KiB pieces without a newline, and a partial line left at
end of stream is written as it is. A terminal's output is logged as ``stdout``. Times are UTC
RFC 3339 with nanoseconds and trailing zeros trimmed (Go's ``RFC3339Nano``, what Docker writes);
``docker logs -t`` prints them with a fixed nine digits, as ``read_logs(timestamps=True)`` does.

Size-based rotation follows Docker's ``max-size``/``max-file`` options: the live file is ``PATH``,
older ones ``PATH.1`` (newest) ... ``PATH.<max-file - 1>``; with ``max-file=1`` the file is truncated.

``JsonFileWriter`` runs inside the per-container monitor, whose start-up is on the container start
path, so this module imports only cheap C-backed standard modules at the top; the reader's asyncio
and json are imported inside it (the daemon has them loaded already).
"""

from __future__ import annotations

import os
import time
from _json import encode_basestring

TYPE_CHECKING = False  # typing's own import costs the monitor milliseconds
if TYPE_CHECKING:
    import asyncio
    from collections.abc import AsyncIterator
    from typing import BinaryIO

STDOUT, STDERR = 1, 2
_STREAM_NAMES = {STDOUT: b"stdout", STDERR: b"stderr"}
_STREAM_NUMBERS = {"stdout": STDOUT, "stderr": STDERR}

# Docker's copier buffer: a line that grows past this is logged in pieces.
PARTIAL_LIMIT = 16 * 1024
BATCH_LINES = 1024  # log lines a reader yields (and a server writes) at once, at most


# --- time ----------------------------------------------------------------------------------------

def format_time(ns: int, fixed: bool = False) -> str:
    """``ns`` since the epoch as RFC 3339 UTC with nanoseconds (trimmed like Go's, or ``fixed`` width)."""
    sec, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    if fixed:
        return f"{base}.{frac:09d}Z"
    if not frac:
        return base + "Z"
    return f"{base}.{frac:09d}".rstrip("0") + "Z"


def parse_time(text: str) -> int:
    """RFC 3339 (``Z`` or ``±hh:mm``, any number of fraction digits) -> nanoseconds since the epoch."""
    import calendar  # only the reader parses; kept off the monitor's import path

    try:
        date, clock = text[:10], text[11:19]
        seconds = calendar.timegm((int(date[:4]), int(date[5:7]), int(date[8:10]),
                                   int(clock[:2]), int(clock[3:5]), int(clock[6:8])))
        rest = text[19:]
        frac = ""
        if rest.startswith("."):
            i = 1
            while i < len(rest) and rest[i].isdigit():
                i += 1
            frac, rest = rest[1:i], rest[i:]
        offset = 0
        if rest not in ("Z", "z"):
            sign = -1 if rest[0] == "-" else 1
            offset = sign * (int(rest[1:3]) * 3600 + int(rest[4:6]) * 60)
    except (ValueError, IndexError):
        raise ValueError(f"not an RFC 3339 time: {text!r}") from None
    return (seconds - offset) * 1_000_000_000 + int((frac + "000000000")[:9])


# --- writing ---------------------------------------------------------------------------------------

class JsonFileWriter:
    """Appends a container's output to ``path`` as json-file lines, splitting and rotating like Docker.

    Not thread-safe: the monitor calls it from its single loop. Every record of one ``write`` goes
    out in one ``os.write`` on an ``O_APPEND`` file, so a reader never sees lines of two chunks mixed.
    """

    def __init__(self, path: str, *, max_size: int | None = None, max_files: int = 1) -> None:
        self.path = path
        self.max_size = max_size if max_size and max_size > 0 else None
        self.max_files = max(1, max_files)
        self._partial = {STDOUT: bytearray(), STDERR: bytearray()}
        self._fd = -1
        self._size = 0
        self._open(truncate=False)

    def _open(self, truncate: bool) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if truncate else 0)
        self._fd = os.open(self.path, flags, 0o640)
        self._size = os.fstat(self._fd).st_size

    def write(self, stream: int, data: bytes, now_ns: int | None = None) -> None:
        """Log ``data`` read from ``stream`` (1 stdout, 2 stderr): complete lines now, the rest later."""
        buf = self._partial[stream]
        buf += data
        stamp = format_time(time.time_ns() if now_ns is None else now_ns)
        records = []
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            records.append(self._record(stream, buf[start:nl + 1], stamp))
            start = nl + 1
        del buf[:start]
        while len(buf) >= PARTIAL_LIMIT:
            records.append(self._record(stream, buf[:PARTIAL_LIMIT], stamp))
            del buf[:PARTIAL_LIMIT]
        if records:
            self._append(b"".join(records))

    def flush(self, stream: int | None = None, now_ns: int | None = None) -> None:
        """Write out the partial line of ``stream`` (or of both): its end of stream has come."""
        stamp = format_time(time.time_ns() if now_ns is None else now_ns)
        for number in (stream,) if stream else (STDOUT, STDERR):
            buf = self._partial[number]
            if buf:
                self._append(self._record(number, bytes(buf), stamp))
                buf.clear()

    def close(self) -> None:
        """Flush partial lines and close the file."""
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1

    @staticmethod
    def _record(stream: int, line: bytes | bytearray, stamp: str) -> bytes:
        # Invalid UTF-8 becomes U+FFFD, as Go's encoder does; non-ASCII stays UTF-8.
        text = encode_basestring(line.decode("utf-8", "replace"))
        return b'{"log":%s,"stream":"%s","time":"%s"}\n' % (
            text.encode("utf-8", "surrogatepass"), _STREAM_NAMES[stream], stamp.encode())

    def _append(self, data: bytes) -> None:
        if self.max_size and self._size and self._size + len(data) > self.max_size:
            self._rotate()
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(data)

    def _rotate(self) -> None:
        """PATH -> PATH.1 -> ... -> PATH.<max_files-1> (the oldest dropped), then a fresh PATH."""
        os.close(self._fd)
        if self.max_files > 1:
            for i in range(self.max_files - 1, 1, -1):
                older = f"{self.path}.{i - 1}"
                if os.path.exists(older):
                    os.replace(older, f"{self.path}.{i}")
            os.replace(self.path, f"{self.path}.1")
        self._open(truncate=True)


def parse_size(value: str | int | None) -> int | None:
    """Docker's size syntax (``10m``, ``1.5g``, ``512k``, bytes) -> bytes; None/empty -> None."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    text = value.strip().lower().removesuffix("b").removesuffix("i")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        return int(float(number) * factor)
    except ValueError:
        raise ValueError(f"invalid size: {value!r}") from None


# --- reading ---------------------------------------------------------------------------------------

class _Record:
    """One decoded log line: stream number, time in ns, payload bytes."""

    __slots__ = ("data", "ns", "stream")

    def __init__(self, stream: int, ns: int, data: bytes) -> None:
        self.stream, self.ns, self.data = stream, ns, data


def _decode(line: bytes) -> _Record | None:
    import json  # kept off the monitor's import path; a dict lookup once loaded

    try:
        obj = json.loads(line)
        return _Record(_STREAM_NUMBERS.get(obj.get("stream"), STDOUT), parse_time(obj["time"]),
                       obj.get("log", "").encode("utf-8", "surrogatepass"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # a torn or foreign line: skip it, as Docker's reader does


class _Segment:
    """The bytes ``[0, end)`` of one open log file: the part of it logged before we started reading."""

    def __init__(self, f: BinaryIO, end: int) -> None:
        self.f, self.end = f, end

    def lines(self) -> list[bytes]:
        self.f.seek(0)
        return self.f.read(self.end).splitlines(keepends=True)

    def tail(self, count: int, block: int = 64 * 1024) -> list[bytes]:
        """The last ``count`` complete lines, reading backwards by blocks (logs can be large)."""
        found: list[bytes] = []
        pos, carry = self.end, b""
        while pos > 0 and len(found) < count:
            step = min(block, pos)
            pos -= step
            self.f.seek(pos)
            pieces = (self.f.read(step) + carry).split(b"\n")
            carry = pieces.pop(0)  # continues in the block before, unless this is the file's start
            if pos == 0:
                pieces.insert(0, carry)
            found[:0] = [p + b"\n" for p in pieces if p]
        return found[-count:] if count else []


def _end_of_last_line(f: BinaryIO, block: int = 64 * 1024) -> int:
    """The offset just past the last newline of ``f`` (0 if none): where complete lines end."""
    pos = f.seek(0, os.SEEK_END)
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        nl = f.read(step).rfind(b"\n")
        if nl >= 0:
            return pos + nl + 1
    return 0


def _snapshot(path: str) -> tuple[list[_Segment], BinaryIO]:
    """Open the log as it is now: segments for what is written (oldest first) and the live file.

    The live file is opened first and rotated files with its inode are skipped, so a rotation in
    between cannot make a file appear twice; the follower goes on from the live file's last newline.
    """
    live = open(path, "rb")  # noqa: SIM115 - owned by the caller
    end = _end_of_last_line(live)
    inode = os.fstat(live.fileno()).st_ino
    segments = []
    i = 1
    while True:
        try:
            f = open(f"{path}.{i}", "rb")  # noqa: SIM115 - closed by read_logs
        except FileNotFoundError:
            break
        if os.fstat(f.fileno()).st_ino == inode:
            f.close()
        else:
            segments.insert(0, _Segment(f, _end_of_last_line(f)))
        i += 1
    segments.append(_Segment(live, end))
    live.seek(end)
    return segments, live


def _initial_lines(segments: list[_Segment], tail: int | None) -> list[bytes]:
    """Everything logged before we started (or its last ``tail`` lines), oldest first."""
    if tail is None:
        return [line for seg in segments for line in seg.lines()]
    found: list[bytes] = []
    for seg in reversed(segments):
        if len(found) >= tail:
            break
        found[:0] = seg.tail(tail - len(found))
    return found[-tail:] if tail > 0 else []


class _Follower:
    """Reads complete lines appended to the live log file, following rotation (rename or truncation)."""

    def __init__(self, path: str, f: BinaryIO) -> None:
        self.path, self.f, self.partial = path, f, b""

    def read_lines(self) -> list[bytes]:
        """Complete lines available now; a torn last line waits for its newline."""
        data = self.f.read()
        if not data:
            return []
        data = self.partial + data
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        return data[:cut].splitlines(keepends=True)

    def advance(self) -> bool:
        """At the end of our file: go on with the next newer one if the log rotated past it, or from
        the start if it was truncated (``max-file=1``). True if there is something new to read.

        Several rotations may happen between two polls, so the next file is found by our file's
        inode among ``PATH.N``, not assumed to be ``PATH``.
        """
        try:
            live = os.stat(self.path)
        except FileNotFoundError:
            return False  # mid-rotation: the new file comes next
        mine = os.fstat(self.f.fileno()).st_ino
        if live.st_ino == mine:
            if live.st_size >= self.f.tell():
                return False
            self.f.seek(0)
        else:
            try:
                newer = open(self._newer_than(mine), "rb")  # noqa: SIM115 - closed by read_logs
            except FileNotFoundError:
                return False
            self.f.close()
            self.f = newer
        self.partial = b""
        return True

    def _newer_than(self, inode: int) -> str:
        k = 1
        while True:
            try:
                st = os.stat(f"{self.path}.{k}")
            except FileNotFoundError:
                break
            if st.st_ino == inode:
                return self.path if k == 1 else f"{self.path}.{k - 1}"
            k += 1
        # Our file was rotated out of existence: the oldest kept one is next.
        return f"{self.path}.{k - 1}" if k > 1 else self.path


def _render(rec: _Record, timestamps: bool) -> tuple[int, bytes]:
    if timestamps:
        return rec.stream, format_time(rec.ns, fixed=True).encode() + b" " + rec.data
    return rec.stream, rec.data


def _within(rec, since_ns: int | None) -> bool:
    """A readable record at or after ``since`` (undecodable lines are skipped)."""
    return rec is not None and (since_ns is None or rec.ns >= since_ns)


def _past(rec, until_ns: int | None) -> bool:
    """A record at or after ``until``: reading stops there."""
    return rec is not None and until_ns is not None and rec.ns >= until_ns


async def read_logs(path: str, *, follow: bool = False, since: float | None = None, until: float | None = None,
                    tail: int | None = None, timestamps: bool = False,
                    stop: asyncio.Event | None = None) -> AsyncIterator[tuple[int, bytes]]:
    """Yield ``(1|2, payload)`` for each logged line, as ``docker logs`` shows them (``read_log_batches``
    one at a time)."""
    async for batch in read_log_batches(path, follow=follow, since=since, until=until, tail=tail,
                                        timestamps=timestamps, stop=stop):
        for item in batch:
            yield item


async def read_log_batches(path: str, *, follow: bool = False, since: float | None = None,
                           until: float | None = None, tail: int | None = None, timestamps: bool = False,
                           stop: asyncio.Event | None = None,
                           batch_lines: int = BATCH_LINES) -> AsyncIterator[list[tuple[int, bytes]]]:
    """Yield lists of ``(1|2, payload)``, one per logged line, as ``docker logs`` shows them: whatever is
    readable at once, at most ``batch_lines`` a list (a server writes each list in one go: per line, the
    writes would cost more than the reading).

    ``tail`` keeps the last N lines (None: all; applied before ``since``/``until``, as Docker does);
    ``since``/``until`` are Unix times (since inclusive, until exclusive); ``timestamps`` prefixes
    each payload with its time (fixed nine digits) and a space. With ``follow``, lines appended later
    are yielded too, until ``stop`` is set (the caller sets it once the container has exited: what
    was logged up to then is still read) or a line reaches ``until``. Rotation is followed. A missing
    log file yields nothing (a container that never ran has none).
    """
    try:
        segments, live = _snapshot(path)
    except FileNotFoundError:
        return
    since_ns = None if since is None else int(since * 1e9)
    until_ns = None if until is None else int(until * 1e9)
    follower = _Follower(path, live)
    try:
        lines = _initial_lines(segments, tail)
        for seg in segments[:-1]:
            seg.f.close()
        async for read in _reads(lines, follower if follow else None, stop):
            for first in range(0, len(read), batch_lines):
                batch, ended = _render_lines(read[first:first + batch_lines], since_ns, until_ns, timestamps)
                if batch:
                    yield batch
                if ended:
                    return
    finally:
        for seg in segments[:-1]:
            seg.f.close()
        follower.f.close()


async def _reads(initial: list[bytes], follower: _Follower | None,
                 stop: asyncio.Event | None) -> AsyncIterator[list[bytes]]:
    """What was logged before, then (when following) the lines appended from then on, read by read."""
    yield initial
    if follower is not None:
        async for more in _follow_lines(follower, stop):
            yield more


def _render_lines(lines: list[bytes], since_ns: int | None, until_ns: int | None,
                  timestamps: bool) -> tuple[list[tuple[int, bytes]], bool]:
    """The records of ``lines`` to show, and whether one reached ``until`` (reading stops there)."""
    shown = []
    for line in lines:
        rec = _decode(line)
        if _past(rec, until_ns):
            return shown, True
        if _within(rec, since_ns):
            shown.append(_render(rec, timestamps))
    return shown, False


async def _follow_lines(follower: _Follower, stop: asyncio.Event | None) -> AsyncIterator[list[bytes]]:
    """Lines appended from now on, as they come (a list per read), polled with a short back-off (the
    standard library has no inotify)."""
    import asyncio

    delay = 0.01
    while True:
        lines = follower.read_lines()
        if not lines and follower.advance():
            continue
        if lines:
            yield lines
            delay = 0.01
            continue
        if stop is not None and stop.is_set():
            return  # the read just above came after the stop: nothing logged before it is lost
        if stop is None:
            await asyncio.sleep(delay)
        else:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
        delay = min(delay * 2, 0.2)
