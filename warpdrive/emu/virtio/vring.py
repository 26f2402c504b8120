"""The device side of a split virtqueue (virtio 1.2 §2.7) over a model's DMA window.

`pop()` takes the next available descriptor chain (following NEXT links and, when negotiated, one
level of INDIRECT table) and checks it as the spec requires of a driver; a chain that breaks a
rule is a `VirtqueueError`, which the transport turns into DEVICE_NEEDS_RESET (§2.1.2).
`push()` records a used element; `publish()` makes the used elements visible with one store of
used->idx, after the elements themselves (§2.7.8), and says whether the driver wants an
interrupt (§2.7.7: the NO_INTERRUPT flag, or used_event with EVENT_IDX).

All ring memory is reached through the `Dma` protocol (ClientMemory: bounds- and
permission-checked reads and writes of the client's maps), never through raw pointers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ...syscalls import full_fence
from . import layout as L


class Dma(Protocol):
    def read(self, iova: int, size: int) -> bytes: ...
    def write(self, iova: int, data: bytes | bytearray | memoryview) -> None: ...


class VirtqueueError(Exception):
    """The driver broke a virtqueue rule: the device needs a reset."""


@dataclass(frozen=True)
class Segment:
    addr: int
    length: int
    writable: bool


@dataclass
class Chain:
    """One available descriptor chain: its head index and buffers, device-readable first."""

    head: int
    readable: list[Segment]
    writable: list[Segment]

    @property
    def readable_len(self) -> int:
        return sum(s.length for s in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(s.length for s in self.writable)

    def read(self, dma: Dma, offset: int, size: int) -> bytes:
        """`size` bytes of the device-readable part as one stream, starting at `offset`."""
        return b"".join(dma.read(a, n) for a, n in _span(self.readable, offset, size))

    def write(self, dma: Dma, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` into the device-writable part as one stream, starting at `offset`."""
        mv = memoryview(data).cast("B")
        pos = 0
        for addr, n in _span(self.writable, offset, len(mv)):
            dma.write(addr, mv[pos:pos + n])
            pos += n


def _span(segments: list[Segment], offset: int, size: int) -> Iterator[tuple[int, int]]:
    """(address, length) pieces of [offset, offset+size) of the concatenated segments."""
    if size <= 0:
        return
    end = offset + size
    pos = 0
    for s in segments:
        lo, hi = max(offset, pos), min(end, pos + s.length)
        if lo < hi:
            yield s.addr + lo - pos, hi - lo
        pos += s.length
        if pos >= end:
            return
    raise IndexError(f"{size} bytes at offset {offset} run past the {pos}-byte buffer")


