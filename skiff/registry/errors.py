"""The registry's errors: the OCI Distribution error codes, each with its HTTP status.

The registry's storage speaks the protocol's own language (a blob is *unknown*, a manifest is
*invalid*), so one exception type carries the code and the server maps it to the JSON body
``{"errors": [{"code", "message", "detail"}]}`` in one place.
"""

from __future__ import annotations

from typing import Any

from skiff.errors import SkiffError

# code -> (HTTP status, default message), as distribution registers them.
CODES: dict[str, tuple[int, str]] = {
    "BLOB_UNKNOWN": (404, "blob unknown to registry"),
    "BLOB_UPLOAD_INVALID": (400, "blob upload invalid"),
    "BLOB_UPLOAD_UNKNOWN": (404, "blob upload unknown to registry"),
    "DIGEST_INVALID": (400, "provided digest did not match uploaded content"),
    "MANIFEST_BLOB_UNKNOWN": (400, "blob unknown to registry"),
    "MANIFEST_INVALID": (400, "manifest invalid"),
    "MANIFEST_UNKNOWN": (404, "manifest unknown"),
    "NAME_INVALID": (400, "invalid repository name"),
    "NAME_UNKNOWN": (404, "repository name not known to registry"),
    "SIZE_INVALID": (400, "provided length did not match content length"),
    "TAG_INVALID": (400, "manifest tag did not match URI"),
    "RANGE_INVALID": (416, "invalid content range"),
    "PAGINATION_NUMBER_INVALID": (400, "invalid number of results requested"),
    "UNAUTHORIZED": (401, "authentication required"),
    "DENIED": (403, "requested access to the resource is denied"),
    "UNSUPPORTED": (405, "the operation is unsupported"),
    "TOOBIG": (413, "payload too large"),
    "NOT_FOUND": (404, "no such endpoint"),
    "UNKNOWN": (500, "unknown error"),
}


class DistributionError(SkiffError):
    """An error the registry answers with: a distribution ``code``, a message and an optional detail."""

    def __init__(self, code: str, message: str | None = None, detail: Any = None,
                 headers: dict[str, str] | None = None, more: list[Any] | None = None) -> None:
        self.status, default_message = CODES[code]
        self.code = code
        self.message = message or default_message
        self.detail = detail
        self.headers = headers or {}
        self.more = more or []  # details of further errors with the same code (one entry each)
        super().__init__(f"{code}: {self.message}")

    def body(self) -> dict:
        entries = []
        for detail in [self.detail, *self.more]:
            entry: dict[str, Any] = {"code": self.code, "message": self.message}
            if detail is not None:
                entry["detail"] = detail
            entries.append(entry)
        return {"errors": entries}
