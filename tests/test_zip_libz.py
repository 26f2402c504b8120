"""The model's engine on the system's libz (`emu/models/_libz.py`: kept per-thread z_streams
pointed straight at the job's memory) is the engine on Python's `zlib` module, byte for byte and
status for status: seeded cases over sizes, levels, windows and containers, whole, cut short,
without room and corrupted, each run on both paths (the module's path is the one the model used
before, and the one it keeps when libz cannot be loaded) and checked against zlib itself."""

from __future__ import annotations

import mmap
import random
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from warpdrive.emu.models import _deflate, _libz
from warpdrive.emu.models import _zip_layout as L
from warpdrive.emu.models._deflate import DeflateUnit, JobResult

pytestmark = pytest.mark.skipif(_libz.LIBZ is None, reason=f"libz not usable: {_libz.WHY}")


@pytest.fixture(autouse=True)
def _codec_libz(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's libz path is what these judge: whole-buffer jobs off libdeflate (the
    libdeflate codec against this path: tests/test_zip_libdeflate.py)."""
    monkeypatch.setenv(_deflate.CODEC_ENV, "libz")

CONTAINERS = {L.ALG_DEFLATE: (-1, 0), L.ALG_ZLIB: (1, 2), L.ALG_GZIP: (16, 10)}


def sample(rnd: random.Random, n: int) -> bytes:
    """Text-like data with repeats (long matches, far distances) and some noise."""
    words = [bytes(rnd.choice(b"abcdefghij klm\n") for _ in range(rnd.randint(1, 12)))
             for _ in range(64)]
    out = bytearray()
    while len(out) < n:
        if rnd.random() < 0.05:
            out += rnd.randbytes(rnd.randint(1, 40))
        else:
            out += rnd.choice(words)
    return bytes(out[:n])


@contextmanager
def libz_path() -> Iterator[None]:
    """The engine on libz for jobs of every size (it takes small ones to the module)."""
    saved = _deflate.LIBZ_COMPRESS_MIN, _deflate.LIBZ_DECOMPRESS_MIN
    _deflate.LIBZ_COMPRESS_MIN = _deflate.LIBZ_DECOMPRESS_MIN = 0
    try:
        yield
    finally:
        _deflate.LIBZ_COMPRESS_MIN, _deflate.LIBZ_DECOMPRESS_MIN = saved


@contextmanager
def module_path() -> Iterator[None]:
    """The engine as it runs when libz cannot be loaded (Python's zlib module)."""
    saved = _libz.LIBZ
    _libz.LIBZ = None
    try:
        yield
    finally:
        _libz.LIBZ = saved


class Memory:
    """Job memory as the model sees it: views of one shared mapping, the source read-only."""

    def __init__(self) -> None:
        self.mm = mmap.mmap(-1, 8 << 20)
        self.mv = memoryview(self.mm)

    def job(self, src: bytes, room: int) -> tuple[memoryview, memoryview]:
        self.mv[:len(src)] = src
        dst = self.mv[4 << 20:(4 << 20) + room]
        dst[:] = b"\xa5" * room
        return self.mv[:len(src)].toreadonly(), dst


def both(mem: Memory, unit: DeflateUnit, compress: bool, alg: int, wbits: int, src: bytes,
         room: int) -> tuple[JobResult, bytes]:
    """Run one job on the libz path and on the module path: the same result, the same output
    bytes (what lies past the output is the engine's own business)."""
    results = []
    for path in ("libz", "module"):
        s, d = mem.job(src, room)
        with module_path() if path == "module" else libz_path():
            res = (unit.compress_stateless(alg, wbits, s, d) if compress
                   else unit.decompress_stateless(alg, s, d))
        results.append((res, bytes(d[:res.produced])))
        s.release()
        d.release()
    assert results[0] == results[1], (compress, alg, wbits, len(src), room)
    return results[0]


@pytest.fixture(scope="module")
def mem() -> Iterator[Memory]:
    m = Memory()
    yield m
    m.mv.release()
    m.mm.close()


@pytest.mark.parametrize("level", [1, 2, 4, 6, 9])
def test_compress_is_zlib_compress(mem: Memory, level: int) -> None:
    rnd = random.Random(level)
    unit = DeflateUnit(level)
    for n in (0, 1, 5, 100, 4096, 8000, 32506, 32507, 70000, 300000):
        data = sample(rnd, n)
        for alg, (sign, head) in CONTAINERS.items():
            for wbits in (12, 13, 14, 15):
                if n > 70000 and wbits != 15:
                    continue
                full = zlib.compress(data, level, wbits * sign if sign < 0 else
                                     wbits + (16 if sign == 16 else 0))
                want = full[head:]
                res, out = both(mem, unit, True, alg, wbits, data, len(want) + 64)
                assert (res.status in (L.STATUS_OK, L.STATUS_NEGACOMPRESS), out) == \
                    (True, want), (level, n, alg, wbits)
                assert (res.consumed, res.isize) == (n, n)
                # exactly the room it needs, then a byte less (and nothing)
                assert both(mem, unit, True, alg, wbits, data, len(want))[1] == want
                for room in (len(want) - 1, len(want) // 2, 0):
                    short = both(mem, unit, True, alg, wbits, data, room)[0]
                    assert short.status == L.STATUS_DST_TOO_SMALL


def test_decompress_is_zlib_decompress(mem: Memory) -> None:
    """Whole streams with room to spare, the exact room, a byte too little; streams cut at
    every kind of place (the output room exactly what the cut gives, one byte more, one
    less); corrupted bodies and trailers."""
    rnd = random.Random(11)
    unit = DeflateUnit()
    cases = 0
    for n in (0, 1, 5, 300, 4096, 40000, 200000):
        data = sample(rnd, n)
        for alg, (sign, head) in CONTAINERS.items():
            stream = zlib.compress(data, rnd.choice((1, 6, 9)),
                                   -15 if sign < 0 else 15 + (16 if sign == 16 else 0))[head:]
            res, out = both(mem, unit, False, alg, 15, stream, n + 10)
            assert (res.status, res.last, out, res.consumed) == \
                (L.STATUS_OK, True, data, len(stream))
            assert both(mem, unit, False, alg, 15, stream, n)[1] == data
            if n:
                assert both(mem, unit, False, alg, 15, stream, n - 1)[0].status == \
                    L.STATUS_DST_TOO_SMALL
            cuts = sorted({1, len(stream) // 3, len(stream) - 9, len(stream) - 5,
                           len(stream) - 1} | {rnd.randrange(len(stream)) for _ in range(4)})
            for cut in (c for c in cuts if 0 < c < len(stream)):
                part = stream[:cut]
                d = zlib.decompressobj(-15)
                try:
                    got = len(d.decompress(part))
                except zlib.error:
                    got = 0
                for room in {max(got - 1, 0), got, got + 1}:
                    both(mem, unit, False, alg, 15, part, room)
                    cases += 1
            for _ in range(6):  # corrupted: a byte anywhere, the trailer included
                bad = bytearray(stream)
                bad[rnd.randrange(len(bad))] ^= 1 << rnd.randrange(8)
                for room in (max(n - 1, 0), n, n + 10):
                    both(mem, unit, False, alg, 15, bytes(bad), room)
                    cases += 1
            # trailing bytes after a whole stream
            both(mem, unit, False, alg, 15, stream + b"junk", n + 10)
    assert cases > 300


def test_random_bytes_and_empty_input(mem: Memory) -> None:
    """Input that is no deflate stream at all: statuses as on the module path."""
    rnd = random.Random(3)
    unit = DeflateUnit()
    for _ in range(1000):
        junk = rnd.randbytes(rnd.randint(0, 64))
        for alg in CONTAINERS:
            both(mem, unit, False, alg, 15, junk, rnd.choice((0, 1, 100, 4096)))


def test_each_thread_has_its_own_streams() -> None:
    """Worker threads (ThreadedJobs) compress and decompress at once on their own kept
    streams: every result right."""
    rnd = random.Random(5)
    inputs = [sample(rnd, rnd.randint(1, 100000)) for _ in range(8)]
    errors: list[str] = []

    def work(k: int) -> None:
        unit = DeflateUnit(6)  # (inputs of 1 to 100,000 bytes: most on libz)
        for i in range(40):
            data = inputs[(k + i) % len(inputs)]
            dst = bytearray(len(data) + 1024)
            res = unit.compress_stateless(L.ALG_GZIP, 15, data, dst)
            body = bytes(dst[:res.produced])
            if body != zlib.compress(data, 6, 31)[10:]:
                errors.append(f"thread {k} job {i}: compress")
            out = bytearray(len(data))
            res = unit.decompress_stateless(L.ALG_GZIP, body, out)
            if (res.status, bytes(out)) != (L.STATUS_OK, data):
                errors.append(f"thread {k} job {i}: decompress")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_the_binding_checked_the_library() -> None:
    """What the binding checked at load: the library is zlib 1.x, the z_stream it was built
    for is the size the library expects (zlib refuses a stream of another size)."""
    assert _libz.LIBZ is not None
    assert _libz.LIBZ.version().decode() == zlib.ZLIB_RUNTIME_VERSION


def test_a_library_that_cannot_be_loaded_says_why() -> None:
    """No libz: the binding says why (the engine then keeps to Python's zlib module, the
    path every case above also runs)."""
    lib, why = _libz._load("libz-that-is-not-there.so.1")
    assert lib is None and "cannot load libz-that-is-not-there.so.1" in why


def test_the_instructions_benchmark_runs_its_jobs() -> None:
    """benchmarks/zip_engine_instructions.py's child runs this checkout's engine (a smoke run
    without valgrind: the figures are the benchmark's business)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        import zip_engine_instructions as bench
    finally:
        sys.path.pop(0)
    for op in ("c", "d"):
        assert bench._run(bench.ROOT, op, 65536, 2, False)["stime_us"] >= 0


def test_streams_are_compressobj_streams() -> None:
    """Stream (stateful) compression on the streams' own libz deflaters: every job's output
    and result as on the module path (compressobj: compress + sync flush, the end on the
    finishing job), with jobs refused for want of room on the way (the stream goes on as if
    they never ran), streams cut short and replaced at the same context (their deflaters
    reused by later streams), in gzip, zlib and raw containers."""
    rnd = random.Random(7)
    outs: dict[str, list[tuple[JobResult, bytes]]] = {}
    plans = []
    for s in range(24):
        alg = rnd.choice(list(CONTAINERS))
        pieces = [sample(rnd, rnd.choice((0, 1, 100, 5000, 40000, 70000)))
                  for _ in range(rnd.randint(1, 5))]
        rooms = [rnd.choice((None, None, None, 0, 10)) for _ in pieces]
        plans.append((s % 5, alg, rnd.choice((12, 15)), pieces, rooms, rnd.random() < 0.2))
    for path in ("libz", "module"):
        unit = DeflateUnit(6)
        got = outs[path] = []
        with module_path() if path == "module" else libz_path():
            for key, alg, wbits, pieces, rooms, cut in plans:
                checksum, isize = (1 if alg == L.ALG_ZLIB else 0), 0
                for i, (data, room) in enumerate(zip(pieces, rooms)):
                    last = i == len(pieces) - 1
                    if cut and last:
                        break  # (the next stream at this key replaces it)
                    for avail in ([room] if room is not None else []) + [len(data) * 2 + 64]:
                        dst = bytearray(avail)
                        res = unit.compress_stateful(key, i == 0, alg, wbits, data, dst, last,
                                                     checksum, isize)
                        got.append((res, bytes(dst[:res.produced])))
                        if res.status != L.STATUS_DST_TOO_SMALL:
                            checksum, isize = res.checksum, res.isize
                            break
    assert outs["libz"] == outs["module"]
    assert len(outs["libz"]) > 50


def test_a_stream_of_several_jobs_decompresses() -> None:
    """A gzip stream compressed in three stateful jobs on libz decompresses to its input."""
    rnd = random.Random(9)
    data = [sample(rnd, n) for n in (3000, 50000, 7)]
    unit = DeflateUnit(6)
    body = b""
    checksum = isize = 0
    with libz_path():
        for i, piece in enumerate(data):
            dst = bytearray(len(piece) + 200)
            res = unit.compress_stateful(1, i == 0, L.ALG_GZIP, 15, piece, dst, i == 2,
                                         checksum, isize)
            assert res.status in (L.STATUS_OK, L.STATUS_NEGACOMPRESS)
            body += dst[:res.produced]
            checksum, isize = res.checksum, res.isize
    assert zlib.decompress(b"\x1f\x8b\x08\0\0\0\0\0\0\xff" + body, 31) == b"".join(data)


def test_a_stream_job_that_exactly_fills_its_room() -> None:
    """A stream job without sure room whose output (the sync flush's, or the end and the
    trailer) is exactly the room, then a byte less: as on the module path (it fits, then
    not). deflate says a flush is complete only on a call that has room left."""
    rnd = random.Random(13)
    for case in range(60):
        alg = list(CONTAINERS)[case % 3]
        data = sample(rnd, rnd.choice((0, 1, 100, 5000, 40000)))
        last = case % 2 == 1
        start = 1 if alg == L.ALG_ZLIB else 0
        want = bytearray(len(data) * 2 + 100)
        with module_path():
            m = DeflateUnit(6).compress_stateful(1, True, alg, 15, data, want, last, start,
                                                 0).produced
        for room in (m, m - 1):
            got = []
            for path in (module_path, libz_path):
                dst = bytearray(max(room, 0))
                with path():
                    res = DeflateUnit(6).compress_stateful(1, True, alg, 15, data, dst, last,
                                                           start, 0)
                got.append((res, bytes(dst[:res.produced])))
            assert got[0] == got[1], (case, room)
            fits = got[0][0].status in (L.STATUS_OK, L.STATUS_NEGACOMPRESS)
            assert fits == (room == m), (case, room, got[0][0].status)


def test_decompression_streams_are_decompressobj_streams() -> None:
    """Stream (stateful) decompression on the streams' own libz inflaters: every job's result
    and output as on the module path (decompressobj with the room as max_length): inputs cut
    at random places (a byte, inside the trailer, after it), rooms from a byte to plenty (output
    left pending inside the stream), corrupt bodies and trailers, and streams replaced at the
    same context."""
    rnd = random.Random(11)
    plans = []
    for s in range(40):
        alg = rnd.choice(list(CONTAINERS))
        data = sample(rnd, rnd.choice((0, 1, 300, 5000, 70000)))
        wbits = {L.ALG_GZIP: 31, L.ALG_ZLIB: 15}.get(alg, -15)
        blob = bytearray(zlib.compress(data, 6, wbits))
        body = blob[10:] if alg == L.ALG_GZIP else blob[2:] if alg == L.ALG_ZLIB else blob
        if s % 7 == 3 and len(body) > 12:
            body[len(body) // 2] ^= 0x55  # a corrupt body (or a trailer that does not match)
        if s % 7 == 5 and alg != L.ALG_DEFLATE:
            body[-2] ^= 1  # a wrong trailer
        cuts = sorted(rnd.sample(range(len(body) + 1), min(4, len(body) + 1)))
        pieces = [bytes(body[a:b]) for a, b in zip([0, *cuts], [*cuts, len(body) + 3])]
        rooms = [rnd.choice((1, 7, 1000, 1 << 20)) for _ in range(len(pieces) + 30)]
        plans.append((s % 3, alg, pieces, rooms))
    outs: dict[str, list[tuple[JobResult, bytes]]] = {}
    for path in ("libz", "module"):
        unit = DeflateUnit(6)
        got = outs[path] = []
        with module_path() if path == "module" else libz_path():
            for key, alg, pieces, rooms in plans:
                new, rest, k = True, b"", 0
                for piece in pieces:
                    rest += piece
                    while k < len(rooms):
                        dst = bytearray(rooms[k])
                        k += 1
                        res = unit.decompress_stateful(key, new, alg, rest, dst)
                        new = False
                        got.append((res, bytes(dst[:res.produced])))
                        rest = rest[res.consumed:]
                        if res.status != L.STATUS_OK or not (res.produced or res.consumed):
                            break
    assert outs["libz"] == outs["module"]
    assert len(outs["libz"]) > 100
