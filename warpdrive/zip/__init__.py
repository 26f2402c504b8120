"""Compression on a HiSilicon ZIP engine, shaped like Python's `zlib` and `gzip` modules.

    import warpdrive.zip as wz

    blob = wz.compress(data, wbits=31)           # gzip; wbits picks the format as in zlib:
    assert wz.decompress(blob, wbits=31) == data  #   -15..-9 raw deflate, 8..15 zlib, 25..31 gzip
    c = wz.compressobj(wbits=-15)                # streams, for any size
    out = c.compress(part1) + c.compress(part2) + c.flush()
    d = wz.decompressobj(wbits=47)               # zlib or gzip, detected

    with wz.open("notes.txt.gz", "wt") as f:     # gzip files, as gzip.open (GzipFile too)
        f.write("hello\\n")

    with wz.open_engine("emu") as eng:           # batches: many jobs in flight
        s = eng.session("compress", wbits=31)
        jobs = [s.submit(block, flush=False) for block in blocks]
        s.flush()                                # one doorbell for the whole batch
        outs = [j.result() for j in s.drain()]

Output is ordinary deflate/zlib/gzip: Python's `zlib`/`gzip` modules and the `gzip` command read
it, and it reads theirs. Errors are `warpdrive.zip.error` (= `ZipError`), a `WarpdriveError` that
is also a `zlib.error`, raised with zlib's messages at the same byte of the stream as zlib.
`import warpdrive.zip.gzip as gzip` is a drop-in for the `gzip` module.

Which device: `device=` takes an open `Device`, an engine, a PCI address bound to vfio-pci (a
ZIP VF), a uacce name (`hisi_zip-0`), ``"vfio-user:/path.sock"``, ``"broker:/path.sock"`` (a
function shared by `warpdrive serve`) or ``"emu"``. With none given: ``$WARPDRIVE_DEVICE`` if
set, else the first usable hisi_zip uacce device, else the first ZIP VF on vfio-pci, else the
bundled device model (started once per process; the "warpdrive.zip" logger says so, a warning).

Differences from zlib (details in `warpdrive.zip.zlib_api`): the engine has one compression
level (`level` shapes the headers; `memLevel`/`strategy` are checked and ignored); level 0 and
windows the engine cannot honour run on the CPU through zlib (logged at INFO); preset
dictionaries and `copy()` of a stream are refused (`ZipUnsupportedError`); `Z_FULL_FLUSH`,
`Z_PARTIAL_FLUSH`, `Z_BLOCK` and `Z_TREES` act as `Z_SYNC_FLUSH`.
"""

from __future__ import annotations

import zlib as _zlib

from ..devices.zip.engine import ZipEngine
from ..devices.zip.errors import (
    ZipBufferError,
    ZipDataError,
    ZipDeviceError,
    ZipError,
    ZipUnsupportedError,
)
from ..devices.zip.job import Job
from ..devices.zip.session import Session
from .engines import EMU_NOTE, default_engine, find_hardware, log, open_engine
from .gzip import BadGzipFile, GzipFile, open
from .zlib_api import (
    DEF_BUF_SIZE,
    DEF_MEM_LEVEL,
    DEFLATED,
    MAX_WBITS,
    Compress,
    Decompress,
    compress,
    compressobj,
    decompress,
    decompressobj,
)

__all__ = [
    "DEFLATED",
    "DEF_BUF_SIZE",
    "DEF_MEM_LEVEL",
    "EMU_NOTE",
    "MAX_WBITS",
    "ZLIB_RUNTIME_VERSION",
    "ZLIB_VERSION",
    "Z_BEST_COMPRESSION",
    "Z_BEST_SPEED",
    "Z_BLOCK",
    "Z_DEFAULT_COMPRESSION",
    "Z_DEFAULT_STRATEGY",
    "Z_FILTERED",
    "Z_FINISH",
    "Z_FIXED",
    "Z_FULL_FLUSH",
    "Z_HUFFMAN_ONLY",
    "Z_NO_COMPRESSION",
    "Z_NO_FLUSH",
    "Z_PARTIAL_FLUSH",
    "Z_RLE",
    "Z_SYNC_FLUSH",
    "Z_TREES",
    "BadGzipFile",
    "Compress",
    "Decompress",
    "GzipFile",
    "Job",
    "Session",
    "ZipBufferError",
    "ZipDataError",
    "ZipDeviceError",
    "ZipEngine",
    "ZipError",
    "ZipUnsupportedError",
    "adler32",
    "compress",
    "compressobj",
    "crc32",
    "decompress",
    "decompressobj",
    "default_engine",
    "error",
    "find_hardware",
    "log",
    "open",
    "open_engine",
]

error = ZipError
# zlib's constants, so code written for zlib finds them here.
Z_NO_FLUSH, Z_PARTIAL_FLUSH, Z_SYNC_FLUSH, Z_FULL_FLUSH, Z_FINISH, Z_BLOCK, Z_TREES = (
    _zlib.Z_NO_FLUSH, _zlib.Z_PARTIAL_FLUSH, _zlib.Z_SYNC_FLUSH, _zlib.Z_FULL_FLUSH,
    _zlib.Z_FINISH, _zlib.Z_BLOCK, _zlib.Z_TREES)
Z_NO_COMPRESSION, Z_BEST_SPEED, Z_BEST_COMPRESSION, Z_DEFAULT_COMPRESSION = 0, 1, 9, -1
Z_DEFAULT_STRATEGY, Z_FILTERED, Z_HUFFMAN_ONLY, Z_RLE, Z_FIXED = (
    _zlib.Z_DEFAULT_STRATEGY, _zlib.Z_FILTERED, _zlib.Z_HUFFMAN_ONLY, _zlib.Z_RLE, _zlib.Z_FIXED)
# The container formats are zlib's; these say which zlib wrote the headers' reference.
ZLIB_VERSION, ZLIB_RUNTIME_VERSION = _zlib.ZLIB_VERSION, _zlib.ZLIB_RUNTIME_VERSION
# Checksums are plain CPU work; the zlib module's are re-exported for drop-in use.
crc32 = _zlib.crc32
adler32 = _zlib.adler32
