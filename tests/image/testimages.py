"""The project's offline test images, built with Skiff's own import (shared by tests and benchmarks).

- busybox: a rootfs made here from Debian's ``busybox-static`` (the binary, its applet symlinks, a
  passwd/group with root and nobody, a sticky /tmp). Reproducible: fixed timestamps and ordering,
  so its image ID is the same on every run.
- nginx: ``mmdebstrap --variant=minbase --include=nginx-light bookworm`` (the one build that reaches
  the machine's configured Debian mirror), cached under ``~/.cache/skiff/images/`` by a version key,
  so only the first run pays for it (about half a minute).

Archives for peers (``skopeo``, the docker CLI) are made by skopeo from Skiff's OCI layout, so a
test that loads them reads what a real peer wrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime

from skiff.image.archive import export_oci_layout, import_rootfs
from skiff.image.content import ContentStore
from skiff.image.store import Image, ImageStore

BUSYBOX = "skiff-test/busybox:latest"
NGINX = "skiff-test/nginx:latest"
BUSYBOX_BINARY = "/bin/busybox"
# Bump when the nginx recipe changes, so cached rootfs tars built by an older recipe are not reused.
NGINX_VERSION = "bookworm-minbase-nginx-light-1"
NGINX_BUILD_TIMEOUT = 900
CREATED = datetime(2024, 1, 1, tzinfo=UTC)  # pinned so the images' IDs are reproducible
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX_CHANGES = (f"ENV {PATH_ENV}", 'CMD ["sh"]')
NGINX_CHANGES = (f"ENV {PATH_ENV}", "EXPOSE 80/tcp", "STOPSIGNAL SIGQUIT", 'CMD ["nginx","-g","daemon off;"]')

_MTIME = int(CREATED.timestamp())
_PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = b"root:x:0:\nnobody:x:65534:\n"
_DIRS = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "home": 0o755, "proc": 0o755, "root": 0o700,
         "sbin": 0o755, "sys": 0o755, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
         "var": 0o755, "var/tmp": 0o1777}


class TestImageUnavailable(RuntimeError):
    """A test image cannot be built on this machine; the message says why (tests skip with it)."""

    __test__ = False  # not a pytest test class, despite the name


# ---- busybox


def busybox_rootfs_tar(path: str) -> str:
    """Write the busybox rootfs tar to ``path`` (uncompressed, reproducible); returns ``path``."""
    if not os.path.exists(BUSYBOX_BINARY):
        raise TestImageUnavailable(f"{BUSYBOX_BINARY} is missing: install Debian's busybox-static")
    applets = _busybox_applets()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in sorted(_DIRS.items()):
            tar.addfile(_entry(name, tarfile.DIRTYPE, mode))
        with open(BUSYBOX_BINARY, "rb") as f:
            tar.addfile(_entry("bin/busybox", tarfile.REGTYPE, 0o755, size=os.fstat(f.fileno()).st_size), f)
        for applet in applets:
            if applet != "bin/busybox":
                tar.addfile(_entry(applet, tarfile.SYMTYPE, 0o777, link="/bin/busybox"))
        for name, data in (("etc/group", _GROUP), ("etc/passwd", _PASSWD)):
            tar.addfile(_entry(name, tarfile.REGTYPE, 0o644, size=len(data)), io.BytesIO(data))
    return path


def _busybox_applets() -> list[str]:
    """Applet paths (``bin/sh``, ``usr/bin/env``, ...): ``busybox --list-full`` is ``--list`` with paths."""
    out = subprocess.run([BUSYBOX_BINARY, "--list-full"], capture_output=True, text=True, check=True).stdout
    return sorted({line.strip() for line in out.splitlines() if line.strip()})


def _entry(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname, info.mtime = kind, mode, size, link, _MTIME
    info.uname = info.gname = "root"
    return info


def busybox_image(content: ContentStore, images: ImageStore, name: str = BUSYBOX) -> Image:
    """The busybox image imported with ``import_rootfs`` (CMD ["sh"]), recorded as ``name``."""
    with tempfile.TemporaryDirectory(prefix="skiff-busybox-") as tmp:
        rootfs = busybox_rootfs_tar(os.path.join(tmp, "rootfs.tar"))
        return import_rootfs(rootfs, content, images, name, changes=BUSYBOX_CHANGES,
                             message="skiff test image: busybox-static", created=CREATED)


def busybox_oci_layout(directory: str, name: str = BUSYBOX) -> str:
    """An OCI image layout directory holding busybox (tag from ``name``); returns ``directory``."""
    with _scratch_store() as (content, images):
        busybox_image(content, images, name)
        export_oci_layout(name, directory, content, images)
    return directory


def busybox_oci_archive(path: str, name: str = BUSYBOX) -> str:
    """An oci-archive of busybox, written by ``skopeo copy oci:... oci-archive:...``."""
    return _skopeo_from_layout(name, f"oci-archive:{path}:{_tag(name)}", path)


def busybox_docker_archive(path: str, name: str = BUSYBOX) -> str:
    """A docker-archive of busybox, written by ``skopeo copy oci:... docker-archive:...``."""
    return _skopeo_from_layout(name, f"docker-archive:{path}:{name}", path)


def _skopeo_from_layout(name: str, destination: str, path: str) -> str:
    if shutil.which("skopeo") is None:
        raise TestImageUnavailable("skopeo is not installed")
    with tempfile.TemporaryDirectory(prefix="skiff-layout-") as tmp:
        busybox_oci_layout(tmp, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # skopeo refuses to add to an existing docker-archive
        skopeo("copy", f"oci:{tmp}:{_tag(name)}", destination)
    return path


def skopeo(*args: str) -> str:
    """Run skopeo (no signature policy: these are local test images); its stdout, or a clear error."""
    proc = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"skopeo {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _tag(name: str) -> str:
    return name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"


@contextlib.contextmanager
def _scratch_store() -> Iterator[tuple[ContentStore, ImageStore]]:
    with tempfile.TemporaryDirectory(prefix="skiff-store-") as tmp:
        content = ContentStore(os.path.join(tmp, "content"))
        images = ImageStore(os.path.join(tmp, "images"), content)
        try:
            yield content, images
        finally:
            images.db.close()


# ---- nginx (Debian bookworm, minbase + nginx-light)


def cache_dir() -> str:
    """Where built test images are kept between runs (``$XDG_CACHE_HOME/skiff/images``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "skiff", "images")


