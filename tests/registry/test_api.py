"""The Distribution API of ``skiff registry``, request by request, over plain HTTP.

One server serves the whole module (each test uses its own repository names); the last test checks
it survived all the bad input.
"""

from __future__ import annotations

import hashlib
import json
import os

from tests.registry.images import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, sha256
from tests.registry.servers import RegistryProcess

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def push_blob(reg: RegistryProcess, repo: str, data: bytes) -> str:
    digest = sha256(data)
    r = reg.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data,
                    {"Content-Type": "application/octet-stream"})
    assert r.status == 201, r.body
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Location"] == f"/v2/{repo}/blobs/{digest}"
    return digest


def image_manifest(reg: RegistryProcess, repo: str, layers: list[bytes], media_type: str = OCI_MANIFEST) -> bytes:
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}, "os": "linux"}).encode()
    doc = {"schemaVersion": 2, "mediaType": media_type,
           "config": {"mediaType": OCI_CONFIG, "digest": push_blob(reg, repo, config), "size": len(config)},
           "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": push_blob(reg, repo, layer), "size": len(layer)}
                      for layer in layers]}
    return json.dumps(doc, indent=1).encode()


def put_manifest(reg: RegistryProcess, repo: str, ref: str, body: bytes, media_type: str = OCI_MANIFEST):
    return reg.request("PUT", f"/v2/{repo}/manifests/{ref}", body, {"Content-Type": media_type})


def start_upload(reg: RegistryProcess, repo: str) -> str:
    r = reg.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert r.status == 202, r.body
    assert r.headers["Range"] == "0-0"
    assert r.headers["Location"].endswith("/" + r.headers["Docker-Upload-UUID"])
    return r.headers["Location"]


