"""warpdrive.zip behaves as the `zlib` module (issue 11, "zlib differences"), each finding
checked against the real zlib side by side, on the bundled model."""

from __future__ import annotations

import copy
import pickle
import random
import sys
import zlib

import pytest

import warpdrive.zip as wz

DATA = b"".join(b"%06d: zlib fidelity on the engine, line by line\n" % i for i in range(20000))


class Index:
    """An integer-like object (zlib takes anything with __index__)."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __index__(self) -> int:
        return self.v


@pytest.fixture(scope="module")
def engine():
    eng = wz.open_engine("emu", announce=False)
    yield eng
    eng.close()


def outcome(fn, *args, **kw):
    """('ok', result) or (exception type, first words of the message)."""
    try:
        return "ok", fn(*args, **kw)
    except Exception as e:  # comparing what each side raises
        base = next(t for t in (zlib.error, OverflowError, ValueError, TypeError, BufferError)
                    if isinstance(e, t))
        return base, str(e).split(".")[0]


def test_index_integers_everywhere(engine) -> None:
    blob = zlib.compress(DATA)
    assert wz.compress(DATA, Index(6), Index(15), device=engine) == \
        wz.compress(DATA, 6, 15, device=engine)
    assert wz.decompress(blob, Index(15), Index(100), device=engine) == DATA
    c = wz.compressobj(Index(6), Index(8), Index(31), Index(8), Index(0), device=engine)
    assert zlib.decompress(c.compress(DATA) + c.flush(Index(wz.Z_FINISH)), 31) == DATA
    d = wz.decompressobj(Index(15), device=engine)
    assert d.decompress(blob, Index(100)) == DATA[:100]
    assert d.flush(Index(10)) == DATA[100:]  # flush(length) returns all that is left, as zlib


@pytest.mark.parametrize("call", [
    ("compress", (DATA, 1.5)), ("compress", (DATA, 6, 15.0)), ("compress", ("text",)),
    ("compress", (DATA, 2**40)), ("compress", (DATA, 10)), ("compress", (DATA, -2)),
    ("compress", (DATA, 6, 16)), ("compress", (DATA, 6, 7)), ("compress", (DATA, 6, -8)),
    ("compress", (DATA, 6, 24)), ("decompress", (b"", 15, -1)), ("decompress", (b"", 7)),
    ("decompress", (b"", 48)), ("decompress", (b"abc", 15, 2**70)),
    ("decompress", (memoryview(b"abcd")[::2],)), ("compressobj", (10,)),
    ("compressobj", (1, 9)), ("compressobj", (1, 8, 7)), ("compressobj", (1, 8, 15, 10)),
    ("compressobj", (1, 8, 15, 8, 5)), ("compressobj", (1, 8, 16)),
    ("compressobj", (1, 8, 15, 8, 0, "x")), ("decompressobj", (7,)), ("decompressobj", (-16,)),
    ("decompressobj", (15, "x")),
])
def test_argument_errors_as_zlib(engine, call) -> None:
    name, args = call
    kw = {"device": engine}
    assert outcome(getattr(wz, name), *args, **kw)[0] == outcome(getattr(zlib, name), *args)[0]


def test_accepted_and_refused_wbits_sets_match_zlib(engine) -> None:
    for wbits in range(-20, 70):
        for name, args in (("compressobj", (6, 8, wbits)), ("decompressobj", (wbits,))):
            ours = outcome(getattr(wz, name), *args, device=engine)[0]
            theirs = outcome(getattr(zlib, name), *args)[0]
            assert (ours == "ok") == (theirs == "ok"), (name, wbits, ours, theirs)
            if theirs != "ok":
                assert ours is ValueError
        ours = outcome(wz.compress, b"abc", 6, wbits, device=engine)
        theirs = outcome(zlib.compress, b"abc", 6, wbits)
        assert ours[0] == theirs[0]
        if theirs[0] == "ok":
            assert zlib.decompress(ours[1], wbits if wbits != 8 else 9) == b"abc"
            assert wz.decompress(theirs[1], wbits if wbits != 8 else 9, device=engine) == b"abc"


def test_stream_methods_argument_errors(engine) -> None:
    for mod in (wz, zlib):
        kw = {"device": engine} if mod is wz else {}
        d = mod.decompressobj(**kw)
        with pytest.raises(ValueError):
            d.decompress(b"", -1)
        with pytest.raises(OverflowError, match="int too large"):
            d.decompress(b"", sys.maxsize + 1)
        with pytest.raises(ValueError):
            d.flush(0)
        with pytest.raises(OverflowError, match="int too large"):
            d.flush(sys.maxsize + 1)
        with pytest.raises(TypeError):
            d.decompress(data=b"")
        c = mod.compressobj(**kw)
        with pytest.raises(TypeError):
            c.compress("text")
        with pytest.raises(zlib.error):
            c.flush(7)


@pytest.mark.parametrize("mode", [wz.Z_PARTIAL_FLUSH, wz.Z_SYNC_FLUSH, wz.Z_FULL_FLUSH,
                                  wz.Z_BLOCK, wz.Z_TREES])
def test_every_flush_mode_gives_decodable_output(engine, mode: int) -> None:
    c = wz.compressobj(device=engine)
    d = zlib.decompressobj()
    first = c.compress(DATA[:300_000]) + c.flush(mode)
    assert d.decompress(first) == DATA[:300_000]  # everything so far, decodable now
    assert d.decompress(c.compress(DATA[300_000:]) + c.flush()) == DATA[300_000:]
    assert d.eof


def test_copy_and_pickle_fail_clearly(engine) -> None:
    for obj in (wz.compressobj(device=engine), wz.decompressobj(device=engine)):
        for how in (lambda o: o.copy(), copy.copy, copy.deepcopy):
            with pytest.raises(wz.ZipUnsupportedError, match="cannot be copied"):
                how(obj)
        with pytest.raises(TypeError, match="cannot pickle"):
            pickle.dumps(obj)
    with pytest.raises(TypeError, match="cannot create"):
        wz.Compress()
    with pytest.raises(TypeError, match="cannot create"):
        wz.Decompress()


def test_level_strategy_memlevel_accepted_and_documented(engine) -> None:
    """The engine has one level: every valid combination is accepted, the output is valid
    and the level shapes the header as zlib's would; memLevel/strategy are checked only."""
    for level in (-1, 1, 5, 6, 9):
        for strategy in range(5):
            c = wz.compressobj(level, wz.DEFLATED, 15, 1 + level % 9, strategy, device=engine)
            blob = c.compress(DATA[:5000]) + c.flush()
            assert blob[:2] == zlib.compress(b"", level)[:2]  # FLEVEL as zlib writes it
            assert zlib.decompress(blob) == DATA[:5000]
    assert "one compression level" in " ".join(wz.__doc__.split())
    assert "memLevel" in wz.zlib_api.__doc__ and "strategy" in wz.zlib_api.__doc__
    # level 0 (no compression asked for) stores, as zlib does
    assert DATA[:5000] in wz.compress(DATA[:5000], 0, device=engine)


