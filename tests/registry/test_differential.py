"""The same requests against ``skiff registry`` and the distribution server give the same answers.

Both registries get the same content through the upload flow every client uses (POST, then PUT with
the body), then one script of good and bad requests; status codes and error codes must agree. The
few places where Skiff deliberately follows the current distribution (v3) or the OCI spec rather than
Debian's 2.8 are listed in ``SKIFF_ONLY`` with Skiff's answer, and checked on Skiff alone.
"""

from __future__ import annotations

import json
import urllib.parse

import pytest

from tests.registry.conftest import Servers
from tests.registry.images import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, sha256
from tests.registry.servers import RegistryProcess

pytestmark = pytest.mark.peer

LAYER = b"differential layer"
CONFIG = b'{"rootfs":{"type":"layers","diff_ids":[]},"os":"linux"}'
MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": OCI_MANIFEST,
    "config": {"mediaType": OCI_CONFIG, "digest": sha256(CONFIG), "size": len(CONFIG)},
    "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256(LAYER), "size": len(LAYER)}],
}).encode()
L, C, M = sha256(LAYER), sha256(CONFIG), sha256(MANIFEST)
ABSENT = sha256(b"absent")
OCT = {"Content-Type": "application/octet-stream"}
MT = {"Content-Type": OCI_MANIFEST}
# distribution 2.8 hides OCI manifests from clients that do not accept them; Skiff returns what it has.
ACCEPT = {"Accept": OCI_MANIFEST}

