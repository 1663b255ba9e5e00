"""Blob upload sessions, kept on disk so that a registry killed mid-upload restarts clean.

Each session is a directory ``uploads/<uuid>/`` with ``data`` (the bytes received) and ``state`` (JSON:
repository, acknowledged offset, start time). The state is rewritten atomically only after the data up
to that offset is fsynced, and it is what the client was told, so after a crash the session resumes at
the acknowledged offset: bytes of a request that was cut off are truncated away at start. Sessions with
a missing or broken state, or idle longer than the TTL, are removed. A session's data only becomes a
blob through :meth:`skiff.registry.storage.Storage.finish_upload`, after its digest is verified.

The running sha256 lives in memory; after a restart it is recomputed from ``data`` when next needed.
Methods block (file I/O, fsync): the server calls them from worker threads, one request per session
at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid as uuidlib
from collections.abc import Iterable

from skiff.registry import atomic
from skiff.registry.errors import DistributionError

log = logging.getLogger(__name__)
_READ = 1 << 20
SYNC_EVERY = 4 << 20  # bytes written between fdatasyncs of a long upload


class Upload:
    """One upload session: where it is, which repository it is for, and how much has been acknowledged."""

    def __init__(self, directory: str, uuid: str, repository: str, offset: int, started: float) -> None:
        self.dir, self.uuid, self.repository = directory, uuid, repository
        self.offset, self.started = offset, started
        self._hash: hashlib._Hash | None = None  # None: recompute from data when needed

    @property
    def data(self) -> str:
        return os.path.join(self.dir, "data")

    def state_bytes(self) -> bytes:
        return json.dumps({"repository": self.repository, "offset": self.offset, "started": self.started}).encode()

    def running_hash(self) -> hashlib._Hash:
        """The sha256 of the acknowledged bytes (re-read from disk once after a restart)."""
        if self._hash is None:
            h = hashlib.sha256()
            with open(self.data, "rb") as f:
                remaining = self.offset
                while remaining:
                    chunk = f.read(min(_READ, remaining))
                    if not chunk:
                        raise DistributionError("BLOB_UPLOAD_INVALID", "upload data is shorter than its offset")
                    h.update(chunk)
                    remaining -= len(chunk)
            self._hash = h
        return self._hash

    def digest(self) -> str:
        return "sha256:" + self.running_hash().hexdigest()


class Appender:
    """Bytes being added to an upload by one request: ``write`` batches, then ``commit`` or ``rollback``.

    Until ``commit`` the session's acknowledged offset is unchanged, so a failed or cut-off request
    leaves the session exactly as it was.
    """

    def __init__(self, upload: Upload, tmp_dir: str) -> None:
        self.upload, self.tmp_dir = upload, tmp_dir
        self.hash = upload.running_hash().copy()
        self.size = 0
        self._synced = 0
        self.file = open(upload.data, "r+b")  # noqa: SIM115 - closed by commit/rollback
        self.file.truncate(upload.offset)
        self.file.seek(upload.offset)

    def write(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            self.hash.update(chunk)
            self.file.write(chunk)
            self.size += len(chunk)
        # Sync as we go, while the next batch arrives, so that commit's fsync has only the tail to wait for.
        if self.size - self._synced >= SYNC_EVERY:
            self.file.flush()
            os.fdatasync(self.file.fileno())
            self._synced = self.size

    def commit(self) -> int:
        """Make the new bytes durable, then acknowledge them in the state; returns the new offset."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        u = self.upload
        previous = u.offset
        u.offset += self.size
        try:
            atomic.write_file(os.path.join(u.dir, "state"), u.state_bytes(), self.tmp_dir)
        except BaseException:
            u.offset = previous
            raise
        u._hash = self.hash
        return u.offset

    def rollback(self) -> None:
        if not self.file.closed:
            self.file.truncate(self.upload.offset)
            self.file.close()


class Uploads:
    """The upload sessions under ``root/uploads``; ``ttl`` is how long an idle session is kept (seconds)."""

    def __init__(self, root: str, tmp_dir: str, ttl: float) -> None:
        self.dir = os.path.join(root, "uploads")
        self.tmp_dir, self.ttl = tmp_dir, ttl
        self._open: dict[str, Upload] = {}
        os.makedirs(self.dir, exist_ok=True)

    def create(self, repository: str) -> Upload:
        """A new empty session, made in the temp dir and renamed into place whole."""
        uuid = str(uuidlib.uuid4())
        staging = os.path.join(self.tmp_dir, "upload-" + uuid)
        os.mkdir(staging)
        upload = Upload(staging, uuid, repository, 0, time.time())
        upload._hash = hashlib.sha256()
        open(upload.data, "wb").close()
        atomic.write_file(os.path.join(staging, "state"), upload.state_bytes(), self.tmp_dir)
        upload.dir = os.path.join(self.dir, uuid)
        atomic.publish(staging, upload.dir)
        self._open[uuid] = upload
        return upload

    def get(self, repository: str, uuid: str) -> Upload:
        """The session ``uuid`` of ``repository``, or BLOB_UPLOAD_UNKNOWN."""
        upload = self._open.get(uuid) or self._load(uuid)
        if upload is None or upload.repository != repository:
            raise DistributionError("BLOB_UPLOAD_UNKNOWN", detail={"uuid": uuid})
        self._open[uuid] = upload
        return upload

    def begin(self, upload: Upload) -> Appender:
        return Appender(upload, self.tmp_dir)

    def remove(self, upload: Upload) -> None:
        self._open.pop(upload.uuid, None)
        shutil.rmtree(upload.dir, ignore_errors=True)

    def _load(self, uuid: str) -> Upload | None:
        if not _is_uuid(uuid):
            return None
        directory = os.path.join(self.dir, uuid)
        try:
            with open(os.path.join(directory, "state"), "rb") as f:
                state = json.load(f)
            return Upload(directory, uuid, str(state["repository"]), int(state["offset"]), float(state["started"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def recover(self) -> None:
        """At start: cut each session back to its acknowledged offset; drop broken and stale ones."""
        for uuid in os.listdir(self.dir):
            upload = self._load(uuid)
            if upload is None or not self._restore(upload) or self._stale(upload):
                log.info("removing upload %s (broken or stale)", uuid)
                shutil.rmtree(os.path.join(self.dir, uuid), ignore_errors=True)

    def purge_stale(self, busy: Iterable[str] = ()) -> int:
        """Remove sessions idle for longer than the TTL (except ``busy`` ones); returns how many went."""
        removed = 0
        for uuid in set(os.listdir(self.dir)) - set(busy):
            upload = self._open.get(uuid) or self._load(uuid)
            if upload is None or self._stale(upload):
                self._open.pop(uuid, None)
                shutil.rmtree(os.path.join(self.dir, uuid), ignore_errors=True)
                removed += 1
        return removed

    @staticmethod
    def _restore(upload: Upload) -> bool:
        try:
            size = os.path.getsize(upload.data)
            if size < upload.offset:
                return False
            if size > upload.offset:
                os.truncate(upload.data, upload.offset)
            return True
        except OSError:
            return False

    def _stale(self, upload: Upload) -> bool:
        try:
            last_active = os.path.getmtime(os.path.join(upload.dir, "state"))
        except OSError:
            return True
        return time.time() - last_active > self.ttl


def _is_uuid(text: str) -> bool:
    try:
        return str(uuidlib.UUID(text)) == text
    except ValueError:
        return False
