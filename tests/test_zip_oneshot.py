"""The one-shot path (`warpdrive.zip.compress`/`decompress` -> `devices/zip/oneshot.py`) against
the bundled model: what a call keeps for the next one (DMA pieces, SQE, Job) and when it must
not keep it: after fork, close, a failed job, a job left in flight by an interrupted wait, and
inputs larger than it keeps. Speed is measured by benchmarks/zip_user_bench.py, never here."""

from __future__ import annotations

import gzip
import random
import zlib

import pytest
from forkchild import run_in_child

import warpdrive.zip as wz
from warpdrive.devices.zip.engine import ZipEngine
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


def _refused_in_child(eng: ZipEngine) -> bool:
    """(In a forked child) compress and decompress on `eng` both raise ForkedContextError."""
    for call in (lambda: wz.compress(b"child", device=eng),
                 lambda: wz.decompress(zlib.compress(b"child"), device=eng)):
        try:
            call()
            return False
        except ForkedContextError:
            pass
    return True


def test_forked_child_is_refused_and_the_parent_keeps_its_pieces(engine) -> None:
    wz.compress(b"before", device=engine)
    wz.decompress(zlib.compress(b"before"), device=engine)
    kept = [(o.src, o.dst, o.job) for o in engine.oneshots]

    def child() -> int:  # the pieces are not mapped here (MADV_DONTFORK): refused first
        return 0 if _refused_in_child(engine) else 1

    assert run_in_child(child) == 0
    assert zlib.decompress(wz.compress(b"parent", device=engine)) == b"parent"
    assert wz.decompress(zlib.compress(b"parent"), device=engine) == b"parent"
    assert [(o.src, o.dst, o.job) for o in engine.oneshots] == kept


def test_a_lane_lock_held_at_fork_does_not_hang_the_child(monkeypatch) -> None:
    """A parent thread inside a call at fork() never lets the lane locks go in the child: the
    child's calls (whose fast way takes the lock before it looks at the queue) must still be
    refused on that engine, and move to a new default engine."""
    import signal
    import threading

    from warpdrive.zip import engines

    eng = wz.open_engine("emu", announce=False)
    monkeypatch.setattr(engines, "_default", eng)
    assert wz.decompress(wz.compress(b"parent" * 9)) == b"parent" * 9  # both lanes started
    held, go = threading.Event(), threading.Event()

    def holder() -> None:
        with eng.lanes[COMPRESS].lock, eng.lanes[DECOMPRESS].lock:
            held.set()
            go.wait()

    def child() -> int:
        signal.alarm(30)  # a hang dies of SIGALRM
        if not _refused_in_child(eng):
            return 1
        try:
            ok = zlib.decompress(wz.compress(b"child" * 9)) == b"child" * 9 and \
                wz.decompress(zlib.compress(b"kid")) == b"kid"
            return 0 if ok and engines._default is not eng else 2
        finally:
            if engines._default is not eng and engines._default is not None:
                engines._default.close()

    t = threading.Thread(target=holder)
    t.start()
    try:
        held.wait()
        assert run_in_child(child) == 0
    finally:
        go.set()
        t.join()
        eng.close()


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


# -- the fast ways (OneShot.compress_fast / decompress_fast) ----------------------------------
def test_common_calls_take_the_fast_way(engine) -> None:
    """bytes or bytearray, exact ints, the formats the engine serves: one plan lookup, and the
    stream zlib would read (headers as zlib writes them)."""
    c, d = engine.oneshots
    data = text(7, 3000)
    wz.compress(data, device=engine)  # the general way takes the pieces the plans point at
    wz.decompress(zlib.compress(data), device=engine)
    for wbits in (15, 31, -15, 12, 28, -12):
        for level in (-1, 1, 6, 9):
            fast = c.fast_calls
            blob = wz.compress(bytearray(data), level, wbits, device=engine)
            assert c.fast_calls == fast + 1, (level, wbits)
            assert zlib.decompress(blob, wbits) == data
            head = 10 if wbits > 15 else 2 if wbits > 0 else 0
            if wbits > 15:
                assert blob[:head] == zlib.compress(data, level, wbits)[:head]
            elif wbits == 15:
                assert blob[:2] == zlib.compress(data, level, wbits)[:2]
    for wbits, written in ((15, 15), (16, 31), (31, 31), (47, 15), (47, 31), (-15, -15)):
        for kind in (bytes, bytearray):
            co = zlib.compressobj(6, zlib.DEFLATED, written)
            blob = kind(co.compress(data) + co.flush())
            fast = d.fast_calls
            assert wz.decompress(blob, wbits, device=engine) == data
            assert wz.decompress(blob + b"trailing", wbits, 0, device=engine) == data
            assert d.fast_calls == fast + 2, (wbits, written)


