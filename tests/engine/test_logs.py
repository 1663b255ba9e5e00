"""The json-file log: how the monitor's writer splits and rotates, and how ``read_logs`` serves
``docker logs`` (tail, since, until, timestamps, follow) from files that are being written."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path

import pytest

from skiff.engine.logs import (
    PARTIAL_LIMIT,
    JsonFileWriter,
    format_time,
    parse_size,
    parse_time,
    read_log_batches,
    read_logs,
)

SECOND = 1_000_000_000
T0 = 1_767_323_045 * SECOND  # 2026-01-02T03:04:05Z
pytestmark = pytest.mark.filterwarnings("error")
FIXED = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z $")


def records(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def collect(path: Path, **kw: object) -> list[tuple[int, bytes]]:
    return [item async for item in read_logs(str(path), **kw)]  # type: ignore[arg-type]


def write_lines(path: Path, count: int, *, start: int = 0, **kw: int) -> None:
    """``count`` stdout lines ``line<i>``, one second apart from T0 + start seconds."""
    w = JsonFileWriter(str(path), **kw)
    for i in range(start, start + count):
        w.write(1, f"line{i}\n".encode(), now_ns=T0 + i * SECOND)
    w.close()


# --- time ------------------------------------------------------------------------------------------

def test_times_are_rfc3339nano_like_go() -> None:
    assert format_time(T0) == "2026-01-02T03:04:05Z"
    assert format_time(T0 + 120_000_000) == "2026-01-02T03:04:05.12Z"  # trailing zeros trimmed
    assert format_time(T0 + 5, fixed=True) == "2026-01-02T03:04:05.000000005Z"
    for ns in (T0, T0 + 1, T0 + 123_456_789):
        assert parse_time(format_time(ns)) == parse_time(format_time(ns, fixed=True)) == ns
    assert parse_time("2026-01-02T05:04:05.5+02:00") == T0 + 500_000_000
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_sizes_parse_like_docker() -> None:
    assert [parse_size(v) for v in ("10m", "1k", "2g", "512", "1.5k", "", None)] == \
        [10 << 20, 1024, 2 << 30, 512, 1536, None, None]
    with pytest.raises(ValueError):
        parse_size("ten")


# --- writing ---------------------------------------------------------------------------------------

def test_writer_splits_lines_per_stream(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    w = JsonFileWriter(str(path))
    w.write(1, b"a\nb", now_ns=T0)
    w.write(2, b"err\n", now_ns=T0 + 1)
    w.write(1, b"c\nd\n", now_ns=T0 + 2)
    w.write(1, b"tail", now_ns=T0 + 3)
    w.flush(1, now_ns=T0 + 3)  # end of stream: the partial line goes out as it is
    w.close()
    assert [(r["stream"], r["log"], r["time"]) for r in records(path)] == [
        ("stdout", "a\n", "2026-01-02T03:04:05Z"),
        ("stderr", "err\n", "2026-01-02T03:04:05.000000001Z"),
        ("stdout", "bc\n", "2026-01-02T03:04:05.000000002Z"),
        ("stdout", "d\n", "2026-01-02T03:04:05.000000002Z"),
        ("stdout", "tail", "2026-01-02T03:04:05.000000003Z"),
    ]
    assert path.read_text().startswith('{"log":"a\\n","stream":"stdout","time":"2026-01-02T03:04:05Z"}\n')


def test_long_lines_are_logged_in_16k_pieces(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    w = JsonFileWriter(str(path))
    w.write(1, b"x" * (PARTIAL_LIMIT * 2 + 10))
    assert [len(r["log"]) for r in records(path)] == [PARTIAL_LIMIT, PARTIAL_LIMIT]
    w.write(1, b"y\n")
    w.close()
    assert [r["log"] for r in records(path)][2:] == ["x" * 10 + "y\n"]


def test_escaping_and_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    w = JsonFileWriter(str(path))
    text = 'quote " backslash \\ tab \t bell \x07 é 日本\n'
    w.write(1, text.encode() + b"\xff\xfe bad\n")
    w.close()
    assert [r["log"] for r in records(path)] == [text, "\ufffd\ufffd bad\n"]


def test_rotation_keeps_max_files(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_lines(path, 20, max_size=200, max_files=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["c.log", "c.log.1", "c.log.2"]
    assert all(p.stat().st_size <= 200 for p in tmp_path.iterdir())
    kept = [r["log"] for name in ("c.log.2", "c.log.1", "c.log") for r in records(tmp_path / name)]
    assert kept == [f"line{i}\n" for i in range(20 - len(kept), 20)]


def test_rotation_with_one_file_truncates(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_lines(path, 20, max_size=200, max_files=1)
    assert [p.name for p in tmp_path.iterdir()] == ["c.log"]
    assert records(path)[-1]["log"] == "line19\n"


# --- reading -----------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_read_all_tail_since_until(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_lines(path, 10)
    everything = await collect(path)
    assert everything == [(1, f"line{i}\n".encode()) for i in range(10)]
    assert await collect(path, tail=3) == everything[-3:]
    assert await collect(path, tail=0) == []
    assert await collect(path, tail=100) == everything
    since, until = (T0 + 4 * SECOND) / SECOND, (T0 + 7 * SECOND) / SECOND
    assert await collect(path, since=since) == everything[4:]
    assert await collect(path, until=until) == everything[:7]  # until is exclusive
    assert await collect(path, since=since, until=until) == everything[4:7]
    assert await collect(path, tail=2, since=since, until=until) == []  # tail first, as Docker does
    assert await collect(tmp_path / "missing.log") == []


@pytest.mark.asyncio
async def test_tail_reads_backwards_across_blocks_and_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_lines(path, 3000, max_size=64 * 1024, max_files=5)
    assert (tmp_path / "c.log.2").exists()
    everything = [d for _, d in await collect(path)]
    assert everything == [f"line{i}\n".encode() for i in range(3000)]  # nothing rotated away yet
    assert [d for _, d in await collect(path, tail=2500)] == everything[500:]
    assert [d for _, d in await collect(path, tail=1)] == everything[-1:]


@pytest.mark.asyncio
async def test_timestamps_prefix_fixed_width_times(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    w = JsonFileWriter(str(path))
    w.write(2, b"boom\n", now_ns=T0 + 120_000_000)
    w.close()
    [(stream, data)] = await collect(path, timestamps=True)
    assert stream == 2 and data == b"2026-01-02T03:04:05.120000000Z boom\n"
    assert FIXED.match(data[:31])


@pytest.mark.asyncio
async def test_follow_reads_lines_as_they_are_written(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    w = JsonFileWriter(str(path), max_size=300, max_files=10)  # rotates while we follow
    w.write(1, b"before\n")
    stop = asyncio.Event()
    reader = asyncio.create_task(collect(path, follow=True, stop=stop, tail=1))
    await asyncio.sleep(0.02)  # the reader has taken its snapshot

    async def writer() -> None:
        for i in range(30):
            w.write(1 + i % 2, f"n{i}\n".encode())
            if i % 3 == 0:
                w.write(1, b"torn ")  # a line completed by the next write
                await asyncio.sleep(0.005)
                w.write(1, b"line\n")
            await asyncio.sleep(0.003 if i % 10 else 0.05)
        w.close()

    await writer()
    stop.set()
    items = await asyncio.wait_for(reader, 10)
    expected = [(1, b"before\n")]
    for i in range(30):
        expected.append((1 + i % 2, f"n{i}\n".encode()))
        if i % 3 == 0:
            expected.append((1, b"torn line\n"))
    assert items == expected
    assert len(list(tmp_path.iterdir())) > 3


@pytest.mark.asyncio
async def test_follow_from_now_until_stop_or_until(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_lines(path, 2)
    stop = asyncio.Event()
    reader = asyncio.create_task(collect(path, follow=True, tail=0, stop=stop))
    await asyncio.sleep(0.05)
    w = JsonFileWriter(str(path))
    w.write(1, b"new\n")
    await asyncio.sleep(0.05)
    stop.set()
    w.write(1, b"after stop, before the reader looked\n")
    assert await asyncio.wait_for(reader, 10) == [(1, b"new\n"), (1, b"after stop, before the reader looked\n")]

    # A follow with ``until`` ends at the first line at or past it, without a stop.
    until = time.time() + 0.2
    reader = asyncio.create_task(collect(path, follow=True, tail=0, until=until))
    await asyncio.sleep(0.02)
    w.write(1, b"in time\n")
    await asyncio.sleep(0.3)
    w.write(1, b"too late\n")
    assert await asyncio.wait_for(reader, 10) == [(1, b"in time\n")]
    w.close()


@pytest.mark.asyncio
async def test_follow_survives_truncation(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    w = JsonFileWriter(str(path), max_size=150, max_files=1)
    stop = asyncio.Event()
    reader = asyncio.create_task(collect(path, follow=True, stop=stop))
    await asyncio.sleep(0.02)
    for i in range(6):
        w.write(1, f"t{i}\n".encode())
        await asyncio.sleep(0.05)
    w.close()
    await asyncio.sleep(0.05)
    stop.set()
    assert [d for _, d in await asyncio.wait_for(reader, 10)] == [f"t{i}\n".encode() for i in range(6)]
    assert os.listdir(tmp_path) == ["c.log"]



def test_batches_hold_at_most_batch_lines_and_stop_at_until(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_lines(path, 25)

    async def batches(**kw: object) -> list[list[tuple[int, bytes]]]:
        return [b async for b in read_log_batches(str(path), batch_lines=10, **kw)]  # type: ignore[arg-type]

    whole = asyncio.run(batches())
    assert [len(b) for b in whole] == [10, 10, 5]
    assert [d for b in whole for _, d in b] == [f"line{i}\n".encode() for i in range(25)]
    cut = asyncio.run(batches(since=(T0 + 3 * SECOND) / SECOND, until=(T0 + 14 * SECOND) / SECOND))
    assert [d for b in cut for _, d in b] == [f"line{i}\n".encode() for i in range(3, 14)]
    assert [len(b) for b in cut] == [7, 4]  # lines 0-2 not shown; reading stops inside the second batch
