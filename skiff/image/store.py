"""Image names: which manifest each reference points to, in a small SQLite database.

A name (``docker.io/library/busybox:latest``) points at one platform's manifest descriptor (the image
as Docker shows it: its ID is the config digest) and remembers the digest it was pulled or pushed by
(the index or manifest digest the registry knows: Docker's ``RepoDigests``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

from skiff.errors import NotFound
from skiff.image import manifest as mf
from skiff.image.content import ContentStore
from skiff.image.reference import parse as parse_reference

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    name TEXT PRIMARY KEY,          -- normalised reference with tag or digest
    target TEXT NOT NULL,           -- JSON descriptor of the platform manifest
    repo_digest TEXT,               -- digest the registry knows it by, if any
    created REAL NOT NULL
);
"""


class Image:
    """One named image, with its manifest and config read from the content store."""

    def __init__(self, name: str, target: dict, repo_digest: str | None, created: float, content: ContentStore):
        self.name, self.target, self.repo_digest, self.created = name, target, repo_digest, created
        self._content = content
        self._manifest: dict | None = None
        self._config: dict | None = None

    @property
    def manifest(self) -> dict:
        if self._manifest is None:
            self._manifest = mf.parse(self._content.read(self.target["digest"]), self.target.get("mediaType"))[1]
        return self._manifest

    @property
    def config_digest(self) -> str:
        """Docker's image ID."""
        return self.manifest["config"]["digest"]

    @property
    def config(self) -> dict:
        if self._config is None:
            self._config = mf.parse_config(self._content.read(self.config_digest))
        return self._config

    @property
    def layers(self) -> list[dict]:
        return self.manifest["layers"]

    @property
    def diff_ids(self) -> list[str]:
        return self.config["rootfs"]["diff_ids"]


class ImageStore:
    def __init__(self, root: str, content: ContentStore) -> None:
        os.makedirs(root, exist_ok=True)
        self.content = content
        self.db = sqlite3.connect(os.path.join(root, "images.db"), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)

    def set(self, name: str, target: dict, repo_digest: str | None = None) -> Image:
        name = str(parse_reference(name))
        mf.check_descriptor(target, "image target")
        created = time.time()
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?)",
                            (name, json.dumps(target), repo_digest, created))
        return Image(name, target, repo_digest, created, self.content)

    def get(self, name: str) -> Image:
        key = str(parse_reference(name))
        row = self.db.execute("SELECT name, target, repo_digest, created FROM images WHERE name = ?", (key,)).fetchone()
        if row is None:
            raise NotFound(f"No such image: {name}")
        return Image(row[0], json.loads(row[1]), row[2], row[3], self.content)

    def delete(self, name: str) -> None:
        key = str(parse_reference(name))
        with self.db:
            if self.db.execute("DELETE FROM images WHERE name = ?", (key,)).rowcount == 0:
                raise NotFound(f"No such image: {name}")

    def list(self) -> list[Image]:
        rows = self.db.execute("SELECT name, target, repo_digest, created FROM images ORDER BY name").fetchall()
        return [Image(r[0], json.loads(r[1]), r[2], r[3], self.content) for r in rows]

    def by_id(self, image_id: str) -> list[Image]:
        """Every name whose config digest is ``image_id`` (full or a unique hex prefix)."""
        wanted = image_id.removeprefix("sha256:")
        return [i for i in self.list() if i.config_digest[7:].startswith(wanted)]