def test_uncommon_calls_take_the_general_way(engine) -> None:
    """Other buffer types, int subclasses (bool), gzip headers with optional fields, zlib
    headers asking for a dictionary, auto-detection with wbits 32, huge bufsize: the general
    way, with the same results and errors as before."""
    import gzip
    import io

    class Level(int):
        pass

    c, d = engine.oneshots
    data = text(8, 3000)
    wz.compress(data, device=engine)
    fast, calls = c.fast_calls, c.calls
    for blob in (wz.compress(memoryview(data), device=engine),
                 wz.compress(data, Level(6), device=engine),
                 wz.compress(data, True, device=engine)):
        assert zlib.decompress(blob) == data
    assert (c.fast_calls, c.calls) == (fast, calls + 3)
    named = io.BytesIO()
    with gzip.GzipFile("name.txt", "wb", fileobj=named, mtime=1) as f:
        f.write(data)
    fast = d.fast_calls
    assert wz.decompress(named.getvalue(), 31, device=engine) == data
    assert wz.decompress(zlib.compress(data), 32, device=engine) == data
    assert wz.decompress(zlib.compress(data), 15, 1 << 31, device=engine) == data
    assert wz.decompress(memoryview(zlib.compress(data)), device=engine) == data
    co = zlib.compressobj(zdict=b"the quick brown fox")
    with pytest.raises(wz.error, match="Error 2 while decompressing"):
        wz.decompress(co.compress(data) + co.flush(), device=engine)
    assert d.fast_calls == fast


def test_fast_errors_read_as_zlibs(engine) -> None:
    """A job the fast way ran that did not end well gets the general checks: zlib's messages."""
    d = engine.oneshots[DECOMPRESS]
    data = text(9, 2000)
    good_z, good_g = zlib.compress(data), wz.compress(data, wbits=31, device=engine)
    bad_crc = bytearray(good_g)
    bad_crc[-8] ^= 1
    bad_len = bytearray(good_g)
    bad_len[-4] ^= 1
    fast = d.fast_calls
    for blob, wbits in ((good_z[:-1] + bytes([good_z[-1] ^ 1]), 15), (bytes(bad_crc), 31),
                        (bytes(bad_len), 31), (good_z[:-3], 15), (good_z[:20], 15)):
        with pytest.raises(zlib.error) as theirs:
            zlib.decompress(blob, wbits)
        with pytest.raises(wz.error) as ours:
            wz.decompress(blob, wbits, device=engine)
        assert str(ours.value).startswith(str(theirs.value)), (ours.value, theirs.value)
    assert d.fast_calls == fast + 5


def test_output_too_big_for_the_room_goes_on_from_it() -> None:
    """A fast job whose output did not fit its kept piece: the general way continues from 4x
    that room instead of starting over from its own guess."""
    with wz.open_engine("emu", announce=False) as eng:
        d = eng.oneshots[DECOMPRESS]
        assert wz.decompress(zlib.compress(b"x" * 100), device=eng) == b"x" * 100
        assert d.dst is not None and d.dst.size < 256 << 10
        zeros = bytes(600_000)  # ~600 B compressed: the fast way guesses 64 KiB of room
        calls, fast = d.calls, d.fast_calls
        assert wz.decompress(zlib.compress(zeros), device=eng) == zeros
        assert (d.calls - calls, d.fast_calls - fast) == (3, 1)  # 64 KiB, 4x, 16x: fits
        assert d.retry_out == 0


