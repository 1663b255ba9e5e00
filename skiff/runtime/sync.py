"""Messages between the runtime and the processes it forks, over a SOCK_SEQPACKET socket pair.

Each message is one JSON object in one packet. End of file means the other side exec'd (the socket is
close-on-exec) or died; the reader tells which from context.
"""

from __future__ import annotations

import json
import socket
from typing import Any


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, kind: str, **fields: Any) -> None:
    sock.send(json.dumps({"type": kind, **fields}).encode())


def recv(sock: socket.socket) -> dict[str, Any] | None:
    data = sock.recv(65536)
    if not data:
        return None
    return json.loads(data)


def expect(sock: socket.socket, kind: str) -> dict[str, Any]:
    """Wait for a message of one kind; an error message or EOF from the other side raises."""
    message = recv(sock)
    if message is None:
        raise ChildFailed("the container process exited during setup")
    if message["type"] == "error":
        raise ChildFailed(message["message"], message.get("kind"))
    if message["type"] != kind:
        raise ChildFailed(f"unexpected message {message['type']!r} (wanted {kind!r})")
    return message


class ChildFailed(Exception):
    """A forked setup process reported an error (its text is the message) or died.

    ``kind`` names the ``skiff.errors`` class the child raised, so the runtime re-raises the same meaning.
    """

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
