"""The model compresses a whole input with a window sized to it (`_deflate.sized_wbits`): its
output must be byte-identical to zlib's with the window the job asked for (the argument is in
docs/research/deflate-window.md; this is the check). Seeded inputs of many sizes and kinds, every
level, each container, judged against CPython's `zlib` with the full window."""

from __future__ import annotations

import random
import zlib

import pytest

from warpdrive.emu.models import _zip_layout as L
from warpdrive.emu.models._deflate import DeflateUnit, sized_wbits


def _inputs(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    # every size up to past the smallest window's reach, then the edges of each window
    # (2**w - 262 is the farthest match of a w-bit window), then sizes at random
    sizes = list(range(0, 300))
    sizes += [(1 << w) - 262 + d for w in range(9, 16) for d in (-2, -1, 0, 1, 2)]
    sizes += [rng.randrange(300, 20000) for _ in range(30)]
    out = []
    for i, n in enumerate(sizes):
        kind = i % 4
        if kind == 0:
            out.append(rng.randbytes(n))  # incompressible
        elif kind == 1:
            out.append(bytes(rng.choices(b"ab", k=n)))  # long matches
        elif kind == 2:
            unit = rng.randbytes(rng.randrange(1, 400))  # repeats at every distance
            out.append((unit * (n // len(unit) + 1))[:n])
        else:
            out.append(bytes(rng.choices(b"the quick brown fox, ", k=n)))
    return out


def test_sized_window_reaches_over_the_input() -> None:
    for n in range(0, 1 << 16, 7):
        w = sized_wbits(n, 15)
        assert 9 <= w <= 15
        assert w == 15 or (1 << w) - 262 >= n  # every match distance of the input is allowed
        assert w == 9 or (1 << (w - 1)) - 262 < n  # and it is the smallest such window
    assert sized_wbits(5, 12) == 9 and sized_wbits(5000, 12) == 12  # never above the asked


@pytest.mark.parametrize("level", range(10))
def test_raw_deflate_is_identical_with_the_sized_window(level: int) -> None:
    for data in _inputs(level):
        w = sized_wbits(len(data), 15)
        assert zlib.compress(data, level, -w) == zlib.compress(data, level, -15), \
            (level, len(data), w)


@pytest.mark.parametrize("alg,wbits", [(L.ALG_DEFLATE, 15), (L.ALG_ZLIB, 15), (L.ALG_GZIP, 15),
                                       (L.ALG_DEFLATE, 12), (L.ALG_ZLIB, 13)])
def test_stateless_jobs_match_zlib_with_the_asked_window(alg: int, wbits: int) -> None:
    """What the engine writes for a stateless job (the body, and for zlib/gzip the trailer: the
    header is the client's) is zlib's, with the job's own window, byte for byte, on the libz
    codec (libdeflate's own bytes, and its windows: tests/test_zip_libdeflate.py)."""
    for level in (1, 6, 9):
        unit = DeflateUnit(level, "libz")
        for data in _inputs(100 + level)[::3]:
            dst = bytearray(2 * len(data) + 1024)
            res = unit.compress_stateless(alg, wbits, data, dst)
            if alg == L.ALG_ZLIB:
                want = zlib.compress(data, level, wbits)[2:]
            elif alg == L.ALG_GZIP:
                want = zlib.compress(data, level, 16 + wbits)[10:]
            else:
                want = zlib.compress(data, level, -wbits)
            assert bytes(dst[:res.produced]) == want, (alg, wbits, level, len(data))
            assert res.consumed == len(data) and res.last


def test_the_window_a_zlib_header_declares_is_the_clients() -> None:
    """Software writes the zlib header (the engine only the body and trailer): a header the
    client writes for a 32 KiB window, on a body made with a smaller one, is a stream zlib
    decompresses with a 32 KiB window, as the header says."""
    data = b"hello, hello, hello" * 3
    dst = bytearray(256)
    res = DeflateUnit(6).compress_stateless(L.ALG_ZLIB, 15, data, dst)
    stream = b"\x78\x9c" + bytes(dst[:res.produced])  # CMF: deflate, 32 KiB window
    assert zlib.decompress(stream, 15) == data
    assert zlib.decompressobj(15).decompress(stream) == data