def test_repeated_highly_compressible_calls_take_one_job_each() -> None:
    """zlib and raw streams state no size: after a call that needed more room than 8x its
    input, the next calls start from the ratio it needed (one job each, not one too small
    and another), up to outputs over the kept pieces (2 MiB); text drops it back to 8x;
    gzip (its trailer states the size) neither uses nor moves it."""
    with wz.open_engine("emu", announce=False) as eng:
        d = eng.oneshots[DECOMPRESS]
        for data in (bytes(300_000), bytes(2 << 20), b"0123456789abcdef" * 70_000):
            for wbits in (15, -15):
                c = zlib.compressobj(6, zlib.DEFLATED, wbits)
                blob = c.compress(data) + c.flush()
                assert wz.decompress(blob, wbits, device=eng) == data
                assert d.ratio > 8
                calls = d.calls
                for _ in range(3):
                    assert wz.decompress(blob, wbits, device=eng) == data
                assert d.calls - calls == 3, (len(data), wbits)
        text = bytes(range(256)) * 40
        assert wz.decompress(zlib.compress(text), device=eng) == text
        ratio = d.ratio
        gz = gzip.compress(bytes(3 << 20))
        assert wz.decompress(gz, 31, device=eng) == bytes(3 << 20)
        assert d.ratio == ratio
        hexed = random.Random(8).randbytes(600_000).hex().encode()  # (deflates ~2x)
        assert wz.decompress(zlib.compress(hexed), device=eng) == hexed
        assert d.ratio == 8  # (a general call of ordinary data: back to 8x)


def test_a_learnt_ratio_asks_no_more_room_than_the_call_that_taught_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A bomb (1 MiB of zeros from 1 KiB) teaches a ratio of ~1000; an ordinary call after it
    (8 KiB of input, 16 KiB out) must not ask for 1000x its input (8 MiB of DMA memory, over
    RLIMIT_MEMLOCK where the space pins), only up to the room the bomb itself had."""
    with wz.open_engine("emu", announce=False) as eng:
        d = eng.oneshots[DECOMPRESS]
        bomb = zlib.compress(bytes(1 << 20))
        assert wz.decompress(bomb, device=eng) == bytes(1 << 20)
        assert d.ratio > 500
        asked: list[int] = []
        pieces = d._pieces

        def watched(n_in: int, n_out: int):  # type: ignore[no-untyped-def]
            asked.append(n_out)
            return pieces(n_in, n_out)

        monkeypatch.setattr(d, "_pieces", watched)
        hexed = random.Random(9).randbytes(8000).hex().encode()  # (deflates ~2x)
        blob = zlib.compress(hexed)
        assert len(blob) > 8000
        assert wz.decompress(blob, device=eng) == hexed
        assert asked and max(asked) <= len(bomb) * 1100 < 2 << 20, asked
        assert d.ratio == 8  # (and that call taught 8x again)


def test_a_closed_default_engine_is_replaced(monkeypatch) -> None:
    """The fast way reads the default engine without a lock; a closed one has no queue, so
    the general way opens the next default engine."""
    from warpdrive.zip import engines

    eng = wz.open_engine("emu", announce=False)
    monkeypatch.setattr(engines, "_default", eng)
    assert zlib.decompress(wz.compress(b"default" * 50)) == b"default" * 50
    assert wz.compress(b"default" * 50) and eng.oneshots[COMPRESS].fast_calls == 1
    eng.close()
    try:
        assert zlib.decompress(wz.compress(b"again" * 50)) == b"again" * 50
        assert engines._default is not eng and engines._default is not None
    finally:
        if engines._default is not eng and engines._default is not None:
            engines._default.close()


@pytest.mark.parametrize("wait", ["auto", "block"])
def test_threads_share_the_one_shot_state(engine, wait: str) -> None:
    """Several threads calling at once on one engine: a job holds its lane's lock from the
    input copy to the output copy, also while it sleeps on the interrupt (wait="block": every
    wait does), since the pieces, SQEs and Job are the lane's; plans replaced while another
    thread waited for the lock (a bigger input grows the pieces) are read under it. Before,
    a sleeping waiter let the lock go and another thread's call overwrote its job."""
    import threading

    if wait == "block":
        engine = wz.open_engine("emu", wait="block", announce=False)
        held = []
        block = engine.source.block

        def watched(q, remaining, seen=None):
            held.append(all(lane.lock._is_owned() for lane in engine.lanes
                            if lane.current is q))
            block(q, remaining, seen)

        engine.source.block = watched
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(60):
                data = text(k * 100 + i, 5 + (i * 997 + k * 31) % (1 << (10 + i % 8)))
                blob = wz.compress(data, device=engine)
                assert zlib.decompress(blob) == data
                assert wz.decompress(blob, device=engine) == data
        except BaseException as e:  # reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors[0]
        assert all(o.fast_calls for o in engine.oneshots)
        if wait == "block":
            assert held and all(held)
    finally:
        if wait == "block":
            engine.close()


