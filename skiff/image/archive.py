"""Image archives: ``docker save``/``docker load``, OCI image layouts and ``docker import`` of a rootfs.

What ``save`` writes is what Docker 25+ (containerd image store) writes, which is at the same time an
OCI image layout: ``oci-layout``, ``index.json`` (one entry per tag, named with the
``io.containerd.image.name`` and ``org.opencontainers.image.ref.name`` annotations), ``blobs/sha256/``
holding the image's blobs exactly as stored (so layers stay compressed and digests stay the registry's),
plus Docker's ``manifest.json`` and the legacy ``repositories`` for older loaders.

``load`` reads that, any OCI layout or oci-archive (nested indexes resolved to the host platform),
and the legacy ``docker save`` layout (``<id>/layer.tar`` and ``<id>.json``, for which it writes a
Docker schema2 manifest), gzip-compressed or not. Blobs go straight from the stream into the
content store through verifying writers, so a corrupt archive leaves at most blobs that were
complete and correct; names are recorded only once every image of the archive checked out.

``import_rootfs`` is ``docker import``: a rootfs tar becomes a one-layer image whose config takes the
Dockerfile instructions ``docker import --change`` accepts (parsed by ``skiff.image.changes``).

Documents Skiff writes here are serialised as Go's ``encoding/json`` would (field order, compact,
HTML-safe escapes), so their digests are the ones Docker computes for the same content.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import lzma
import os
import posixpath
import re
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from skiff.errors import InvalidArgument, NotFound, SystemFailure, Unsupported
from skiff.image import manifest as mf
from skiff.image.changes import apply_changes
from skiff.image.content import ContentStore, DigestMismatch, check_digest
from skiff.image.layer import PrefixedStream
from skiff.image.reference import Reference
from skiff.image.reference import parse as parse_reference
from skiff.image.store import Image, ImageStore

ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
LAYOUT_VERSION = "1.0.0"

_CHUNK = 1 << 20
_JSON_LIMIT = 20 << 20  # the most a JSON document in an archive may hold, as containerd allows
_BLOB_PATH = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
_LEGACY_NOISE = re.compile(r"^[0-9a-f]{64}/(?:json|VERSION)$")  # v1 metadata nothing reads any more
_DOCUMENTS = ("oci-layout", "index.json", "manifest.json", "repositories")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_BZIP2_MAGIC = b"BZh"

Source = str | os.PathLike | BinaryIO


# --------------------------------------------------------------------------------------------------
# Documents as Docker writes them


def go_json(doc: object) -> bytes:
    """``doc`` as Go's ``json.Marshal`` writes it: compact, UTF-8, with ``<``, ``>`` and ``&`` escaped.

    Dict order is kept (callers build dicts in Go's struct-field order; Go maps are sorted by key,
    which ``_sorted`` does for the map-typed fields).
    """
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text.encode()


def _sorted(mapping: dict) -> dict:
    return {k: mapping[k] for k in sorted(mapping)}


def rfc3339(when: datetime | None = None) -> str:
    """A UTC timestamp as Go's RFC3339Nano prints it (trailing zeros of the fraction trimmed)."""
    if when is None:
        ns = time.time_ns()
        seconds, nanos = divmod(ns, 1_000_000_000)
    else:
        when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
        seconds, nanos = int(when.timestamp()), when.microsecond * 1000
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + "Z"


def _descriptor(d: dict, annotations: dict | None = None) -> dict:
    """A descriptor in Go's field order, keeping urls and platform, with the given annotations."""
    out = {"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"]}
    if d.get("urls"):
        out["urls"] = d["urls"]
    if annotations:
        out["annotations"] = _sorted(annotations)
    if d.get("platform"):
        out["platform"] = d["platform"]
    return out


def _put_json(content: ContentStore, media_type: str, doc: dict) -> dict:
    data = go_json(doc)
    return mf.descriptor(media_type, content.put(data), len(data))


# --------------------------------------------------------------------------------------------------
# save / export


@dataclass
class _Export:
    """One manifest to write, with the tags it is written under (none when asked for by ID)."""

    target: dict
    refs: list[Reference] = field(default_factory=list)


