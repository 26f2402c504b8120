"""Stream mode as zlib's compressobj/decompressobj behave: flush modes, max_length with
unconsumed_tail, unused_data, header parsing split across calls, format detection. Against the
bundled model (the embedded default)."""

from __future__ import annotations

import struct
import zlib

import pytest

import warpdrive.zip as wz
from warpdrive.errors import ClosedError

DATA = b"".join(b"%05d the stream keeps its window between jobs\n" % i for i in range(40000))


@pytest.fixture(scope="module")
def engine():
    eng = wz.open_engine("emu", announce=False)
    yield eng
    eng.close()


@pytest.mark.parametrize("wbits", [-15, 15, 31])
def test_sync_flush_output_is_decodable_so_far(engine, wbits: int) -> None:
    c = wz.compressobj(wbits=wbits, device=engine)
    d = zlib.decompressobj(wbits)
    got = b""
    for i, part in enumerate((DATA[:300_000], DATA[300_000:900_000], DATA[900_000:])):
        out = c.compress(part) + c.flush(wz.Z_SYNC_FLUSH if i % 2 == 0 else wz.Z_FULL_FLUSH)
        got += d.decompress(out)
        assert got == DATA[:len(got)] and len(got) == sum(
            len(p) for p in (DATA[:300_000], DATA[300_000:900_000], DATA[900_000:])[:i + 1])
    tail = c.flush()
    got += d.decompress(tail)
    assert got == DATA and d.eof
    with pytest.raises(wz.error):
        c.compress(b"more")
    assert c.flush(wz.Z_NO_FLUSH) == b""


def test_empty_streams(engine) -> None:
    for wbits in (-15, 15, 31):
        c = wz.compressobj(wbits=wbits, device=engine)
        blob = c.compress(b"") + c.flush()
        assert zlib.decompress(blob, wbits) == b""
        assert wz.decompress(blob, wbits=wbits, device=engine) == b""
        assert blob == zlib.compress(b"", 6, wbits) or wbits == 31  # zlib's own empty stream


def test_max_length_and_unconsumed_tail(engine) -> None:
    blob = zlib.compress(DATA, 6, 31)
    d = wz.decompressobj(31, device=engine)
    out = bytearray()
    buf = blob
    while not d.eof:
        chunk = d.decompress(buf, 70_000)
        assert len(chunk) <= 70_000
        out += chunk
        buf = d.unconsumed_tail
        if not buf and not chunk:
            out += d.flush()
            break
    assert bytes(out) == DATA and d.eof


def test_unused_data_and_detection(engine) -> None:
    for blob, wbits in ((zlib.compress(DATA[:5000]), 0), (zlib.compress(DATA[:5000]), 47),
                        (zlib.compress(DATA[:5000], 9, 31), 47)):
        d = wz.decompressobj(wbits, device=engine)
        assert d.decompress(blob + b"tail") == DATA[:5000]
        assert d.eof and d.unused_data == b"tail"
        d.decompress(b"+more")
        assert d.unused_data == b"tail+more"


def test_gzip_header_fields_split_across_calls(engine) -> None:
    body = zlib.compress(DATA[:20000], 9, -15)
    flags = 0x02 | 0x04 | 0x08 | 0x10  # FHCRC FEXTRA FNAME FCOMMENT
    head = b"\x1f\x8b\x08" + bytes([flags]) + struct.pack("<I", 123456) + b"\x00\x03"
    head += struct.pack("<H", 6) + b"AB\x02\x00xy" + b"name.txt\x00" + b"a comment\x00"
    head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
    blob = head + body + struct.pack("<II", zlib.crc32(DATA[:20000]), 20000)
    assert zlib.decompress(blob, 31) == DATA[:20000]
    assert wz.decompress(blob, wbits=31, device=engine) == DATA[:20000]
    d = wz.decompressobj(31, device=engine)
    out = b"".join(d.decompress(blob[i:i + 1]) for i in range(60))  # header byte by byte
    out += d.decompress(blob[60:]) + d.flush()
    assert out == DATA[:20000] and d.eof
    bad = bytearray(blob)
    bad[len(head) - 1] ^= 1  # header CRC
    with pytest.raises(wz.ZipDataError, match="header crc"):
        wz.decompress(bytes(bad), wbits=31, device=engine)