def test_small_window_header_reads_back_with_its_wbits(engine) -> None:
    """compressobj(wbits=9) used to announce a 4 KiB window that decompress(x, 9) refused."""
    c = wz.compressobj(wbits=9, device=engine)
    blob = c.compress(DATA[:100_000]) + c.flush()
    assert blob[0] >> 4 == 1  # CINFO: 512-byte window
    assert zlib.decompress(blob, 9) == DATA[:100_000]
    assert wz.decompress(blob, 9, device=engine) == DATA[:100_000]


def test_distances_beyond_the_declared_window_are_rejected(engine) -> None:
    """Data that reaches 32 KiB back, read with a smaller declared window: zlib refuses it
    ('invalid distance too far back'), and so do we, at the same call."""
    rng = random.Random(5)
    block = rng.randbytes(20_000)
    far = zlib.compress(block + b"x" * 1000 + block, 9, -15)  # a 21 KB back-reference
    assert outcome(zlib.decompress, far, -12)[0] is zlib.error
    for wbits in (-12, -14):  # (zlib's one-shot accepts -14 here: the reference stays
        # inside its output buffer; its stream refuses it. Ours does exactly the same.)
        assert outcome(wz.decompress, far, wbits, device=engine)[0] == \
            outcome(zlib.decompress, far, wbits)[0]
        d = wz.decompressobj(wbits, device=engine)
        with pytest.raises(zlib.error, match="too far back"):
            d.decompress(far)
    assert wz.decompress(far, -15, device=engine) == block + b"x" * 1000 + block


