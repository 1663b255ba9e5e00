"""Crash safety: a registry killed with SIGKILL in the middle of an upload restarts clean."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.registry.conftest import Servers
from tests.registry.images import sha256
from tests.registry.servers import REPO, RegistryProcess

CHUNK = 1 << 20


def begin_patch(reg: RegistryProcess, location: str, start: int, total: int, first_part: bytes) -> socket.socket:
    """Send the headers of a PATCH of ``total`` bytes and only ``first_part`` of its body."""
    host, port = reg.host.split(":")
    sock = socket.create_connection((host, int(port)))
    head = (f"PATCH {location} HTTP/1.1\r\nHost: {reg.host}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {total}\r\nContent-Range: {start}-{start + total - 1}\r\n\r\n")
    sock.sendall(head.encode() + first_part)
    return sock


def wait_for_size(path: Path, size: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size >= size:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {size} bytes")


def stored_blobs_are_whole(data: Path) -> None:
    for blob in (data / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_sigkill_mid_upload(registries: Servers) -> None:
    blob = os.urandom(6 * CHUNK)
    digest = sha256(blob)
    reg = registries.skiff()
    r = reg.request("POST", "/v2/crash/blobs/uploads/")
    location, uuid = r.headers["Location"], r.headers["Docker-Upload-UUID"]
    r = reg.request("PATCH", location, blob[:CHUNK], {"Content-Range": f"0-{CHUNK - 1}"})
    assert r.status == 202  # the first megabyte is acknowledged
    data_file = reg.data / "uploads" / uuid / "data"
    sock = begin_patch(reg, location, CHUNK, 5 * CHUNK, blob[CHUNK:4 * CHUNK])
    try:
        wait_for_size(data_file, 3 * CHUNK)  # part of the unacknowledged chunk reached the disk
        reg.kill()
    finally:
        sock.close()
    assert data_file.stat().st_size > CHUNK

    again = registries.skiff(data=reg.data)
    # No half blob: nothing under the digest, and every stored blob hashes to its name.
    r = again.request("GET", f"/v2/crash/blobs/{digest}")
    assert (r.status, r.error_codes()) == (404, ["BLOB_UNKNOWN"])
    stored_blobs_are_whole(again.data)
    assert not os.listdir(again.data / "tmp")
    # The session resumes at the acknowledged offset; the cut-off bytes were dropped.
    status = again.request("GET", location)
    assert (status.status, status.headers["Range"]) == (204, f"0-{CHUNK - 1}")
    assert data_file.stat().st_size == CHUNK
    assert os.listdir(again.data / "uploads") == [uuid]

    # A fresh upload of the same blob succeeds...
    r = again.request("POST", f"/v2/crash/blobs/uploads/?digest={digest}", blob)
    assert r.status == 201, r.body
    assert again.request("GET", f"/v2/crash/blobs/{digest}").body == blob
    # ...and so does finishing the interrupted one (the running hash is rebuilt from disk).
    r = again.request("PUT", f"{location}?digest={digest}", blob[CHUNK:], {"Content-Range": f"{CHUNK}-{len(blob) - 1}"})
    assert r.status == 201, r.body
    assert os.listdir(again.data / "uploads") == []
    stored_blobs_are_whole(again.data)


def test_stale_and_broken_uploads_are_purged_at_start(registries: Servers) -> None:
    reg = registries.skiff()
    location = reg.request("POST", "/v2/stale/blobs/uploads/").headers["Location"]
    reg.request("PATCH", location, b"some bytes")
    reg.kill()
    broken = reg.data / "uploads" / "00000000-0000-4000-8000-000000000000"
    broken.mkdir()
    (broken / "data").write_bytes(b"no state file")
    (reg.data / "tmp" / "half-written").write_bytes(b"x")
    again = registries.skiff("--upload-ttl", "0", data=reg.data)
    assert os.listdir(again.data / "uploads") == []
    assert os.listdir(again.data / "tmp") == []
    assert again.request("GET", location).error_codes() == ["BLOB_UPLOAD_UNKNOWN"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "skiff.registry.cli", *args], capture_output=True, text=True,
                          env=env, timeout=30)


def test_one_process_per_data_directory(registries: Servers) -> None:
    reg = registries.skiff()
    second = run_cli("--listen", "127.0.0.1:0", "--data", str(reg.data))
    assert second.returncode == 1
    assert "in use by another registry" in second.stderr
    assert run_cli("garbage-collect", "--data", str(reg.data)).returncode == 1
    digest = sha256(b"to collect")
    assert reg.request("POST", f"/v2/gc/blobs/uploads/?digest={digest}", b"to collect").status == 201
    assert reg.request("DELETE", f"/v2/gc/blobs/{digest}").status == 202
    reg.stop()
    collected = run_cli("garbage-collect", "--data", str(reg.data))
    assert (collected.returncode, collected.stdout) == (0, f"removed {digest}\n")
