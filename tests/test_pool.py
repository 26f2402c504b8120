"""The DMA buffer pool's idle memory (warpdrive.pool): bounded in size (max_idle, a quarter of
a finite RLIMIT_MEMLOCK where maps pin) and in time (a pool left alone for IDLE_S drops its
idle buffers and free slabs at its next use; `trim()` at once). Buffers are real anonymous
DMA buffers; the space is the least a pool needs (IOVA = address), as in test_zip_gc.py; the
engine test runs on the bundled model."""

from __future__ import annotations

import resource
import time
import zlib

import pytest

import warpdrive.zip as wz
from warpdrive.memory import DmaBuffer
from warpdrive.pool import BufferPool


class PoolDma:
    """Just enough of a DMA space for a pool (test_zip_gc.py uses it too)."""

    closed = False
    pins = False  # (the RLIMIT_MEMLOCK bound is tested on its own)

    def __init__(self) -> None:
        self.unmapped: list[DmaBuffer] = []

    def alloc(self, size: int) -> DmaBuffer:
        buf = DmaBuffer.allocate(size)
        buf.iova = buf.addr
        return buf

    def unmap(self, buf: DmaBuffer) -> None:
        buf.iova = None
        self.unmapped.append(buf)


def test_an_idle_pool_drops_its_memory_at_its_next_use(monkeypatch) -> None:
    """A burst (whole buffers and slab pieces), then a pause longer than IDLE_S: the next take
    unmaps every idle buffer and every slab with no piece in use, and serves from new memory;
    a piece held across the pause keeps its slab."""
    monkeypatch.setattr(BufferPool, "IDLE_S", 0.05)
    dma = PoolDma()
    pool = BufferPool(dma)  # type: ignore[arg-type]
    wholes = [pool.get(3 << 20) for _ in range(3)]
    kept = pool.take(64 << 10)
    pieces = [pool.take(64 << 10) for _ in range(8)] + [pool.take(16 << 10) for _ in range(4)]
    for b in wholes:
        pool.put(b)
    for p in pieces:
        pool.give(p)
    assert pool.idle_bytes() == 3 * (3 << 20) + BufferPool.SLAB  # the 16 KiB slab is free
    assert pool.take(16 << 10).buf is pieces[-1].buf  # used again within IDLE_S: no trim
    time.sleep(0.1)
    fresh = pool.take(32 << 10)
    assert {id(b) for b in dma.unmapped} == {id(b) for b in wholes}  # the 16K slab is in use
    kept.view[:4] = b"kept"  # its slab stays mapped
    assert kept.buf.iova is not None and fresh.buf.iova is not None
    pool.give(kept)
    pool.trim()
    assert kept.buf in dma.unmapped and fresh.buf.iova is not None  # fresh's slab is in use
    pool.close()


def test_trim_keeps_what_is_in_use() -> None:
    dma = PoolDma()
    pool = BufferPool(dma)  # type: ignore[arg-type]
    held, spare = pool.take(64 << 10), pool.take(64 << 10)
    big = pool.get(2 << 20)
    pool.put(big)
    pool.give(spare)
    pool.trim()
    assert dma.unmapped == [big] and held.buf.iova is not None
    pool.give(held)
    pool.trim()
    assert dma.unmapped == [big, held.buf] and pool.idle_bytes() == 0
    pool.close()


def test_idle_memory_is_bounded_by_rlimit_memlock_where_maps_pin(monkeypatch) -> None:
    """Where the limit binds (a space that pins, no CAP_IPC_LOCK: check_memlock's rule), idle
    memory is at most a quarter of it."""
    import warpdrive.memory.memlock as memlock_mod

    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (8 << 20, hard))
    try:
        pinned = PoolDma()
        pinned.pins = True
        monkeypatch.setattr(memlock_mod, "has_cap_ipc_lock", lambda: False)
        assert BufferPool(pinned).max_idle == 2 << 20  # type: ignore[arg-type]
        assert BufferPool(PoolDma()).max_idle == BufferPool.MAX_IDLE  # type: ignore[arg-type]
        monkeypatch.setattr(memlock_mod, "has_cap_ipc_lock", lambda: True)
        assert BufferPool(pinned).max_idle == BufferPool.MAX_IDLE  # type: ignore[arg-type]
    finally:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard))


@pytest.mark.parametrize("how", ["trim", "idle"])
def test_an_engine_gives_back_what_a_big_job_left(how: str, monkeypatch) -> None:
    """One 24 MB compress and decompress on the model leave tens of MiB mapped for reuse; the
    engine's trim(), or its next job after IDLE_S, gives them back, and it works on."""
    monkeypatch.setattr(BufferPool, "IDLE_S", 0.2)
    data = bytes(range(256)) * 4096 * 24
    with wz.open_engine("emu", announce=False) as eng:
        assert eng.decompress(eng.compress(data)) == data
        assert eng.pool.idle_bytes() >= 8 << 20
        if how == "trim":
            eng.trim()
        else:
            time.sleep(0.3)
            s = eng.session("compress")
            s.submit(b"after a pause " * 100)
            (j,) = s.drain()
            assert zlib.decompress(j.result()) == b"after a pause " * 100
            s.close()
        assert eng.pool.idle_bytes() <= BufferPool.SLAB
        assert eng.decompress(eng.compress(data)) == data
