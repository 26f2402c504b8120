"""Round trips through the ZIP engine (the bundled model over vfio-user, the embedded default):
random (compressible), text and incompressible data of 0, 1, 4095, 4096 bytes, 1 MiB and 20 MiB
in raw deflate, zlib and gzip. Both directions interoperate with Python's zlib/gzip modules: our
output decompresses there, and theirs decompresses here."""

from __future__ import annotations

import functools
import gzip
import random
import zlib

import pytest

import warpdrive.zip as wz

SIZES = [0, 1, 4095, 4096, 1 << 20, 20 << 20]
FORMATS = {"deflate": -15, "zlib": 15, "gzip": 31}
KINDS = ["random", "text", "incompressible"]

_WORDS = (b"the of and to in is that for it as with was on be by this are or his from at which "
          b"but have an they not one had were all their there can been has more if will would "
          b"accelerator queue doorbell engine stream window deflate").split()


@functools.cache
def data(kind: str, size: int) -> bytes:
    rng = random.Random(f"{kind}-{size}")
    if kind == "incompressible":
        return rng.randbytes(size)
    if kind == "random":  # random bytes over a 16-symbol alphabet: about 2:1
        return rng.randbytes(size).translate(bytes(b"abcdefghijklmnop"[i % 16]
                                                   for i in range(256)))
    block = bytearray()
    while len(block) < min(size, 1 << 20):
        line = b" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 14)))
        block += line.capitalize() + b".\n"
    reps = -(-size // max(len(block), 1))
    return (bytes(block) * reps)[:size]


@pytest.fixture(scope="module")
def engine():
    eng = wz.open_engine("emu")
    yield eng
    eng.close()


def reference(d: bytes, wbits: int) -> bytes:
    if wbits == 31:
        return gzip.compress(d, compresslevel=1)
    return zlib.compress(d, 1, wbits)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s}B")
@pytest.mark.parametrize("kind", KINDS)
def test_roundtrip(engine, kind: str, size: int, fmt: str) -> None:
    d = data(kind, size)
    wbits = FORMATS[fmt]
    ours = wz.compress(d, wbits=wbits, device=engine)
    assert zlib.decompress(ours, wbits) == d  # theirs reads ours
    if fmt == "gzip":
        assert gzip.decompress(ours) == d
    assert wz.decompress(ours, wbits=wbits, device=engine) == d
    assert wz.decompress(reference(d, wbits), wbits=wbits, device=engine) == d  # ours reads theirs


@pytest.mark.parametrize("size", [0, 4096, 1 << 20], ids=lambda s: f"{s}B")
def test_default_device_and_autodetect(size: int) -> None:
    """No device given: the process-wide default engine (the model, announced once)."""
    d = data("text", size)
    assert wz.decompress(wz.compress(d, 9, 31), wbits=47) == d
    assert wz.decompress(wz.compress(d), wbits=47) == d
    assert wz.decompress(zlib.compress(d), wbits=0) == d


def test_stream_objects_match_one_shot(engine) -> None:
    d = data("text", 3 << 20) + data("incompressible", 1 << 20)
    for wbits in FORMATS.values():
        c = wz.compressobj(wbits=wbits, device=engine, chunk_size=700_000)
        parts = [c.compress(d[i:i + 123_456]) for i in range(0, len(d), 123_456)]
        blob = b"".join(parts) + c.flush()
        assert zlib.decompress(blob, wbits) == d
        dec = wz.decompressobj(wbits, device=engine)
        out = b"".join(dec.decompress(blob[i:i + 65_536]) for i in range(0, len(blob), 65_536))
        out += dec.flush()
        assert out == d and dec.eof and dec.unused_data == b""
