"""`Decompress.chunks` (the engine's `Inflater.pipe`): a stream read in pieces with the next job
on the engine while the caller handles the last one's output, as the CLI and GzipFile read a
gzip(1) file. Small pipe buffers here, so that a test stream takes many jobs: pieces cut at
every kind of place, output left pending in the engine (a job's room full), errors after good
output, truncation, what follows the stream. Against the bundled model; zlib is the judge."""

from __future__ import annotations

import contextlib
import io
import random
import zlib
from collections.abc import Iterator

import pytest

import warpdrive.zip as wz
from tests.test_memory import _mapped as mapped
from tests.ziputil import sample
from warpdrive.devices.zip.job import DECOMPRESS
from warpdrive.devices.zip.stream import Inflater
from warpdrive.errors import ClosedError
from warpdrive.syscalls import buffer_address
from warpdrive.zip import gzip as wgz


@pytest.fixture(scope="module")
def engine() -> Iterator[object]:
    eng = wz.open_engine("emu", announce=False)
    yield eng
    eng.close()


@pytest.fixture
def small_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Inflater, "PIPE_IN", 4 << 10)
    monkeypatch.setattr(Inflater, "PIPE_OUT", 64 << 10)


def reader(data: bytes, rnd: random.Random | None = None):
    """A readinto over `data` that hands out short reads when given a random source."""
    f = io.BytesIO(data)

    def readinto(view: memoryview) -> int:
        n = len(view) if rnd is None else rnd.randint(1, len(view))
        got = f.read(n)
        view[:len(got)] = got
        return len(got)
    return readinto


def walk(d: wz.Decompress, data: bytes, first: int = 0,
         rnd: random.Random | None = None) -> bytes:
    out = bytearray()
    with contextlib.closing(d.chunks(reader(data[first:], rnd), data[:first])) as pieces:
        for piece in pieces:
            out += piece
    return bytes(out)


