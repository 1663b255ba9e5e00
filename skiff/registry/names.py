"""What the registry accepts as a repository name, a tag and a digest (the distribution grammar).

These checks are also what keeps request paths safe to use as file names: a valid name has no
empty, ``.``/``..`` or ``_``-prefixed component, so it can neither escape the data directory nor
collide with the storage's own ``_layers``/``_manifests``/``_tags`` entries.
"""

from __future__ import annotations

import re

from skiff.registry.errors import DistributionError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
# Any well-formed digest (algorithm:encoded), so that sha512 is refused as unsupported, not malformed.
_ANY_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
MAX_NAME = 255


def check_name(name: str) -> str:
    """The repository name, or NAME_INVALID."""
    if len(name) > MAX_NAME or not _NAME.match(name):
        raise DistributionError("NAME_INVALID", detail={"name": name})
    return name


def check_tag(tag: str) -> str:
    if not _TAG.match(tag):
        raise DistributionError("TAG_INVALID", "invalid tag", detail={"tag": tag})
    return tag


def check_digest(digest: str) -> str:
    """A well-formed digest (``algorithm:encoded``), or DIGEST_INVALID. A sha256 one must be 64 hex digits."""
    if _SHA256.match(digest) or (_ANY_DIGEST.match(digest) and not digest.startswith("sha256:")):
        return digest
    raise DistributionError("DIGEST_INVALID", "invalid digest", detail={"digest": digest})


def is_sha256(digest: str) -> bool:
    """Whether the registry can hold content under ``digest`` (it stores by sha256 only): others are
    well formed but simply unknown here."""
    return bool(_SHA256.match(digest))


def is_digest(reference: str) -> bool:
    """Whether a manifest reference is a digest (it has a colon, which tags never do)."""
    return ":" in reference
