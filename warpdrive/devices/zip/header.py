"""zlib (RFC 1950) and gzip (RFC 1952) headers, read by software as UADK does, and rejected at
the same byte as zlib's inflate rejects them.

`scan_header(data, fmt)` looks at the bytes received so far: it returns None while the header is
incomplete, the header's length and fields once it is whole, and raises `ZipDataError` as soon
as the bytes seen so far cannot start a valid header. zlib reads header fields in fixed groups
(the two zlib bytes together; gzip's magic, then method+flags, mtime, xfl+os, each extra-length
and the header CRC as units), so an error is reported once the whole group that holds it has
arrived, exactly as the `zlib` module reports it, with the same message.
"""

from __future__ import annotations

import zlib

from ...record import record
from .errors import ZipDataError
from .sqe import AUTO, GZIP, ZLIB, Format

FTEXT, FHCRC, FEXTRA, FNAME, FCOMMENT = 1, 2, 4, 8, 16


@record(frozen=True)
class GzipHeader:
    """The fields of a gzip member's header (RFC 1952 2.3)."""

    mtime: int = 0
    xfl: int = 0
    os: int = 255
    name: bytes | None = None
    comment: bytes | None = None
    extra: bytes | None = None
    text: bool = False


@record(frozen=True)
class Header:
    length: int  # bytes of header before the deflate body
    fmt: Format  # the concrete format (auto resolved; the window the decoder uses)
    gzip: GzipHeader | None = None


def _bad(what: str) -> ZipDataError:
    return ZipDataError(f"Error -3 while decompressing data: {what}")


def scan_header(data: bytes | bytearray | memoryview, fmt: Format) -> Header | None:
    """The header at the start of `data` (see the module docstring)."""
    if fmt.container not in (ZLIB, GZIP, AUTO):
        return Header(0, fmt)
    if len(data) < 2:
        return None
    if fmt.container != ZLIB and data[0] == 0x1F and data[1] == 0x8B:
        return _scan_gzip(data, fmt)
    if fmt.container == GZIP:
        raise _bad("incorrect header check")
    cmf, flg = data[0], data[1]
    if (cmf << 8 | flg) % 31:
        raise _bad("incorrect header check")
    if cmf & 0x0F != 8:
        raise _bad("unknown compression method")
    wb = (cmf >> 4) + 8
    window = fmt.window_bits or wb  # wbits 0: the header decides
    if wb > 15 or wb > window:
        raise _bad("invalid window size")
    if flg & 0x20:  # FDICT: zlib reads the 4-byte dictionary id, then asks for the dictionary
        if len(data) < 6:
            return None
        raise ZipDataError("Error 2 while decompressing data",
                           hint="the stream needs a preset dictionary, which the ZIP engine "
                           "does not support")
    return Header(2, Format(ZLIB, window))


def _scan_gzip(data: bytes | bytearray | memoryview, fmt: Format) -> Header | None:
    n = len(data)
    if n < 4:
        return None
    if data[2] != 8:
        raise _bad("unknown compression method")
    flags = data[3]
    if flags & 0xE0:
        raise _bad("unknown header flags set")
    if n < 10:
        return None
    pos = 10
    extra = name = comment = None
    if flags & FEXTRA:
        if n < pos + 2:
            return None
        xlen = data[pos] | data[pos + 1] << 8
        if n < pos + 2 + xlen:
            return None
        extra = bytes(data[pos + 2:pos + 2 + xlen])
        pos += 2 + xlen
    for flag in (FNAME, FCOMMENT):
        if flags & flag:
            end = bytes(data[pos:]).find(b"\x00")
            if end < 0:
                return None
            field = bytes(data[pos:pos + end])
            if flag == FNAME:
                name = field
            else:
                comment = field
            pos += end + 1
    if flags & FHCRC:
        if n < pos + 2:
            return None
        if zlib.crc32(data[:pos]) & 0xFFFF != data[pos] | data[pos + 1] << 8:
            raise _bad("header crc mismatch")
        pos += 2
    head = GzipHeader(mtime=int.from_bytes(data[4:8], "little"), xfl=data[8], os=data[9],
                      name=name, comment=comment, extra=extra, text=bool(flags & FTEXT))
    return Header(pos, Format(GZIP, fmt.window_bits or 15), head)


def whole_header(data: bytes | bytearray | memoryview, fmt: Format) -> Header:
    """The header of a complete stream (one-shot jobs): incomplete is an error here."""
    head = scan_header(data, fmt)
    if head is None:
        raise ZipDataError("Error -5 while decompressing data: incomplete or truncated stream")
    return head