def mixed(n: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    parts = []
    while sum(map(len, parts)) < n:
        kind = rnd.randrange(3)
        k = rnd.randint(1, 200_000)
        parts.append(sample(k, seed + len(parts)) if kind == 0 else rnd.randbytes(k)
                     if kind == 1 else bytes(k))
    return b"".join(parts)[:n]


@pytest.mark.parametrize("wbits", [31, -15, 15, 47])
def test_many_jobs_give_zlibs_output(engine, small_pipe, wbits: int) -> None:
    """Text, noise and long zero runs (jobs whose room fills: output left pending), read in
    pieces of every size, the header split anywhere: zlib's output, then the end with what
    followed it in unused_data."""
    rnd = random.Random(wbits)
    for case in range(6):
        data = mixed(rnd.choice((0, 1, 5000, 300_000, 1_500_000)), case)
        blob = zlib.compress(data, rnd.choice((1, 6, 9)), wbits if wbits != 47 else 31)
        tail = b"after the stream" * case
        d = wz.decompressobj(wbits, device=engine)
        got = walk(d, blob + tail, rnd.randint(0, 12), rnd if case % 2 else None)
        assert got == data, case
        assert d.eof and tail.startswith(d.unused_data), case


def test_the_output_of_a_bomb_stays_in_bounded_pieces(engine, small_pipe) -> None:
    """16 MiB of zeros in ~16 KiB: each piece at most the pipe's room (the engine holds the
    rest of a job's output until the next job asks for it)."""
    blob = zlib.compress(bytes(16 << 20), 9, 31)
    d = wz.decompressobj(31, device=engine)
    total = 0
    with contextlib.closing(d.chunks(reader(blob))) as pieces:
        for piece in pieces:
            assert len(piece) <= Inflater.PIPE_OUT
            assert not any(piece)
            total += len(piece)
    assert total == 16 << 20 and d.eof


def test_members_one_after_another_stay_in_jobs_of_the_pipes_size(engine, small_pipe,
                                                                   monkeypatch) -> None:
    """As the CLI reads a file of many gzip(1) members: each member's pipe starts with what
    the last one read after its end (`unused_data`), and the first with more than a job's
    input. Every job takes at most PIPE_IN bytes, and what is read ahead stays bounded (it
    grew twofold per member: a few members on, jobs the engine rejects)."""
    sizes: list[int] = []
    post = Inflater._post

    def counted(self, fmt, src, n, *args, **kw):
        sizes.append(n)
        return post(self, fmt, src, n, *args, **kw)

    monkeypatch.setattr(Inflater, "_post", counted)
    members = [mixed(random.Random(m).randint(1, 30_000), 20 + m) for m in range(40)]
    blob = b"".join(zlib.compress(m, 1, 31) for m in members)
    read = reader(blob[6 * Inflater.PIPE_IN:])
    buf = blob[:6 * Inflater.PIPE_IN]
    for m, data in enumerate(members):
        d = wz.decompressobj(31, device=engine)
        out = bytearray()
        with contextlib.closing(d.chunks(read, buf)) as pieces:
            for piece in pieces:
                out += piece
        assert out == data and d.eof, m
        buf = d.unused_data
        assert len(buf) <= 6 * Inflater.PIPE_IN, m
    assert not buf and max(sizes) <= Inflater.PIPE_IN


def test_corrupt_data_raises_after_the_output_before_it(engine, small_pipe) -> None:
    data = mixed(400_000, 5)
    blob = bytearray(zlib.compress(data, 6, 31))
    blob[len(blob) * 3 // 4] ^= 0xFF
    d = wz.decompressobj(31, device=engine)
    out = bytearray()
    with pytest.raises(wz.error), contextlib.closing(d.chunks(reader(bytes(blob)))) as pieces:
        for piece in pieces:
            out += piece
    assert len(out) > 100_000 and data.startswith(out)


@pytest.mark.parametrize(("at", "words"), [(-6, "incorrect data check"),
                                           (-2, "incorrect length check")])
def test_a_bad_trailer_is_a_zlib_error_after_all_the_output(engine, small_pipe, monkeypatch,
                                                           at: int, words: str) -> None:
    """The body inflated: all of its output comes out, then the trailer's error (as gzip(1)
    writes it, and Python's gzip returns it). Memory given back to the pool is overwritten
    at once here (as another thread's job may): the output is read before."""
    pool = engine.pool

    def give(c, give=pool.give) -> None:
        c.view[:] = b"\xee" * c.size
        give(c)

    monkeypatch.setattr(pool, "give", give)
    data = mixed(200_000, 6)
    blob = bytearray(zlib.compress(data, 6, 31))
    blob[at] ^= 1  # the CRC-32, then the length
    d = wz.decompressobj(31, device=engine)
    out = bytearray()
    with pytest.raises(wz.error, match=words), \
            contextlib.closing(d.chunks(reader(bytes(blob)))) as pieces:
        for piece in pieces:
            out += piece
    assert out == data


def test_truncated_input_ends_without_eof(engine, small_pipe) -> None:
    data = mixed(300_000, 7)
    blob = zlib.compress(data, 6, 31)
    for cut in (5, 40, len(blob) // 2, len(blob) - 3):
        d = wz.decompressobj(31, device=engine)
        got = walk(d, blob[:cut])
        assert not d.eof and data.startswith(got), cut


def test_an_abandoned_walk_keeps_the_buffers_of_its_job_in_flight(engine, small_pipe) -> None:
    """Closed after its first piece (a job on the engine): nothing waits, the stream's buffers
    that job uses stay out of the pool (the engine may still write them), and the engine goes
    on serving."""
    data = mixed(500_000, 8)
    blob = zlib.compress(data, 6, 31)
    for _ in range(3):
        d = wz.decompressobj(31, device=engine)
        pieces = d.chunks(reader(blob))
        first = next(pieces)
        assert data.startswith(first)
        pieces.close()
        del d
    assert wz.decompress(blob, 31, device=engine) == data


def test_a_stream_left_with_a_job_on_the_engine_ends_and_keeps_its_buffers(
        engine, small_pipe, monkeypatch) -> None:
    """An interrupt while a job is on the engine (a `decompress` call's job; a pipe's second
    job): the stream ends (it does not know that job's outcome: it never goes on with the
    engine's context out of step), and the buffers that job uses, its context included, are
    not given back while it is not done; a GzipFile read again says why."""
    data = mixed(500_000, 8)
    blob = zlib.compress(data, 6, 31)
    given: list[object] = []
    pool = engine.pool
    monkeypatch.setattr(pool, "give", lambda c, give=pool.give: (given.append(c), give(c)))
    lane = engine.lanes[DECOMPRESS]
    wait = lane.wait_until

    def interrupt_wait(at: int) -> None:
        """The lane's `at`-th wait from now raises KeyboardInterrupt (the job not reaped)."""
        calls = [0]

        def interrupted(*args, **kw) -> None:
            calls[0] += 1
            if calls[0] == at:
                raise KeyboardInterrupt
            wait(*args, **kw)
        monkeypatch.setattr(lane, "wait_until", interrupted)
        # (no look before the wait, which could reap the job first: `Lane.poll`)
        monkeypatch.setattr(lane, "poll", lambda done: None)

    for at in (1, 2):
        d = wz.decompressobj(31, device=engine)
        given.clear()
        interrupt_wait(at)
        with pytest.raises(KeyboardInterrupt):
            if at == 1:
                d.decompress(blob)
            else:
                with contextlib.closing(d.chunks(reader(blob))) as pieces:
                    for _ in pieces:
                        pass
        monkeypatch.setattr(lane, "wait_until", wait)
        assert not given, at  # (the stream's buffers are the job's and its context)
        with pytest.raises(wz.error, match="left with a job unfinished"):
            d.decompress(blob)
    assert wz.decompress(blob, 31, device=engine) == data  # (the engine goes on)
    interrupt_wait(2)
    with wgz.GzipFile(fileobj=io.BytesIO(blob), device=engine) as f:
        assert data.startswith(f.read(1000))
        with pytest.raises(KeyboardInterrupt):
            while f.read(1 << 20):
                pass
        with pytest.raises(wz.error, match="left with a job unfinished"):
            f.read(1000)


def test_closing_the_engine_ends_a_pipe_partway(small_pipe) -> None:
    """The engine closed while a pipe is partway through its stream (a piece of the engine's
    memory handed out, the next job on the engine): the close goes through (it was refused
    with DeviceBusyError: the piece kept the memory exported), the piece is revoked, the
    pipe's buffer is unmapped with the rest, and the pipe, a new pipe and the stream's other
    calls say in one line that the engine is closed."""
    data = mixed(500_000, 8)
    blob = zlib.compress(data, 6, 31)
    eng = wz.open_engine("emu", announce=False)
    try:
        d = wz.decompressobj(31, device=eng)
        pieces = d.chunks(reader(blob))
        first = next(pieces)
        assert data.startswith(first)
        whole = pieces.gi_yieldfrom.gi_frame.f_locals["whole"]  # (the pipe's one buffer)
    finally:
        eng.close()
    assert whole.buf.closed and not eng.source.dma.mappings
    with pytest.raises(ValueError, match="released"):
        first[0]  # (revoked: the memory behind it is gone)
    for call in (lambda: next(pieces), lambda: next(d.chunks(reader(blob))),
                 lambda: d.decompress(blob), lambda: d.flush()):
        with pytest.raises(ClosedError, match=r"^ZIP engine \S+ is closed[^\n]*$"):
            call()
    pieces.close()


def test_closing_the_engine_with_a_callers_slice_of_a_piece(small_pipe) -> None:
    """A caller keeps its own slice of each piece past the next one (its right, as with any
    bytes-like object it was handed) and closes the engine: the close goes through (it raised
    DeviceBusyError: the slices kept the pipe's buffer exported), every DMA mapping is gone (the
    device can never write that memory again), the slices still read their memory (never
    unmapped under them) and the memory goes with the last of them."""
    data = mixed(500_000, 8)
    blob = zlib.compress(data, 6, 31)
    eng = wz.open_engine("emu", announce=False)
    kept = []
    try:
        d = wz.decompressobj(31, device=eng)
        with contextlib.closing(d.chunks(reader(blob))) as pieces:
            for piece in pieces:
                kept.append(piece[:8])
        assert len(kept) > 1
        whole = kept[0]
    finally:
        eng.close()
    assert eng.closed and not eng.source.dma.mappings
    # what the pipe last wrote there is still there to read
    assert bytes(kept[-1]) in data
    addr = buffer_address(kept[-1])
    assert mapped(addr)
    del whole
    kept.clear()
    assert not mapped(addr)


def test_gzipfile_reads_a_gzip1_stream_in_small_and_large_reads(engine, small_pipe) -> None:
    """GzipFile on the pipe: one member of several jobs, then a second member and zero
    padding, read 1, 8 KiB and 1 MiB at a time; readline and seek across pieces."""
    data = mixed(600_000, 9)
    second = sample(70_000, 3)
    blob = zlib.compress(data, 6, 31) + zlib.compress(second, 6, 31) + bytes(1000)
    for size in (8192, 1 << 20, 777):
        with wgz.GzipFile(fileobj=io.BytesIO(blob), device=engine) as f:
            got = bytearray()
            while chunk := f.read(size):
                got += chunk
        assert got == data + second, size
    with wgz.GzipFile(fileobj=io.BytesIO(blob), device=engine) as f:
        f.seek(450_000)
        assert f.read(10) == data[450_000:450_010]
        f.seek(5)
        assert f.read(20) == data[5:25]


def test_gzipfile_errors_as_gzip_after_good_output(engine, small_pipe) -> None:
    data = mixed(300_000, 10)
    blob = bytearray(zlib.compress(data, 6, 31))
    blob[-6] ^= 1
    with wgz.GzipFile(fileobj=io.BytesIO(bytes(blob)), device=engine) as f:
        got = bytearray()
        with pytest.raises(wgz.BadGzipFile, match="CRC check failed"):
            while chunk := f.read(50_000):
                got += chunk
    assert got == data  # (all of it, then the error: as gzip.GzipFile)
    with wgz.GzipFile(fileobj=io.BytesIO(bytes(blob[:len(blob) // 2])), device=engine) as f, \
            pytest.raises(EOFError):
        f.read()
