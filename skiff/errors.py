"""The one catalogue of errors shared by every part of Skiff.

Code inside raises these by meaning; each API layer maps them once to its protocol (a runc-style
one-line message and exit code, Docker's ``{"message": ...}`` with 404/409/400, a Kubernetes
``Status``). Keep the list short: add a type only for a new *meaning*.
"""


class SkiffError(Exception):
    """Base of every error Skiff raises on purpose."""


class NotFound(SkiffError):
    """The named thing (container, image, network, ...) does not exist."""


class AlreadyExists(SkiffError):
    """A thing with that name or id exists already."""


class Conflict(SkiffError):
    """The thing exists but is in a state that forbids the operation (e.g. killing a stopped container)."""


class InvalidArgument(SkiffError):
    """The request or the configuration is malformed or asks for something impossible."""


class Unsupported(SkiffError):
    """Valid, but this build or this kernel cannot do it."""


class SystemFailure(SkiffError):
    """The kernel or a helper process failed while doing what was asked."""
