"""A lean streaming reader for layer tars: ustar, GNU (long names and links) and PAX headers.

``tarfile`` spends more time per member than extracting the member takes (a ``TarInfo`` object, a dozen
decoded fields, its own buffering and copies). Applying a layer needs far less: this reader parses a
header block into a ``TarEntry`` with only the fields a layer uses and hands a regular file's data out as
``memoryview`` slices of the decompressed chunks it is fed, so the bytes go to ``os.write`` uncopied.

It is strict where a layer could lie: every header's checksum is verified, numbers must parse and be in
range, metadata records (PAX, GNU long names) are bounded, an archive that ends without an end-of-archive
block is truncated, and GNU sparse files (which no image writer emits) are refused; all of these raise
``InvalidArgument``. PAX global headers are checked, then ignored, as Docker and containerd do (tarfile
would apply them to every later member). Names are decoded as UTF-8 with ``surrogateescape``, so any
byte string comes back exactly when the ``os`` functions encode it again; xattr values stay bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from skiff.errors import InvalidArgument

BLOCK = 512
MAX_METADATA = 1 << 20  # a PAX record set or GNU long name beyond this is refused (Go's archive/tar limit)

# Entry types as the applier sees them ('\0' and '7' arrive as REGULAR).
REGULAR, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO = "0", "1", "2", "3", "4", "5", "6"
_TYPES = {ord(t): t for t in (REGULAR, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO)}
_TYPES[0] = REGULAR           # old-style regular file ('\0')
_TYPES[ord("7")] = REGULAR    # contiguous file: a regular file everywhere but on some 1980s systems
_AREGTYPE = 0
_GNU_LONGNAME, _GNU_LONGLINK, _PAX_LOCAL, _PAX_GLOBAL, _GNU_SPARSE = (ord(c) for c in "LKxgS")
_POSIX_MAGIC = b"ustar\x00"
_ZERO_BLOCK = bytes(BLOCK)
_PAX_XATTR = "SCHILY.xattr."
_SIGNED = struct.Struct("512b")
# name mode uid gid size mtime checksum type linkname magic version uname gname devmajor devminor prefix
_HEADER = struct.Struct("100s8s8s8s12s12s8sB100s6s2s32s32s8s8s155s12x")
_NUMBER_FIELDS = ((1, "mode"), (2, "uid"), (3, "gid"), (5, "mtime"))
_MAX_ID = (1 << 32) - 2    # uid_t/gid_t; -1 would mean "leave unchanged" to chown
_MAX_DEVICE = (1 << 32) - 1
_MAX_TIME_NS = ((1 << 63) - 1) * 1_000_000_000  # time_t seconds, in ns


class TarEntry:
    """One member: what a layer entry needs to be made (``mtime_ns`` is exact for PAX fractions)."""

    __slots__ = ("devmajor", "devminor", "gid", "linkname", "mode", "mtime_ns", "name", "size", "type", "uid",
                 "xattrs")

    def __init__(self, name: str, type: str, mode: int, uid: int, gid: int, size: int, mtime_ns: int,
                 linkname: str, devmajor: int, devminor: int, xattrs: dict[str, bytes]) -> None:
        self.name, self.type, self.mode, self.uid, self.gid = name, type, mode, uid, gid
        self.size, self.mtime_ns, self.linkname = size, mtime_ns, linkname
        self.devmajor, self.devminor, self.xattrs = devmajor, devminor, xattrs

    def __repr__(self) -> str:
        return f"TarEntry({self.name!r}, type={self.type!r}, size={self.size})"


def _corrupt(offset: int, what: str) -> InvalidArgument:
    return InvalidArgument(f"layer tar is corrupt at byte {offset}: {what}")


def _number(field: bytes, offset: int, what: str) -> int:
    """An octal field, or GNU's base-256 form (high bit set; 0xff leads a negative number)."""
    try:
        return int(field.rstrip(b"\0 "), 8)  # the common form: digits, then NULs or spaces
    except ValueError:
        pass
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise _corrupt(offset, f"invalid {what} field {text!r}") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_time_ns(value: bytes, offset: int) -> int:
    """A PAX time (``-?seconds[.fraction]``) in nanoseconds, exactly."""
    text = value.decode("ascii", "replace")
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text)
    whole, _, fraction = digits.partition(".")
    if not whole.isdigit() or (fraction and not fraction.isdigit()):
        raise _corrupt(offset, f"invalid PAX time {text!r}")
    return sign * (int(whole) * 1_000_000_000 + int((fraction + "000000000")[:9]))


