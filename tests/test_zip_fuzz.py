"""Seeded differential fuzzing against `zlib` (issue 11): thousands of random cases, each
through warpdrive.zip (the bundled model) and through zlib, compared.

- compression (one-shot and streams, random levels, wbits, splits, flush modes): zlib reads
  our output back to the input;
- decompression of zlib's output (random wbits, splits, max_length, trailing data): the same
  bytes, eof and unused_data as zlib's decompressobj;
- corrupted and truncated streams: the error (or success) at the same call as zlib, with
  zlib's message wherever software (headers, trailers) decides.

WARPDRIVE_FUZZ_SEED and WARPDRIVE_FUZZ_CASES change the seed and the number of cases per
batch (default 100 x 20 batches); a failure names the seed and case to replay.
"""

from __future__ import annotations

import itertools
import os
import random
import zlib

import pytest

import warpdrive.zip as wz

SEED = int(os.environ.get("WARPDRIVE_FUZZ_SEED", "20261201"))
CASES = int(os.environ.get("WARPDRIVE_FUZZ_CASES", "100"))
BATCHES = 20

COMPRESS_WBITS = [-15, -12, -9, 9, 12, 15, 25, 28, 31]
FLUSHES = [zlib.Z_NO_FLUSH, zlib.Z_PARTIAL_FLUSH, zlib.Z_SYNC_FLUSH, zlib.Z_FULL_FLUSH,
           zlib.Z_BLOCK]


@pytest.fixture(scope="module")
def engine():
    eng = wz.open_engine("emu", announce=False)
    yield eng
    eng.close()


def make_data(rng: random.Random) -> bytes:
    size = int(2 ** rng.uniform(0, 17)) if rng.random() > 0.05 else 0
    kind = rng.choice(["text", "random", "zeros", "runs", "mixed"])
    if kind == "random":
        return rng.randbytes(size)
    if kind == "zeros":
        return bytes(size)
    if kind == "runs":
        out = bytearray()
        while len(out) < size:
            out += bytes([rng.randrange(256)]) * rng.randint(1, 300)
        return bytes(out[:size])
    words = [rng.randbytes(rng.randint(1, 8)) for _ in range(40)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) if kind == "mixed" and rng.random() < 0.3 else \
            b"%d the quick brown fox %d\n" % (rng.randrange(999), rng.randrange(99))
    return bytes(out[:size])


def splits(rng: random.Random, n: int) -> list[tuple[int, int]]:
    cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(0, 6)))) if n > 1 else []
    edges = [0, *cuts, n]
    return list(itertools.pairwise(edges))


def dec_wbits(wbits: int, rng: random.Random) -> int:
    """A decompression wbits that reads a stream made with compression `wbits`."""
    if wbits < 0:
        return rng.choice([wbits, -15])
    if wbits <= 15:
        return rng.choice([wbits, 15, 0, 32 + 15])
    return rng.choice([wbits, 31, 16, 32 + 15])


def stream_decompress(d, blob: bytes, rng: random.Random) -> tuple[object, bytes, int]:
    """Feed `blob` in random pieces, with a random max_length; ('ok'|error words, output,
    index of the piece that raised or -1)."""
    max_length = rng.choice([0, 0, 7, 100, 5000])
    out = bytearray()
    for k, (a, b) in enumerate(splits(rng, len(blob)) or [(0, 0)]):
        try:
            buf = blob[a:b]
            while True:
                got = d.decompress(buf, max_length)
                out += got
                stuck = not got and d.unconsumed_tail == buf  # no progress: wants more input
                buf = d.unconsumed_tail
                # (after the end, zlib keeps a copy of the last input in unconsumed_tail as
                # well as in unused_data; feeding it again would add it to unused_data twice)
                if not buf or stuck or d.eof:
                    break
        except zlib.error as e:
            return _words(e), bytes(out), k
    try:
        if max_length:
            while not d.eof:
                more = d.decompress(b"", max_length)
                if not more:
                    break
                out += more
        out += d.flush()
    except zlib.error as e:
        return _words(e), bytes(out), -2
    return "ok", bytes(out), -1


def _words(e: Exception) -> str:
    return str(e).split(" (engine status")[0].split(". ")[0]


