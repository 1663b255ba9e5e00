"""HTTP Basic authentication against an htpasswd file, as distribution's ``htpasswd`` auth does.

Hashes understood: bcrypt (``$2y$``/``$2a$``/``$2b$``, what ``htpasswd -B`` writes and the only kind
distribution accepts), ``{SHA}`` (base64 SHA-1, ``htpasswd -s``) and, for tests, plain text. Other
crypt formats (``$apr1$`` MD5, DES) are refused with a warning at load time.

bcrypt is slow on purpose (tens of milliseconds), and clients send the credentials with every
request, so a successful check is remembered in memory (keyed by an HMAC of the password under a
per-process key, never the password itself) for as long as that user's hash in the file is unchanged.
The file is re-read when its modification time changes, so users can be added without a restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os

import bcrypt

log = logging.getLogger(__name__)
_BCRYPT_PREFIXES = ("$2y$", "$2a$", "$2b$")
_UNSUPPORTED_PREFIXES = ("$apr1$", "$1$", "$5$", "$6$")
# Verified against when the user is unknown, so a miss costs as much time as a wrong password.
_DUMMY = bcrypt.hashpw(b"skiff", bcrypt.gensalt(rounds=5))
_CACHE_LIMIT = 1024


def verify_hash(stored: str, password: str) -> bool:
    """Whether ``password`` matches an htpasswd hash."""
    if stored.startswith(_BCRYPT_PREFIXES):
        try:
            return bcrypt.checkpw(password.encode(), stored.encode())
        except ValueError:
            return False
    if stored.startswith("{SHA}"):
        expected = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
        return hmac.compare_digest(stored[5:], expected)
    if stored.startswith(_UNSUPPORTED_PREFIXES):
        return False
    return hmac.compare_digest(stored.encode(), password.encode())


def parse_htpasswd(text: str) -> dict[str, str]:
    """``user:hash`` lines (blank lines and ``#`` comments skipped) -> {user: hash}."""
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not user:
            log.warning("htpasswd line %d: not user:hash, ignored", number)
            continue
        if stored.startswith(_UNSUPPORTED_PREFIXES):
            log.warning("htpasswd user %r: unsupported hash format (use bcrypt, htpasswd -B)", user)
        users[user] = stored
    return users


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic ...`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class Htpasswd:
    """The users of one htpasswd file. ``check`` blocks (bcrypt): call it from a worker thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._users: dict[str, str] = {}
        self._mtime: int | None = None
        self._key = os.urandom(32)
        self._verified: dict[tuple[str, bytes], str] = {}
        self._reload()

    def _reload(self) -> None:
        mtime = os.stat(self.path).st_mtime_ns
        if mtime == self._mtime:
            return
        with open(self.path, encoding="utf-8") as f:
            self._users = parse_htpasswd(f.read())
        self._mtime = mtime
        self._verified.clear()

    def check(self, header: str | None) -> str | None:
        """The authenticated user name, or None when the credentials are missing or wrong."""
        credentials = parse_basic(header)
        if credentials is None:
            return None
        user, password = credentials
        try:
            self._reload()
        except OSError as e:
            log.error("cannot read htpasswd file %s: %s", self.path, e)
        stored = self._users.get(user)
        key = (user, hmac.digest(self._key, password.encode(), "sha256"))
        if stored is not None and self._verified.get(key) == stored:
            return user
        if stored is None:
            bcrypt.checkpw(password.encode(), _DUMMY)
            return None
        if not verify_hash(stored, password):
            return None
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()
        self._verified[key] = stored
        return user
