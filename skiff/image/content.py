"""The content-addressed blob store: every layer, config, manifest and index, by sha256 digest.

A blob is written to ``ingest/`` as it arrives, hashed on the way, and only renamed into
``blobs/sha256/<hex>`` once its digest (and size, when known) match what was expected, so a store
never holds a blob whose name lies. Writers are crash-safe: a process killed mid-write leaves only
an ingest file, which ``ContentStore`` removes when it next opens.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator

from skiff.errors import InvalidArgument, NotFound

_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")


def check_digest(digest: str) -> str:
    """The digest, if it is a sha256 digest (the only algorithm images use in practice)."""
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise InvalidArgument(f"invalid digest {digest!r}: only sha256:<64 hex> is supported")
    return digest


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class DigestMismatch(InvalidArgument):
    """Content did not hash to the digest it was announced with (it is not stored)."""


class ContentStore:
    """Blobs under ``root``: ``blobs/sha256/<hex>`` (read-only files) and ``ingest/`` (in flight)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.blobs = os.path.join(root, "blobs", "sha256")
        self.ingest = os.path.join(root, "ingest")
        os.makedirs(self.blobs, exist_ok=True)
        os.makedirs(self.ingest, exist_ok=True)
        self._clean_ingest()

    def _clean_ingest(self) -> None:
        for name in os.listdir(self.ingest):
            try:
                os.unlink(os.path.join(self.ingest, name))
            except OSError:
                pass

    def path(self, digest: str) -> str:
        return os.path.join(self.blobs, check_digest(digest)[7:])

    def has(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def size(self, digest: str) -> int:
        try:
            return os.stat(self.path(digest)).st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def open(self, digest: str):
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def read(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def put(self, data: bytes, expected: str | None = None) -> str:
        """Store bytes; returns their digest. ``expected`` must match if given."""
        with self.writer(expected, len(data) if expected else None) as w:
            w.write(data)
            return w.commit()

    def writer(self, expected: str | None = None, expected_size: int | None = None) -> BlobWriter:
        if expected is not None:
            check_digest(expected)
        return BlobWriter(self, expected, expected_size)

    def delete(self, digest: str) -> None:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def digests(self) -> Iterator[str]:
        for name in os.listdir(self.blobs):
            if len(name) == 64:
                yield "sha256:" + name


class BlobWriter:
    """One blob being written: ``write`` chunks, then ``commit`` (verify + atomic rename), or abort."""

    def __init__(self, store: ContentStore, expected: str | None, expected_size: int | None) -> None:
        self.store, self.expected, self.expected_size = store, expected, expected_size
        self.hash = hashlib.sha256()
        self.size = 0
        fd_name = f"{os.getpid()}-{id(self):x}-{os.urandom(4).hex()}"
        self.temp = os.path.join(store.ingest, fd_name)
        self.file = open(self.temp, "wb")  # noqa: SIM115 - closed by commit/abort
        self.committed: str | None = None

    def write(self, data: bytes) -> None:
        self.hash.update(data)
        self.size += len(data)
        if self.expected_size is not None and self.size > self.expected_size:
            self.abort()
            raise DigestMismatch(f"blob is larger than its announced size {self.expected_size}")
        self.file.write(data)

    def commit(self) -> str:
        digest = "sha256:" + self.hash.hexdigest()
        if self.expected is not None and digest != self.expected:
            self.abort()
            raise DigestMismatch(f"content digest {digest} does not match the expected {self.expected}")
        if self.expected_size is not None and self.size != self.expected_size:
            self.abort()
            raise DigestMismatch(f"content size {self.size} does not match the expected {self.expected_size}")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.chmod(self.temp, 0o444)
        os.rename(self.temp, self.store.path(digest))
        self.committed = digest
        return digest

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.committed is None:
            self.abort()