def _first_error_position(d, blob: bytes) -> tuple[int, str] | None:
    """Feed `blob` one byte at a time: (index of the byte whose call raised, message)."""
    for i in range(len(blob)):
        try:
            d.decompress(blob[i:i + 1])
        except zlib.error as e:
            return i, str(e).split(":")[-1].strip().split(" (")[0].split(". ")[0]
    return None


@pytest.mark.parametrize("case", ["gzip magic", "gzip method", "gzip flags", "zlib check",
                                  "zlib method", "zlib window", "zlib fdict", "gzip hcrc",
                                  "adler", "gzip crc", "gzip length"])
def test_errors_at_the_same_stream_position_as_zlib(engine, case: str) -> None:
    body = DATA[:3000]
    z = bytearray(zlib.compress(body))
    g = bytearray(zlib.compress(body, 6, 31))
    wbits = 15
    if case == "gzip magic":
        blob, wbits = bytearray(b"\x1f\x8c") + g[2:], 31
    elif case == "gzip method":
        blob, wbits = g[:2] + b"\x07" + g[3:], 31
    elif case == "gzip flags":
        blob, wbits = g[:3] + b"\x20" + g[4:], 31
    elif case == "gzip hcrc":
        head = bytes(g[:3]) + b"\x02" + bytes(g[4:10])
        blob, wbits = bytearray(head + b"\x00\x00" + bytes(g[10:])), 31
    elif case == "zlib check":
        blob = bytearray(b"\x78\x9d") + z[2:]
    elif case == "zlib method":
        blob = bytearray(b"\x79\x98") + z[2:]
    elif case == "zlib window":
        blob, wbits = z, 12
    elif case == "zlib fdict":
        blob = bytearray(b"\x78\xbb\x00\x00\x00\x01") + z[2:]
    elif case == "adler":
        blob = z[:-2] + bytes([z[-2] ^ 1]) + z[-1:]
    elif case == "gzip crc":
        blob, wbits = g[:-6] + bytes([g[-6] ^ 1]) + g[-5:], 31
    else:  # gzip length
        blob, wbits = g[:-3] + bytes([g[-3] ^ 1]) + g[-2:], 31
    theirs = _first_error_position(zlib.decompressobj(wbits), bytes(blob))
    ours = _first_error_position(wz.decompressobj(wbits, device=engine), bytes(blob))
    assert theirs is not None
    assert ours == theirs
    # and the one-shot functions say the same
    assert outcome(wz.decompress, bytes(blob), wbits, device=engine)[1].split(":")[-1] == \
        outcome(zlib.decompress, bytes(blob), wbits)[1].split(":")[-1].split(". ")[0]


def test_a_failed_stream_stays_failed(engine) -> None:
    bad = bytearray(zlib.compress(DATA[:5000]))
    bad[-2] ^= 1
    for d in (zlib.decompressobj(), wz.decompressobj(device=engine)):
        with pytest.raises(zlib.error, match="incorrect data check"):
            d.decompress(bytes(bad))
        with pytest.raises(zlib.error, match="incorrect data check"):
            d.decompress(b"more")
        assert d.flush() == b"" and not d.eof
