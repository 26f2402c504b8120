"""A client's DMA maps as the device sees them: client IOVA -> device IOVA.

A client of the broker maps its buffers into *its own* IOVA space (vfio-user DMA_MAP, a memfd
sealed against shrinking and growing: the server refused anything else). The broker maps the
same pages into the device's DMA space (`DmaSpace.map` of the memfd: the kernel backends pin
them, or map the file where the kernel can; the vfio-user backend passes the fd on), and keeps
the table here. Every address in every SQE goes through `translate`: a range that is not wholly
inside one map of *this* client, with the access it needs, is a `TranslationFault`. So no SQE can
reach another client's memory, the broker's rings, or anything the client did not map (I2), and
only memfd pages ever reach the device (I3).

Lifetime: a map in use by jobs on the device (`inflight`) cannot be unmapped from the device
until they complete. `remove` takes it out of the table at once (no new job can use it) and
parks it; `release_idle` unmaps parked maps whose jobs are done.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import mmap
from dataclasses import dataclass

from .. import syscalls as sc
from ..dma import DmaSpace
from ..errors import WarpdriveError
from ..forkguard import close_fd_quietly
from ..memory import DmaBuffer, MemoryKind


class TranslationFault(Exception):
    """An SQE names memory the client did not map (or not with that access)."""


@dataclass(eq=False)
class DeviceMap:
    iova: int  # client IOVA
    end: int
    dev_iova: int  # where the device sees `iova`
    readable: bool
    writable: bool
    buffer: DmaBuffer | None  # the broker's mapping of the client's pages, for the device
    inflight: int = 0  # jobs on the device that use this map


# No map: what the last hits are when there are none (a range never fits in it).
_NOWHERE = DeviceMap(0, 0, 0, False, False, None)


class ClientMaps:
    """One client's maps (see the module docstring)."""

    def __init__(self, dma: DmaSpace, owner: str) -> None:
        self.dma = dma
        self.owner = owner
        self._starts: list[int] = []
        self._maps: list[DeviceMap] = []
        self._parked: list[DeviceMap] = []
        # The maps of the last readable and writable translations: the SQE check tries them
        # first (`serve.sqe.mediate`). Forgotten whenever a map leaves the table.
        self.last_read = self.last_write = _NOWHERE

    def __len__(self) -> int:
        return len(self._maps)

    @property
    def maps(self) -> list[DeviceMap]:
        return list(self._maps)

    @property
    def parked(self) -> int:
        return len(self._parked)

    def add(self, iova: int, size: int, fd: int, offset: int, readable: bool,
            writable: bool) -> DeviceMap:
        """Map `size` bytes of `fd` at `offset` for the device, as client IOVA `iova`. Raises
        OSError with the errno to answer the client."""
        page = sc.PAGE_SIZE
        if iova % page or size % page or offset % page or size <= 0:
            raise OSError(errno.EINVAL, f"the broker maps whole pages: IOVA {iova:#x} size "
                          f"{size:#x} file offset {offset:#x} are not page-aligned")
        own = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)
        try:
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            mm = mmap.mmap(own, size, flags=mmap.MAP_SHARED, prot=prot, offset=offset)
        except OSError:
            close_fd_quietly(own)
            raise
        buf = DmaBuffer(mm, MemoryKind.MEMFD, page_size=page, fd=own, fd_offset=offset)
        try:
            mapping = self.dma.map(buf, writable=writable)
        except WarpdriveError as e:
            buf.close()
            raise OSError(e.errno or errno.ENOMEM,
                          f"mapping {size:#x} bytes of {self.owner} for the device: {e}") from None
        m = DeviceMap(iova, iova + size, mapping.iova, readable, writable, buf)
        i = bisect.bisect_left(self._starts, iova)
        self._starts.insert(i, iova)
        self._maps.insert(i, m)
        return m

    def translate(self, iova: int, length: int, write: bool) -> DeviceMap:
        """The map holding [iova, iova+max(length, 1)) with the access needed."""
        i = bisect.bisect_right(self._starts, iova) - 1
        if i < 0:
            raise TranslationFault(f"IOVA {iova:#x} is not mapped by {self.owner}")
        m = self._maps[i]
        if iova + max(length, 1) > m.end:
            if iova >= m.end:
                raise TranslationFault(f"IOVA {iova:#x} is not mapped by {self.owner}")
            raise TranslationFault(f"{length} bytes at IOVA {iova:#x} run past the end of "
                                   f"{self.owner}'s map {m.iova:#x}+{m.end - m.iova:#x}")
        if write and not m.writable:
            raise TranslationFault(f"IOVA {iova:#x} is mapped read-only by {self.owner}")
        if not write and not m.readable:
            raise TranslationFault(f"IOVA {iova:#x} is mapped write-only by {self.owner}")
        if write:
            self.last_write = m
        else:
            self.last_read = m
        return m

    def remove(self, iova: int, size: int) -> None:
        """Drop the maps inside [iova, iova+size) from the table; unmap those no job uses."""
        lo = bisect.bisect_left(self._starts, iova)
        hi = bisect.bisect_left(self._starts, iova + size)
        gone = self._maps[lo:hi]
        self.last_read = self.last_write = _NOWHERE
        del self._maps[lo:hi]
        del self._starts[lo:hi]
        self._parked.extend(gone)
        self.release_idle()

    def clear(self) -> None:
        self._parked.extend(self._maps)
        self.last_read = self.last_write = _NOWHERE
        self._maps.clear()
        self._starts.clear()
        self.release_idle()

    def release_idle(self) -> None:
        """Unmap parked maps whose jobs have completed."""
        keep = []
        for m in self._parked:
            if m.inflight:
                keep.append(m)
                continue
            assert m.buffer is not None  # only _NOWHERE has none, and it is never in the table
            try:
                if not self.dma.closed:
                    self.dma.unmap(m.buffer)
                m.buffer.close()
            except WarpdriveError:
                keep.append(m)  # try again later
        self._parked = keep

