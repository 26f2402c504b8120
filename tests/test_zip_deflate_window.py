"""The model compresses a whole input with a window sized to it (`_deflate.sized_wbits`): its
output must be byte-identical to zlib's with the window the job asked for (the argument is in
docs/research/deflate-window.md; this is the check). Seeded inputs of many sizes and kinds, every
level, each container, judged against CPython's `zlib` with the full window."""

from __future__ import annotations

import random
import zlib

import pytest

from warpdrive.emu.models import _zip_layout as L
from warpdrive.emu.models._deflate import TINY_MAX, DeflateUnit, sized_wbits


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


def _tiny_inputs(rng: random.Random, most: int, count: int) -> list[bytes]:
    """Inputs of up to `most` bytes made to fill hash chains: few symbols, short repeats,
    repeats with a few bytes changed (near matches), random bytes."""
    out = []
    for i in range(count):
        n = rng.randrange(0, most + 1)
        kind = i % 4
        if kind == 0:
            alphabet = rng.choice([b"a", b"ab", b"abc", b"\x00\x01", b"the quick brown fox, "])
            out.append(bytes(rng.choices(alphabet, k=n)))
        elif kind == 1:
            unit = rng.randbytes(rng.randrange(1, 8))
            out.append((unit * (n // len(unit) + 1))[:n])
        elif kind == 2:
            unit = bytes(rng.choices(b"abcd", k=rng.randrange(1, 12)))
            d = bytearray((unit * (n // len(unit) + 1))[:n])
            for _ in range(rng.randrange(4) if n else 0):
                d[rng.randrange(n)] = rng.choice(b"abxyz")
            out.append(bytes(d))
        else:
            out.append(rng.randbytes(n))
    return out


@pytest.mark.parametrize("level", sorted(TINY_MAX))
def test_tiny_inputs_on_the_smallest_state_match_zlib(level: int) -> None:
    """Inputs of up to TINY_MAX[level] bytes are compressed with memLevel 1
    (`DeflateUnit._compress_tiny`): the bytes must still be zlib.compress's with the asked
    window and memLevel 8, every container (docs/research/deflate-window.md). Seeded. Past
    the bound memLevel 1 can differ (below: 49 bytes at level 4, bound 7), which is what the
    bound is for; the unit keeps memLevel 8 there."""
    unit = DeflateUnit(level, "libz")
    rng = random.Random(1000 + level)
    for i, data in enumerate(_tiny_inputs(rng, TINY_MAX[level], 2000)):
        alg = (L.ALG_DEFLATE, L.ALG_ZLIB, L.ALG_GZIP)[i % 3]
        dst = bytearray(256)
        res = unit.compress_stateless(alg, 15, data, dst)
        want = zlib.compress(data, level, (-15, 15, 31)[i % 3])[(0, 2, 10)[i % 3]:]
        assert bytes(dst[:res.produced]) == want, (level, alg, data)
        assert res.consumed == len(data) and res.last and res.isize == len(data)
    if level == 4:
        past = b"b" * 23 + b"xbbbbbbybz" + b"b" * 16
        small = zlib.compressobj(4, zlib.DEFLATED, -15, 1)
        assert small.compress(past) + small.flush() != zlib.compress(past, 4, -15)
        dst = bytearray(256)
        res = unit.compress_stateless(L.ALG_DEFLATE, 15, past, dst)
        assert bytes(dst[:res.produced]) == zlib.compress(past, 4, -15)
    # no room for the trailer: refused, as on the other paths
    res = unit.compress_stateless(L.ALG_GZIP, 15, b"abc", bytearray(12))
    assert res.status == L.STATUS_DST_TOO_SMALL


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