def save(names_or_ids: Iterable[str], out_stream: BinaryIO, content: ContentStore, images: ImageStore) -> None:
    """Write ``docker save`` output for the named images to ``out_stream`` (a tar, streamed).

    A name without a tag exports every tag of that repository, an ID (or unique ID prefix) exports
    the image untagged, as Docker does. Nothing is written unless every blob is in the store.
    """
    exports = _select(names_or_ids, images)
    if not exports:
        raise InvalidArgument("no images to save")
    blobs, manifests = _collect_blobs(exports, content)
    entries = _index_entries(exports)
    files = [*_layout_files(entries), ("manifest.json", go_json(_docker_manifest(exports, manifests)))]
    repositories = _repositories(exports, manifests)
    if repositories:
        files.append(("repositories", go_json(repositories) + b"\n"))  # Go's json.Encoder adds the newline
    _write_tar(out_stream, blobs, files, content)


def export_oci_layout(name: str, dest: Source, content: ContentStore, images: ImageStore) -> None:
    """Export one image as an OCI image layout: a directory (path) or an oci-archive tar (stream).

    A directory that already holds a layout keeps its other images; an entry with the same name is
    replaced (as ``skopeo copy ... oci:DIR:TAG`` does).
    """
    exports = _select([name], images)
    blobs, _ = _collect_blobs(exports, content)
    entries = _index_entries(exports)
    if isinstance(dest, str | os.PathLike):
        _write_layout_dir(os.fspath(dest), blobs, entries, content)
    else:
        _write_tar(dest, blobs, _layout_files(entries), content)


def _select(names_or_ids: Iterable[str], images: ImageStore) -> list[_Export]:
    exports: dict[str, _Export] = {}
    for text in names_or_ids:
        for image, ref in _lookup(text, images):
            export = exports.setdefault(image.target["digest"], _Export(image.target))
            if ref is not None and ref not in export.refs:
                export.refs.append(ref)
    return list(exports.values())


def _lookup(text: str, images: ImageStore) -> list[tuple[Image, Reference | None]]:
    """The images ``text`` means, each with the tag to save it under (Docker's resolution order)."""
    if not text.startswith("sha256:"):
        try:
            ref = parse_reference(text, default_tag=False)
        except InvalidArgument:
            ref = None
        if ref is not None and ref.digest:
            return [(images.get(str(ref)), None)]
        if ref is not None and ref.tag:
            with contextlib.suppress(NotFound):
                return [(images.get(str(ref)), ref)]
        elif ref is not None:
            tagged = [(i, parse_reference(i.name)) for i in images.list()]
            found = [(i, r) for i, r in tagged if r.repository == ref.repository and r.tag]
            if found:
                return found
    if re.fullmatch(r"(sha256:)?[0-9a-f]{1,64}", text):
        matches = images.by_id(text)
        if len({i.config_digest for i in matches}) > 1:
            raise InvalidArgument(f"image ID prefix {text!r} is ambiguous")
        if matches:
            return [(matches[0], None)]
    raise NotFound(f"No such image: {text}")


def _collect_blobs(exports: list[_Export], content: ContentStore) -> tuple[dict[str, int], dict[str, dict]]:
    """Every blob the exports need (digest → size) and their parsed manifests; all must be present."""
    blobs: dict[str, int] = {}
    manifests: dict[str, dict] = {}
    for export in exports:
        digest = export.target["digest"]
        manifest = mf.parse(content.read(digest), export.target.get("mediaType"))[1]
        manifests[digest] = manifest
        for d in [export.target, manifest["config"], *manifest["layers"]]:
            if not content.has(d["digest"]):
                raise NotFound(f"blob {d['digest']} of image {digest} is not in the content store")
            blobs[d["digest"]] = content.size(d["digest"])
    return dict(sorted(blobs.items())), manifests


def _index_entries(exports: list[_Export]) -> list[dict]:
    entries = []
    for export in exports:
        if not export.refs:
            entries.append(_descriptor(export.target))
        for ref in export.refs:
            names = {ANNOTATION_IMAGE_NAME: str(ref), ANNOTATION_REF_NAME: ref.tag}
            entries.append(_descriptor(export.target, names))
    return entries


def _layout_files(entries: list[dict]) -> list[tuple[str, bytes]]:
    index = {"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": entries}
    return [("index.json", go_json(index)), ("oci-layout", go_json({"imageLayoutVersion": LAYOUT_VERSION}))]


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + check_digest(digest)[7:]


def _docker_manifest(exports: list[_Export], manifests: dict[str, dict]) -> list[dict]:
    """Docker's ``manifest.json``: per image its config and layer paths inside the archive."""
    items = []
    for export in exports:
        manifest = manifests[export.target["digest"]]
        items.append({
            "Config": _blob_path(manifest["config"]["digest"]),
            "RepoTags": [ref.familiar() for ref in export.refs] or None,
            "Layers": [_blob_path(layer["digest"]) for layer in manifest["layers"]],
        })
    return items