class DeviceVirtqueue:
    """Queue `index` with `size` entries at the driver's desc/driver/device areas."""

    def __init__(self, dma: Dma, index: int, size: int, desc: int, driver: int, device: int,
                 *, indirect: bool, event_idx: bool) -> None:
        if not 0 < size <= L.MAX_QUEUE_SIZE or size & (size - 1):
            raise VirtqueueError(f"queue {index}: size {size} is not a power of two "
                                 f"<= {L.MAX_QUEUE_SIZE}")
        for name, addr, align in (("descriptor table", desc, 16), ("driver area", driver, 2),
                                  ("device area", device, 4)):
            if addr % align:
                raise VirtqueueError(f"queue {index}: {name} at {addr:#x} is not {align}-byte "
                                     "aligned (§2.7)")
        self.dma = dma
        self.index = index
        self.size = size
        self.desc = desc
        self.driver = driver
        self.device = device
        self.indirect = indirect
        self.event_idx = event_idx
        self.last_avail = 0  # next available ring slot to consume (free-running u16)
        self.used_idx = 0  # next used ring slot to fill (free-running u16)
        self.signalled = 0  # used_idx at the last interrupt decision (for EVENT_IDX)
        self._pending_used: list[tuple[int, int, int]] = []  # (slot, head, written)

    # -- available ring -------------------------------------------------------------------
    def _u16(self, addr: int) -> int:
        return int.from_bytes(self.dma.read(addr, 2), "little")

    def avail_idx(self) -> int:
        return self._u16(self.driver + L.AVAIL_OFF_IDX)

    def available(self) -> int:
        """How many chains the driver has made available and the device has not taken."""
        n = (self.avail_idx() - self.last_avail) & 0xFFFF
        if n > self.size:
            raise VirtqueueError(f"queue {self.index}: avail idx moved {n} entries ahead of the "
                                 f"device, more than the {self.size}-entry ring (§2.7.6)")
        return n

    def pop(self) -> Chain:
        """The next available chain (call only while `available()`)."""
        slot = self.last_avail % self.size
        head = self._u16(self.driver + L.AVAIL_OFF_RING + 2 * slot)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if head >= self.size:
            raise VirtqueueError(f"queue {self.index}: available ring names descriptor {head} "
                                 f"of a {self.size}-entry table")
        chain = Chain(head, [], [])
        self._walk(chain, self.desc, self.size, head, nested=False)
        return chain

    def _walk(self, chain: Chain, table: int, entries: int, first: int, nested: bool) -> None:
        i = first
        for _ in range(entries):  # a chain longer than its table has a loop (§2.7.5)
            addr, length, flags, nxt = L.DESC.unpack(self.dma.read(table + L.DESC_SIZE * i,
                                                                   L.DESC_SIZE))
            if flags & L.DESC_F_INDIRECT:
                if nested or not self.indirect:
                    why = ("a nested indirect table" if nested else
                           "an INDIRECT descriptor without VIRTIO_F_INDIRECT_DESC negotiated")
                    raise VirtqueueError(f"queue {self.index}: {why} (§2.7.5.3)")
                if flags & L.DESC_F_NEXT:
                    raise VirtqueueError(f"queue {self.index}: descriptor {i} has both INDIRECT "
                                         "and NEXT (§2.7.5.3: Indirect Descriptors)")
                if length == 0 or length % L.DESC_SIZE:
                    raise VirtqueueError(f"queue {self.index}: indirect table of {length} bytes "
                                         "is not a whole number of descriptors")
                self._walk(chain, addr, length // L.DESC_SIZE, 0, nested=True)
                return
            seg = Segment(addr, length, bool(flags & L.DESC_F_WRITE))
            if seg.writable:
                chain.writable.append(seg)
            elif chain.writable:
                raise VirtqueueError(f"queue {self.index}: a device-readable descriptor follows "
                                     "a device-writable one (§2.7.4: Message Framing)")
            else:
                chain.readable.append(seg)
            if not flags & L.DESC_F_NEXT:
                return
            if nxt >= entries:
                raise VirtqueueError(f"queue {self.index}: descriptor {i} links to {nxt}, "
                                     f"outside its {entries}-entry table")
            i = nxt
        raise VirtqueueError(f"queue {self.index}: descriptor chain from {first} loops")

    # -- used ring ------------------------------------------------------------------------
    def push(self, chain: Chain, written: int) -> None:
        """Record `chain` as used with `written` bytes written into it (visible at publish)."""
        self._pending_used.append((self.used_idx % self.size, chain.head, written))
        self.used_idx = (self.used_idx + 1) & 0xFFFF

    def publish(self) -> bool:
        """Write the pending used elements, then used->idx; True if the driver asked to be
        interrupted for them."""
        if not self._pending_used:
            return False
        base = self.device + L.USED_OFF_RING
        for slot, head, written in self._pending_used:
            self.dma.write(base + L.USED_ELEM.size * slot, L.USED_ELEM.pack(head, written))
        self._pending_used.clear()
        self.dma.write(self.device + L.USED_OFF_IDX, self.used_idx.to_bytes(2, "little"))
        # The index store must be visible before we read the driver's wish (§2.7.7 asks the
        # same of both sides: the driver re-enables, fences, then looks at the index again).
        full_fence()
        old, self.signalled = self.signalled, self.used_idx
        if self.event_idx:
            used_event = self._u16(self.driver + L.AVAIL_OFF_RING + 2 * self.size)
            return L.need_event(used_event, self.used_idx, old)
        return not self._u16(self.driver) & L.AVAIL_F_NO_INTERRUPT
