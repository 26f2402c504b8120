"""Compression on a HiSilicon ZIP engine, shaped like the `zlib` module.

    import warpdrive.zip as wz

    blob = wz.compress(data, wbits=31)           # gzip; wbits picks the format as in zlib:
    assert wz.decompress(blob, wbits=31) == data  #   -15..-9 raw deflate, 9..15 zlib, 25..31 gzip
    c = wz.compressobj(wbits=-15)                # streams, for any size
    out = c.compress(part1) + c.compress(part2) + c.flush()
    d = wz.decompressobj(wbits=47)               # zlib or gzip, detected

    with wz.open("emu") as eng:                  # batches: many jobs in flight
        s = eng.session("compress", wbits=31)
        jobs = [s.submit(block, flush=False) for block in blocks]
        s.flush()                                # one doorbell for the whole batch
        outs = [j.result() for j in s.drain()]

Output is ordinary deflate/zlib/gzip: Python's `zlib`/`gzip` modules and the `gzip` command read
it, and it reads theirs. Errors are `warpdrive.zip.error` (= `ZipError`), a `WarpdriveError` that
is also a `zlib.error`.

Which device: `device=` takes an open `Device`, a PCI address bound to vfio-pci (a ZIP VF), a
uacce name (`hisi_zip-0`), ``"vfio-user:/path.sock"``, ``"broker:/path.sock"`` (a function shared
by `warpdrive serve`) or ``"emu"``. With none given: ``$WARPDRIVE_DEVICE`` if set, else the first
usable hisi_zip uacce device, else the first ZIP VF on vfio-pci, else the bundled device model
(started once per process; a note says so on stderr).

Differences from zlib: `level` only shapes the headers (the engine has one compression level);
preset dictionaries (`zdict`) are not supported; `Z_FULL_FLUSH` acts as `Z_SYNC_FLUSH`; the
smallest window the engine uses is 4 KiB, so raw streams should be read with |wbits| >= 12;
`copy()` of a stream is not possible (its state lives in the engine).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import zlib as _zlib
from typing import Any

from .device import Device
from .devices.zip import hw as _hw
from .devices.zip.engine import ZipEngine
from .devices.zip.errors import ZipBufferError, ZipDataError, ZipDeviceError, ZipError
from .devices.zip.job import Job
from .devices.zip.session import Session
from .devices.zip.sqe import Format
from .errors import DeviceNotFoundError, InvalidArgumentError

__all__ = [
    "DEFLATED",
    "DEF_BUF_SIZE",
    "DEF_MEM_LEVEL",
    "MAX_WBITS",
    "Z_BEST_COMPRESSION",
    "Z_BEST_SPEED",
    "Z_DEFAULT_COMPRESSION",
    "Z_DEFAULT_STRATEGY",
    "Z_FINISH",
    "Z_FULL_FLUSH",
    "Z_NO_FLUSH",
    "Z_SYNC_FLUSH",
    "Compress",
    "Decompress",
    "Job",
    "Session",
    "ZipBufferError",
    "ZipDataError",
    "ZipDeviceError",
    "ZipEngine",
    "ZipError",
    "adler32",
    "compress",
    "compressobj",
    "crc32",
    "decompress",
    "decompressobj",
    "default_engine",
    "error",
    "find_hardware",
    "open",
]

error = ZipError
MAX_WBITS = _zlib.MAX_WBITS
DEFLATED = _zlib.DEFLATED
DEF_MEM_LEVEL = _zlib.DEF_MEM_LEVEL
DEF_BUF_SIZE = _zlib.DEF_BUF_SIZE
Z_NO_FLUSH, Z_SYNC_FLUSH, Z_FULL_FLUSH, Z_FINISH = (_zlib.Z_NO_FLUSH, _zlib.Z_SYNC_FLUSH,
                                                     _zlib.Z_FULL_FLUSH, _zlib.Z_FINISH)
Z_BEST_SPEED, Z_BEST_COMPRESSION, Z_DEFAULT_COMPRESSION = 1, 9, -1
Z_DEFAULT_STRATEGY = _zlib.Z_DEFAULT_STRATEGY
# Checksums are plain CPU work; the zlib module's are re-exported for drop-in use.
crc32 = _zlib.crc32
adler32 = _zlib.adler32

EMU_NOTE = ("warpdrive.zip: no HiSilicon ZIP hardware found (no hisi_zip uacce device, no ZIP "
            "VF bound to vfio-pci); using the bundled device model (emu:zip)")


# -- devices ----------------------------------------------------------------------------------
def find_hardware(sysfs_root: str = "/sys") -> str | None:
    """The first usable ZIP device: a hisi_zip uacce device name, else the address of a ZIP VF
    bound to vfio-pci; None when there is neither."""
    from . import pci
    from .backends.uacce.sysfs import usable_devices
    from .devices.registry import claim

    names = usable_devices(_hw.ZIP.uacce_driver, sysfs_root)
    if names:
        return names[0]
    for fn in pci.devices(sysfs_root, claim=claim):
        if fn.plugin == "zip" and fn.device == _hw.ZIP.vf_device_id and fn.driver == "vfio-pci":
            return fn.bdf
    return None


def open(device: Device | ZipEngine | str | None = None, *, doorbell: str = "mmap",
         wait: str = "auto", backend: str = "auto", depth: int | None = None,
         timeout: float = 30.0, model_options: dict[str, Any] | None = None,
         announce: bool = True) -> ZipEngine:
    """Open a ZIP engine on `device` (see the module docstring). Close it when done; an engine
    opened from a name closes the device (and stops a model it started) with it.

    `doorbell`: "mmap" (a store into the mapped doorbell page) or "message" (every doorbell a
    trapped write: a syscall on VFIO, a message on vfio-user; for comparisons). `wait`: "auto"
    (spin briefly, then sleep on the completion interrupt), "spin" (busy-poll only: no
    syscalls, one busy core) or "block"."""
    from .backends import open_device, open_uacce, parse_name
    from .devices.hisi_qm.uacce import UacceQueues
    from .devices.zip.driver import ZipDriver

    if isinstance(device, ZipEngine):
        return device
    opts: dict[str, Any] = {"depth": depth, "wait": wait, "timeout": timeout}
    if isinstance(device, Device):
        return ZipDriver(device, doorbell=doorbell, **opts).engine
    if device is None:
        # A broker (`warpdrive serve`) or a device chosen for every program of a session.
        device = os.environ.get("WARPDRIVE_DEVICE") or find_hardware() or "emu"
        if device == "emu" and announce:
            _announce_emu()
    if not isinstance(device, str):
        raise InvalidArgumentError(
            f"device must be a Device, a PCI address, a uacce name or 'emu', not "
            f"{type(device).__name__}")
    name = parse_name(device)
    if name.kind == "uacce":
        sva = open_uacce(name.target)
        try:
            return ZipEngine(UacceQueues(sva, _hw.ZIP), **opts)
        except BaseException:
            sva.close()
            raise
    # vfio-user: a message-doorbell client maps nothing, which lets trapped writes be posted.
    vu: dict[str, Any] = {"mmap_doorbells": doorbell == "mmap"}
    if name.kind == "emu":
        if name.target not in ("", "zip"):
            raise DeviceNotFoundError(f"{device!r} is not the ZIP model", hint="use 'emu'")
        dev = open_device("emu:zip", model_options=model_options or {}, **vu)
    elif name.kind in ("vfio-user", "broker"):
        dev = open_device(device, **vu)
    else:
        dev = open_device(device, backend=backend)
    try:
        return ZipDriver(dev, doorbell=doorbell, on_close=dev.close, **opts).engine
    except BaseException:
        dev.close()
        raise


_announced = False


def _announce_emu() -> None:
    global _announced
    if not _announced:
        _announced = True
        print(EMU_NOTE, file=sys.stderr, flush=True)


_default: ZipEngine | None = None
_default_lock = threading.Lock()
_engines: dict[object, ZipEngine] = {}


def default_engine() -> ZipEngine:
    """The process-wide engine used when no `device=` is given (opened on first use)."""
    global _default
    with _default_lock:
        if _default is None or _default.closed or _default._forked_dead:
            _default = open()
            atexit.register(_close_default)
        return _default


def _close_default() -> None:
    global _default
    eng, _default = _default, None
    if eng is not None:
        try:
            eng.close()
        except Exception:  # at exit: a failing close must not hide the real exit status
            pass


def _engine(device: Device | ZipEngine | str | None) -> ZipEngine:
    if device is None:
        return default_engine()
    if isinstance(device, ZipEngine):
        return device
    key: object = id(device) if isinstance(device, Device) else device
    with _default_lock:
        eng = _engines.get(key)
        if eng is None or eng.closed or eng._forked_dead:
            eng = _engines[key] = open(device)
            if isinstance(device, Device):
                def forget() -> None:
                    _engines.pop(key, None)

                device.on_close(forget)
            else:
                atexit.register(eng.close)
        return eng


# -- zlib-shaped functions --------------------------------------------------------------------
def _check_level(level: int) -> None:
    if not -1 <= level <= 9:
        raise ZipError("Bad compression level", hint="use -1 (default) or 0..9")


def compress(data: bytes | bytearray | memoryview, /, level: int = -1, wbits: int = MAX_WBITS,
             *, device: Device | ZipEngine | str | None = None) -> bytes:
    """Compress `data` (any size; above 7 MiB it goes through stream mode)."""
    _check_level(level)
    return _engine(device).compress(data, level, wbits)


def decompress(data: bytes | bytearray | memoryview, /, wbits: int = MAX_WBITS,
               bufsize: int = DEF_BUF_SIZE, *,
               device: Device | ZipEngine | str | None = None) -> bytes:
    """Decompress one complete stream; trailing data after it is ignored (as zlib does).
    Corrupt or truncated input raises `error`."""
    if bufsize < 0:
        raise InvalidArgumentError("bufsize must be non-negative")  # a ValueError, as zlib
    return _engine(device).decompress(data, wbits, bufsize)


class Compress:
    """A compression stream (from `compressobj`)."""

    def __init__(self, engine: ZipEngine, level: int, wbits: int, chunk_size: int) -> None:
        from .devices.zip.stream import Deflater

        self._d: Deflater | None = Deflater(engine, Format.from_wbits(wbits, decompress=False),
                                            level, chunk=chunk_size)

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        if self._d is None:
            raise ZipError("Error -2 while compressing data: inconsistent stream state")
        return self._d.compress(data)

    def flush(self, mode: int = Z_FINISH) -> bytes:
        if self._d is None:
            if mode == Z_NO_FLUSH:
                return b""
            raise ZipError("Error -2 while flushing: inconsistent stream state")
        out = self._d.flush(mode)
        if mode == Z_FINISH:
            self._d.close()
            self._d = None
        return out

    def copy(self) -> Compress:
        raise ZipError("a ZIP stream cannot be copied: its state lives in the engine",
                       hint="compress the shared prefix twice instead")

    def __del__(self) -> None:
        d = getattr(self, "_d", None)
        if d is not None:
            try:
                d.close()
            except Exception:
                pass


class Decompress:
    """A decompression stream (from `decompressobj`): `unused_data`, `unconsumed_tail`, `eof`
    as in zlib."""

    def __init__(self, engine: ZipEngine, wbits: int) -> None:
        from .devices.zip.stream import Inflater

        self._i = Inflater(engine, Format.from_wbits(wbits, decompress=True))

    @property
    def unused_data(self) -> bytes:
        return self._i.unused_data

    @property
    def unconsumed_tail(self) -> bytes:
        return self._i.unconsumed_tail

    @property
    def eof(self) -> bool:
        return self._i.eof

    def decompress(self, data: bytes | bytearray | memoryview, /, max_length: int = 0) -> bytes:
        out = self._i.decompress(data, max_length)
        if self._i.eof:
            self._i.close()  # the buffers go back to the pool; attributes stay
        return out

    def flush(self, length: int = DEF_BUF_SIZE) -> bytes:
        if length <= 0:
            raise InvalidArgumentError("length must be greater than zero")  # as zlib
        if self._i.eof:
            return b""
        return self._i.flush()

    def copy(self) -> Decompress:
        raise ZipError("a ZIP stream cannot be copied: its state lives in the engine")

    def __del__(self) -> None:
        i = getattr(self, "_i", None)
        if i is not None:
            try:
                i.close()
            except Exception:
                pass


def compressobj(level: int = Z_DEFAULT_COMPRESSION, method: int = DEFLATED,
                wbits: int = MAX_WBITS, memLevel: int = DEF_MEM_LEVEL,
                strategy: int = Z_DEFAULT_STRATEGY, zdict: bytes | None = None, *,
                device: Device | ZipEngine | str | None = None,
                chunk_size: int = 1 << 20) -> Compress:
    """A compression stream. `memLevel` and `strategy` are accepted and ignored (the engine has
    its own); `zdict` is not supported. Input is gathered into jobs of `chunk_size` bytes (at
    most 7 MiB): `compress()` returns output once a job's worth has arrived."""
    _check_level(level)
    if method != DEFLATED:
        raise ZipError("Invalid initialization option", hint="method must be DEFLATED")
    if zdict:
        raise ZipError("preset dictionaries are not supported by the ZIP engine")
    return Compress(_engine(device), level, wbits, chunk_size)


def decompressobj(wbits: int = MAX_WBITS, zdict: bytes = b"", *,
                  device: Device | ZipEngine | str | None = None) -> Decompress:
    """A decompression stream (wbits also 0 and 40..47 as in zlib)."""
    if zdict:
        raise ZipError("preset dictionaries are not supported by the ZIP engine")
    return Decompress(_engine(device), wbits)
