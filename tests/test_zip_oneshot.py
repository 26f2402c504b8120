"""The one-shot path (`warpdrive.zip.compress`/`decompress` -> `devices/zip/oneshot.py`) against
the bundled model: what a call keeps for the next one (DMA pieces, SQE, Job) and when it must
not keep it: after fork, close, a failed job, a job left in flight by an interrupted wait, and
inputs larger than it keeps. Speed is measured by benchmarks/zip_user_bench.py, never here."""

from __future__ import annotations

import zlib

import pytest
from forkchild import run_in_child

import warpdrive.zip as wz
from warpdrive.devices.zip.job import COMPRESS, DECOMPRESS
from warpdrive.devices.zip.oneshot import OneShot
from warpdrive.errors import ClosedError, ForkedContextError


def text(i: int, n: int) -> bytes:
    line = b"call %d: the quick brown fox jumps over the lazy dog\n" % i
    return (line * (n // len(line) + 1))[:n]


@pytest.fixture(scope="module")
def engine():
    eng = wz.open_engine("emu", announce=False)
    yield eng
    eng.close()


def test_calls_reuse_their_pieces_sqe_and_job(engine) -> None:
    one = engine.oneshots[COMPRESS]
    for i, n in enumerate((5, 4096, 3000, 1, 4096)):
        data = text(i, n)
        assert zlib.decompress(wz.compress(data, device=engine)) == data
        if i == 0:
            src, dst, job, calls = one.src, one.dst, one.job, one.calls
    assert (one.src, one.dst, one.job) == (src, dst, job)
    assert one.calls == calls + 4
    back = engine.oneshots[DECOMPRESS]
    for i in range(4):
        data = text(i, 4096)
        for wbits, blob in ((15, zlib.compress(data)), (31, wz.compress(data, wbits=31)),
                            (-15, wz.compress(data, wbits=-15))):
            assert wz.decompress(blob, wbits, device=engine) == data
        if i == 0:
            kept = (back.src, back.dst, back.job)
    assert (back.src, back.dst, back.job) == kept


def test_larger_inputs_grow_the_pieces_or_borrow_them(engine) -> None:
    one = engine.oneshots[COMPRESS]
    wz.compress(b"small", device=engine)
    small = one.src
    mid = text(1, 60_000)  # bigger than the kept piece: a bigger one is kept instead
    assert zlib.decompress(wz.compress(mid, device=engine)) == mid
    assert one.src is not small and one.src is not None and one.src.size >= len(mid)
    back = engine.oneshots[DECOMPRESS]
    big = text(2, OneShot.KEEP_MAX * 3)  # output over KEEP_MAX: borrowed for the call
    assert wz.decompress(zlib.compress(big), device=engine) == big
    kept = back.dst  # (grown on the way, up to KEEP_MAX)
    assert kept is not None and kept.size <= OneShot.KEEP_MAX
    assert wz.decompress(zlib.compress(big), device=engine) == big
    assert back.dst is kept
    assert wz.decompress(zlib.compress(mid), device=engine) == mid


def test_a_failed_job_leaves_the_pieces_usable(engine) -> None:
    back = engine.oneshots[DECOMPRESS]
    good = zlib.compress(text(3, 4096))
    assert wz.decompress(good, device=engine) == text(3, 4096)
    kept = (back.src, back.dst, back.job)
    bad = bytearray(good)
    bad[10] ^= 0xFF
    for blob in (bytes(bad), good[:-4] + b"\0\0\0\0", good[:40]):
        with pytest.raises(wz.error):
            wz.decompress(blob, device=engine)
    assert (back.src, back.dst, back.job) == kept  # the job completed: nothing to abandon
    assert wz.decompress(good, device=engine) == text(3, 4096)


def test_a_job_left_in_flight_is_never_reused(engine, monkeypatch) -> None:
    """An interrupted wait (here: a KeyboardInterrupt right after the doorbell) leaves the job
    on the device: its pieces and Job are dropped, the next call takes new ones, and the late
    completion of the old job is reaped without disturbing it."""
    one = engine.oneshots[COMPRESS]
    wz.compress(b"warm", device=engine)
    old = (one.src, one.dst, one.job)

    def interrupted(self, q, job):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(OneShot, "_wait", interrupted)
        with pytest.raises(KeyboardInterrupt):
            wz.compress(text(4, 4096), device=engine)
    assert one.src is None and one.dst is None and one.job is not old[2]
    for i in range(5):
        data = text(5 + i, 4096)
        assert zlib.decompress(wz.compress(data, device=engine)) == data
    assert one.src is not old[0] and one.dst is not old[1]
    assert engine.lanes[COMPRESS].q.outstanding == 0


def test_closed_engine_refuses_before_touching_memory() -> None:
    eng = wz.open_engine("emu", announce=False)
    assert zlib.decompress(wz.compress(b"once", device=eng)) == b"once"
    assert wz.decompress(zlib.compress(b"once"), device=eng) == b"once"
    slabs = list(eng.pool._slabs)
    assert slabs
    eng.close()
    # the kept pieces' views were dropped first, so the pool could unmap and close them
    assert all(buf.closed for buf in slabs)
    for call in (lambda: wz.compress(b"again", device=eng),
                 lambda: wz.decompress(zlib.compress(b"again"), device=eng)):
        with pytest.raises(ClosedError):
            call()


def test_forked_child_is_refused_and_the_parent_keeps_its_pieces(engine) -> None:
    wz.compress(b"before", device=engine)
    wz.decompress(zlib.compress(b"before"), device=engine)
    kept = [(o.src, o.dst, o.job) for o in engine.oneshots]

    def child() -> int:  # the pieces are not mapped here (MADV_DONTFORK): refused first
        for call in (lambda: wz.compress(b"child", device=engine),
                     lambda: wz.decompress(zlib.compress(b"child"), device=engine)):
            try:
                call()
                return 1
            except ForkedContextError:
                pass
        return 0

    assert run_in_child(child) == 0
    assert zlib.decompress(wz.compress(b"parent", device=engine)) == b"parent"
    assert wz.decompress(zlib.compress(b"parent"), device=engine) == b"parent"
    assert [(o.src, o.dst, o.job) for o in engine.oneshots] == kept


def test_empty_and_tiny_inputs(engine) -> None:
    for wbits in (15, 31, -15):
        for data in (b"", b"a", b"ab"):
            blob = wz.compress(data, wbits=wbits, device=engine)
            assert zlib.decompress(blob, wbits) == data
            assert wz.decompress(blob, wbits, device=engine) == data


def test_interrupt_waits_acknowledge_with_posted_writes() -> None:
    """wait="block": jobs end in interrupt waits and EQ acknowledgements, which are posted
    writes (no reply awaited); the model still signals the jobs that follow (it sends a queue's
    next EQE when the acknowledgement arrives)."""
    with wz.open_engine("emu", wait="block", announce=False) as eng:
        assert eng.source.eq_db.posted
        for i in range(100):
            data = text(i, 100 + i)
            assert zlib.decompress(wz.compress(data, device=eng)) == data
        from warpdrive.emu.models.zip import DBG_BAR, DBG_SIZE, decode_stats

        stats = decode_stats(eng.source.dev.region_read(DBG_BAR, 0, DBG_SIZE))
        # interrupts were sent, so acknowledged (how many depends on timing: a job found done
        # before its waiter blocked needs none of its own)
        assert stats["jobs"] == 100 and stats["msis"] > 0, stats