def _pax_records(data: bytes, offset: int) -> dict[str, bytes]:
    """The ``<length> <key>=<value>\\n`` records of a PAX header."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:  # some writers pad the record set with NULs
        space = data.find(b" ", pos, pos + 20)
        if space <= pos or not data[pos:space].isdigit():
            raise _corrupt(offset, "invalid PAX record length")
        end = pos + int(data[pos:space])
        if end <= space + 1 or end > len(data) or data[end - 1] != 0x0A:  # each record moves forward
            raise _corrupt(offset, "invalid PAX record")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq or not key:
            raise _corrupt(offset, "invalid PAX record")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos = end
    return records


class TarReader:
    """Members of the tar whose bytes arrive as ``chunks`` (any sizes). Iterate for the entries; a regular
    file's data is taken with ``copy_data`` (or skipped if not taken before the next entry). After the
    end-of-archive block, ``drain`` consumes what follows (padding), so the source can hash all of it."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._view = memoryview(b"")
        self._pos = 0
        self._consumed = 0          # bytes of the stream before self._buf
        self._pending = 0           # data + padding of the current entry not yet consumed
        self._unread = 0            # of which data not yet copied

    @property
    def offset(self) -> int:
        return self._consumed + self._pos

    # -- the byte stream

    def _next_chunk(self) -> bool:
        self._consumed += len(self._buf)
        while True:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._buf, self._view, self._pos = b"", memoryview(b""), 0
                return False
            if chunk:
                self._buf, self._view, self._pos = chunk, memoryview(chunk), 0
                return True

    def _read(self, n: int) -> bytes:
        """Exactly ``n`` bytes; fewer only at the end of the stream."""
        end = self._pos + n
        if end <= len(self._buf):
            data = self._buf[self._pos:end]
            self._pos = end
            return data
        parts = [self._buf[self._pos:]]
        got = len(parts[0])
        while got < n and self._next_chunk():
            take = min(n - got, len(self._buf))
            parts.append(self._buf[:take])
            self._pos = take
            got += take
        if got < n:
            self._pos = len(self._buf)
        return b"".join(parts)

    def _skip(self, n: int) -> None:
        while n > 0:
            left = len(self._buf) - self._pos
            if left >= n:
                self._pos += n
                return
            n -= left
            self._pos = len(self._buf)
            if not self._next_chunk():
                raise InvalidArgument(f"layer tar is truncated at byte {self.offset}")

    def _block_data(self, size: int) -> bytes:
        """A metadata member's data (PAX records, a GNU long name), with its padding."""
        if size < 0 or size > MAX_METADATA:
            raise _corrupt(self.offset, f"metadata record of {size} bytes")
        data = self._read(size)
        if len(data) < size:
            raise InvalidArgument(f"layer tar is truncated at byte {self.offset}")
        self._skip(-size % BLOCK)
        return data

    # -- entries

    def __iter__(self) -> Iterator[TarEntry]:
        return self

    def __next__(self) -> TarEntry:
        if self._pending:
            self._skip(self._pending)
            self._pending = self._unread = 0
        local: dict[str, bytes] = {}
        longname = longlink = None
        while True:
            start = self.offset
            block = self._read(BLOCK)
            if len(block) < BLOCK:
                raise InvalidArgument(f"layer tar is truncated or corrupt at byte {start}: no end-of-archive block")
            if block == _ZERO_BLOCK:
                if local or longname is not None or longlink is not None:
                    raise _corrupt(start, "metadata header without a member")
                raise StopIteration
            self._check(block, start)
            kind = block[156]
            if kind in (_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
                data = self._block_data(_number(block[124:136], start, "size"))
                if kind == _PAX_LOCAL:
                    local.update(_pax_records(data, start))
                elif kind == _PAX_GLOBAL:
                    _pax_records(data, start)  # checked, then ignored, as Docker and containerd do
                elif kind == _GNU_LONGNAME:
                    longname = _text(data)
                else:
                    longlink = _text(data)
                continue
            entry = self._entry(block, kind, start, local, longname, longlink)
            self._unread = entry.size
            self._pending = entry.size + (-entry.size % BLOCK)
            return entry

    @staticmethod
    def _check(block: bytes, start: int) -> None:
        """The checksum: the header's bytes summed with its own field as spaces (some old writers summed
        them as signed bytes)."""
        field = block[148:156]
        stored = _number(field, start, "checksum")
        if stored != sum(block) - sum(field) + 256:
            signed = _SIGNED.unpack(block)
            if stored != sum(signed) - sum(signed[148:156]) + 256:
                raise _corrupt(start, "header checksum mismatch (not a tar archive, or damaged)")

    def _entry(self, block: bytes, kind: int, start: int, pax: dict[str, bytes], longname: str | None,
               longlink: str | None) -> TarEntry:
        if kind == _GNU_SPARSE or any(k.startswith("GNU.sparse.") for k in pax):
            raise InvalidArgument(f"layer tar member at byte {start} is a sparse file, which layers never contain")
        fields = _HEADER.unpack(block)
        name = longname if longname is not None else _text(fields[0])
        if longname is None and fields[9] == _POSIX_MAGIC and fields[15][0]:
            name = _text(fields[15]) + "/" + name
        type_ = _TYPES.get(kind)
        if type_ is None:
            raise InvalidArgument(f"layer entry {name!r} has an unsupported type {chr(kind)!r}")
        if kind == _AREGTYPE and name.endswith("/"):
            type_ = DIRECTORY  # the V7 way of writing a directory
        try:  # the common form, all at once; anything else (base-256, junk) field by field
            mode, uid, gid, mtime = (int(fields[1].rstrip(b"\0 "), 8), int(fields[2].rstrip(b"\0 "), 8),
                                     int(fields[3].rstrip(b"\0 "), 8), int(fields[5].rstrip(b"\0 "), 8))
        except ValueError:
            mode, uid, gid, mtime = (_number(fields[i], start, what) for i, what in _NUMBER_FIELDS)
        size = _number(fields[4], start, "size") if type_ == REGULAR else 0
        mtime_ns = mtime * 1_000_000_000
        linkname = longlink if longlink is not None else _text(fields[8]) if type_ in (HARDLINK, SYMLINK) else ""
        xattrs: dict[str, bytes] = {}
        if pax:
            name, linkname, size, uid, gid, mtime_ns = self._apply_pax(pax, start, name, linkname, size, uid, gid,
                                                                       mtime_ns, type_, xattrs)
        if size < 0:
            raise _corrupt(start, f"negative size {size}")
        if not (0 <= uid <= _MAX_ID and 0 <= gid <= _MAX_ID and -_MAX_TIME_NS <= mtime_ns <= _MAX_TIME_NS):
            raise _corrupt(start, f"{name!r}: owner {uid}:{gid} or mtime {mtime_ns}ns out of range")
        if "\0" in name or "\0" in linkname:
            raise _corrupt(start, f"{name!r}: a NUL byte in a name")
        devmajor = devminor = 0
        if type_ in (CHAR, BLOCKDEV):
            devmajor, devminor = _number(fields[13], start, "devmajor"), _number(fields[14], start, "devminor")
            if not (0 <= devmajor <= _MAX_DEVICE and 0 <= devminor <= _MAX_DEVICE):
                raise _corrupt(start, f"{name!r}: device {devmajor},{devminor} out of range")
        return TarEntry(name, type_, mode, uid, gid, size, mtime_ns, linkname, devmajor, devminor, xattrs)

    @staticmethod
    def _apply_pax(pax: dict[str, bytes], start: int, name: str, linkname: str, size: int, uid: int, gid: int,
                   mtime_ns: int, type_: str, xattrs: dict[str, bytes]) -> tuple[str, str, int, int, int, int]:
        def integer(key: str) -> int:
            value = pax[key]
            if not value.isdigit():
                raise _corrupt(start, f"invalid PAX {key} {value!r}")
            return int(value)

        for key, value in pax.items():
            if key.startswith(_PAX_XATTR):
                if "\0" in key or len(key) == len(_PAX_XATTR):
                    raise _corrupt(start, f"invalid xattr name {key!r}")
                xattrs[key[len(_PAX_XATTR):]] = value
        if "path" in pax:
            name = pax["path"].decode("utf-8", "surrogateescape")
        if "linkpath" in pax:
            linkname = pax["linkpath"].decode("utf-8", "surrogateescape")
        if "size" in pax and type_ == REGULAR:
            size = integer("size")
        if "uid" in pax:
            uid = integer("uid")
        if "gid" in pax:
            gid = integer("gid")
        if "mtime" in pax:
            mtime_ns = _pax_time_ns(pax["mtime"], start)
        return name, linkname, size, uid, gid, mtime_ns

    # -- data

    def copy_data(self, write: object, fd: int) -> None:
        """Write the current regular file's data to ``fd`` with ``write`` (``os.write``), straight from the
        decompressed chunks; a stream that ends first is a truncated layer."""
        left = self._unread
        while left:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._next_chunk():
                    raise InvalidArgument(f"layer tar is truncated at byte {self.offset}: a file is missing "
                                          f"{left} bytes")
                continue
            take = avail if avail < left else left
            view = self._view[self._pos:self._pos + take]
            while view:
                view = view[write(fd, view):]  # type: ignore[operator]
            self._pos += take
            left -= take
        self._pending -= self._unread
        self._unread = 0

    def drain(self) -> None:
        """Consume the rest of the stream (what follows the end-of-archive block)."""
        self._pos = len(self._buf)
        while self._next_chunk():
            self._pos = len(self._buf)
