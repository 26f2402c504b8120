"""ioctl request encoders, mirroring `<asm-generic/ioctl.h>` (included through `<linux/ioctl.h>`).

This is the *generic* Linux encoding (x86, arm64, riscv, ...): 8 bits nr, 8 bits type, 14 bits
size, 2 bits direction, with `_IOC_WRITE = 1` and `_IOC_READ = 2`. Architectures that override it
(powerpc, mips, sparc, alpha, parisc) are refused at import time rather than given wrong numbers.

`type` may be an int or a one-character str (`_IO("W", 0)` as C writes `_IO('W', 0)`); `size` in
`_IOR/_IOW/_IOWR` may be a byte count or a ctypes type (C passes a type and takes its `sizeof`).
"""

from __future__ import annotations

import ctypes
import os

from ..errors import InvalidArgumentError, UnsupportedError

TYPE_CHECKING = False  # (not typing's: importing typing costs ~3 ms of every process's boot)
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "IOCSIZE_MASK",
    "IOCSIZE_SHIFT",
    "IOC_IN",
    "IOC_INOUT",
    "IOC_OUT",
    "_IO",
    "_IOC",
    "_IOC_DIR",
    "_IOC_DIRBITS",
    "_IOC_DIRMASK",
    "_IOC_DIRSHIFT",
    "_IOC_NONE",
    "_IOC_NR",
    "_IOC_NRBITS",
    "_IOC_NRMASK",
    "_IOC_NRSHIFT",
    "_IOC_READ",
    "_IOC_SIZE",
    "_IOC_SIZEBITS",
    "_IOC_SIZEMASK",
    "_IOC_SIZESHIFT",
    "_IOC_TYPE",
    "_IOC_TYPEBITS",
    "_IOC_TYPEMASK",
    "_IOC_TYPESHIFT",
    "_IOC_WRITE",
    "_IOR",
    "_IOW",
    "_IOWR",
]

_NON_GENERIC = ("ppc", "powerpc", "mips", "sparc", "alpha", "parisc")
# (uname(2) directly: `platform` costs ~3 ms of imports and regex compiles in every process,
# the device model's boot included)
_machine = os.uname().machine.lower()
if _machine.startswith(_NON_GENERIC):
    raise UnsupportedError(
        f"warpdrive.uapi.ioctl: architecture {_machine!r} does not use the generic Linux ioctl "
        "encoding",
        hint="only x86, arm64, riscv and other asm-generic/ioctl.h architectures are supported",
    )

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_DIRBITS = 2

_IOC_NRMASK = (1 << _IOC_NRBITS) - 1
_IOC_TYPEMASK = (1 << _IOC_TYPEBITS) - 1
_IOC_SIZEMASK = (1 << _IOC_SIZEBITS) - 1
_IOC_DIRMASK = (1 << _IOC_DIRBITS) - 1

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2

IOC_IN = _IOC_WRITE << _IOC_DIRSHIFT
IOC_OUT = _IOC_READ << _IOC_DIRSHIFT
IOC_INOUT = (_IOC_WRITE | _IOC_READ) << _IOC_DIRSHIFT
IOCSIZE_MASK = _IOC_SIZEMASK << _IOC_SIZESHIFT
IOCSIZE_SHIFT = _IOC_SIZESHIFT


def _field(name: str, value: int, mask: int) -> int:
    if not 0 <= value <= mask:
        bits = mask.bit_length()
        raise InvalidArgumentError(f"ioctl {name} {value:#x} does not fit in {bits} bits")
    return value


def _type_code(type_: int | str) -> int:
    if isinstance(type_, str):
        if len(type_) != 1:
            raise InvalidArgumentError(f"ioctl type must be one character, got {type_!r}")
        return ord(type_)
    return type_


def _IOC(dir_: int, type_: int | str, nr: int, size: int) -> int:  # C macro names, kept verbatim
    return (
        (_field("dir", dir_, _IOC_DIRMASK) << _IOC_DIRSHIFT)
        | (_field("type", _type_code(type_), _IOC_TYPEMASK) << _IOC_TYPESHIFT)
        | (_field("nr", nr, _IOC_NRMASK) << _IOC_NRSHIFT)
        | (_field("size", size, _IOC_SIZEMASK) << _IOC_SIZESHIFT)
    )


def _size(size: int | type[Any]) -> int:
    return size if isinstance(size, int) else ctypes.sizeof(size)


def _IO(type_: int | str, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int | str, nr: int, size: int | type[Any]) -> int:
    return _IOC(_IOC_READ, type_, nr, _size(size))


def _IOW(type_: int | str, nr: int, size: int | type[Any]) -> int:
    return _IOC(_IOC_WRITE, type_, nr, _size(size))


def _IOWR(type_: int | str, nr: int, size: int | type[Any]) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, _size(size))


def _IOC_DIR(nr: int) -> int:
    return (nr >> _IOC_DIRSHIFT) & _IOC_DIRMASK


def _IOC_TYPE(nr: int) -> int:
    return (nr >> _IOC_TYPESHIFT) & _IOC_TYPEMASK


def _IOC_NR(nr: int) -> int:
    return (nr >> _IOC_NRSHIFT) & _IOC_NRMASK


def _IOC_SIZE(nr: int) -> int:
    return (nr >> _IOC_SIZESHIFT) & _IOC_SIZEMASK
