"""Explicit-width MMIO: 8/16/32/64-bit loads and stores at byte offsets, bounds-checked.

Device registers are touched only through these accessors, never with memcpy or slice assignment:
emulated MMIO (QEMU, KVM) cannot decode vector instructions, and real devices latch registers at
exact widths. A ctypes scalar read or write of a mapped address compiles to one load or store of
that width (ctypes copies fixed-size scalars with a single fixed-size memcpy, which the C compiler
emits as one move).

A `Mmio` may be made of mapped windows (fast: a load/store into the process's mapping) and trapped
holes (slow: each access is a pread/pwrite on the VFIO device fd or a vfio-user message), as when
a BAR's sparse-mmap capability leaves the MSI-X table unmappable.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Protocol

from .errors import ArgumentTypeError, ClosedError, InvalidArgumentError, UnsupportedError
from .forkguard import DeadAccessor, ForkSafe
from .record import record
from .syscalls import FENCE_ACQUIRE as _FENCE_ACQUIRE
from .syscalls import FENCE_RELEASE as _FENCE_RELEASE

if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
    raise UnsupportedError("warpdrive's MMIO accessors assume a little-endian CPU")

_CTYPES = {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}
_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}



def _not_ints(*args: object) -> ArgumentTypeError:
    """An MMIO offset or value of the wrong type (the checks' comparisons raised TypeError)."""
    kinds = ", ".join(type(a).__name__ for a in args)
    return ArgumentTypeError(f"MMIO offsets and values are ints; got {kinds}")

class RegionAccess(Protocol):
    """The slow path for registers that are not mapped: one access per syscall or message."""

    def read(self, offset: int, width: int) -> int: ...

    def write(self, offset: int, width: int, value: int) -> None: ...

    def post(self, offset: int, width: int, value: int) -> None:
        """A write the caller does not wait for (a posted write, as MMIO stores are on PCI)."""
        ...


@record
class MmioWindow:
    """A mapped piece [offset, offset+size) of the region, at process address `addr`."""

    offset: int
    size: int
    addr: int

    def __post_init__(self) -> None:
        # One typed array per width over the window; indexing one is a single load/store.
        self.u8 = (ctypes.c_uint8 * self.size).from_address(self.addr)
        self.u16 = (ctypes.c_uint16 * (self.size // 2)).from_address(self.addr)
        self.u32 = (ctypes.c_uint32 * (self.size // 4)).from_address(self.addr)
        self.u64 = (ctypes.c_uint64 * (self.size // 8)).from_address(self.addr)

    def array(self, width: int) -> ctypes.Array[ctypes.c_uint64]:
        arr: ctypes.Array[ctypes.c_uint64] = {1: self.u8, 2: self.u16, 4: self.u32,
                                              8: self.u64}[width]  # type: ignore[assignment]
        return arr


@record(frozen=True)
class Wake:
    """For a mapped register whose reader polls it (a vfio-user server) and may stop polling:
    after each store, a fence, then one load of the reader's `flag` register; if it is set,
    `kick()` tells the reader about the store another way (a message)."""

    flag: Doorbell
    kick: Callable[[], None]


class Doorbell(ForkSafe):
    """One register written on the hot path: `ring(value)` is a single store of `width` bits into
    the mapping (no syscall), or one trapped write when the register is not mapped. With a
    `Wake`, a store into the mapping is followed by its check (one call in all)."""

    def __init__(self, offset: int, width: int, addr: int | None, trap: RegionAccess | None,
                 name: str, wake: Wake | None = None, posted: bool = False) -> None:
        self.offset = offset
        self.width = width
        self.mapped = addr is not None
        self.posted = posted  # a trapped ring is a posted write (see `Mmio.doorbell`)
        self._name = name
        self._cell: ctypes._SimpleCData[int] | None = (
            _CTYPES[width].from_address(addr) if addr is not None else None)
        self._trap = trap
        self._wake = wake
        # The wake-up check's parts, bound once: the hot path loads no attribute chain.
        self._flag = wake.flag._cell if wake is not None else None
        self._kick = wake.kick if wake is not None else None
        if self._cell is not None:
            self.ring = (  # type: ignore[method-assign]
                self._ring_mapped if wake is None else self._ring_mapped_wake)
        self._fork_register()

    def ring(self, value: int) -> None:
        """Store `value` in the register: one store of the doorbell's width where it is
        mapped (no syscall; with a wake-up flag, a kick only when the device sleeps), else
        the backend's write (or post)."""
        assert self._trap is not None
        if self.posted:
            self._trap.post(self.offset, self.width, value)
        else:
            self._trap.write(self.offset, self.width, value)

    def _ring_mapped(self, value: int) -> None:
        self._cell.value = value  # type: ignore[union-attr]

    def _ring_mapped_wake(self, value: int) -> None:
        self._cell.value = value  # type: ignore[union-attr]
        _FENCE_ACQUIRE()
        _FENCE_RELEASE()
        if self._flag.value:  # type: ignore[union-attr]
            self._kick()  # type: ignore[misc]

    def store_parts(self) -> tuple[ctypes._SimpleCData[int], ctypes._SimpleCData[int] | None,
                                   Callable[[], None] | None] | None:
        """For a caller that inlines `ring` on its hottest path: (the mapped cell, the wake
        check's flag cell and kick, or None, None without one); None for a trapped register.
        The parts do not follow a fork: the caller's own fork guard must refuse first."""
        if self._cell is None:
            return None
        return self._cell, self._flag, self._kick

    def read(self) -> int:
        """Load the register (mapped or through the backend)."""
        cell = self._cell
        if cell is not None:
            return cell.value
        assert self._trap is not None
        return self._trap.read(self.offset, self.width)

    def _fork_describe(self) -> str:
        return f"doorbell {self._name}+{self.offset:#x}"

    def _fork_invalidate(self) -> None:
        dead = DeadAccessor(self._fork_describe, self._owner_pid)
        self._cell = dead  # type: ignore[assignment]
        self._trap = dead  # type: ignore[assignment]
        self._flag = dead  # type: ignore[assignment]
        self._wake = self._kick = None


class Mmio(ForkSafe):
    """Registers of one device region (usually a BAR), `size` bytes long."""

    def __init__(self, name: str, size: int, windows: list[MmioWindow],
                 trap: RegionAccess | None = None,
                 on_close: Callable[[], None] | None = None) -> None:
        self.name = name
        self.size = size
        self._windows = sorted(windows, key=lambda w: w.offset)
        self._trap = trap
        self._on_close = on_close
        self._closed = False
        self._wake: Wake | None = None
        self._fork_register()

    def set_wake(self, wake: Wake | None) -> None:
        """Check `wake` after each store into doorbells made from now on (see `Wake`)."""
        self._wake = wake

    @property
    def mapped_windows(self) -> list[tuple[int, int]]:
        """(offset, size) of each directly mapped piece."""
        return [(w.offset, w.size) for w in self._windows]

    def is_mapped(self, offset: int, width: int = 4) -> bool:
        return self._find(offset, width) is not None

    def _find(self, offset: int, width: int) -> MmioWindow | None:
        for w in self._windows:
            if w.offset <= offset and offset + width <= w.offset + w.size:
                return w
        return None

    def _check(self, offset: int, width: int) -> None:
        if self._closed:
            raise ClosedError(f"MMIO region {self.name} is closed")
        if offset < 0 or offset + width > self.size:
            raise InvalidArgumentError(
                f"{width * 8}-bit MMIO access at {offset:#x} is outside {self.name} "
                f"(size {self.size:#x})")
        if offset % width:
            raise InvalidArgumentError(
                f"{width * 8}-bit MMIO access at {offset:#x} in {self.name} is not "
                f"{width}-byte aligned")

    def read(self, offset: int, width: int) -> int:
        """One `width`-byte load at `offset` (aligned): from the mapping where the offset is
        mapped, else through the backend (pread or a message)."""
        try:
            self._check(offset, width)
        except TypeError:
            raise _not_ints(offset) from None
        w = self._find(offset, width)
        if w is not None:
            return int(w.array(width)[(offset - w.offset) // width])
        if self._trap is None:
            raise InvalidArgumentError(f"{self.name}+{offset:#x} is neither mapped nor trappable")
        return self._trap.read(offset, width)

    def write(self, offset: int, width: int, value: int) -> None:
        """One `width`-byte store of `value` at `offset` (aligned), as `read` reaches it."""
        try:
            self._check(offset, width)
            fits = 0 <= value <= _MASK[width]
        except TypeError:
            raise _not_ints(offset, value) from None
        if not fits:
            raise InvalidArgumentError(
                f"value {value:#x} does not fit a {width * 8}-bit register at "
                f"{self.name}+{offset:#x}")
        w = self._find(offset, width)
        if w is not None:
            w.array(width)[(offset - w.offset) // width] = value
            return
        if self._trap is None:
            raise InvalidArgumentError(f"{self.name}+{offset:#x} is neither mapped nor trappable")
        self._trap.write(offset, width, value)

    def read8(self, offset: int) -> int:
        """read(offset, 1): one 8-bit load"""
        return self.read(offset, 1)

    def read16(self, offset: int) -> int:
        """read(offset, 2): one 16-bit load"""
        return self.read(offset, 2)

    def read32(self, offset: int) -> int:
        """read(offset, 4): one 32-bit load"""
        return self.read(offset, 4)

    def read64(self, offset: int) -> int:
        """read(offset, 8): one 64-bit load"""
        return self.read(offset, 8)

    def write8(self, offset: int, value: int) -> None:
        """write(offset, 1, value): one 8-bit store"""
        self.write(offset, 1, value)

    def write16(self, offset: int, value: int) -> None:
        """write(offset, 2, value): one 16-bit store"""
        self.write(offset, 2, value)

    def write32(self, offset: int, value: int) -> None:
        """write(offset, 4, value): one 32-bit store"""
        self.write(offset, 4, value)

    def write64(self, offset: int, value: int) -> None:
        """write(offset, 8, value): one 64-bit store"""
        self.write(offset, 8, value)

    def doorbell(self, offset: int, width: int = 64, *, posted: bool = False) -> Doorbell:
        """A hot-path handle on the register at `offset` (width in bits: 16, 32 or 64).
        `posted`: when the register is trapped, a ring does not wait for the backend to confirm
        it (on vfio-user: no reply awaited). Only for a register whose writes may reach the
        device after later stores into a mapped page without harm."""
        nbytes = width // 8
        if nbytes not in (2, 4, 8):
            raise InvalidArgumentError(f"doorbell width must be 16, 32 or 64 bits, got {width}")
        self._check(offset, nbytes)
        w = self._find(offset, nbytes)
        addr = w.addr + (offset - w.offset) if w is not None else None
        if addr is None and self._trap is None:
            raise InvalidArgumentError(f"{self.name}+{offset:#x} is neither mapped nor trappable")
        return Doorbell(offset, nbytes, addr, self._trap, self.name,
                        self._wake if addr is not None else None, posted=posted)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._windows = []
        if self._on_close is not None and not self._forked_dead:
            self._on_close()
        self._fork_unregister()

    def _fork_describe(self) -> str:
        return f"MMIO region {self.name}"

    def _fork_invalidate(self) -> None:
        # The mapping carries MADV_DONTFORK: nothing is mapped at these addresses in the child.
        self._windows = []
        self._trap = DeadAccessor(self._fork_describe, self._owner_pid)  # type: ignore[assignment]

    def __enter__(self) -> Mmio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Mmio {self.name} size={self.size:#x} mapped={self.mapped_windows}>"
