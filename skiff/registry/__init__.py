"""Skiff's OCI Distribution registry server (``skiff registry``).

It speaks the Distribution API (``/v2/``: blobs, chunked and monolithic uploads, cross-repository
mounts, manifests by tag or digest, tags and catalog with pagination) closely enough that skopeo,
docker and containerd push and pull through it, and answers like the CNCF distribution server.
It keeps its own store and shares no code with ``skiff.image``: a registry is a separate service.

    cli.py        the command line: serve, or garbage-collect
    server.py     the aiohttp application: routing, Basic auth, errors as distribution JSON
    handlers.py   one handler per endpoint; blob bodies streamed both ways
    storage.py    blobs by sha256, repositories as links, tags; crash-safe layout on disk
    uploads.py    upload sessions on disk, resumable after a crash
    manifests.py  what a pushed manifest must look like and what it refers to
    names.py      repository names, tags, digests
    ranges.py     Range / Content-Range
    auth.py       htpasswd (bcrypt, {SHA}, plain)
    atomic.py     temp + fsync + rename
    errors.py     the distribution error codes and their HTTP statuses
"""
