"""The registry's own on-disk store: blobs by sha256, and repositories that link to them.

Layout under the data directory::

    blobs/sha256/<hex>                    content (layers, configs, manifests), immutable once there
    repositories/<name>/_layers/<hex>     the repository may serve this blob
    repositories/<name>/_manifests/<hex>  a manifest of the repository: its media type (JSON)
    repositories/<name>/_tags/<tag>       the digest the tag points to
    uploads/<uuid>/{state,data}           blob uploads in progress (see uploads.py)
    tmp/                                  temp files of atomic writes, emptied at start
    lock                                  flock'ed by the one process using the directory

As in distribution, content is shared between repositories but visible only through a repository's
links, so a client can read from a repository only what was pushed or mounted into it. A blob file
appears only by renaming verified, fsynced data into place, so no partial blob is ever served;
every link and tag is written atomically. A crash between steps can leave a blob no repository links
to (garbage, harmless) but never a link to a missing or partial blob.

Methods block (file I/O, fsync); the server calls the slow ones from worker threads.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass

from skiff.errors import Conflict
from skiff.registry import atomic, manifests
from skiff.registry.errors import DistributionError
from skiff.registry.names import check_digest, check_tag, is_digest, is_sha256
from skiff.registry.uploads import Upload, Uploads


@dataclass
class StoredManifest:
    digest: str
    media_type: str
    path: str


class Storage:
    """Blobs, repositories and uploads under ``root``."""

    def __init__(self, root: str, upload_ttl: float = 86400.0) -> None:
        self.root = os.path.abspath(root)
        self.blobs = os.path.join(self.root, "blobs", "sha256")
        self.repos = os.path.join(self.root, "repositories")
        self.tmp = os.path.join(self.root, "tmp")
        for d in (self.blobs, self.repos):
            atomic.make_dirs(d)
        self._lock = _lock_exclusively(os.path.join(self.root, "lock"))
        shutil.rmtree(self.tmp, ignore_errors=True)  # whatever a crash left mid-write
        atomic.make_dirs(self.tmp)
        self.uploads = Uploads(self.root, self.tmp, upload_ttl)
        self.uploads.recover()

    def close(self) -> None:
        """Release the data directory (the process exiting does it too)."""
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    # -- blobs ------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blobs, digest[7:])

    def _link(self, name: str, digest: str) -> str:
        return os.path.join(self.repos, name, "_layers", digest[7:])

    def blob_size(self, name: str, digest: str) -> int:
        """Size of a blob the repository may serve, or BLOB_UNKNOWN."""
        try:
            if is_sha256(check_digest(digest)) and os.path.exists(self._link(name, digest)):
                return os.stat(self.blob_path(digest)).st_size
        except FileNotFoundError:
            pass
        raise DistributionError("BLOB_UNKNOWN", detail={"digest": digest})

    def has_blob(self, name: str, digest: str) -> bool:
        try:
            self.blob_size(name, digest)
            return True
        except DistributionError:
            return False

    def link_blob(self, name: str, digest: str) -> None:
        if not os.path.exists(self._link(name, digest)):
            atomic.write_file(self._link(name, digest), digest.encode(), self.tmp)

    def unlink_blob(self, name: str, digest: str) -> None:
        """Remove the repository's link (the content stays until garbage collection)."""
        if not is_sha256(check_digest(digest)) or not atomic.remove(self._link(name, digest)):
            raise DistributionError("BLOB_UNKNOWN", detail={"digest": digest})

    def mount_blob(self, name: str, digest: str, source: str) -> bool:
        """Link a blob that ``source`` holds into ``name``; False when ``source`` has no such blob."""
        if not self.has_blob(source, digest):
            return False
        self.link_blob(name, digest)
        return True

    def finish_upload(self, upload: Upload, digest: str) -> None:
        """Verify the upload against ``digest``; on success it becomes a blob linked into its repository.

        On a mismatch the upload is discarded (as distribution does): nothing of it is stored.
        """
        if not is_sha256(check_digest(digest)):
            raise DistributionError("DIGEST_INVALID", "only sha256 digests are supported", detail={"digest": digest})
        actual = upload.digest()
        if actual != digest:
            self.uploads.remove(upload)
            raise DistributionError("DIGEST_INVALID", detail={"digest": digest, "actual": actual})
        if not os.path.exists(self.blob_path(digest)):
            os.chmod(upload.data, 0o444)  # already fsynced by the upload's last commit
            atomic.publish(upload.data, self.blob_path(digest))
        self.link_blob(upload.repository, digest)
        self.uploads.remove(upload)

    def write_blob(self, data: bytes) -> str:
        """Store small content (a manifest) directly; returns its digest."""
        digest = manifests.digest_of(data)
        if not os.path.exists(self.blob_path(digest)):
            atomic.write_file(self.blob_path(digest), data, self.tmp, mode=0o444)
        return digest

    # -- manifests and tags -----------------------------------------------------------------------

    def _repo(self, name: str, *parts: str) -> str:
        return os.path.join(self.repos, name, *parts)

    def put_manifest(self, name: str, reference: str, data: bytes, content_type: str | None) -> str:
        """Store a manifest under a tag or its digest; returns its digest."""
        tag = None if is_digest(reference) else check_tag(reference)
        checked = manifests.check(data, content_type)
        digest = manifests.digest_of(data)
        if tag is None and digest != reference:
            raise DistributionError("DIGEST_INVALID", detail={"digest": reference, "actual": digest})
        self._check_references(name, checked)
        self.write_blob(data)
        revision = json.dumps({"mediaType": checked.media_type}).encode()
        atomic.write_file(self._repo(name, "_manifests", digest[7:]), revision, self.tmp)
        if tag is not None:
            atomic.write_file(self._repo(name, "_tags", tag), digest.encode(), self.tmp)
        return digest

    def _check_references(self, name: str, checked: manifests.CheckedManifest) -> None:
        missing = [d for d in checked.blobs if not self.has_blob(name, d)]
        missing += [d for d in checked.manifests if not self._has_manifest(name, d)]
        if missing:  # one error per missing digest, as distribution lists them
            details = [{"digest": d} for d in missing]
            raise DistributionError("MANIFEST_BLOB_UNKNOWN", detail=details[0], more=details[1:])

    def _has_manifest(self, name: str, digest: str) -> bool:
        return digest.startswith("sha256:") and os.path.exists(self._repo(name, "_manifests", digest[7:]))

    def resolve(self, name: str, reference: str) -> str:
        """The digest a tag (or digest) names in the repository, or MANIFEST_UNKNOWN."""
        if is_digest(reference):
            if not is_sha256(check_digest(reference)):
                raise DistributionError("MANIFEST_UNKNOWN", detail={"digest": reference})
            return reference
        check_tag(reference)
        try:
            with open(self._repo(name, "_tags", reference), "rb") as f:
                return f.read().decode()
        except FileNotFoundError:
            raise DistributionError("MANIFEST_UNKNOWN", detail={"tag": reference}) from None

    def manifest(self, name: str, reference: str) -> StoredManifest:
        digest = self.resolve(name, reference)
        try:
            with open(self._repo(name, "_manifests", digest[7:]), "rb") as f:
                media_type = json.load(f)["mediaType"]
        except FileNotFoundError:
            raise DistributionError("MANIFEST_UNKNOWN", detail={"digest": digest}) from None
        return StoredManifest(digest, media_type, self.blob_path(digest))

    def delete_manifest(self, name: str, reference: str) -> None:
        """By tag: remove the tag. By digest: remove the manifest and every tag pointing at it."""
        if not is_digest(reference):
            check_tag(reference)
            if not atomic.remove(self._repo(name, "_tags", reference)):
                raise DistributionError("MANIFEST_UNKNOWN", detail={"tag": reference})
            return
        digest = self.resolve(name, reference)
        for tag, target in self._tag_targets(name):
            if target == digest:
                atomic.remove(self._repo(name, "_tags", tag))
        if not atomic.remove(self._repo(name, "_manifests", digest[7:])):
            raise DistributionError("MANIFEST_UNKNOWN", detail={"digest": digest})

    def _tag_targets(self, name: str) -> list[tuple[str, str]]:
        result = []
        for tag in self._list(self._repo(name, "_tags")):
            try:
                with open(self._repo(name, "_tags", tag), "rb") as f:
                    result.append((tag, f.read().decode()))
            except FileNotFoundError:
                continue
        return result

    def tags(self, name: str) -> list[str]:
        """The repository's tags, sorted; NAME_UNKNOWN for a repository without manifests."""
        if not os.path.isdir(self._repo(name, "_manifests")):
            raise DistributionError("NAME_UNKNOWN", detail={"name": name})
        return sorted(self._list(self._repo(name, "_tags")))

    def repositories(self) -> list[str]:
        """Every repository that has held a manifest, sorted."""
        found = []
        for directory, subdirs, _files in os.walk(self.repos):
            if "_manifests" in subdirs:
                found.append(os.path.relpath(directory, self.repos))
            subdirs[:] = [d for d in subdirs if not d.startswith("_")]
        return sorted(found)

    @staticmethod
    def _list(directory: str) -> list[str]:
        try:
            return os.listdir(directory)
        except FileNotFoundError:
            return []

    # -- garbage collection -----------------------------------------------------------------------

    def collect_garbage(self, dry_run: bool = False) -> list[str]:
        """Remove the blobs no repository links to or holds as a manifest; returns their digests.

        Run it with the registry stopped (the directory lock guarantees that): a blob being pushed
        is not linked until its upload finishes, so a live registry could lose it.
        """
        referenced = set()
        for directory, subdirs, _files in os.walk(self.repos):
            for kind in ("_layers", "_manifests"):
                if kind in subdirs:
                    referenced.update(self._list(os.path.join(directory, kind)))
            subdirs[:] = [d for d in subdirs if not d.startswith("_")]
        garbage = sorted("sha256:" + h for h in os.listdir(self.blobs) if h not in referenced)
        if not dry_run:
            for digest in garbage:
                atomic.remove(self.blob_path(digest))
        return garbage


def _lock_exclusively(path: str) -> int:
    """Hold ``path`` locked for this process's life: two registries on one directory would corrupt it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Conflict(f"{os.path.dirname(path)} is in use by another registry process") from None
    return fd
