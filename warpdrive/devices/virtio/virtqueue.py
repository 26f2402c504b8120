"""Split virtqueues (`split-ring.tex`) in DMA memory, driven by polling or MSI-X.

Layout of the one DMA buffer a queue owns (all offsets honour the spec's alignment):

    0              descriptor table   16 * size      (align 16)
    16*size        available ring     6 + 2 * size   (align 2): flags, idx, ring[size], used_event
    next page      used ring          6 + 8 * size   (align 4): flags, idx, used[size], avail_event

The used ring starts on its own page so the device's writes never share a cache line with the
driver's. Ring fields are read and written through ctypes arrays over the buffer: every index or
flags access is one naturally sized load or store, which the device may observe at any time.

Two ways to put work on the ring:
  * `add(segments, token)`: takes descriptors from the free list and links them (generic);
  * `reserve_chain(segments)` once, then `submit_chain(head, token)` per request: a fixed chain
    whose lengths the caller may change (`set_len`) — the hot path of a driver that reuses
    request slots, one avail-ring store per request; or `reserve_chain(segments, token)` with a
    token for good and `submit_reserved(heads)`: a batch of them in one slice store.
Either way `kick()` publishes everything added since the last kick with one 16-bit store to
`avail->idx` and one 16-bit store to the queue's notify doorbell: one doorbell per batch.

Memory ordering: the driver writes descriptors, then the avail ring entry, then avail->idx; the
device reads them in the opposite order. x86 (the lab and the supported hosts) keeps stores in
program order and loads in program order, so no explicit barrier is needed between those stores,
nor between reading used->idx and reading the used entries. What x86 does reorder is a store
followed by a load (avail->idx store, then a used->flags load), which is why `kick()` does not
skip the doorbell on VRING_USED_F_NO_NOTIFY: honouring it safely needs a full fence that pure
Python cannot issue without a syscall. The doorbell is rung once per batch instead.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from ctypes import c_uint16

from ... import syscalls as sc
from ...device import Interrupt
from ...errors import InvalidArgumentError, ResourceExhaustedError
from ...forkguard import ForkSafe
from ...memory import DmaBuffer
from ...uapi import virtio as U
from .pci import VirtioPciTransport

Segment = tuple[int, int, bool]  # (iova, length, device-writable)


def ring_layout(size: int) -> tuple[int, int, int, int]:
    """(avail offset, used offset, used bytes, total bytes) for a split ring of `size` entries."""
    desc_bytes = 16 * size
    avail_off = desc_bytes
    avail_bytes = 6 + 2 * size
    used_off = sc.page_align_up(avail_off + avail_bytes)
    used_bytes = 6 + 8 * size
    return avail_off, used_off, used_bytes, sc.page_align_up(used_off + used_bytes)


class SplitVirtqueue(ForkSafe):
    """One split virtqueue of a `VirtioPciTransport`'s device."""

    def __init__(self, transport: VirtioPciTransport, index: int, size: int | None = None, *,
                 interrupt: Interrupt | None = None, no_interrupt: bool | None = None) -> None:
        """Allocate and program queue `index`. `size` defaults to the device's maximum.
        With `interrupt` (an MSI-X `Interrupt` from `transport.enable_msix`) the queue is given
        that vector; otherwise the device is asked not to interrupt (VRING_AVAIL_F_NO_INTERRUPT):
        the driver polls the used ring, and the device skips injecting interrupts nobody waits
        for."""
        self.transport = transport
        self.index = index
        dev = transport.device
        max_size = transport.queue_max_size(index)
        if size is None:
            size = max_size
        if size <= 0 or size & (size - 1) or size > max_size or size > 32768:
            raise InvalidArgumentError(
                f"virtqueue size {size} must be a power of two <= {min(max_size, 32768)}")
        self.size = size
        self._mask = size - 1  # a power of two: index % size
        avail_off, used_off, _, total = ring_layout(size)
        self.buffer: DmaBuffer = dev.dma.alloc(total)
        try:
            dev.dma.hold(self.buffer, self, f"virtqueue {index} of {dev.name}")
            base = self.buffer.addr
            iova = self.buffer.iova
            assert iova is not None
            self.desc = (U.vring_desc * size).from_address(base)
            # avail: [flags, idx, ring[size], used_event] as one u16 array
            self._avail = (ctypes.c_uint16 * (size + 3)).from_address(base + avail_off)
            self._used16 = (ctypes.c_uint16 * 2).from_address(base + used_off)
            # used ring entries as u32 pairs (id, len)
            self._used = (ctypes.c_uint32 * (2 * size)).from_address(base + used_off + 4)
            self.interrupt = interrupt
            vector = interrupt.vector if interrupt is not None else U.VIRTIO_MSI_NO_VECTOR
            if no_interrupt is None:
                no_interrupt = interrupt is None
            self._avail[0] = U.VRING_AVAIL_F_NO_INTERRUPT if no_interrupt else 0
            info = transport.setup_queue(index, size, iova, iova + avail_off, iova + used_off,
                                         vector)
        except BaseException:
            self._free_buffer()
            raise
        self.notify = info.notify
        self._ring_doorbell = self.notify.ring
        self._next_desc = [0] * size  # driver-side shadow of desc[i].next (device may not alter)
        self._chain_len = [0] * size
        self._free: list[int] = list(range(size - 1, -1, -1))  # stack: pop() gives 0 first
        self._tokens: list[object] = [None] * size
        self._linked = 0  # chains `add` linked that are in flight (reaping unlinks them)
        self._avail_idx = 0  # shadow of avail->idx (free-running u16)
        self._published = 0
        self._last_used = 0
        self.in_flight = 0
        self._fork_register()

    # -- descriptors -----------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    def _link(self, segments: Sequence[Segment]) -> int:
        n = len(segments)
        if n == 0:
            raise InvalidArgumentError("a virtqueue request needs at least one buffer")
        if n > len(self._free):
            raise ResourceExhaustedError(
                f"virtqueue {self.index} has {len(self._free)} free descriptors, {n} needed",
                hint="poll for completions before submitting more")
        idxs = [self._free.pop() for _ in range(n)]
        desc = self.desc
        for i, (iova, length, writable) in enumerate(segments):
            d = desc[idxs[i]]
            d.addr = iova
            d.len = length
            flags = U.VRING_DESC_F_WRITE if writable else 0
            if i + 1 < n:
                flags |= U.VRING_DESC_F_NEXT
                d.next = idxs[i + 1]
                self._next_desc[idxs[i]] = idxs[i + 1]
            else:
                d.next = 0
            d.flags = flags
        head = idxs[0]
        self._chain_len[head] = n
        return head

    def _unlink(self, head: int) -> None:
        i = head
        for _ in range(self._chain_len[head]):
            self._free.append(i)
            i = self._next_desc[i]

    def _put_avail(self, head: int, token: object) -> None:
        self.submit_chain(head, token)

    def add(self, segments: Sequence[Segment], token: object) -> int:
        """Queue one request (device-readable segments first, then device-writable ones).
        It becomes visible to the device at the next `kick()`. Returns the head index."""
        self._check_alive()
        head = self._link(segments)
        self._put_avail(head, token)
        self._linked += 1
        return head

    def reserve_chain(self, segments: Sequence[Segment], token: object = None) -> int:
        """Take a chain of descriptors for good (a reusable request slot); returns its head.
        Submit it with `submit_chain`, or (its `token` given here, for good) `submit_reserved`;
        it does not go back to the free list when used."""
        self._check_alive()
        head = self._link(segments)
        self._chain_len[head] = -self._chain_len[head]  # negative: reserved, never unlinked
        self._tokens[head] = token
        return head

    def next_desc(self, desc_index: int) -> int:
        """The descriptor chained after `desc_index` (as the driver linked it)."""
        return self._next_desc[desc_index]

    def set_len(self, desc_index: int, length: int) -> None:
        self.desc[desc_index].len = length

    def submit_chain(self, head: int, token: object) -> None:
        """Queue a reserved chain (hot path: one avail-ring store; `_put_avail` inlined)."""
        self._tokens[head] = token
        idx = self._avail_idx
        self._avail[2 + (idx & self._mask)] = head
        self._avail_idx = (idx + 1) & 0xFFFF
        self.in_flight += 1

    def submit_reserved(self, heads: list[c_uint16 | int]) -> None:
        """Queue reserved chains (tokens given to `reserve_chain`), in order: one slice store
        into the avail ring (two at its end) for the batch."""
        k = len(heads)
        idx = self._avail_idx
        a = idx & self._mask
        avail = self._avail
        if a + k <= self.size:
            avail[2 + a:2 + a + k] = heads
        else:
            m = self.size - a
            avail[2 + a:2 + self.size] = heads[:m]
            avail[2:2 + k - m] = heads[m:]
        self._avail_idx = (idx + k) & 0xFFFF
        self.in_flight += k

    # -- notify and completions ------------------------------------------------------------
    def publish(self) -> int:
        """Make every added request visible (one 16-bit store); returns how many were new."""
        new = (self._avail_idx - self._published) & 0xFFFF
        if new:
            self._avail[1] = self._avail_idx
            self._published = self._avail_idx
        return new

    def kick(self) -> int:
        """Publish and ring the queue's doorbell once (if anything was added)."""
        new = self.publish()
        if new:
            self._ring_doorbell(self.index)
        return new

    def want_interrupts(self, on: bool) -> None:
        """Ask the device to interrupt for used buffers (or not: VRING_AVAIL_F_NO_INTERRUPT).
        A waiter that turns them on must look at the used ring once more after a full fence
        (`syscalls.full_fence`), or a buffer used just before the store is never signalled."""
        self._avail[0] = 0 if on else U.VRING_AVAIL_F_NO_INTERRUPT

    def has_used(self) -> bool:
        return self._used16[1] != self._last_used

    def used_waiting(self) -> int:
        """How many used entries wait to be reaped (one load of used->idx)."""
        return (self._used16[1] - self._last_used) & 0xFFFF

    def poll_tokens(self) -> list[object]:
        """Reap completed requests: their tokens, in completion order (the hot path: no
        lengths, no tuples; the used ring's heads read as one strided slice). A reserved
        chain's token stays (it is for good); a chain `add` linked goes back to the free list."""
        used_idx = self._used16[1]
        last = self._last_used
        if used_idx == last:
            return []
        n = (used_idx - last) & 0xFFFF
        a = last & self._mask
        used = self._used
        if a + n <= self.size:
            heads = used[2 * a:2 * (a + n):2]
        else:
            heads = used[2 * a:2 * self.size:2] + used[0:2 * (a + n - self.size):2]
        tokens = self._tokens
        out = list(map(tokens.__getitem__, heads))
        if self._linked:
            chain = self._chain_len
            for h in heads:
                if chain[h] > 0:
                    tokens[h] = None
                    self._unlink(h)
                    self._linked -= 1
        self.in_flight -= n
        self._last_used = used_idx
        return out

    def poll(self) -> list[tuple[object, int]]:
        """Reap completed requests: [(token, bytes the device wrote)] in completion order."""
        used_idx = self._used16[1]
        last = self._last_used
        if used_idx == last:
            return []
        out: list[tuple[object, int]] = []
        size = self.size
        used = self._used
        tokens = self._tokens
        while last != used_idx:
            slot = (last % size) * 2
            head = used[slot]
            out.append((tokens[head], used[slot + 1]))
            if self._chain_len[head] > 0:
                tokens[head] = None
                self._unlink(head)
                self._linked -= 1
            last = (last + 1) & 0xFFFF
        self.in_flight -= len(out)
        self._last_used = last
        return out

    # -- lifetime --------------------------------------------------------------------------
    def _free_buffer(self) -> None:
        dma = self.transport.device.dma
        if dma._closed or self.buffer.closed:
            return
        dma.release(self.buffer, self)
        try:
            dma.unmap(self.buffer)
            self.buffer.close()
        except Exception:
            pass  # DmaSpace.close() frees it with the device

    def close(self) -> None:
        """Forget the ring memory. Reset the device first: it may still access the ring."""
        if self._forked_dead:
            return
        self._free_buffer()
        self._fork_unregister()

    def _fork_describe(self) -> str:
        return f"virtqueue {self.index} of {self.transport.device.name}"