# (method, path, body, headers), run in order on both registries.
SCRIPT: list[tuple[str, str, bytes | None, dict]] = [
    ("GET", "/v2/", None, {}),
    ("PUT", "/v2/r/manifests/t1", MANIFEST, MT),
    ("PUT", "/v2/r/manifests/t2", MANIFEST, MT),
    ("GET", "/v2/r/manifests/t1", None, ACCEPT),
    ("HEAD", "/v2/r/manifests/t1", None, ACCEPT),
    ("GET", f"/v2/r/manifests/{M}", None, ACCEPT),
    ("GET", "/v2/r/manifests/nope", None, {}),
    ("GET", f"/v2/r/manifests/{ABSENT}", None, {}),
    ("GET", "/v2/unknown/manifests/nope", None, {}),
    ("GET", f"/v2/r/blobs/{L}", None, {}),
    ("HEAD", f"/v2/r/blobs/{L}", None, {}),
    ("GET", f"/v2/r/blobs/{L}", None, {"Range": "bytes=2-4"}),
    ("GET", f"/v2/r/blobs/{L}", None, {"Range": "bytes=-3"}),
    ("GET", f"/v2/r/blobs/{L}", None, {"Range": "bytes=100-"}),
    ("GET", f"/v2/r/blobs/{L}", None, {"Range": "bytes=5-2"}),
    ("GET", f"/v2/r/blobs/{ABSENT}", None, {}),
    ("GET", "/v2/r/blobs/sha256:abc", None, {}),
    ("GET", f"/v2/r/blobs/sha512:{'a' * 128}", None, {}),
    ("GET", f"/v2/other/blobs/{L}", None, {}),
    ("PUT", f"/v2/r/manifests/{ABSENT}", MANIFEST, MT),
    ("PUT", "/v2/r/manifests/bad", b"{not json", MT),
    ("PUT", "/v2/r/manifests/bad", b"[]", MT),
    ("PUT", "/v2/r/manifests/bad", MANIFEST.replace(L.encode(), ABSENT.encode()), MT),
    ("PUT", "/v2/r/manifests/bad", MANIFEST.replace(L.encode(), ABSENT.encode()).replace(C.encode(), L.encode()), MT),
    ("PUT", "/v2/r/manifests/bad", MANIFEST, {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"}),
    ("GET", "/v2/r/tags/list", None, {}),
    ("GET", "/v2/r/tags/list?n=1", None, {}),
    ("GET", "/v2/r/tags/list?n=1&last=t1", None, {}),
    ("GET", "/v2/unknown/tags/list", None, {}),
    ("GET", "/v2/_catalog", None, {}),
    ("GET", "/v2/_catalog?n=0", None, {}),
    ("GET", "/v2/_catalog?n=5000", None, {}),
    ("POST", f"/v2/r2/blobs/uploads/?mount={L}&from=r", None, {}),
    ("POST", f"/v2/r2/blobs/uploads/?mount={ABSENT}&from=r", None, {}),
    ("POST", f"/v2/r2/blobs/uploads/?mount={L}&from=BAD", None, {}),
    ("GET", f"/v2/r2/blobs/{L}", None, {}),
    ("GET", "/v2", None, {}),
    ("DELETE", f"/v2/r/manifests/{M}", None, {}),
    ("DELETE", f"/v2/r/manifests/{M}", None, {}),
    ("GET", "/v2/r/manifests/t2", None, ACCEPT),
    ("DELETE", f"/v2/r/blobs/{L}", None, {}),
    ("DELETE", f"/v2/r/blobs/{L}", None, {}),
    ("GET", f"/v2/r/blobs/{L}", None, {}),
]

# Where Debian's distribution 2.8 differs from distribution v3 / the OCI spec, Skiff's answers.
SKIFF_ONLY: list[tuple[str, str, bytes | None, dict, int, list[str]]] = [
    # v3 deletes a tag by name (2.8: 400 DIGEST_INVALID).
    ("PUT", "/v2/t/manifests/x", MANIFEST, MT, 201, []),
    ("DELETE", "/v2/t/manifests/x", None, {}, 202, []),
    ("DELETE", "/v2/t/manifests/x", None, {}, 404, ["MANIFEST_UNKNOWN"]),
    # OCI single-request (monolithic) upload: POST ?digest= with the body (2.8 ignores the digest: 202).
    ("POST", f"/v2/t/blobs/uploads/?digest={sha256(b'mono')}", b"mono", OCT, 201, []),
    ("POST", f"/v2/t/blobs/uploads/?digest={ABSENT}", b"mono", OCT, 400, ["DIGEST_INVALID"]),
    # Bad names and tags get the spec's 400s (2.8's router answers a plain-text 404).
    ("GET", "/v2/UPPER/tags/list", None, {}, 400, ["NAME_INVALID"]),
    ("PUT", "/v2/t/manifests/-bad", MANIFEST, MT, 400, ["TAG_INVALID"]),
    ("PUT", f"/v2/t/blobs/{L}", None, {}, 405, ["UNSUPPORTED"]),
    # v3 refuses a negative page size (2.8 ignores it).
    ("GET", "/v2/t/tags/list?n=-1", None, {}, 400, ["PAGINATION_NUMBER_INVALID"]),
    # An unknown session is unknown (2.8 and v3 first fail on the missing _state token they issue).
    ("GET", "/v2/t/blobs/uploads/00000000-0000-4000-8000-000000000000", None, {}, 404, ["BLOB_UPLOAD_UNKNOWN"]),
]


def push(reg: RegistryProcess, repo: str, data: bytes) -> None:
    """POST for a session, PUT the whole body with the digest: the flow both registries support."""
    r = reg.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert r.status == 202, r.body
    location = urllib.parse.urlsplit(r.headers["Location"])
    query = [*urllib.parse.parse_qsl(location.query), ("digest", sha256(data))]
    r = reg.request("PUT", f"{location.path}?{urllib.parse.urlencode(query)}", data, OCT)
    assert r.status == 201, r.body


def answers(reg: RegistryProcess) -> list[tuple[str, int, list[str], str | None]]:
    push(reg, "r", LAYER)
    push(reg, "r", CONFIG)
    result = []
    for method, path, body, headers in SCRIPT:
        r = reg.request(method, path, body, headers)
        digest = r.headers.get("Docker-Content-Digest") if r.status < 300 else None
        codes = sorted(r.error_codes()) if r.status != 416 else []  # 2.8's 416s have an empty body
        result.append((f"{method} {path[:80]} {headers.get('Range', '')}", r.status, codes, digest))
    return result


def test_same_answers_as_distribution(registries: Servers) -> None:
    peer = answers(registries.docker_registry())
    ours = answers(registries.skiff())
    mismatches = [f"{o[0]}: skiff {o[1:]} distribution {p[1:]}" for o, p in zip(ours, peer, strict=True) if o != p]
    assert not mismatches, "\n".join(mismatches)


def test_skiff_follows_v3_and_oci_where_2_8_differs(registries: Servers) -> None:
    reg = registries.skiff()
    push(reg, "t", LAYER)
    push(reg, "t", CONFIG)
    for method, path, body, headers, status, codes in SKIFF_ONLY:
        r = reg.request(method, path, body, headers)
        assert (r.status, r.error_codes()) == (status, codes), (method, path, r.body)