def test_a_long_spin_yields_the_cpu_unless_told_to_spin(engine, monkeypatch) -> None:
    """Past OneShot.YIELD_S a waiting call yields the CPU between rounds of looks (a model on
    the same CPU gets it at once); wait="spin" promises no system calls and never yields."""
    from warpdrive.devices.zip import oneshot

    yields: list[int] = []
    monkeypatch.setattr(oneshot, "_sched_yield", lambda: yields.append(1))
    monkeypatch.setattr(OneShot, "YIELD_S", 0.0)
    data = text(10, 4096)
    # A 4 KiB job takes longer than one round of looks, unless the caller lost its CPU right
    # after the doorbell (a loaded machine): some call of a few hundred spins past a round.
    for _ in range(400):
        assert zlib.decompress(wz.compress(data, device=engine)) == data
        if yields:
            break
    assert yields
    yields.clear()
    with wz.open_engine("emu", wait="spin", announce=False) as eng:
        for _ in range(20):
            assert zlib.decompress(wz.compress(data, device=eng)) == data
    assert not yields


def test_a_yield_that_ran_the_device_makes_the_next_call_yield_at_once(engine,
                                                                        monkeypatch) -> None:
    """A call whose CQE came after a yield that ran another task (it lasted SHARED_S or more:
    the device shares our CPU) marks the lane's one-shot state `eager`: the next call yields
    right after its doorbell. A call whose yields come back at once (the device runs
    elsewhere) or after a time slice (SHARED_MAX_S or more: a busy CPU) clears it."""
    import time

    from warpdrive.devices.zip import oneshot

    yields: list[int] = []

    def long_yield() -> None:  # as if the model ran on our CPU meanwhile: 20 us (a spin, as
        yields.append(1)        # a sleep may outlast SHARED_MAX_S on a loaded machine)
        end = time.perf_counter() + 20e-6
        while time.perf_counter() < end:
            pass

    one = engine.oneshots[COMPRESS]
    data = text(11, 4096)
    monkeypatch.setattr(oneshot, "_sched_yield", long_yield)
    monkeypatch.setattr(OneShot, "YIELD_S", 0.0)
    for _ in range(400):  # (a call whose CQE is there at the first look yields nothing)
        assert zlib.decompress(wz.compress(data, device=engine)) == data
        if one.eager:
            break
    assert one.eager
    monkeypatch.setattr(OneShot, "YIELD_S", 1.0)  # from here only an eager call yields
    for _ in range(400):  # (a call that finds its CQE at the first look yields nothing, and
        yields.clear()      # a stand-in yield preempted past SHARED_MAX_S on a loaded
        one.eager = True    # machine rightly ends eager: retried)
        assert zlib.decompress(wz.compress(data, device=engine)) == data
        if yields and one.eager:
            break
    assert yields  # at once, though YIELD_S had not passed
    assert one.eager

    def slice_yield() -> None:  # as if an unrelated task kept the CPU for a time slice
        yields.append(1)
        time.sleep(2 * OneShot.SHARED_MAX_S)

    monkeypatch.setattr(oneshot, "_sched_yield", slice_yield)
    assert zlib.decompress(wz.compress(data, device=engine)) == data
    assert not one.eager  # yielding at once on a busy CPU would cost a slice per call
    monkeypatch.setattr(oneshot, "_sched_yield", long_yield)
    monkeypatch.setattr(OneShot, "YIELD_S", 0.0)
    for _ in range(400):
        assert zlib.decompress(wz.compress(data, device=engine)) == data
        if one.eager:
            break
    assert one.eager
    monkeypatch.setattr(oneshot, "_sched_yield", lambda: yields.append(1))  # back at once
    for _ in range(400):
        assert zlib.decompress(wz.compress(data, device=engine)) == data
        if not one.eager:
            break
    assert not one.eager


