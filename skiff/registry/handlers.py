"""The Distribution API's endpoints: blobs, uploads, manifests, tags and the catalog.

Each handler turns one request into calls on :class:`Storage` and answers with the headers clients
rely on (Location, Docker-Content-Digest, Docker-Upload-UUID, Range). Blob bodies are streamed both
ways: uploads go to disk in batches hashed and written by a worker thread while the next batch
arrives; downloads are sent with sendfile. Requests on one upload session are serialised by a lock,
so chunks of one session never interleave.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from skiff.registry import manifests, ranges
from skiff.registry.errors import DistributionError
from skiff.registry.names import check_digest, check_name
from skiff.registry.storage import Storage
from skiff.registry.uploads import Appender, Upload

BATCH = 1 << 20  # bytes handed to the writer thread at once
CATALOG_DEFAULT, CATALOG_MAX = 100, 1000  # distribution's defaults


class BlobResponse(web.FileResponse):
    """A blob sent with sendfile; aiohttp does the single-range slicing we validated beforehand.

    ``ignore_range`` sends the whole blob despite a Range header (for multi-range requests, which
    aiohttp cannot serve and HTTP lets a server ignore).
    """

    def __init__(self, path: str, *, headers: dict[str, str], ignore_range: bool) -> None:
        super().__init__(path, headers=headers)
        self._ignore_range = ignore_range

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._ignore_range:
            request = request.clone(headers={k: v for k, v in request.headers.items() if k.lower() != "range"})
        return await super().prepare(request)


class RegistryAPI:
    """Handlers over one :class:`Storage`; each takes the request and the path's named parts."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def busy_uploads(self) -> list[str]:
        return [uuid for uuid, lock in list(self._locks.items()) if lock.locked()]

    # -- base -------------------------------------------------------------------------------------

    async def base(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def base_redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/v2/")

    # -- blobs ------------------------------------------------------------------------------------

    async def get_blob(self, request: web.Request, name: str, digest: str) -> web.StreamResponse:
        size = self.storage.blob_size(name, digest)
        headers = {"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream",
                   "Cache-Control": "max-age=31536000"}
        whole = ranges.download_range(request.headers.get("Range"), size) is None
        return BlobResponse(self.storage.blob_path(digest), headers=headers,
                            ignore_range=whole and "Range" in request.headers)

    async def delete_blob(self, request: web.Request, name: str, digest: str) -> web.Response:
        await asyncio.to_thread(self.storage.unlink_blob, name, digest)
        return web.Response(status=202)

    # -- uploads ----------------------------------------------------------------------------------

    async def start_upload(self, request: web.Request, name: str) -> web.Response:
        query = request.query
        if "mount" in query and await self._mount(name, query["mount"], query.get("from", "")):
            return _blob_created(name, query["mount"])
        if "digest" in query:
            return await self._monolithic(request, name, check_digest(query["digest"]))
        upload = await asyncio.to_thread(self.storage.uploads.create, name)
        return _upload_response(name, upload, 202)

    async def _mount(self, name: str, digest: str, source: str) -> bool:
        """Cross-repository mount; False (fall back to an upload) unless ``source`` has the blob."""
        try:
            check_digest(digest)
            check_name(source)
        except DistributionError:
            return False
        return await asyncio.to_thread(self.storage.mount_blob, name, digest, source)

    async def _monolithic(self, request: web.Request, name: str, digest: str) -> web.Response:
        upload = await asyncio.to_thread(self.storage.uploads.create, name)
        async with self._lock(upload.uuid):
            try:
                await self._append(request, upload, None)
                await asyncio.to_thread(self.storage.finish_upload, upload, digest)
            except BaseException:
                self.storage.uploads.remove(upload)
                raise
        return _blob_created(name, digest)

    async def upload_status(self, request: web.Request, name: str, uuid: str) -> web.Response:
        upload = await asyncio.to_thread(self.storage.uploads.get, name, uuid)
        return _upload_response(name, upload, 204)

    async def patch_upload(self, request: web.Request, name: str, uuid: str) -> web.Response:
        async with self._lock(uuid):
            upload = await asyncio.to_thread(self.storage.uploads.get, name, uuid)
            await self._append(request, upload, ranges.upload_range(request.headers.get("Content-Range")))
            return _upload_response(name, upload, 202)

    async def finish_upload(self, request: web.Request, name: str, uuid: str) -> web.Response:
        async with self._lock(uuid):
            upload = await asyncio.to_thread(self.storage.uploads.get, name, uuid)
            if "digest" not in request.query:
                raise DistributionError("DIGEST_INVALID", "digest missing")
            digest = check_digest(request.query["digest"])
            if request.body_exists:
                await self._append(request, upload, ranges.upload_range(request.headers.get("Content-Range")))
            await asyncio.to_thread(self.storage.finish_upload, upload, digest)
        return _blob_created(name, digest)

    async def cancel_upload(self, request: web.Request, name: str, uuid: str) -> web.Response:
        async with self._lock(uuid):
            upload = await asyncio.to_thread(self.storage.uploads.get, name, uuid)
            await asyncio.to_thread(self.storage.uploads.remove, upload)
        return web.Response(status=204, headers={"Docker-Upload-UUID": uuid})

    @asynccontextmanager
    async def _lock(self, uuid: str) -> AsyncIterator[None]:
        lock = self._locks.get(uuid)
        if lock is None:
            lock = self._locks[uuid] = asyncio.Lock()
        async with lock:
            yield

    async def _append(self, request: web.Request, upload: Upload, chunk: tuple[int, int] | None) -> None:
        """Add the request body to the upload; with a Content-Range it must continue at the offset."""
        if chunk is not None:
            _check_chunk(request, upload, chunk)
        appender = await asyncio.to_thread(self.storage.uploads.begin, upload)
        try:
            await _receive(request, appender)
            if chunk is not None and appender.size != chunk[1] - chunk[0] + 1:
                raise DistributionError("SIZE_INVALID", detail={"received": appender.size})
            await asyncio.to_thread(appender.commit)
        except BaseException:
            appender.rollback()
            raise

    # -- manifests --------------------------------------------------------------------------------

    async def get_manifest(self, request: web.Request, name: str, reference: str) -> web.Response:
        stored = await asyncio.to_thread(self.storage.manifest, name, reference)
        etag = f'"{stored.digest}"'
        headers = {"Docker-Content-Digest": stored.digest, "ETag": etag, "Content-Type": stored.media_type}
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        body = await asyncio.to_thread(_read_file, stored.path)
        return web.Response(body=body, headers=headers)

    async def put_manifest(self, request: web.Request, name: str, reference: str) -> web.Response:
        data = await _read_limited(request, manifests.MAX_SIZE)
        digest = await asyncio.to_thread(self.storage.put_manifest, name, reference, data,
                                         request.headers.get("Content-Type"))
        return web.Response(status=201, headers={"Location": f"/v2/{name}/manifests/{digest}",
                                                 "Docker-Content-Digest": digest})

    async def delete_manifest(self, request: web.Request, name: str, reference: str) -> web.Response:
        await asyncio.to_thread(self.storage.delete_manifest, name, reference)
        return web.Response(status=202)

    # -- listings ---------------------------------------------------------------------------------

    async def tags(self, request: web.Request, name: str) -> web.Response:
        all_tags = await asyncio.to_thread(self.storage.tags, name)
        page, link = _paginate(request, all_tags, None)
        return web.json_response({"name": name, "tags": page}, headers=link)

    async def catalog(self, request: web.Request) -> web.Response:
        repositories = await asyncio.to_thread(self.storage.repositories)
        page, link = _paginate(request, repositories, (CATALOG_DEFAULT, CATALOG_MAX))
        return web.json_response({"repositories": page}, headers=link)


def _check_chunk(request: web.Request, upload: Upload, chunk: tuple[int, int]) -> None:
    start, end = chunk
    if start != upload.offset:
        raise DistributionError("RANGE_INVALID", detail={"offset": upload.offset, "start": start},
                                headers={"Range": ranges.upload_progress(upload.offset),
                                         "Location": _upload_location(upload.repository, upload.uuid),
                                         "Docker-Upload-UUID": upload.uuid})
    if request.content_length is not None and request.content_length != end - start + 1:
        raise DistributionError("SIZE_INVALID", detail={"Content-Length": request.content_length,
                                                        "Content-Range": f"{start}-{end}"})


async def _receive(request: web.Request, appender: Appender) -> None:
    """Stream the body into ``appender``: one batch is written by a thread while the next arrives."""
    batch: list[bytes] = []
    size = 0
    pending: asyncio.Future | None = None
    try:
        async for data in request.content.iter_any():
            batch.append(data)
            size += len(data)
            if size >= BATCH:
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(asyncio.to_thread(appender.write, batch))
                batch, size = [], 0
    finally:
        if pending is not None:
            await asyncio.shield(pending)
    if batch:
        await asyncio.to_thread(appender.write, batch)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The whole body, refusing (before buffering it all) one larger than ``limit``."""
    chunks: list[bytes] = []
    size = 0
    async for data in request.content.iter_any():
        size += len(data)
        if size > limit:
            raise DistributionError("MANIFEST_INVALID", f"manifest is larger than {limit} bytes")
        chunks.append(data)
    return b"".join(chunks)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _upload_location(name: str, uuid: str) -> str:
    return f"/v2/{name}/blobs/uploads/{uuid}"


def _upload_response(name: str, upload: Upload, status: int) -> web.Response:
    return web.Response(status=status, headers={
        "Location": _upload_location(name, upload.uuid),
        "Range": ranges.upload_progress(upload.offset),
        "Docker-Upload-UUID": upload.uuid,
    })


def _blob_created(name: str, digest: str) -> web.Response:
    return web.Response(status=201, headers={"Location": f"/v2/{name}/blobs/{digest}",
                                             "Docker-Content-Digest": digest})


def _paginate(request: web.Request, items: list[str], limits: tuple[int, int] | None) -> tuple[list[str], dict]:
    """The page after ``last`` of at most ``n`` items, and a Link header when more follow."""
    n_text, last = request.query.get("n"), request.query.get("last")
    limit = limits[0] if limits else None
    if n_text is not None:
        if not n_text.isdigit() or (limits and int(n_text) > limits[1]):
            raise DistributionError("PAGINATION_NUMBER_INVALID", detail={"n": n_text})
        limit = int(n_text)
    if last:
        items = [i for i in items if i > last]
    if limit is None or len(items) <= limit:
        return items, {}
    if limit == 0:
        return [], {}
    page = items[:limit]
    query = urllib.parse.urlencode({"n": limit, "last": page[-1]})
    return page, {"Link": f'<{request.path}?{query}>; rel="next"'}
