"""Streams and the garbage collector (issue 11, "Deadlock"): a `decompressobj` that hit a data
error used to stay in a reference cycle (its exception's traceback held its frames); the
collector later ran its `__del__` -> `Inflater.close` -> `BufferPool.give` while `BufferPool.take`
held the same lock, and the process hung. Now a failed stream is freed at once, finalizers take
no locks, and the pool cannot deadlock under gc."""

from __future__ import annotations

import gc
import random
import subprocess
import sys
import threading
import weakref
import zlib

import pytest

import warpdrive.zip as wz
from tests.test_pool import PoolDma
from tests.ziputil import cli_env
from warpdrive.pool import BufferPool


def corrupt(wbits: int) -> bytes:
    """A deterministic stream that zlib itself rejects (a flipped bit in the first block)."""
    blob = zlib.compress(random.Random(wbits).randbytes(2000) + b"hello world" * 500, 6, wbits)
    start = {15: 2, 31: 10, -15: 0}[wbits]
    for pos in range(start, start + 40):
        bad = blob[:pos] + bytes([blob[pos] ^ 0x06]) + blob[pos + 1:]
        try:
            zlib.decompress(bad, wbits)
        except zlib.error:
            return bad
    raise AssertionError("no corruption found")


BAD = corrupt(15)

REPRODUCER = f"""
import faulthandler, zlib
faulthandler.dump_traceback_later(100, exit=True)  # the watchdog: a hang fails, with stacks
import warpdrive.zip as wz
from warpdrive.memory import DmaBuffer
from warpdrive.pool import BufferPool
bad = {BAD!r}
keep = []
for i in range(1000):
    d = wz.decompressobj()
    try:
        d.decompress(bad)
    except zlib.error:
        pass
    else:
        raise SystemExit("corrupt input was accepted")
    keep.append(wz.decompressobj())
print("done", i + 1)
"""


def test_failed_decompressobj_under_gc_never_deadlocks() -> None:
    """The issue's reproducer, in a child process bounded by a watchdog."""
    r = subprocess.run([sys.executable, "-c", REPRODUCER], capture_output=True, env=cli_env(),
                       timeout=150)
    assert r.returncode == 0 and b"done 1000" in r.stdout, r.stderr.decode()[-3000:]


@pytest.fixture(scope="module")
def engine():
    eng = wz.open_engine("emu", announce=False)
    yield eng
    eng.close()


@pytest.mark.parametrize("wbits", [15, 31, -15])
def test_failed_stream_is_freed_without_the_collector(engine, wbits: int) -> None:
    bad = corrupt(wbits)
    gc.collect()
    gc.disable()
    try:
        d = wz.decompressobj(wbits, device=engine)
        ref = weakref.ref(d)
        with pytest.raises(zlib.error) as first:
            d.decompress(bad)
        message = str(first.value)
        del first
        with pytest.raises(zlib.error, match=message.split(":")[0]):  # stays failed, as zlib
            d.decompress(b"more")
        assert d.flush() == b""
        del d
        assert ref() is None, gc.get_referrers(ref())
        c = wz.compressobj(wbits=wbits, device=engine)
        ref = weakref.ref(c)
        c.compress(b"abc")
        c.flush()
        with pytest.raises(zlib.error):
            c.compress(b"after the end")
        del c
        assert ref() is None
    finally:
        gc.enable()


def test_pool_gives_back_from_a_collection_inside_take_without_deadlock() -> None:
    """A finalizer that gives back a piece while `take` holds the pool's lock (a collection
    triggered by take's own allocations): it must neither block nor corrupt the pool."""
    pool = BufferPool(PoolDma(), max_idle=1 << 20)  # type: ignore[arg-type]
    pieces = [pool.take(16 << 10) for _ in range(3)]
    whole = pool.get(2 << 20)  # over max_idle once returned: unmapped later, not in gc
    given: list[int] = []

    def finalizer(phase: str, info: dict) -> None:
        if phase == "start" and pieces:
            pool.give(pieces.pop())
            given.append(1)
            if whole.iova is not None and len(given) == 1:
                pool.put(whole)

    done = threading.Event()

    def worker() -> None:
        old = gc.get_threshold()
        gc.callbacks.append(finalizer)
        gc.set_threshold(1, 1, 1)  # every allocation of a tracked object collects
        try:
            pool.take(32 << 10)  # a new size class: cuts a slab into many Chunk objects
            pool.take(64 << 10)
        finally:
            gc.set_threshold(*old)
            gc.callbacks.remove(finalizer)
        done.set()

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    assert done.wait(60), "BufferPool deadlocked giving back during take (gc finalizer)"
    assert given  # the collector did run inside take
    got = {id(pool.take(16 << 10).buf) for _ in range(3)}  # the given pieces are reused
    assert len(got) == 1
    pool.take(16 << 10)
    assert whole.iova is None  # over the idle limit: unmapped by a later take, not in gc
    pool.close()
