"""One-shot compression of large inputs as independent pieces on the engine at once (issue 11:
"compress >= 0.95x zlib's speed at >= 64 KiB"; pigz's layout, one SQE per piece): the output is
one valid stream that zlib and gzip(1) read, in the input's order, with the container's checksum
combined from the pieces'; a failed piece fails the call cleanly and leaves the engine usable.
Against the bundled model (the embedded default), whose workers run the pieces in parallel."""

from __future__ import annotations

import gzip
import random
import shutil
import subprocess
import zlib

import pytest

import warpdrive.zip as wz
from tests.ziputil import sample
from warpdrive.devices.zip import sqe as sqe_mod
from warpdrive.devices.zip.checksum import adler32_combine, crc32_combine
from warpdrive.devices.zip.stream import PIECE_MIN, SPLIT_MIN, piece_size


@pytest.fixture(scope="module")
def engine():
    eng = wz.open_engine("emu", announce=False)
    yield eng
    eng.close()


def _blocks(n: int, seed: int) -> bytes:
    """Text and random runs whose order matters (every 4 KiB block differs)."""
    rng = random.Random(seed)
    out = bytearray()
    i = 0
    while len(out) < n:
        out += rng.randbytes(4096) if i % 3 == 2 else b"block %08d %s\n" % (i, b"x" * (i % 97))
        i += 1
    return bytes(out[:n])


def test_checksums_combine_as_zlib_computes_the_whole() -> None:
    rng = random.Random(5)
    for _ in range(200):
        a, b = rng.randbytes(rng.randrange(0, 5000)), rng.randbytes(rng.randrange(0, 5000))
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
        assert adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)
    big = bytes(9 << 20)  # lengths past 2^23 (and sums that wrap the Adler modulus)
    assert crc32_combine(zlib.crc32(b"ab"), zlib.crc32(big), len(big)) == zlib.crc32(b"ab" + big)
    assert adler32_combine(zlib.adler32(b"\xff" * 70000), zlib.adler32(big), len(big)) == \
        zlib.adler32(b"\xff" * 70000 + big)


def test_piece_sizes() -> None:
    assert SPLIT_MIN == 2 * PIECE_MIN
    assert piece_size(SPLIT_MIN) == PIECE_MIN
    assert piece_size(1 << 20) == 256 << 10
    assert piece_size(100 << 20) == 1 << 20


@pytest.mark.parametrize("wbits", [15, 31, -15, 13])
@pytest.mark.parametrize("size", [SPLIT_MIN - 1, SPLIT_MIN, SPLIT_MIN + 1, (1 << 20) + 3,
                                  (9 << 20) + 5])
def test_pieces_make_one_valid_stream_in_order(engine, wbits: int, size: int) -> None:
    data = _blocks(size, seed=size)
    out = wz.compress(data, 6, wbits, device=engine)
    assert zlib.decompress(out, wbits) == data
    d = zlib.decompressobj(wbits)  # one stream: nothing after its end
    assert d.decompress(out) == data and d.eof and d.unused_data == b""
    assert wz.decompress(out, wbits, device=engine) == data
    if wbits == 31:
        assert gzip.decompress(out) == data


@pytest.mark.skipif(shutil.which("gzip") is None, reason="gzip(1) is not installed")
def test_gzip_tool_reads_pieces(engine) -> None:
    data = _blocks(3 << 20, seed=3) + sample(1 << 20)
    out = wz.compress(data, 6, 31, device=engine)
    r = subprocess.run(["gzip", "-dc"], input=out, capture_output=True, check=True)
    assert r.stdout == data
    subprocess.run(["gzip", "-t"], input=out, check=True)


def test_stream_of_one_job_gives_the_one_shot_bytes(engine) -> None:
    data = sample(300_000)
    c = wz.compressobj(6, wz.DEFLATED, 31, device=engine)
    assert c.compress(data) + c.flush() == wz.compress(data, 6, 31, device=engine)


def test_a_failed_piece_fails_the_call_cleanly(engine, monkeypatch) -> None:
    """The third piece's SQE asks for no valid window: the engine refuses it, the call raises
    once every piece in flight completed, every buffer goes back, the engine works on."""
    real = sqe_mod.SqeTemplate.fill
    calls = {"n": 0}

    def fill(self, buf, off, **kw):  # type: ignore[no-untyped-def]
        real(self, buf, off, **kw)
        if kw.get("stateful") and kw.get("new_stream"):
            calls["n"] += 1
            if calls["n"] == 3:
                dw9 = int.from_bytes(buf[off + 36:off + 40], "little")
                buf[off + 36:off + 40] = (dw9 | 0xF << 12).to_bytes(4, "little")

    data = _blocks(1 << 20, seed=9)
    before = engine.pool._idle, sum(len(v) for v in engine.pool._chunks.values())
    monkeypatch.setattr(sqe_mod.SqeTemplate, "fill", fill)
    with pytest.raises(wz.error):
        wz.compress(data, 6, 31, device=engine)
    monkeypatch.undo()
    assert calls["n"] == 4  # all four pieces went out
    engine.pool._reclaim()
    assert (engine.pool._idle, sum(len(v) for v in engine.pool._chunks.values())) >= before
    assert zlib.decompress(wz.compress(data, 6, 31, device=engine), 31) == data