def test_base_endpoint(registry: RegistryProcess) -> None:
    r = registry.request("GET", "/v2/")
    assert r.status == 200
    assert r.json() == {}
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_blob_get_head_and_ranges(registry: RegistryProcess) -> None:
    data = os.urandom(5000)
    digest = push_blob(registry, "ranges", data)
    r = registry.request("GET", f"/v2/ranges/blobs/{digest}")
    assert (r.status, r.body) == (200, data)
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Content-Type"] == "application/octet-stream"
    head = registry.request("HEAD", f"/v2/ranges/blobs/{digest}")
    assert (head.status, head.body, head.headers["Content-Length"]) == (200, b"", "5000")
    part = registry.request("GET", f"/v2/ranges/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert (part.status, part.body) == (206, data[100:200])
    assert part.headers["Content-Range"] == "bytes 100-199/5000"
    tail = registry.request("GET", f"/v2/ranges/blobs/{digest}", headers={"Range": "bytes=-10"})
    assert (tail.status, tail.body) == (206, data[-10:])
    for bad in ("bytes=5000-", "bytes=9-3", "lines=1-2"):
        r = registry.request("GET", f"/v2/ranges/blobs/{digest}", headers={"Range": bad})
        assert r.status == 416, bad
        assert r.headers["Content-Range"] == "bytes */5000"
        assert r.error_codes() == ["RANGE_INVALID"]


def test_unknown_blob_and_repository_isolation(registry: RegistryProcess) -> None:
    digest = push_blob(registry, "iso/a", b"only in a")
    for path in (f"/v2/iso/b/blobs/{digest}", f"/v2/iso/a/blobs/{sha256(b'never pushed')}"):
        r = registry.request("GET", path)
        assert r.status == 404
        assert r.error_codes() == ["BLOB_UNKNOWN"]
    assert registry.request("HEAD", f"/v2/iso/b/blobs/{digest}").status == 404


def test_chunked_upload_with_and_without_content_range(registry: RegistryProcess) -> None:
    data = os.urandom(300_000)
    location = start_upload(registry, "chunks")
    r = registry.request("PATCH", location, data[:100_000], {"Content-Range": "0-99999",
                                                            "Content-Type": "application/octet-stream"})
    assert r.status == 202, r.body
    assert r.headers["Range"] == "0-99999"
    location = r.headers["Location"]
    # Out of order: the server keeps its offset and says where it is.
    r = registry.request("PATCH", location, data[200_000:], {"Content-Range": "200000-299999"})
    assert r.status == 416
    assert r.headers["Range"] == "0-99999"
    assert r.error_codes() == ["RANGE_INVALID"]
    r = registry.request("PATCH", location, data[100_000:200_000])  # streamed, no Content-Range
    assert (r.status, r.headers["Range"]) == (202, "0-199999")
    status = registry.request("GET", location)
    assert (status.status, status.headers["Range"]) == (204, "0-199999")
    digest = sha256(data)
    r = registry.request("PUT", f"{location}?digest={digest}", data[200_000:], {"Content-Range": "200000-299999"})
    assert r.status == 201, r.body
    assert registry.request("GET", f"/v2/chunks/blobs/{digest}").body == data
    assert registry.request("GET", location).error_codes() == ["BLOB_UPLOAD_UNKNOWN"]


def test_patch_size_must_match_content_range(registry: RegistryProcess) -> None:
    location = start_upload(registry, "sizes")
    r = registry.request("PATCH", location, b"abc", {"Content-Range": "0-9"})
    assert r.status == 400
    assert r.error_codes() == ["SIZE_INVALID"]
    assert registry.request("GET", location).headers["Range"] == "0-0"


def test_digest_mismatch_stores_nothing(registry: RegistryProcess) -> None:
    location = start_upload(registry, "mismatch")
    wrong = sha256(b"something else")
    r = registry.request("PUT", f"{location}?digest={wrong}", b"the real content")
    assert r.status == 400
    assert r.error_codes() == ["DIGEST_INVALID"]
    assert registry.request("GET", f"/v2/mismatch/blobs/{wrong}").status == 404
    assert registry.request("GET", f"/v2/mismatch/blobs/{sha256(b'the real content')}").status == 404
    assert registry.request("GET", location).status == 404  # the upload is gone too
    sessions = set(os.listdir(registry.data / "uploads"))
    r = registry.request("POST", f"/v2/mismatch/blobs/uploads/?digest={wrong}", b"monolithic")
    assert (r.status, r.error_codes()) == (400, ["DIGEST_INVALID"])
    assert set(os.listdir(registry.data / "uploads")) == sessions
    for bad in ("sha256:xyz", "md5:abc"):
        assert registry.request("PUT", f"{start_upload(registry, 'mismatch')}?digest={bad}").status == 400


def test_cancel_upload(registry: RegistryProcess) -> None:
    location = start_upload(registry, "cancel")
    registry.request("PATCH", location, b"partial")
    r = registry.request("DELETE", location)
    assert r.status == 204
    assert registry.request("GET", location).error_codes() == ["BLOB_UPLOAD_UNKNOWN"]
    assert registry.request("PATCH", location, b"more").error_codes() == ["BLOB_UPLOAD_UNKNOWN"]


def test_upload_belongs_to_its_repository(registry: RegistryProcess) -> None:
    location = start_upload(registry, "owner/a")
    other = location.replace("/owner/a/", "/owner/b/")
    assert registry.request("GET", other).error_codes() == ["BLOB_UPLOAD_UNKNOWN"]


def test_cross_repository_mount(registry: RegistryProcess) -> None:
    digest = push_blob(registry, "mount/src", b"shared layer")
    r = registry.request("POST", f"/v2/mount/dst/blobs/uploads/?mount={digest}&from=mount/src")
    assert r.status == 201
    assert r.headers["Docker-Content-Digest"] == digest
    assert registry.request("GET", f"/v2/mount/dst/blobs/{digest}").body == b"shared layer"
    # Not in the source repository: a plain upload session instead.
    missing = sha256(b"absent")
    r = registry.request("POST", f"/v2/mount/dst/blobs/uploads/?mount={missing}&from=mount/src")
    assert r.status == 202
    assert "Docker-Upload-UUID" in r.headers


def test_manifest_put_get_head_by_tag_and_digest(registry: RegistryProcess) -> None:
    body = image_manifest(registry, "app/web", [b"layer one", b"layer two"])
    digest = sha256(body)
    r = put_manifest(registry, "app/web", "v1", body)
    assert r.status == 201, r.body
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Location"] == f"/v2/app/web/manifests/{digest}"
    for ref in ("v1", digest):
        got = registry.request("GET", f"/v2/app/web/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert got.status == 200
        assert got.body == body  # the exact bytes, indentation and all
        assert got.headers["Content-Type"] == OCI_MANIFEST
        assert got.headers["Docker-Content-Digest"] == digest
        assert got.headers["ETag"] == f'"{digest}"'
        head = registry.request("HEAD", f"/v2/app/web/manifests/{ref}")
        assert (head.status, head.body, int(head.headers["Content-Length"])) == (200, b"", len(body))
    cached = registry.request("GET", "/v2/app/web/manifests/v1", headers={"If-None-Match": f'"{digest}"'})
    assert cached.status == 304
    assert registry.request("GET", "/v2/app/web/manifests/v2").error_codes() == ["MANIFEST_UNKNOWN"]


def test_docker_media_type_and_index(registry: RegistryProcess) -> None:
    body = image_manifest(registry, "multi", [b"amd64 layer"], DOCKER_MANIFEST)
    assert put_manifest(registry, "multi", sha256(body), body, DOCKER_MANIFEST).status == 201
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": sha256(body), "size": len(body),
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    assert put_manifest(registry, "multi", "latest", index, OCI_INDEX).status == 201
    assert registry.request("GET", "/v2/multi/manifests/latest").headers["Content-Type"] == OCI_INDEX
    assert registry.request("GET", f"/v2/multi/manifests/{sha256(body)}").headers["Content-Type"] == DOCKER_MANIFEST


def test_bad_manifests(registry: RegistryProcess) -> None:
    body = image_manifest(registry, "bad", [b"a layer"])
    r = put_manifest(registry, "bad", sha256(b"not the manifest"), body)
    assert (r.status, r.error_codes()) == (400, ["DIGEST_INVALID"])
    doc = json.loads(body)
    doc["layers"].append({"mediaType": OCI_LAYER_GZIP, "digest": sha256(b"missing"), "size": 7})
    r = put_manifest(registry, "bad", "missing-blob", json.dumps(doc).encode())
    assert (r.status, r.error_codes()) == (400, ["MANIFEST_BLOB_UNKNOWN"])
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha256(b"no such manifest"), "size": 3}]}).encode()
    r = put_manifest(registry, "bad", "missing-child", index, OCI_INDEX)
    assert (r.status, r.error_codes()) == (400, ["MANIFEST_BLOB_UNKNOWN"])
    for junk in (b"{not json", b"[1, 2]", b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'"}',
                 b'{"schemaVersion": 1, "name": "x", "fsLayers": []}'):
        r = put_manifest(registry, "bad", "junk", junk)
        assert (r.status, r.error_codes()) == (400, ["MANIFEST_INVALID"]), junk
    r = put_manifest(registry, "bad", "clash", body, DOCKER_MANIFEST)  # body says OCI
    assert r.error_codes() == ["MANIFEST_INVALID"]
    padded = body[:-1] + b" " * 300_000 + b"}"  # arrives in many reads; still one valid manifest
    assert put_manifest(registry, "bad", "padded", padded).status == 201
    huge = body[:-1] + b" " * (4 << 20) + b"}"
    assert put_manifest(registry, "bad", "huge", huge).error_codes() == ["MANIFEST_INVALID"]
    r = put_manifest(registry, "bad", "-bad", body)
    assert r.status == 400
    assert registry.request("GET", "/v2/bad/tags/list").json()["tags"] == ["padded"]


