"""Image manifests, indexes and configs: OCI and Docker schema2, and choosing a platform.

Parsing validates what the rest of Skiff relies on (media types it knows, sha256 digests, sizes),
so an unknown or malformed document is refused here with a clear error instead of half-working later.
"""

from __future__ import annotations

import json
import os

from skiff.errors import InvalidArgument, NotFound
from skiff.image.content import check_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
CONFIGS = (OCI_CONFIG, DOCKER_CONFIG)
LAYERS = (OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_NONDIST_GZIP, DOCKER_LAYER_GZIP,
          DOCKER_LAYER_FOREIGN, "application/vnd.docker.image.rootfs.diff.tar")
# What a client says it accepts when fetching a manifest (as docker and containerd do).
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))


def descriptor(media_type: str, digest: str, size: int, **extra: object) -> dict:
    return {"mediaType": media_type, "digest": check_digest(digest), "size": size, **extra}


def check_descriptor(d: object, where: str) -> dict:
    if not isinstance(d, dict):
        raise InvalidArgument(f"{where}: a descriptor must be an object")
    check_digest(d.get("digest"))
    if not isinstance(d.get("size"), int) or d["size"] < 0:
        raise InvalidArgument(f"{where}: descriptor size must be a non-negative integer")
    if not isinstance(d.get("mediaType", ""), str):
        raise InvalidArgument(f"{where}: descriptor mediaType must be a string")
    return d


def detect_media_type(doc: dict) -> str:
    """The media type of a manifest-like document: its own field, else inferred as registries do."""
    media_type = doc.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    raise InvalidArgument("unknown manifest: it has no mediaType and is neither a manifest nor an index")


def parse(data: bytes, media_type: str | None = None) -> tuple[str, dict]:
    """Parse a manifest or index; returns (media type, document). Unknown types are refused."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"manifest is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("manifest must be a JSON object")
    declared = doc.get("mediaType")
    kind = media_type or detect_media_type(doc)
    if declared and media_type and declared != media_type and media_type not in ("application/json", ""):
        raise InvalidArgument(f"manifest mediaType {declared!r} does not match its Content-Type {media_type!r}")
    kind = declared or kind
    if kind in MANIFESTS:
        check_descriptor(doc.get("config"), "manifest config")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise InvalidArgument("manifest layers must be a list")
        for i, layer in enumerate(layers):
            check_descriptor(layer, f"manifest layer {i}")
    elif kind in INDEXES:
        manifests = doc.get("manifests")
        if not isinstance(manifests, list):
            raise InvalidArgument("index manifests must be a list")
        for i, m in enumerate(manifests):
            check_descriptor(m, f"index entry {i}")
    else:
        raise InvalidArgument(f"unsupported manifest media type {kind!r}")
    return kind, doc


class Platform:
    """os/architecture[/variant], as ``--platform`` spells it."""

    __slots__ = ("architecture", "os", "variant")

    def __init__(self, os_name: str = "linux", architecture: str = "amd64", variant: str | None = None) -> None:
        self.os, self.architecture, self.variant = os_name, architecture, variant

    @classmethod
    def parse(cls, text: str | None) -> Platform:
        if not text:
            return cls.host()
        parts = text.lower().split("/")
        if not 1 <= len(parts) <= 3 or not all(parts):
            raise InvalidArgument(f"invalid platform {text!r}: want os/arch[/variant]")
        if len(parts) == 1:
            return cls(parts[0], cls.host().architecture)
        return _normalise(cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None))

    @classmethod
    def host(cls) -> Platform:
        machine = os.uname().machine
        arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)
        return cls("linux", arch, "v8" if arch == "arm64" else None)

    def matches(self, p: dict | None) -> bool:
        if not isinstance(p, dict):
            return False
        other = _normalise(Platform(p.get("os", ""), p.get("architecture", ""), p.get("variant")))
        if (other.os, other.architecture) != (self.os, self.architecture):
            return False
        return self.variant is None or other.variant in (None, self.variant)

    def __str__(self) -> str:
        return "/".join(x for x in (self.os, self.architecture, self.variant) if x)


def _normalise(p: Platform) -> Platform:
    arch = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm", "armel": "arm",
            "i386": "386"}.get(p.architecture, p.architecture)
    variant = p.variant
    if arch == "arm64" and variant in (None, "8"):
        variant = "v8"
    return Platform(p.os, arch, variant)


def select_platform(index: dict, platform: Platform) -> dict:
    """The index entry for ``platform`` (attestation manifests skipped), or NotFound naming what exists."""
    candidates = [m for m in index.get("manifests", [])
                  if (m.get("annotations") or {}).get("vnd.docker.reference.type") != "attestation-manifest"]
    for m in candidates:
        if platform.matches(m.get("platform")):
            return m
    available = ", ".join(str(_normalise(Platform(m["platform"].get("os", ""), m["platform"].get("architecture", ""),
                                                  m["platform"].get("variant"))))
                          for m in candidates if isinstance(m.get("platform"), dict))
    raise NotFound(f"no matching manifest for {platform} in the manifest list entries (has: {available or 'none'})")


def parse_config(data: bytes) -> dict:
    try:
        config = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"image config is not valid JSON: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("rootfs"), dict):
        raise InvalidArgument("image config must be an object with a rootfs")
    diff_ids = config["rootfs"].get("diff_ids")
    if not isinstance(diff_ids, list):
        raise InvalidArgument("image config rootfs.diff_ids must be a list")
    for d in diff_ids:
        check_digest(d)
    return config


def canonical(doc: dict) -> bytes:
    """Bytes for a document Skiff writes itself (pushed manifests keep the bytes they came with)."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=False).encode()
