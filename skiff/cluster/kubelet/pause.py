"""The agent's own sandbox image, made on the node so that a pod needs no registry: ``skiff/pause:3.10``.

Kube's sandbox image (``registry.k8s.io/pause``) must be pulled, which an offline machine cannot do. This one
is assembled by the agent from the machine's static busybox (Debian's busybox-static) and handed to the engine
as a ``docker save`` archive through ``POST /images/load``, so it works on any Docker-API engine and keeps the
agent a client of the Engine API only. The archive is deterministic (fixed owners, modes and times; the
creation time is busybox's own), so every agent on a machine makes the same image id.

Its process does what pause does: it sleeps until told to stop. As PID 1 of its PID namespace the shell gets
no signal it has no handler for, so the command traps SIGTERM and SIGINT and exits 0 at once: stopping a
sandbox takes no grace period. Zombies handed to it are reaped by the shell's ``wait``.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import io
import json
import logging
import os
import platform
import struct
import tarfile
from pathlib import Path
from typing import Any

from skiff.cluster.kubelet.runtime import EngineRuntime, RuntimeError_, normalize_image, split_image
from skiff.errors import InvalidArgument

log = logging.getLogger(__name__)
PAUSE_IMAGE = "skiff/pause:3.10"
REPOSITORY = "skiff/pause"  # any tag of it is the agent's to make
BUSYBOX = Path("/bin/busybox")
COMMAND = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; sleep 2147483647 & wait"]
_PT_INTERP = 3  # the ELF program header naming a dynamic loader: a binary without one is static


def is_own(reference: str) -> bool:
    """Whether ``reference`` names an image the agent makes itself (``skiff/pause:<tag>``)."""
    repository, tag = split_image(normalize_image(reference))
    return repository in (REPOSITORY, f"docker.io/{REPOSITORY}") and not tag.startswith("sha256:")


async def provide(runtime: EngineRuntime, reference: str, busybox: Path = BUSYBOX) -> bool:
    """Load the pause image into the engine when ``reference`` is ours and the engine lacks it; True if made.
    Any other missing image is left to the pod's sync, which pulls it."""
    if not is_own(reference) or await runtime.image_id(reference) is not None:
        return False
    archive = await asyncio.to_thread(archive_bytes, reference, busybox)

    def load() -> None:
        for message in runtime.api.load_image(archive):
            if isinstance(message, dict) and (message.get("error") or message.get("errorDetail")):
                raise RuntimeError_(message.get("error") or str(message["errorDetail"]))

    await runtime.call(load)
    if await runtime.image_id(reference) is None:
        raise RuntimeError_(f"the engine loaded the pause image but does not list {reference}")
    log.info("made the sandbox image %s from %s", reference, busybox)
    return True


def archive_bytes(reference: str, busybox: Path = BUSYBOX) -> bytes:
    """A ``docker save`` archive holding one image, ``reference``: busybox, ``sh`` and ``sleep`` in ``/bin``."""
    try:
        binary = busybox.read_bytes()
        mtime = int(busybox.stat().st_mtime)
    except OSError as exc:
        raise InvalidArgument(f"cannot make the pause image: {busybox}: {exc.strerror} "
                              "(install busybox-static, or pass --pause-image)") from None
    if not is_static(binary):
        raise InvalidArgument(f"cannot make the pause image: {busybox} is not statically linked "
                              "(install busybox-static, or pass --pause-image)")
    layer = _layer(binary, mtime)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = _json(_config(diff_id, mtime))
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_name = diff_id.removeprefix("sha256:") + "/layer.tar"
    manifest = _json([{"Config": config_name, "RepoTags": [normalize_image(reference)], "Layers": [layer_name]}])
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in ((config_name, config), (layer_name, layer), ("manifest.json", manifest)):
            _add_file(archive, name, data, mtime, 0o644)
    return out.getvalue()


def is_static(binary: bytes) -> bool:
    """An ELF executable with no PT_INTERP program header (no dynamic loader: it runs in an empty root)."""
    if binary[:4] != b"\x7fELF" or len(binary) < 64:
        return False
    wide, endian = binary[4] == 2, "<" if binary[5] == 1 else ">"
    if wide:
        phoff, = struct.unpack_from(endian + "Q", binary, 32)
        entsize, count = struct.unpack_from(endian + "HH", binary, 54)
    else:
        phoff, = struct.unpack_from(endian + "I", binary, 28)
        entsize, count = struct.unpack_from(endian + "HH", binary, 42)
    for index in range(count):
        offset = phoff + index * entsize
        if offset + 4 > len(binary):
            return False
        kind, = struct.unpack_from(endian + "I", binary, offset)
        if kind == _PT_INTERP:
            return False
    return True


def _layer(binary: bytes, mtime: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as layer:
        directory = tarfile.TarInfo("bin")
        directory.type, directory.mode, directory.mtime = tarfile.DIRTYPE, 0o755, mtime
        layer.addfile(directory)
        _add_file(layer, "bin/busybox", binary, mtime, 0o755)
        for applet in ("sh", "sleep"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode, link.mtime = tarfile.SYMTYPE, "busybox", 0o777, mtime
            layer.addfile(link)
    return out.getvalue()


def _add_file(archive: tarfile.TarFile, name: str, data: bytes, mtime: int, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, mtime
    archive.addfile(info, io.BytesIO(data))


def _config(diff_id: str, mtime: int) -> dict[str, Any]:
    created = datetime.datetime.fromtimestamp(mtime, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"architecture": _architecture(), "os": "linux", "created": created,
            "config": {"Env": ["PATH=/bin"], "Entrypoint": COMMAND, "WorkingDir": "/",
                       "Labels": {"io.skiff.image": "pause"}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": "skiff agent: static busybox that sleeps until stopped"}]}


def _architecture() -> str:
    machine = platform.machine() or os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def _json(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
