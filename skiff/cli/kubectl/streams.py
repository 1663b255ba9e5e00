"""Kubernetes' remote-command streams over WebSocket: what ``kubectl exec`` speaks to the API server.

The API server upgrades ``pods/<name>/exec`` to a WebSocket whose subprotocol is ``v5.channel.k8s.io``
(``v4`` as the fallback). Every binary message starts with a channel byte: 0 stdin, 1 stdout, 2 stderr,
3 the command's final ``Status`` (JSON), 4 terminal resizes (``{"Width": W, "Height": H}``); v5 adds 255,
"close this channel", which is how the client says stdin has ended.

Standard library only: the RFC 6455 framing a client needs (masked frames out, fragments, ping/pong and close
in), over the same TLS settings as the rest of ``skiff kubectl``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import threading
from typing import Any

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class UpgradeRefused(Exception):
    """The server answered the upgrade with an HTTP error; ``status`` is its decoded body."""

    def __init__(self, code: int, status: dict[str, Any]) -> None:
        self.code = code
        self.status = status
        super().__init__(status.get("message") or f"the server responded with status {code}")


class ChannelSocket:
    """One upgraded remote-command connection: send to a channel, receive (channel, data) messages."""

    def __init__(self, sock: socket.socket, protocol: str) -> None:
        self._sock = sock
        self.protocol = protocol
        self._send_lock = threading.Lock()
        self._buffer = b""

    @classmethod
    def connect(cls, host: str, port: int, path: str, headers: dict[str, str],
                tls: ssl.SSLContext | None, timeout: float = 30.0,
                protocols: tuple[str, ...] = PROTOCOLS) -> ChannelSocket:
        raw = socket.create_connection((host, port), timeout=timeout)
        sock: socket.socket = tls.wrap_socket(raw, server_hostname=host) if tls else raw
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                 f"Sec-WebSocket-Protocol: {', '.join(protocols)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        channel = cls(sock, "")
        code, response_headers, body = channel._read_http_response()
        if code != 101:
            sock.close()
            try:
                status = json.loads(body)
            except ValueError:
                status = {"message": body.decode(errors="replace").strip()}
            raise UpgradeRefused(code, status if isinstance(status, dict) else {})
        expected = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
        if response_headers.get("sec-websocket-accept") != expected:
            sock.close()
            raise ConnectionError("the server's WebSocket handshake is not valid (Sec-WebSocket-Accept)")
        channel.protocol = response_headers.get("sec-websocket-protocol", "")
        sock.settimeout(None)
        return channel

    def _read_http_response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self._buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection during the upgrade")
            self._buffer += chunk
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        code = int(status_line.split()[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if code != 101:
            length = int(headers.get("content-length", "0") or 0)
            while len(self._buffer) < length:
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                self._buffer += chunk
            body, self._buffer = self._buffer[:length], self._buffer[length:]
        return code, headers, body

    # -- sending (any thread)

    def send(self, channel: int, data: bytes) -> None:
        self._send_frame(OP_BINARY, bytes([channel]) + data)

    def close_stdin(self) -> None:
        """Tell the command its input has ended (v5); v4 has no way to say it, so nothing is sent."""
        if self.protocol.startswith("v5."):
            self.send(CLOSE, bytes([STDIN]))

    def resize(self, width: int, height: int) -> None:
        self.send(RESIZE, json.dumps({"Width": width, "Height": height}).encode())

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        with self._send_lock:
            self._sock.sendall(header + mask + _xor(payload, mask))

    # -- receiving (one thread)

    def receive(self) -> tuple[int, bytes] | None:
        """The next (channel, data) message, or None once the server has closed the connection."""
        message = b""
        while True:
            frame = self._read_frame()
            if frame is None:
                return None
            fin, opcode, payload = frame
            if opcode == OP_PING:
                self._send_frame(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                try:
                    self._send_frame(OP_CLOSE, payload[:2])
                except OSError:
                    pass
                return None
            message += payload
            if fin:
                if not message:
                    continue
                return message[0], message[1:]

    def _read_frame(self) -> tuple[bool, int, bytes] | None:
        head = self._read_exactly(2)
        if head is None:
            return None
        first, second = head
        length = second & 0x7F
        if length == 126:
            extended = self._read_exactly(2)
            length = struct.unpack("!H", extended)[0] if extended else 0
        elif length == 127:
            extended = self._read_exactly(8)
            length = struct.unpack("!Q", extended)[0] if extended else 0
        mask = self._read_exactly(4) if second & 0x80 else None
        payload = self._read_exactly(length) if length else b""
        if payload is None:
            return None
        if mask:
            payload = _xor(payload, mask)
        return bool(first & 0x80), first & 0x0F, payload

    def _read_exactly(self, count: int) -> bytes | None:
        while len(self._buffer) < count:
            try:
                chunk = self._sock.recv(max(65536, count - len(self._buffer)))
            except OSError:
                return None
            if not chunk:
                return None
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


def _xor(data: bytes, mask: bytes) -> bytes:
    """``data`` masked with the repeating 4-byte ``mask`` (RFC 6455 5.3), a whole message at a time."""
    if not data:
        return data
    key = (mask * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(len(data), "big")


def exit_code(status: dict[str, Any]) -> int:
    """The command's exit code from the Status on the error channel (kube's ``NonZeroExitCode`` cause)."""
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message", "1"))
            except ValueError:
                return 1
    return 1
