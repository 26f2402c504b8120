"""DMA memory kept mapped for reuse, for plugins that move data through a device.

A map costs syscalls (or vfio-user messages) and a memory check per buffer, so a plugin that
submits many jobs takes its buffers from a `BufferPool`: small pieces (`Chunk`) are cut from
4 MiB slabs and large buffers are recycled whole.

Idle memory is bounded in size and in time. At most `max_idle` bytes of whole buffers wait
for reuse (96 MiB, and never more than a quarter of RLIMIT_MEMLOCK where it binds: a space that
pins, no CAP_IPC_LOCK; idle pinned memory must not crowd out what the process may pin). And a
pool left alone for IDLE_S starts afresh: the next `take`/`get` first unmaps every idle buffer
and every slab none of whose pieces is in use, so a service that did one big job and then
serves smaller ones goes back to its small footprint (docs/driver-bench.md: one 50 MB
compress and decompress left 37 MB of shared memory mapped for good). `trim()` does that at
once. No background thread: a pool never unmaps behind its owner's back, and a forked child
has none to inherit; so a process whose later calls never reach the pool (small one-shot
calls reuse pieces their engine keeps, up to 1 MiB) holds its idle memory until it trims.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

from .dma import DmaSpace
from .errors import WarpdriveError
from .memory import DmaBuffer, binding_memlock_limit


class Chunk:
    """`size` bytes at `off` in a mapped DMA buffer."""

    __slots__ = ("buf", "off", "size", "whole")

    def __init__(self, buf: DmaBuffer, off: int, size: int, whole: bool = False) -> None:
        self.buf, self.off, self.size, self.whole = buf, off, size, whole

    @property
    def iova(self) -> int:
        assert self.buf.iova is not None
        return self.buf.iova + self.off

    @property
    def view(self) -> memoryview:
        return self.buf.view[self.off:self.off + self.size]


class BufferPool:
    """DMA memory kept mapped for reuse: a map costs syscalls (or vfio-user messages) and a
    memory check, so small pieces are cut from 4 MiB slabs and large buffers are recycled.

    Giving memory back (`give`, `put`) takes no lock and does no I/O: it appends to a queue
    (`deque.append` is atomic) that the next `take`/`get` drains under the lock. So a finalizer
    may give back from anywhere, even from a garbage collection that runs inside `take` while
    the lock is held, and it can neither deadlock nor see the pool half-updated; buffers over
    the idle limit are unmapped later, by a caller in ordinary context."""

    MIN = 64 << 10
    SLAB = 4 << 20
    SLAB_MAX = 512 << 10
    CHUNK_MIN = 16 << 10
    MAX_IDLE = 96 << 20
    IDLE_S = 2.0  # a pool unused this long drops its idle memory at the next take/get

    def __init__(self, dma: DmaSpace, max_idle: int | None = None) -> None:
        self.dma = dma
        if max_idle is None:
            limit = binding_memlock_limit() if dma.pins else None
            max_idle = self.MAX_IDLE if limit is None else min(self.MAX_IDLE, limit // 4)
        self.max_idle = max_idle
        self._free: dict[int, list[DmaBuffer]] = {}
        self._chunks: dict[int, list[Chunk]] = {}
        self._slabs: list[DmaBuffer] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._returned: deque[Chunk] = deque()
        self._used_at = time.monotonic()  # the last take/get

    def take(self, size: int) -> Chunk:
        """A piece of at least `size` bytes (a slab piece, or a whole pooled buffer)."""
        c = self.CHUNK_MIN
        while c < size:
            c <<= 1
        if c > self.SLAB_MAX:
            buf = self.get(size)
            return Chunk(buf, 0, buf.size, whole=True)
        with self._lock:
            drop = self._reclaim() + self._aged()
            free = self._chunks.setdefault(c, [])
            if not free:
                slab = self.dma.alloc(self.SLAB)
                self._slabs.append(slab)
                free.extend([Chunk(slab, off, c) for off in range(self.SLAB - c, -1, -c)])
            chunk = free.pop()
        self._drop_all(drop)
        return chunk

    def give(self, chunk: Chunk) -> None:
        """Return a piece from `take` (lock-free; see the class docstring)."""
        self._returned.append(chunk)

    def put(self, buf: DmaBuffer) -> None:
        """Return a buffer from `get` (lock-free)."""
        self._returned.append(Chunk(buf, 0, buf.size, whole=True))

    def _reclaim(self) -> list[DmaBuffer]:
        """File what was given back (lock held); returns the buffers to unmap after unlocking."""
        drop: list[DmaBuffer] = []
        returned = self._returned
        while returned:
            chunk = returned.popleft()
            if not chunk.whole:
                self._chunks.setdefault(chunk.size, []).append(chunk)
                continue
            buf = chunk.buf
            if buf.size + self._idle <= self.max_idle and not self.dma.closed:
                self._free.setdefault(buf.size, []).append(buf)
                self._idle += buf.size
            else:
                drop.append(buf)
        return drop

    @classmethod
    def size_class(cls, size: int) -> int:
        if size <= 1 << 20:
            c = cls.MIN
            while c < size:
                c <<= 1
            return c
        return -(-size // (1 << 20)) << 20

    def get(self, size: int) -> DmaBuffer:
        """A whole DMA buffer of at least `size` bytes."""
        c = self.size_class(max(size, 1))
        with self._lock:
            drop = self._reclaim() + self._aged()
            free = self._free.get(c)
            buf = free.pop() if free else None
            if buf is not None:
                self._idle -= c
        self._drop_all(drop)
        return buf if buf is not None else self.dma.alloc(c)

    def _aged(self) -> list[DmaBuffer]:
        """(lock held) If the pool went unused for IDLE_S, everything idle, to unmap after
        unlocking (`_trim`); stamps the use (a clock read per take/get)."""
        now = time.monotonic()
        last, self._used_at = self._used_at, now
        return self._trim() if now - last >= self.IDLE_S else []

    def _trim(self) -> list[DmaBuffer]:
        """(lock held) Take out every idle whole buffer and every slab whose pieces are all
        free; returns them, to unmap after unlocking."""
        drop = [b for lst in self._free.values() for b in lst]
        self._free.clear()
        self._idle = 0
        whole = self._free_slabs()
        if whole:
            for free in self._chunks.values():
                free[:] = [ch for ch in free if id(ch.buf) not in whole]
            drop += [b for b in self._slabs if id(b) in whole]
            self._slabs = [b for b in self._slabs if id(b) not in whole]
        return drop

    def _free_slabs(self) -> set[int]:
        """(lock held) The ids of the slabs none of whose pieces is in use (a slab is cut for
        one piece size: all SLAB // size of its pieces are in that size's free list)."""
        return {k for c, free in self._chunks.items()
                for k, n in Counter(id(ch.buf) for ch in free).items() if n == self.SLAB // c}

    def trim(self) -> None:
        """Unmap every idle buffer and every slab none of whose pieces is in use, now."""
        with self._lock:
            drop = self._reclaim()
            drop += self._trim()
        self._drop_all(drop)

    def idle_bytes(self) -> int:
        """Memory mapped and not in use: idle whole buffers and slabs with no piece in use."""
        with self._lock:
            drop = self._reclaim()
            idle = self._idle + self.SLAB * len(self._free_slabs())
        self._drop_all(drop)
        return idle

    def _drop_all(self, bufs: list[DmaBuffer]) -> None:
        for buf in bufs:
            try:
                if not self.dma.closed and buf.iova is not None:
                    self.dma.unmap(buf)
                buf.close()
            except WarpdriveError:
                pass

    def close(self) -> None:
        with self._lock:
            drop = self._reclaim()  # whole buffers only: slab pieces go with their slab
            drop += [b for lst in self._free.values() for b in lst] + self._slabs
            self._free.clear()
            self._chunks.clear()
            self._slabs = []
            self._idle = 0
        self._drop_all(drop)
