"""Errors the API server answers with, as exceptions a caller can catch by meaning.

``ApiStatusError`` carries the server's ``Status`` (code, reason, message, details). The instance raised
is of a subclass that is also the matching type of ``skiff.errors`` (404 → ``NotFound``, 409 →
``Conflict`` or ``AlreadyExists``, 400/422 → ``InvalidArgument``), so ``except NotFound`` works on an API
answer exactly as on a local failure. ``.not_found``/``.conflict``/``.gone`` ask the same by code.
"""

from __future__ import annotations

import http.client
from typing import Any

from skiff import errors


class ApiStatusError(errors.SkiffError):
    """The API server answered with an error ``Status``."""

    def __init__(self, status_code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        self.status_code = status_code
        self.reason = reason
        self.message = message
        self.details = details or {}
        super().__init__(message)

    @property
    def not_found(self) -> bool:
        return self.status_code == 404

    @property
    def conflict(self) -> bool:
        """409 because the object changed (or exists already): re-read and try again."""
        return self.status_code == 409

    @property
    def already_exists(self) -> bool:
        return self.status_code == 409 and self.reason == "AlreadyExists"

    @property
    def gone(self) -> bool:
        """410: the resourceVersion asked for was compacted away (a watch must relist)."""
        return self.status_code == 410

    @property
    def forbidden(self) -> bool:
        return self.status_code == 403

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status_code}, {self.reason!r}, {self.message!r})"


class ApiNotFound(ApiStatusError, errors.NotFound):
    pass


class ApiConflict(ApiStatusError, errors.Conflict):
    pass


class ApiAlreadyExists(ApiStatusError, errors.AlreadyExists):
    pass


class ApiInvalid(ApiStatusError, errors.InvalidArgument):
    pass


def status_error(status_code: int, body: Any) -> ApiStatusError:
    """The exception for an error answer (``body``: the decoded ``Status``, or whatever came instead)."""
    status = body if isinstance(body, dict) else {}
    reason = status.get("reason") or http.client.responses.get(status_code, "Unknown")
    message = status.get("message") or (body.strip() if isinstance(body, str) and body.strip() else
                                        f"the server responded with status {status_code}")
    details = status.get("details")
    if status_code == 404:
        cls: type[ApiStatusError] = ApiNotFound
    elif status_code == 409:
        cls = ApiAlreadyExists if reason == "AlreadyExists" else ApiConflict
    elif status_code in (400, 422):
        cls = ApiInvalid
    else:
        cls = ApiStatusError
    return cls(status_code, reason, message, details)
