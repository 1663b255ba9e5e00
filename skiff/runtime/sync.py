"""Messages between the runtime and the processes it forks, over a pair of pipes.

Each message is a 4-byte length and one JSON object. The children's write end is close-on-exec, so
end of file means every child either exec'd or died; the reader tells which from context. Pipes
rather than a socket pair: ``import socket`` alone costs start-up time the runtime cannot spare.
"""

from __future__ import annotations

import os

from skiff.runtime import quickjson


class Channel:
    """One direction of the conversation: a pipe, read at one end and written at the other."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()

    def close_read(self) -> None:
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1

    def close_write(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def close(self) -> None:
        self.close_read()
        self.close_write()


class Link:
    """Both directions, seen from one side; ``fork`` gives each side its own view."""

    def __init__(self, inbound: Channel, outbound: Channel) -> None:
        self.inbound, self.outbound = inbound, outbound

    def send(self, message_type: str, **fields: object) -> None:
        data = quickjson.dumps({"type": message_type, **fields}).encode()
        payload = len(data).to_bytes(4, "little") + data
        while payload:
            payload = payload[os.write(self.outbound.write_fd, payload):]

    def recv(self) -> dict | None:
        header = _read_exactly(self.inbound.read_fd, 4)
        if header is None:
            return None
        data = _read_exactly(self.inbound.read_fd, int.from_bytes(header, "little"))
        if data is None:
            return None
        return quickjson.loads(data)

    def expect(self, message_type: str) -> dict:
        """Wait for a message of one type; an error message or EOF from the other side raises."""
        message = self.recv()
        if message is None:
            raise ChildFailed("the container process exited during setup")
        if message["type"] == "error":
            raise ChildFailed(message["message"], message.get("kind"))
        if message["type"] != message_type:
            raise ChildFailed(f"unexpected message {message['type']!r} (wanted {message_type!r})")
        return message

    def close(self) -> None:
        self.inbound.close_read()
        self.outbound.close_write()


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks = b""
    while len(chunks) < size:
        chunk = os.read(fd, size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return chunks


def pair() -> tuple[Link, Link]:
    """(runtime's side, children's side). After fork, each side calls ``keep`` on its own."""
    down, up = Channel(), Channel()
    return Link(up, down), Link(down, up)


def keep_parent(parent: Link, child: Link) -> None:
    """In the runtime after fork: drop the children's ends."""
    child.inbound.close_read()
    child.outbound.close_write()


def keep_child(parent: Link, child: Link) -> None:
    """In a child after fork: drop the runtime's ends."""
    parent.inbound.close_read()
    parent.outbound.close_write()


class ChildFailed(Exception):
    """A forked setup process reported an error (its text is the message) or died.

    ``kind`` names the ``skiff.errors`` class the child raised, so the runtime re-raises the same meaning.
    """

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