def test_manifest_delete_by_digest_removes_its_tags(registry: RegistryProcess) -> None:
    body = image_manifest(registry, "del", [b"x"])
    digest = sha256(body)
    for tag in ("a", "b"):
        assert put_manifest(registry, "del", tag, body).status == 201
    assert registry.request("DELETE", "/v2/del/manifests/a").status == 202  # a tag: only the tag goes
    assert registry.request("GET", "/v2/del/manifests/a").status == 404
    assert registry.request("GET", "/v2/del/manifests/b").status == 200
    assert registry.request("DELETE", f"/v2/del/manifests/{digest}").status == 202
    for ref in ("b", digest):
        assert registry.request("GET", f"/v2/del/manifests/{ref}").error_codes() == ["MANIFEST_UNKNOWN"]
    assert registry.request("DELETE", f"/v2/del/manifests/{digest}").status == 404
    assert registry.request("DELETE", "/v2/del/manifests/nope").error_codes() == ["MANIFEST_UNKNOWN"]
    assert registry.request("GET", "/v2/del/tags/list").json()["tags"] == []


def test_blob_delete(registry: RegistryProcess) -> None:
    digest = push_blob(registry, "blobdel", b"to be deleted")
    assert registry.request("DELETE", f"/v2/blobdel/blobs/{digest}").status == 202
    assert registry.request("GET", f"/v2/blobdel/blobs/{digest}").error_codes() == ["BLOB_UNKNOWN"]
    assert registry.request("DELETE", f"/v2/blobdel/blobs/{digest}").status == 404