@pytest.mark.parametrize("wbits", [31, 15, -15])
def test_streaming_writes_go_out_as_pieces_in_flight(engine, wbits: int, monkeypatch) -> None:
    """compressobj().compress with chunks of PIECE_MIN or more: the chunks go out as pieces,
    several on the engine at once (output may come later, as zlib's may), flushes return all
    so far; small writes, sync flushes between, a final flush with and without pending bytes:
    one valid stream in order, checksum combined."""
    seen = []
    real = sqe_mod.SqeTemplate.fill

    def fill(self, buf, off, **kw):  # type: ignore[no-untyped-def]
        real(self, buf, off, **kw)
        seen.append((kw.get("stateful"), kw.get("new_stream"), kw.get("in_len")))

    monkeypatch.setattr(sqe_mod.SqeTemplate, "fill", fill)
    data = _blocks(5 << 20, seed=wbits & 0xFF)
    for chunk, writes, sync_at in ((1 << 20, 65_536, 3 << 20), (PIECE_MIN, 1 << 20, None),
                                   (1 << 20, 7 << 20, None)):
        seen.clear()
        c = wz.compressobj(6, wz.DEFLATED, wbits, device=engine, chunk_size=chunk)
        out = []
        for i in range(0, len(data), writes):
            out.append(c.compress(data[i:i + writes]))
            if sync_at is not None and i + writes == sync_at:
                synced = c.flush(zlib.Z_SYNC_FLUSH)
                # everything so far decodes
                d = zlib.decompressobj(wbits)
                assert d.decompress(b"".join(out) + synced) == data[:sync_at]
                out.append(synced)
        out.append(c.flush())
        assert zlib.decompress(b"".join(out), wbits) == data
        pieces = [n for st, new, n in seen if st and new]
        assert len(pieces) >= len(data) // chunk  # every full chunk went as a piece
        assert max(pieces) <= chunk
    # the final flush with nothing pending, after pieces
    c = wz.compressobj(6, wz.DEFLATED, wbits, device=engine)
    z = c.compress(data[:2 << 20]) + c.flush()
    assert zlib.decompress(z, wbits) == data[:2 << 20]


def test_streaming_pieces_in_flight_at_once(engine, monkeypatch) -> None:
    """Four 1 MiB writes queue four pieces before any output is waited for (the line is not
    full): compress() returns what is done without waiting; the flush returns the rest."""
    from warpdrive.devices.zip import stream

    waits = []
    real = stream._PieceLine.take

    def take(self, *, wait, locked):  # type: ignore[no-untyped-def]
        waits.append((wait, len(self.inflight)))
        return real(self, wait=wait, locked=locked)

    monkeypatch.setattr(stream._PieceLine, "take", take)
    data = _blocks(4 << 20, seed=3)
    c = wz.compressobj(6, wz.DEFLATED, 31, device=engine)
    out = [c.compress(data[i:i + (1 << 20)]) for i in range(0, len(data), 1 << 20)]
    assert [w for w, _ in waits] == [False] * 4  # no waiting while the line has room
    out.append(c.flush())
    assert zlib.decompress(b"".join(out), 31) == data


def test_dropped_stream_with_pieces_in_flight(engine) -> None:
    """A stream dropped with pieces on the engine: nothing waits (a finalizer must not), the
    engine works on."""
    data = _blocks(3 << 20, seed=4)
    c = wz.compressobj(6, wz.DEFLATED, 31, device=engine)
    c.compress(data)
    del c
    assert zlib.decompress(wz.compress(data, 6, 31, device=engine), 31) == data


def test_member_size_subfield_round_trip() -> None:
    """The CLI's gzip members state their size in FEXTRA (subfield WZ); readers that do not know
    it skip it (RFC 1952 2.3.1.1), and other subfields around it are walked past."""
    from warpdrive.devices.zip.header import scan_header
    from warpdrive.devices.zip.sqe import Format
    from warpdrive.zip.gzip import _gzip_header, member_rest, with_size

    body = zlib.compress(b"sized member\n", 6, -15)
    trailer = zlib.crc32(b"sized member\n").to_bytes(4, "little") + (13).to_bytes(4, "little")
    for name in (b"", b"file.txt"):
        head = with_size(_gzip_header(name, 1_700_000_000, 6), len(body) + 8)
        member = head + body + trailer
        assert gzip.decompress(member) == b"sized member\n"
        parsed = scan_header(member, Format("gzip", 15))
        assert parsed is not None and parsed.gzip is not None
        assert parsed.length == len(head) and parsed.gzip.name == (name or None)
        assert member_rest(parsed.gzip.extra) == len(body) + 8
    assert member_rest(None) is None and member_rest(b"") is None
    assert member_rest(b"AB\x02\x00xyWZ\x04\x00\x10\x00\x00\x00") == 16  # after another one
    assert member_rest(b"WZ\x02\x00\x10\x00") is None  # wrong length: not ours
    assert member_rest(b"WZ\x04\x00\x10\x00") is None  # cut short