SOFTWARE_ERRORS = ("header", "window size", "compression method", "flags set",
                   "incorrect data check", "incorrect length check", "Error 2 ")


def same_error(ours: object, theirs: object) -> bool:
    """Both fine, or both failed; zlib's exact words where software decides."""
    if ours == "ok" or theirs == "ok":
        return ours == theirs
    if any(w in str(theirs) for w in SOFTWARE_ERRORS):
        return ours == theirs
    return True  # a corrupt body: the engine says "invalid compressed data"


def corrupt(blob: bytes, rng: random.Random) -> bytes:
    how = rng.choice(["flip", "flip", "truncate", "garbage", "zero"])
    b = bytearray(blob)
    if not b:
        return b"\x00"
    pos = rng.randrange(len(b)) if rng.random() < 0.5 else \
        rng.choice([rng.randrange(min(len(b), 12)), len(b) - 1 - rng.randrange(min(len(b), 8))])
    if how == "flip":
        b[pos] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        del b[pos:]
    elif how == "garbage":
        b[pos:pos] = rng.randbytes(rng.randint(1, 8))
    else:
        b[pos] = 0
    return bytes(b)


def one_case(engine, rng: random.Random) -> None:
    data = make_data(rng)
    wbits = rng.choice(COMPRESS_WBITS)
    level = rng.choice([-1, 1, 6, 9])
    what = rng.choice(["compress", "stream", "decompress", "corrupt"])
    dw = dec_wbits(wbits, rng)
    if what == "compress":
        ours = wz.compress(data, level, wbits, device=engine)
        assert zlib.decompress(ours, dw) == data
    elif what == "stream":
        c = wz.compressobj(level, wz.DEFLATED, wbits, device=engine,
                           chunk_size=rng.choice([1 << 12, 1 << 16, 1 << 20]))
        parts = []
        for a, b in splits(rng, len(data)):
            parts.append(c.compress(data[a:b]))
            if rng.random() < 0.3:
                parts.append(c.flush(rng.choice(FLUSHES)))
        parts.append(c.flush())
        assert zlib.decompress(b"".join(parts), dw) == data
    else:
        blob = zlib.compress(data, level, wbits)
        if rng.random() < 0.2:
            blob += rng.choice([b"", b"trailing", bytes(5), zlib.compress(b"2nd", 6, wbits)])
        if what == "corrupt":
            blob = corrupt(blob, rng)
        seed = rng.random()
        z = zlib.decompressobj(dw)
        theirs = stream_decompress(z, blob, random.Random(seed))
        d = wz.decompressobj(dw, device=engine)
        ours = stream_decompress(d, blob, random.Random(seed))
        assert same_error(ours[0], theirs[0]), (ours[0], theirs[0])
        assert ours[2] == theirs[2]  # the same call raised (or none did)
        if ours[0] == "ok":  # the same output, eof, and what follows the stream
            assert ours[1] == theirs[1]
            # (zlib's stream keeps a copy of the leftover in unconsumed_tail when max_length
            # ended a call at the end, and flush() adds it to unused_data once more: the
            # leftover itself is what a single call leaves; streams that run on the CPU are
            # zlib's own, quirk included)
            once = zlib.decompressobj(dw)
            once.decompress(blob)
            assert d.unused_data in (once.unused_data, z.unused_data) and d.eof == z.eof
        one_ours = _outcome(wz.decompress, blob, dw, device=engine)
        one_theirs = _outcome(zlib.decompress, blob, dw)
        assert same_error(one_ours[0], one_theirs[0]), (one_ours, one_theirs)
        if one_theirs[0] == "ok":
            assert one_ours[1] == one_theirs[1]


def _outcome(fn, *args, **kw) -> tuple[object, bytes]:
    try:
        return "ok", fn(*args, **kw)
    except zlib.error as e:
        return _words(e), b""


@pytest.mark.parametrize("batch", range(BATCHES))
def test_differential_against_zlib(engine, batch: int) -> None:
    for case in range(CASES):
        rng = random.Random(f"{SEED}-{batch}-{case}")
        try:
            one_case(engine, rng)
        except AssertionError as e:
            raise AssertionError(f"seed {SEED}, batch {batch}, case {case}: {e}") from None