def test_tags_pagination(registry: RegistryProcess) -> None:
    body = image_manifest(registry, "paged", [b"p"])
    names = ["a", "b", "c", "d", "e"]
    for tag in reversed(names):
        assert put_manifest(registry, "paged", tag, body).status == 201
    r = registry.request("GET", "/v2/paged/tags/list")
    assert r.json() == {"name": "paged", "tags": names}
    assert "Link" not in r.headers
    r = registry.request("GET", "/v2/paged/tags/list?n=2")
    assert r.json()["tags"] == ["a", "b"]
    assert r.headers["Link"] == '</v2/paged/tags/list?n=2&last=b>; rel="next"'
    r = registry.request("GET", "/v2/paged/tags/list?n=2&last=d")
    assert r.json()["tags"] == ["e"]
    assert "Link" not in r.headers
    assert registry.request("GET", "/v2/paged/tags/list?n=0").json()["tags"] == []
    assert registry.request("GET", "/v2/paged/tags/list?n=-1").error_codes() == ["PAGINATION_NUMBER_INVALID"]
    assert registry.request("GET", "/v2/never/pushed/tags/list").error_codes() == ["NAME_UNKNOWN"]


def test_catalog_pagination(registry: RegistryProcess) -> None:
    for repo in ("cat/z", "cat/y/deep", "cat/x"):
        assert put_manifest(registry, repo, "t", image_manifest(registry, repo, [b"c"])).status == 201
    everything = registry.request("GET", "/v2/_catalog").json()["repositories"]
    assert everything == sorted(everything)
    assert {"cat/x", "cat/y/deep", "cat/z"} <= set(everything)
    assert "cat/y" not in everything and "ranges" not in everything  # no manifest, no repository
    r = registry.request("GET", "/v2/_catalog?n=1&last=cat/x")
    assert r.json()["repositories"] == ["cat/y/deep"]
    assert r.headers["Link"] == '</v2/_catalog?n=1&last=cat%2Fy%2Fdeep>; rel="next"'


def test_names(registry: RegistryProcess) -> None:
    digest = push_blob(registry, "a/b/c/d", b"deep")
    assert registry.request("GET", f"/v2/a/b/c/d/blobs/{digest}").body == b"deep"
    # A repository may be called like a route keyword.
    manifest = image_manifest(registry, "manifests/blobs", [b"kw"])
    assert put_manifest(registry, "manifests/blobs", "tags", manifest).status == 201
    assert registry.request("GET", "/v2/manifests/blobs/manifests/tags").body == manifest
    for bad in ("UPPER", "a//b", "-lead", "a/_x", "a/../b", "x" * 256):
        r = registry.request("GET", f"/v2/{bad}/tags/list")
        assert (r.status, r.error_codes()) == (400, ["NAME_INVALID"]), bad


def test_methods_and_routes(registry: RegistryProcess) -> None:
    r = registry.request("PUT", f"/v2/x/blobs/{sha256(b'')}")
    assert (r.status, r.error_codes()) == (405, ["UNSUPPORTED"])
    assert registry.request("GET", "/nothing/here").status == 404


def test_large_streamed_blob(registry: RegistryProcess) -> None:
    data = hashlib.sha512(b"seed").digest() * (40 * 1024 * 16)  # 40 MiB, several writer batches
    location = start_upload(registry, "large")
    r = registry.request("PATCH", location, data)
    assert (r.status, r.headers["Range"]) == (202, f"0-{len(data) - 1}")
    digest = sha256(data)
    assert registry.request("PUT", f"{r.headers['Location']}?digest={digest}").status == 201
    got = registry.request("GET", f"/v2/large/blobs/{digest}")
    assert got.status == 200 and got.body == data


def test_server_survived(registry: RegistryProcess) -> None:
    assert registry.alive()
    assert registry.request("GET", "/v2/").status == 200
    assert not os.listdir(registry.data / "tmp")