def _repositories(exports: list[_Export], manifests: dict[str, dict]) -> dict:
    """The legacy ``repositories`` file: repository → tag → the top layer's blob."""
    repos: dict[str, dict[str, str]] = {}
    for export in exports:
        layers = manifests[export.target["digest"]]["layers"]
        for ref in export.refs:
            if layers:
                repo = Reference(ref.domain, ref.path).familiar()
                repos.setdefault(repo, {})[ref.tag] = layers[-1]["digest"][7:]
    return {repo: _sorted(tags) for repo, tags in sorted(repos.items())}


def _write_tar(out: BinaryIO, blobs: dict[str, int], files: list[tuple[str, bytes]], content: ContentStore) -> None:
    """Stream the archive: entries in name order, as Docker writes them, with neutral metadata."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.copybufsize = _CHUNK
        for name in ("blobs/", "blobs/sha256/"):
            tar.addfile(_tar_info(name, 0, 0o755, tarfile.DIRTYPE))
        for digest, size in blobs.items():
            with content.open(digest) as f:
                reader = _HashingReader(f)
                tar.addfile(_tar_info(_blob_path(digest), size, 0o444), reader)
            reader.check(digest)
        for name, data in sorted(files):
            tar.addfile(_tar_info(name, len(data), 0o644), _BytesReader(data))


def _tar_info(name: str, size: int, mode: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type, info.mtime = size, mode, kind, 0
    info.uname = info.gname = ""
    return info


def _write_layout_dir(root: str, blobs: dict[str, int], entries: list[dict], content: ContentStore) -> None:
    """Write or extend an OCI layout directory; each file lands by atomic rename, index.json last."""
    os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)
    for digest, size in blobs.items():
        dest = os.path.join(root, _blob_path(digest))
        if os.path.exists(dest) and os.path.getsize(dest) == size:
            continue
        with content.open(digest) as src:
            _atomic_write(dest, lambda out, src=src, digest=digest: _copy_verified(src, out, digest))
    index_path = os.path.join(root, "index.json")
    existing = _existing_entries(index_path)
    names = {(e.get("annotations") or {}).get(ANNOTATION_REF_NAME) for e in entries} - {None}
    kept = [e for e in existing if (e.get("annotations") or {}).get(ANNOTATION_REF_NAME) not in names]
    files = dict(_layout_files(kept + entries))
    _atomic_write(os.path.join(root, "oci-layout"), lambda out: out.write(files["oci-layout"]))
    _atomic_write(index_path, lambda out: out.write(files["index.json"]))


def _existing_entries(index_path: str) -> list[dict]:
    try:
        with open(index_path, "rb") as f:
            return mf.parse(f.read(), mf.OCI_INDEX)[1]["manifests"]
    except FileNotFoundError:
        return []


def _atomic_write(path: str, write: Callable[[BinaryIO], object]) -> None:
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temp, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.rename(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _copy_verified(src: BinaryIO, out: BinaryIO, digest: str) -> None:
    reader = _HashingReader(src)
    while chunk := reader.read(_CHUNK):
        out.write(chunk)
    reader.check(digest)


class _HashingReader:
    """A file wrapper that hashes what is read through it (save re-verifies blobs as it streams)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.hash = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.hash.update(data)
        return data

    def check(self, digest: str) -> None:
        actual = "sha256:" + self.hash.hexdigest()
        if actual != digest:
            raise SystemFailure(f"blob {digest} in the content store is corrupt (it hashes to {actual})")


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return chunk


# --------------------------------------------------------------------------------------------------
# load / import of archives and layouts


@dataclass
class _Loaded:
    """One image found in an archive, checked and with all its blobs in the store, not yet named."""

    target: dict
    config_digest: str
    names: list[str]