def nginx_rootfs_tar() -> str:
    """Path of the cached nginx rootfs tar, building it once with mmdebstrap if needed.

    The build writes to a temporary name and renames it into place, under a lock, so concurrent
    test sessions build it once and never see half a tar. Raises TestImageUnavailable on failure.
    """
    directory = cache_dir()
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"nginx-{NGINX_VERSION}.tar")
    if os.path.exists(path):
        return path
    with open(os.path.join(directory, "nginx.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(path):
            _build_nginx_rootfs(path)
    return path


def _build_nginx_rootfs(path: str) -> None:
    if shutil.which("mmdebstrap") is None:
        raise TestImageUnavailable("mmdebstrap is not installed (apt-get install mmdebstrap)")
    temp = f"{path[:-4]}.{os.getpid()}.partial.tar"  # mmdebstrap picks the format from the suffix
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(_MTIME)}
    command = ["mmdebstrap", "--quiet", "--variant=minbase", "--include=nginx-light", "bookworm", temp]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=NGINX_BUILD_TIMEOUT)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise TestImageUnavailable(f"building the nginx rootfs with mmdebstrap failed: {tail}")
        os.rename(temp, path)
    except subprocess.TimeoutExpired:
        raise TestImageUnavailable(f"mmdebstrap took longer than {NGINX_BUILD_TIMEOUT}s") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def nginx_image(content: ContentStore, images: ImageStore, name: str = NGINX) -> Image:
    """The nginx image (``nginx -g 'daemon off;'``, port 80), imported from the cached rootfs."""
    return import_rootfs(nginx_rootfs_tar(), content, images, name, changes=NGINX_CHANGES,
                         message="skiff test image: debian bookworm nginx-light", created=CREATED,
                         compresslevel=1)  # level 1: a quarter of the time for a slightly larger blob
