"""Checking a pushed manifest: its media type, its shape, and what it refers to.

The registry stores the exact bytes it was given (their digest is the manifest's identity), so this
only reads the document to refuse what clients could not use later and to list the blobs and child
manifests that must already be in the repository. Like distribution it accepts OCI and Docker
schema 2 image manifests and indexes; the long-deprecated signed schema 1 is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from skiff.registry.errors import DistributionError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
SUPPORTED = IMAGE_MANIFESTS + INDEXES
# Layers that may live elsewhere (descriptor ``urls``): the registry need not hold them.
FOREIGN_LAYERS = (
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
)
MAX_SIZE = 4 << 20  # distribution's limit for a manifest body
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


@dataclass
class CheckedManifest:
    """A manifest that passed the checks: its media type and the digests it needs in the repository."""

    media_type: str
    blobs: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def invalid(message: str) -> DistributionError:
    return DistributionError("MANIFEST_INVALID", detail=message)


def check(data: bytes, content_type: str | None) -> CheckedManifest:
    """Validate a manifest body pushed with ``Content-Type: content_type``."""
    doc = _load(data)
    media_type = _media_type(doc, _bare(content_type))
    if doc.get("schemaVersion") != 2:
        raise invalid(f"unsupported schemaVersion {doc.get('schemaVersion')!r}")
    if media_type in IMAGE_MANIFESTS:
        return _check_image(doc, media_type)
    return _check_index(doc, media_type)


def _load(data: bytes) -> dict:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise invalid("a manifest is a JSON object")
    return doc


def _bare(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _media_type(doc: dict, content_type: str) -> str:
    """The body's ``mediaType`` wins; else the Content-Type; else what the shape says (as distribution)."""
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise invalid("mediaType must be a string")
    if declared and content_type in SUPPORTED and declared != content_type:
        raise invalid(f"mediaType {declared!r} does not match Content-Type {content_type!r}")
    media_type = declared or (content_type if content_type in SUPPORTED else "")
    if not media_type:
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type not in SUPPORTED:
        raise invalid(f"unsupported manifest media type {media_type!r}")
    return media_type


def _check_image(doc: dict, media_type: str) -> CheckedManifest:
    result = CheckedManifest(media_type)
    result.blobs.append(_descriptor(doc.get("config"), "config")["digest"])
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise invalid("layers must be a list")
    for i, layer in enumerate(layers):
        d = _descriptor(layer, f"layers[{i}]")
        if not (d.get("mediaType") in FOREIGN_LAYERS and d.get("urls")):
            result.blobs.append(d["digest"])
    return result


def _check_index(doc: dict, media_type: str) -> CheckedManifest:
    result = CheckedManifest(media_type)
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise invalid("manifests must be a list")
    for i, entry in enumerate(entries):
        result.manifests.append(_descriptor(entry, f"manifests[{i}]")["digest"])
    return result


def _descriptor(d: object, where: str) -> dict:
    if not isinstance(d, dict):
        raise invalid(f"{where}: a descriptor must be an object")
    if not isinstance(d.get("digest"), str) or not _DIGEST.match(d["digest"]):
        raise invalid(f"{where}: invalid digest {d.get('digest')!r}")
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise invalid(f"{where}: size must be a non-negative integer")
    if not isinstance(d.get("mediaType", ""), str):
        raise invalid(f"{where}: mediaType must be a string")
    return d
