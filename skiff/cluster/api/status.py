"""Kubernetes ``Status`` errors: the one exception type the API layer answers with, and its constructors.

Code below the HTTP layer raises ``ApiError`` (or a ``skiff.errors`` error, mapped once in
``from_skiff_error``); the server turns it into a ``Status`` body with the HTTP code. Validation
collects ``FieldError`` values and raises ``invalid(...)``, whose message names every field the way
kube-apiserver does: ``Deployment.apps "web" is invalid: spec.replicas: Invalid value: -1: ...``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from skiff.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, SkiffError, Unsupported


class ApiError(Exception):
    """An error the API answers with a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def success_status(details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    if details:
        body["details"] = details
    return body


def qualified(resource: str, group: str) -> str:
    """``deployments.apps``, or ``pods`` for the core group: how kube names a resource in messages."""
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, group: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{qualified(resource, group)} "{name}" not found',
                    {"name": name, "group": group, "kind": resource})


def already_exists(resource: str, group: str, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{qualified(resource, group)} "{name}" already exists',
                    {"name": name, "group": group, "kind": resource})


def conflict(resource: str, group: str, name: str, why: str = "") -> ApiError:
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {qualified(resource, group)} "{name}": {why}',
                    {"name": name, "group": group, "kind": resource})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def forbidden(message: str, details: dict[str, Any] | None = None) -> ApiError:
    return ApiError(403, "Forbidden", message, details)


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                    f"accepted media types include: application/json, application/yaml (got {content_type!r})")


def timeout(message: str) -> ApiError:
    return ApiError(504, "Timeout", message)


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}")


@dataclass(frozen=True)
class FieldError:
    """One invalid field, as ``field.ErrorList`` holds it: ``spec.containers[0].image: Required value``."""

    field: str
    kind: str  # Required | Invalid | NotSupported | Duplicate | Forbidden | TooLong
    detail: str = ""
    value: Any = None

    _REASONS = {"Required": "FieldValueRequired", "Invalid": "FieldValueInvalid",
                "NotSupported": "FieldValueNotSupported", "Duplicate": "FieldValueDuplicate",
                "Forbidden": "FieldValueForbidden", "TooLong": "FieldValueTooLong"}

    def describe(self) -> str:
        """The part after ``field: `` in kube's message."""
        if self.kind == "Required":
            return "Required value" + (f": {self.detail}" if self.detail else "")
        if self.kind == "Forbidden":
            return "Forbidden" + (f": {self.detail}" if self.detail else "")
        if self.kind == "NotSupported":
            return f"Unsupported value: {_go_value(self.value)}" + (f": {self.detail}" if self.detail else "")
        if self.kind == "Duplicate":
            return f"Duplicate value: {_go_value(self.value)}"
        if self.kind == "TooLong":
            return f"Too long: {self.detail}"
        return f"Invalid value: {_go_value(self.value)}" + (f": {self.detail}" if self.detail else "")

    def __str__(self) -> str:
        return f"{self.field}: {self.describe()}"

    def cause(self) -> dict[str, str]:
        return {"reason": self._REASONS[self.kind], "message": self.describe(), "field": self.field}


def _go_value(value: Any) -> str:
    """Values as Go's ``%#v``-ish printing shows them in kube's messages: strings quoted."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def invalid(kind: str, group: str, name: str, errors: list[FieldError]) -> ApiError:
    """422 Invalid for ``errors`` (at least one) on the object ``kind`` named ``name``."""
    listed = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    return ApiError(422, "Invalid", f'{qualified(kind, group)} "{name}" is invalid: {listed}',
                    {"name": name, "group": group, "kind": kind, "causes": [e.cause() for e in errors]})


def from_skiff_error(error: SkiffError) -> ApiError:
    """Errors raised by meaning below the API layer (the store's, mostly), as a Status."""
    if isinstance(error, NotFound):
        return ApiError(404, "NotFound", str(error))
    if isinstance(error, AlreadyExists):
        return ApiError(409, "AlreadyExists", str(error))
    if isinstance(error, Conflict):
        return ApiError(409, "Conflict", str(error))
    if isinstance(error, InvalidArgument):
        return bad_request(str(error))
    if isinstance(error, Unsupported):
        return ApiError(501, "NotImplemented", str(error))
    return internal(str(error))