def test_window_bits_announced(engine) -> None:
    """The header announces the window the data keeps to, so zlib with that wbits reads it.
    Windows under the engine's 4 KiB run on the CPU (zlib) to keep that promise."""
    for wbits in (8, 9, 11, 12, 13, 15):
        blob = wz.compress(DATA[:50000], wbits=wbits, device=engine)
        assert (blob[0] >> 4) + 8 == max(wbits, 9) == (zlib.compress(b"", 6, wbits)[0] >> 4) + 8
        assert zlib.decompress(blob, max(wbits, 9)) == DATA[:50000]
        assert wz.decompress(blob, max(wbits, 9), device=engine) == DATA[:50000]
        c = wz.compressobj(wbits=wbits, device=engine)
        assert zlib.decompress(c.compress(DATA[:50000]) + c.flush(), max(wbits, 9)) == \
            DATA[:50000]
    with pytest.raises(wz.ZipDataError, match="window"):
        wz.decompress(zlib.compress(DATA[:1000], 6, 15), wbits=12, device=engine)


def test_streams_after_their_engine_closed_say_so() -> None:
    """A decompressobj with input left (max_length) and a compressobj with input pending, their
    engine closed under them: every later call is the engine's one-line ClosedError (it was
    a bare 'DMA buffer is closed', or a DMA space's error)."""
    data = bytes(range(256)) * 4096 * 4
    blob = zlib.compress(data, 6, 31)
    eng = wz.open_engine("emu", announce=False)
    d = wz.decompressobj(31, device=eng)
    assert data.startswith(d.decompress(blob[:200_000], 100_000))
    c = wz.compressobj(6, wz.DEFLATED, 31, device=eng)
    c.compress(data[:100])
    eng.close()
    for call in (lambda: d.decompress(d.unconsumed_tail + blob[200_000:]), d.flush,
                 lambda: c.compress(data), c.flush):
        with pytest.raises(ClosedError, match=r"^ZIP engine \S+ is closed[^\n]*$"):
            call()


@pytest.mark.parametrize("call,max_length", [(16 << 10, 0), (128 << 10, 0), (1 << 20, 0),
                                             (128 << 10, 64 << 10), (1 << 20, 64 << 10)])
def test_decompressobj_loop_one_job_per_call(engine, monkeypatch, call: int,
                                             max_length: int) -> None:
    """A decompressobj loop as programs write it (reads of `call` bytes, zlib's max_length)
    runs one engine job per call: the job's output room is what the input can give (without
    max_length) or what the call may return (with it), not a fixed small piece. Outputs,
    `unconsumed_tail` call for call, `eof` and `unused_data` are zlib's."""
    from warpdrive.devices.zip import stream

    posts = [0]
    post = stream._StreamBase._post

    def counted(self, *args, **kw):
        posts[0] += 1
        return post(self, *args, **kw)

    monkeypatch.setattr(stream._StreamBase, "_post", counted)
    blob = zlib.compress(DATA * 3, 6, 31) + b"after"
    ours, theirs = wz.decompressobj(31, device=engine), zlib.decompressobj(31)
    calls = 0
    for i in range(0, len(blob), call):
        buf = zbuf = blob[i:i + call]
        while True:
            calls += 1
            out = ours.decompress(buf, max_length)
            assert out == theirs.decompress(zbuf, max_length)
            # (at the end, zlib also keeps what follows the stream in unconsumed_tail when
            # max_length ended the call: a quirk not kept, see test_zip_fuzz)
            assert ours.unconsumed_tail == theirs.unconsumed_tail or theirs.eof
            buf, zbuf = ours.unconsumed_tail, theirs.unconsumed_tail
            if not buf or ours.eof:
                break
            # The tail fed back runs from where it is in DMA memory (no copy in); a copy of
            # it, every other call, is copied in as any input is.
            assert ours._b._kept is not None and ours._b._kept[0] is buf
            if calls % 2:
                buf = bytes(bytearray(buf))
    assert ours.flush() == b"" and ours.eof and theirs.eof
    assert ours.unused_data == b"after"
    assert posts[0] <= calls + 1, (posts[0], calls)  # (+1: the first call learns the ratio)