def test_a_job_outlasting_the_spin_is_polled_to_poll_s_then_slept_on_at_once(
        monkeypatch) -> None:
    """A one-shot job still running after the engine's spin time stays in the call's own loop
    (looks and yields, the doorbell stored again every QmQueue.REFRESH_S) up to OneShot.POLL_S;
    the lane's wait then counts from the call's start, so it sleeps on the interrupt at once
    instead of polling without yields on a CPU the model may share (docs/driver-bench.md,
    session 21)."""
    import time

    from warpdrive.devices.hisi_qm.queue import QmQueue
    from warpdrive.devices.zip.lane import Lane

    monkeypatch.setattr(OneShot, "POLL_S", 0.6e-3)  # (2 ms: a 4 MiB inflate may end sooner)
    big = text(12, 4 << 20)  # a few milliseconds of inflate on the model: past every poll
    blob = zlib.compress(big)
    entered: list[tuple[float | None, float]] = []
    looks: list[int] = []  # the lane's looks at the CQ from its entry to its first sleep
    counting = [False]
    real_wait, real_completed = Lane.wait_until, QmQueue.completed
    real_refresh = QmQueue.refresh
    refreshes: list[int] = []  # the call's own loop storing the doorbell again, per call

    def wait_until(self, done, timeout=None, *, locked=False, since=None):  # type: ignore[no-untyped-def]
        entered.append((since, time.perf_counter()))
        looks.append(0)
        counting[0] = True
        try:
            return real_wait(self, done, timeout, locked=locked, since=since)
        finally:
            counting[0] = False

    def refresh(self):  # type: ignore[no-untyped-def]
        if not entered and refreshes:  # (before the lane's wait: the call's own loop)
            refreshes[-1] += 1
        return real_refresh(self)

    def completed(self):  # type: ignore[no-untyped-def]
        if counting[0]:
            looks[-1] += 1
        return real_completed(self)

    # (the model's inflate on zlib: libdeflate's, ~3x faster, can end within POLL_S)
    with wz.open_engine("emu", announce=False, model_options={"codec": "libz"}) as eng:
        assert wz.decompress(blob, device=eng, bufsize=len(big)) == big  # (pieces taken)
        real_block = eng.source.block

        def block(q, remaining, seen=None):  # type: ignore[no-untyped-def]
            counting[0] = False
            return real_block(q, remaining, seen)

        monkeypatch.setattr(Lane, "wait_until", wait_until)
        monkeypatch.setattr(QmQueue, "completed", completed)
        monkeypatch.setattr(QmQueue, "refresh", refresh)
        monkeypatch.setattr(eng.source, "block", block)
        for _ in range(50):  # (a yield of the call's loop that lost the CPU for longer than
            entered.clear()  # the job, on a loaded machine, finds its CQE: no lane wait)
            looks.clear()
            refreshes[:] = [0]
            assert wz.decompress(blob, device=eng, bufsize=len(big)) == big
            if entered and refreshes[0]:
                break
    assert entered and refreshes[0]  # (REFRESH_S < POLL_S: the loop stored the doorbell)
    since, at = entered[0]
    assert since is not None and at - since >= OneShot.POLL_S
    assert looks[0] <= 2  # one look, and one after re-arming: no polling loop before sleeping


def test_yields_that_keep_losing_time_slices_turn_to_naps(engine, monkeypatch) -> None:
    """While a waiting call's yields keep losing the CPU for time slices (`YieldWatch`:
    another program's busy loop shares it), its rounds of looks end with a nap instead
    (yielding would hand that loop a slice each time), then with yields again."""
    import time

    from warpdrive.devices.zip import oneshot
    from warpdrive.syscalls import YieldWatch

    one = engine.oneshots[COMPRESS]
    one.watch = YieldWatch()
    steps: list[str] = []

    def stolen_yield() -> None:
        steps.append("yield")
        time.sleep(3 * YieldWatch.STOLEN_S)

    monkeypatch.setattr(oneshot, "_sched_yield", stolen_yield)
    monkeypatch.setattr(oneshot, "_sleep", lambda s: steps.append("nap"))
    monkeypatch.setattr(OneShot, "YIELD_S", 0.0)
    data = text(13, 4096)
    for _ in range(400):  # (a call whose CQE is there at the first look yields nothing)
        assert zlib.decompress(wz.compress(data, device=engine)) == data
        if one.watch.naps_until > time.perf_counter():
            break
    assert steps and one.watch.naps_until > time.perf_counter()
    monkeypatch.setattr(oneshot, "_sched_yield", lambda: steps.append("yield"))
    one.watch.naps_until = time.perf_counter() + 60  # (a loaded machine may outlast NAP_FOR_S)
    steps.clear()
    for _ in range(400):
        assert zlib.decompress(wz.compress(data, device=engine)) == data
        if steps:
            break
    assert steps and set(steps) == {"nap"}
    one.watch.naps_until = time.perf_counter()  # (NAP_FOR_S over)
    steps.clear()
    for _ in range(400):
        assert zlib.decompress(wz.compress(data, device=engine)) == data
        if steps:
            break
    assert steps and "nap" not in steps