@dataclass
class _ArchiveFiles:
    """What one pass over an archive left: its small documents and the blob each other file became."""

    documents: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[str, tuple[str, int]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    def lookup(self, path: object, what: str) -> tuple[str, int]:
        """(digest, size) of the file at ``path`` (following links), or a clear error naming it."""
        if not isinstance(path, str):
            raise InvalidArgument(f"manifest.json: {what} must be a path, not {path!r}")
        name = _clean(path)
        for _ in range(16):
            if name not in self.links:
                break
            name = self.links[name]
        if name not in self.blobs:
            raise InvalidArgument(f"manifest.json names {what} {path!r}, which is not in the archive")
        return self.blobs[name]


def load(in_stream: Source, content: ContentStore, images: ImageStore,
         platform: mf.Platform | str | None = None) -> list[str]:
    """Load a ``docker save`` archive or an oci-archive (gzip-compressed or not).

    Returns what Docker prints as loaded: each recorded name (normalised), or ``sha256:<config>``
    for an image that came without one. Untagged images are not recorded in ``images`` (it holds
    names only), so their blobs are kept only until the next garbage collection.
    """
    plat = _platform(platform)
    with _opened(in_stream) as stream:
        files = _ingest_archive(stream, content)
    if "oci-layout" in files.documents:
        loaded = _load_oci(files.documents, _StoredBlobs(content), plat, name=None)
    elif "manifest.json" in files.documents:
        loaded = _load_legacy(files, content)
    else:
        raise InvalidArgument("not an image archive (or a truncated one): it has neither oci-layout nor manifest.json")
    return _record(loaded, images)


def import_oci_layout(src: Source, content: ContentStore, images: ImageStore, name: str | None = None,
                      platform: mf.Platform | str | None = None) -> list[str]:
    """Import an OCI image layout directory (path) or oci-archive (stream or tar file path).

    Without ``name``, images are named from their index annotations (as ``load`` does). With it,
    the layout must hold one image, or one whose ``org.opencontainers.image.ref.name`` is the
    name's tag (skopeo's ``oci:DIR:TAG`` rule), and that image is recorded as ``name``.
    """
    plat = _platform(platform)
    if name is not None:
        name = str(parse_reference(name))
    if isinstance(src, str | os.PathLike) and os.path.isdir(src):
        documents = _read_layout_documents(os.fspath(src))
        loaded = _load_oci(documents, _LayoutBlobs(content, os.fspath(src)), plat, name)
    else:
        with _opened(src) as stream:
            files = _ingest_archive(stream, content)
        if "oci-layout" not in files.documents:
            raise InvalidArgument("not an OCI image layout (or a truncated one): it has no oci-layout")
        loaded = _load_oci(files.documents, _StoredBlobs(content), plat, name)
    return _record(loaded, images)


def _platform(platform: mf.Platform | str | None) -> mf.Platform:
    return platform if isinstance(platform, mf.Platform) else mf.Platform.parse(platform)


@contextlib.contextmanager
def _opened(src: Source) -> Iterator[BinaryIO]:
    if isinstance(src, str | os.PathLike):
        with open(src, "rb") as f:
            yield f
    else:
        yield src


def _record(loaded: list[_Loaded], images: ImageStore) -> list[str]:
    """Name the images: only now, after every image of the archive has been checked."""
    result = []
    for image in loaded:
        for name in image.names:
            images.set(name, image.target)
            result.append(name)
        if not image.names:
            result.append(image.config_digest)
    return result


def _ingest_archive(stream: BinaryIO, content: ContentStore) -> _ArchiveFiles:
    """One pass over the tar: documents kept in memory, every other file streamed into the store."""
    files = _ArchiveFiles()
    head = _read_exact(stream, 2)
    stream = PrefixedStream(head, stream)
    try:
        # gzip ourselves: tarfile's own stream decoder ignores the gzip trailer (CRC and length).
        with contextlib.ExitStack() as stack:
            if head == _GZIP_MAGIC:
                stream = stack.enter_context(gzip.GzipFile(fileobj=stream, mode="rb"))
            tar = stack.enter_context(tarfile.open(fileobj=stream, mode="r|*"))
            for member in tar:
                _ingest_member(tar, member, files, content)
            _drain(stream)  # to the end, so a damaged gzip trailer is noticed too
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as e:
        raise InvalidArgument(f"not a valid image archive: {e}") from None
    except OSError as e:
        if e.errno is not None:  # a real I/O failure, not bad data (gzip and bz2 raise bare OSErrors)
            raise
        raise InvalidArgument(f"not a valid image archive: {e}") from None
    return files


def _ingest_member(tar: tarfile.TarFile, member: tarfile.TarInfo, files: _ArchiveFiles, content: ContentStore) -> None:
    name = _clean(member.name)
    if member.issym():
        target = member.linkname if member.linkname.startswith("/") else posixpath.join(posixpath.dirname(name),
                                                                                        member.linkname)
        files.links[name] = _clean(target)
    elif member.islnk():
        files.links[name] = _clean(member.linkname)
    elif not member.isreg() or _LEGACY_NOISE.match(name):
        return
    elif name in _DOCUMENTS:
        if member.size > _JSON_LIMIT:
            raise InvalidArgument(f"{name} in the archive is larger than {_JSON_LIMIT} bytes")
        files.documents[name] = tar.extractfile(member).read()
    elif match := _BLOB_PATH.match(name):
        digest = "sha256:" + match.group(1)
        if not content.has(digest):
            _store_member(tar, member, name, content, digest)
        files.blobs[name] = (digest, member.size)
    elif not name.startswith("blobs/"):
        files.blobs[name] = (_store_member(tar, member, name, content, None), member.size)


def _store_member(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, content: ContentStore,
                  expected: str | None) -> str:
    src = tar.extractfile(member)
    try:
        with content.writer(expected, member.size) as w:
            while chunk := src.read(_CHUNK):
                w.write(chunk)
            return w.commit()
    except DigestMismatch as e:
        raise DigestMismatch(f"{name} in the archive: {e}") from None


def _clean(path: str) -> str:
    return posixpath.normpath("/" + path).lstrip("/")


def _read_layout_documents(root: str) -> dict[str, bytes]:
    documents = {}
    for name in ("oci-layout", "index.json"):
        try:
            with open(os.path.join(root, name), "rb") as f:
                documents[name] = f.read()
        except FileNotFoundError:
            raise InvalidArgument(f"not an OCI image layout: {root} has no {name}") from None
    return documents


class _StoredBlobs:
    """Blobs of an archive already streamed into the store: only presence and size to check."""

    def __init__(self, content: ContentStore) -> None:
        self.content = content

    def ensure(self, desc: dict) -> None:
        digest = desc["digest"]
        if not self.content.has(digest):
            raise InvalidArgument(f"blob {digest} ({desc.get('mediaType', 'unknown type')}) is not in the archive")
        if self.content.size(digest) != desc["size"]:
            raise InvalidArgument(f"blob {digest} has {self.content.size(digest)} bytes, its descriptor says "
                                  f"{desc['size']}")

    def read(self, desc: dict) -> bytes:
        if desc["size"] > _JSON_LIMIT:
            raise InvalidArgument(f"document {desc['digest']} is larger than {_JSON_LIMIT} bytes")
        self.ensure(desc)
        return self.content.read(desc["digest"])


class _LayoutBlobs(_StoredBlobs):
    """Blobs of a layout directory, copied into the store (verified) only when an image needs them."""

    def __init__(self, content: ContentStore, root: str) -> None:
        super().__init__(content)
        self.root = root

    def ensure(self, desc: dict) -> None:
        digest = check_digest(desc["digest"])
        if not self.content.has(digest):
            path = os.path.join(self.root, _blob_path(digest))
            try:
                with open(path, "rb") as src, self.content.writer(digest, desc["size"]) as w:
                    while chunk := src.read(_CHUNK):
                        w.write(chunk)
                    w.commit()
            except FileNotFoundError:
                raise InvalidArgument(f"blob {digest} is not in the layout ({path} is missing)") from None
            except DigestMismatch as e:
                raise DigestMismatch(f"{path}: {e}") from None
        super().ensure(desc)


def _load_oci(documents: dict[str, bytes], blobs: _StoredBlobs, platform: mf.Platform,
              name: str | None) -> list[_Loaded]:
    _check_layout_version(documents["oci-layout"])
    if "index.json" not in documents:
        raise InvalidArgument("not an OCI image layout (or a truncated one): it has no index.json")
    entries = mf.parse(documents["index.json"], mf.OCI_INDEX)[1]["manifests"]
    if name is not None:
        entries = [_named_entry(entries, name)]
    loaded = []
    for entry in entries:
        target = _platform_manifest(entry, blobs, platform)
        config_digest = _check_image(target, blobs)
        names = [name] if name is not None else _entry_names(entry)
        loaded.append(_Loaded(_descriptor(target), config_digest, names))
    return loaded


def _check_layout_version(data: bytes) -> None:
    try:
        version = json.loads(data).get("imageLayoutVersion")
    except (ValueError, AttributeError):
        raise InvalidArgument("oci-layout is not a JSON object") from None
    if not isinstance(version, str) or not version.startswith("1."):
        raise InvalidArgument(f"unsupported OCI image layout version {version!r}")


def _named_entry(entries: list[dict], name: str) -> dict:
    """The one index entry ``import_oci_layout(name=...)`` means (skopeo's ``oci:DIR:REF`` rule)."""
    if len({e["digest"] for e in entries}) == 1:
        return entries[0]
    tag = parse_reference(name).tag
    matching = [e for e in entries if (e.get("annotations") or {}).get(ANNOTATION_REF_NAME) in (tag, name)]
    if len({e["digest"] for e in matching}) != 1:
        raise InvalidArgument(f"the layout holds {len(entries)} images and {len(matching)} are named {tag!r}")
    return matching[0]


def _entry_names(entry: dict) -> list[str]:
    """The name an index entry carries: containerd's full name, else a ref.name that is a full reference."""
    annotations = entry.get("annotations") or {}
    text = annotations.get(ANNOTATION_IMAGE_NAME)
    ref_name = annotations.get(ANNOTATION_REF_NAME)
    if not text and ref_name and any(c in ref_name for c in "/:@"):
        text = ref_name
    if not text:
        return []
    try:
        return [str(parse_reference(text))]
    except InvalidArgument:
        raise InvalidArgument(f"index.json names an image {text!r}, which is not a valid reference") from None


def _platform_manifest(entry: dict, blobs: _StoredBlobs, platform: mf.Platform, depth: int = 0) -> dict:
    """Follow (nested) indexes down to the manifest for ``platform``."""
    mf.check_descriptor(entry, "index entry")
    media_type = entry.get("mediaType") or ""
    if media_type in mf.MANIFESTS:
        return entry
    if media_type not in mf.INDEXES:
        raise InvalidArgument(f"unsupported media type {media_type!r} for image {entry['digest']}")
    if depth > 4:
        raise InvalidArgument("image indexes nest too deeply")
    index = mf.parse(blobs.read(entry), media_type)[1]
    return _platform_manifest(mf.select_platform(index, platform), blobs, platform, depth + 1)


def _check_image(target: dict, blobs: _StoredBlobs) -> str:
    """Check a manifest, its config and its layers (all present, known types, consistent); the image ID."""
    manifest = mf.parse(blobs.read(target), target.get("mediaType"))[1]
    config_desc = manifest["config"]
    if config_desc.get("mediaType") not in mf.CONFIGS:
        raise InvalidArgument(f"unsupported config media type {config_desc.get('mediaType')!r} "
                              f"in manifest {target['digest']}")
    for layer in manifest["layers"]:
        if layer.get("mediaType") not in mf.LAYERS:
            raise InvalidArgument(f"unsupported layer media type {layer.get('mediaType')!r} "
                                  f"in manifest {target['digest']}")
    config = mf.parse_config(blobs.read(config_desc))
    if len(config["rootfs"]["diff_ids"]) != len(manifest["layers"]):
        raise InvalidArgument(f"manifest {target['digest']} has {len(manifest['layers'])} layers but its config "
                              f"{len(config['rootfs']['diff_ids'])} diff_ids")
    for layer in manifest["layers"]:
        blobs.ensure(layer)
    return config_desc["digest"]


def _load_legacy(files: _ArchiveFiles, content: ContentStore) -> list[_Loaded]:
    """Images of a legacy ``manifest.json`` archive, each given a Docker schema2 manifest."""
    try:
        items = json.loads(files.documents["manifest.json"])
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"manifest.json is not valid JSON: {e}") from None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise InvalidArgument("manifest.json must be a list of objects")
    return [_legacy_image(item, files, content) for item in items]


