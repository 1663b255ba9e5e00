"""Objects as the store holds them: JSON without ``resourceVersion`` (the store's revision supplies it),
and the small metadata helpers every layer uses (timestamps, generated names, owner references).

The stored JSON starts with ``{"metadata":{`` so that an answer can be made from the stored bytes by
splicing ``"resourceVersion":"N"`` in (``with_revision``), without decoding and encoding the object:
gets, unfiltered lists and watch events to many watchers are mostly that.
"""

from __future__ import annotations

import datetime
import json
import secrets
from typing import Any

from skiff.cluster.store import KeyValue

Obj = dict[str, Any]
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # kube's generateName alphabet: no vowels, no look-alikes
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(obj: Any) -> bytes:
    return _dumps(obj).encode()


_HEAD = b'{"metadata":{'


def encode(obj: Obj) -> bytes:
    """The stored form: metadata first, without its resourceVersion."""
    metadata = obj.get("metadata")
    metadata = {k: v for k, v in metadata.items() if k != "resourceVersion"} if isinstance(metadata, dict) else {}
    return dumps({"metadata": metadata, **{k: v for k, v in obj.items() if k != "metadata"}})


def with_revision(value: bytes, revision: int) -> bytes:
    """The stored bytes as the object's JSON with its resourceVersion, without decoding them."""
    if not value.startswith(_HEAD):
        return dumps(decode(value, revision))  # not written by ``encode``
    rest = value[len(_HEAD):]
    separator = b"" if rest.startswith(b"}") else b","
    return b'%s"resourceVersion":"%d"%s%s' % (_HEAD, revision, separator, rest)


def decode(value: bytes, revision: int) -> Obj:
    obj = json.loads(value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(revision)
    return obj


def from_kv(kv: KeyValue) -> Obj:
    return decode(kv.value, kv.mod_revision)


def now_rfc3339(offset_seconds: int = 0) -> str:
    moment = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(seconds=offset_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_name(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_NAME_CHARS) for _ in range(5))


def meta(obj: Obj) -> dict[str, Any]:
    value = obj.get("metadata")
    if not isinstance(value, dict):
        value = obj["metadata"] = {}
    return value


def owned_by(obj: Obj, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in meta(obj).get("ownerReferences") or [] if isinstance(ref, dict))


def spec_of(obj: Obj) -> Obj:
    """Everything but metadata and status: what ``generation`` counts changes of."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def tidy_metadata(obj: Obj) -> None:
    """Drop empty metadata collections, as kube's serialization omits them (``annotations: {}`` never shows)."""
    m = meta(obj)
    for field in ("labels", "annotations", "finalizers", "ownerReferences", "managedFields"):
        if field in m and not m[field]:
            del m[field]
