"""Fixtures for image tests: stores on temp roots and the offline test images (see testimages.py).

The busybox image is cheap and always available. Anything built on the nginx rootfs is marked
``nginx`` automatically (deselect with ``-m "not nginx"``) and skips, with the reason, when the
rootfs cannot be built here; the first build takes about half a minute, later runs use the cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from skiff.image.content import ContentStore
from skiff.image.store import Image, ImageStore
from tests.image import testimages

_NGINX_FIXTURES = {"nginx_rootfs", "nginx_image"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "nginx: needs the Debian nginx rootfs (mmdebstrap, built once and cached)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _NGINX_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.nginx)


@dataclass
class ImageRoot:
    """A content store and an image store side by side under one directory."""

    path: str
    content: ContentStore
    images: ImageStore

    @classmethod
    def create(cls, path: str) -> ImageRoot:
        content = ContentStore(os.path.join(path, "content"))
        return cls(path, content, ImageStore(os.path.join(path, "images"), content))

    def names(self) -> list[str]:
        return [image.name for image in self.images.list()]

    def ingest_leftovers(self) -> list[str]:
        return os.listdir(self.content.ingest)

    def close(self) -> None:
        self.images.db.close()


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageRoot]:
    """The session's shared image root (holds the test images; tests must not delete them)."""
    root = ImageRoot.create(str(tmp_path_factory.mktemp("image-root")))
    yield root
    root.close()


@pytest.fixture
def fresh_root(tmp_path) -> Iterator[ImageRoot]:
    """An empty image root for one test (for checking exactly what an operation stored)."""
    root = ImageRoot.create(str(tmp_path / "fresh-root"))
    yield root
    root.close()


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of the busybox rootfs tar."""
    try:
        return testimages.busybox_rootfs_tar(str(tmp_path_factory.mktemp("busybox") / "rootfs.tar"))
    except testimages.TestImageUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def busybox_image(image_root: ImageRoot) -> Image:
    """busybox, imported into the session's image root as ``skiff-test/busybox:latest``."""
    try:
        return testimages.busybox_image(image_root.content, image_root.images)
    except testimages.TestImageUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def nginx_rootfs() -> str:
    """Path of the cached nginx rootfs tar (built on first use)."""
    try:
        return testimages.nginx_rootfs_tar()
    except testimages.TestImageUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def nginx_image(image_root: ImageRoot, nginx_rootfs: str) -> Image:
    """nginx, imported into the session's image root as ``skiff-test/nginx:latest``."""
    return testimages.nginx_image(image_root.content, image_root.images)