def _legacy_image(item: dict, files: _ArchiveFiles, content: ContentStore) -> _Loaded:
    config_digest, config_size = files.lookup(item.get("Config"), "Config")
    if config_size > _JSON_LIMIT:
        raise InvalidArgument(f"manifest.json: Config {item['Config']!r} is larger than {_JSON_LIMIT} bytes")
    config = mf.parse_config(content.read(config_digest))
    paths = item.get("Layers")
    if not isinstance(paths, list):
        raise InvalidArgument("manifest.json: Layers must be a list of paths")
    diff_ids = config["rootfs"]["diff_ids"]
    if len(paths) != len(diff_ids):
        raise InvalidArgument(f"manifest.json lists {len(paths)} layers for config {config_digest}, "
                              f"which has {len(diff_ids)} diff_ids")
    layers = [_legacy_layer(path, files.lookup(path, "layer"), diff_id, content)
              for path, diff_id in zip(paths, diff_ids, strict=True)]
    manifest = {
        "schemaVersion": 2,
        "mediaType": mf.DOCKER_MANIFEST,
        "config": mf.descriptor(mf.DOCKER_CONFIG, config_digest, config_size),
        "layers": layers,
    }
    target = _put_json(content, mf.DOCKER_MANIFEST, manifest)
    target["platform"] = _config_platform(config)
    tags = item.get("RepoTags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidArgument("manifest.json: RepoTags must be a list of names")
    return _Loaded(target, config_digest, [str(parse_reference(t)) for t in tags])


def _legacy_layer(path: str, blob: tuple[str, int], diff_id: str, content: ContentStore) -> dict:
    """The descriptor of a legacy layer file, after checking it is the diff_id its config promises."""
    digest, size = blob
    with content.open(digest) as f:
        head = f.read(6)
    if head.startswith(_GZIP_MAGIC):
        media_type, actual = mf.DOCKER_LAYER_GZIP, _gunzipped_digest(content, digest)
    elif head.startswith((_ZSTD_MAGIC, _XZ_MAGIC, _BZIP2_MAGIC)):
        raise InvalidArgument(f"layer {path}: only uncompressed and gzip layers can be loaded")
    else:
        media_type, actual = DOCKER_LAYER, digest
    if actual != diff_id:
        raise InvalidArgument(f"layer {path} has content {actual}, but its image config says diff_id {diff_id}")
    return mf.descriptor(media_type, digest, size)


def _gunzipped_digest(content: ContentStore, digest: str) -> str:
    h = hashlib.sha256()
    try:
        with content.open(digest) as raw, gzip.GzipFile(fileobj=raw) as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise InvalidArgument(f"layer {digest} is not valid gzip: {e}") from None
    return "sha256:" + h.hexdigest()


def _config_platform(config: dict) -> dict:
    platform = {"architecture": config.get("architecture", ""), "os": config.get("os", "")}
    if config.get("variant"):
        platform["variant"] = config["variant"]
    return platform


# --------------------------------------------------------------------------------------------------
# docker import


def import_rootfs(tar_stream: Source, content: ContentStore, images: ImageStore, reference: str | None = None,
                  changes: Iterable[str] = (), message: str | None = None,
                  platform: mf.Platform | str | None = None, *, created: datetime | None = None,
                  compresslevel: int = 6) -> Image:
    """``docker import``: a rootfs tar (plain, gzip, bzip2 or xz) as a one-layer image.

    The layer is stored gzip-compressed (a gzip input as it came, as Docker keeps it); its diff_id is
    the sha256 of the uncompressed tar. ``changes`` are the ``--change`` instructions; ``created``
    pins the timestamps (for reproducible test images); ``compresslevel`` trades size for speed.
    Everything that can be refused (reference, platform, changes) is checked before any byte is stored.
    Returns the image; an import without ``reference`` is not recorded and has the name ``""``.
    """
    ref = _import_reference(reference)
    plat = _platform(platform)
    container_config = apply_changes(changes)
    with _opened(tar_stream) as stream:
        layer, diff_id = _store_layer(stream, content, compresslevel)
    when = rfc3339(created)
    config = _image_config(plat, container_config, diff_id, when, message)
    config_desc = _put_json(content, mf.OCI_CONFIG, config)
    manifest = {"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST, "config": config_desc, "layers": [layer]}
    target = _put_json(content, mf.OCI_MANIFEST, manifest)
    if ref is None:
        return Image("", target, None, time.time(), content)
    return images.set(str(ref), target)


def _import_reference(reference: str | None) -> Reference | None:
    if not reference:
        return None
    ref = parse_reference(reference)
    if ref.digest:
        raise InvalidArgument(f"cannot import to {reference!r}: a digest cannot be given to a new image")
    return ref


def _image_config(platform: mf.Platform, container_config: dict, diff_id: str, when: str,
                  message: str | None) -> dict:
    """The image config as Docker's ``import`` writes it (DockerOCIImage's field order)."""
    config: dict = {"created": when, "architecture": platform.architecture, "os": platform.os}
    if platform.variant:
        config["variant"] = platform.variant
    history = {"created": when}
    if message:
        history["comment"] = message
    config["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}
    config["history"] = [history]
    config["config"] = container_config
    return config


def _store_layer(stream: BinaryIO, content: ContentStore, compresslevel: int) -> tuple[dict, str]:
    """Store the rootfs as a gzip layer, checking it is a whole tar; (descriptor, diff_id)."""
    head = _read_exact(stream, 6)
    stream = PrefixedStream(head, stream)
    if head.startswith(_ZSTD_MAGIC):
        raise Unsupported("zstd-compressed rootfs archives are not supported (use gzip, bzip2, xz or none)")
    try:
        if head.startswith(_GZIP_MAGIC):
            return _store_gzip_layer(stream, content)
        if head.startswith(_BZIP2_MAGIC):
            with bz2.BZ2File(stream) as plain:
                return _store_plain_layer(plain, content, compresslevel)
        if head.startswith(_XZ_MAGIC):
            with lzma.LZMAFile(stream) as plain:
                return _store_plain_layer(plain, content, compresslevel)
        return _store_plain_layer(stream, content, compresslevel)
    except (EOFError, zlib.error, lzma.LZMAError) as e:
        raise InvalidArgument(f"rootfs archive is corrupt: {e}") from None
    except OSError as e:
        if e.errno is not None:
            raise
        raise InvalidArgument(f"rootfs archive is corrupt: {e}") from None


def _store_gzip_layer(stream: BinaryIO, content: ContentStore) -> tuple[dict, str]:
    diff = hashlib.sha256()
    with content.writer() as w:
        raw = _Tee(stream, w.write)
        with gzip.GzipFile(fileobj=raw, mode="rb") as plain:
            _check_tar(_Tee(plain, diff.update))
        _drain(raw)
        digest = w.commit()
    return mf.descriptor(mf.OCI_LAYER_GZIP, digest, w.size), "sha256:" + diff.hexdigest()


def _store_plain_layer(stream: BinaryIO, content: ContentStore, compresslevel: int) -> tuple[dict, str]:
    diff = hashlib.sha256()
    with content.writer() as w:
        with gzip.GzipFile(fileobj=w, mode="wb", compresslevel=compresslevel, mtime=0) as gz:
            _check_tar(_Tee(stream, diff.update, gz.write))
        digest = w.commit()
    return mf.descriptor(mf.OCI_LAYER_GZIP, digest, w.size), "sha256:" + diff.hexdigest()


def _check_tar(stream: BinaryIO) -> None:
    """Read a tar stream to its end, refusing a corrupt or truncated one as Go's archive/tar would.

    (Python's tarfile in stream mode skips member data without noticing a truncation.)
    """
    header_only = b"123456"  # hard and symbolic links, devices, directories, FIFOs carry no data
    while True:
        header = _read_exact(stream, 512)
        if not header or header == bytes(512):
            break
        if len(header) < 512:
            raise InvalidArgument("rootfs tar is truncated (in a header)")
        if not _tar_checksum_ok(header):
            raise InvalidArgument("rootfs is not a valid tar archive (bad header checksum)")
        size = 0 if header[156:157] in (b"", *(bytes([c]) for c in header_only)) else _tar_size(header)
        padded = (size + 511) // 512 * 512
        if _skip(stream, padded) != padded:
            raise InvalidArgument("rootfs tar is truncated (in a file's data)")
    _drain(stream)  # the zero blocks and padding after the last member are part of the diff too


def _tar_checksum_ok(header: bytes) -> bool:
    try:
        stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    rest = header[:148] + header[156:]
    if stored == sum(rest) + 8 * 32:
        return True
    return stored == sum(b - 256 if b > 127 else b for b in rest) + 8 * 32  # some old tars sum signed bytes


def _tar_size(header: bytes) -> int:
    field_ = header[124:136]
    if field_[0] & 0x80:  # GNU base-256 for sizes over 8 GiB
        return int.from_bytes(bytes([field_[0] & 0x7F]) + field_[1:], "big")
    try:
        return int(field_.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise InvalidArgument("rootfs is not a valid tar archive (bad size field)") from None


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _skip(stream: BinaryIO, n: int) -> int:
    done = 0
    while done < n:
        chunk = stream.read(min(_CHUNK, n - done))
        if not chunk:
            break
        done += len(chunk)
    return done


def _drain(stream: BinaryIO) -> None:
    while stream.read(_CHUNK):
        pass


class _Tee:
    """Reads from ``stream`` and hands every chunk to each sink (hash, compressor, blob writer)."""

    def __init__(self, stream: BinaryIO, *sinks: Callable[[bytes], object]) -> None:
        self.stream, self.sinks = stream, sinks

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        for sink in self.sinks:
            sink(data)
        return data
