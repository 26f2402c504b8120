"""The model's whole-buffer jobs on libdeflate (`emu/models/_libdeflate.py`, the default codec)
against the same jobs on libz (zlib's own path, `codec=libz`).

Decompression: job for job the same status, consumed and produced counts, last-block flag,
checksum, length and output bytes, over a seeded corpus of raw, zlib and gzip bodies: whole,
cut short, without room, corrupted, with trailing bytes, junk, every declared window, and
streams built with constructs libdeflate accepts and zlib refuses. Compression: libdeflate's
own bytes, so judged by what they must be: zlib decodes them to the input within the window the
job declares, the same job gives the same bytes, and a job the libz path fits never fails for
room. Without the library the model runs on libz, never an error."""

from __future__ import annotations

import random
import zlib

import pytest

from tests import test_zip_libz
from tests.test_zip_libz import Memory
from warpdrive.emu.models import _deflate, _libdeflate, _libz
from warpdrive.emu.models import _zip_layout as L
from warpdrive.emu.models._deflate import WINDOW_WBITS, DeflateUnit, JobResult
from warpdrive.errors import InvalidArgumentError

mem = test_zip_libz.mem  # (the fixture: job memory, one mapping for the module)

pytestmark = pytest.mark.skipif(_libdeflate.lib() is None or _libz.LIBZ is None,
                                reason=f"libdeflate or libz not usable: {_libdeflate.why()}")

ALGS = (L.ALG_DEFLATE, L.ALG_ZLIB, L.ALG_GZIP)
HEAD = {L.ALG_DEFLATE: 0, L.ALG_ZLIB: 2, L.ALG_GZIP: 10}


def wbits_of(alg: int, w: int) -> int:
    """zlib's wbits for a container and a window."""
    return -w if alg == L.ALG_DEFLATE else w + 16 if alg == L.ALG_GZIP else w


def sample(rnd: random.Random, n: int) -> bytes:
    """Text-like data with repeats at near and far distances, and some noise."""
    words = [rnd.randbytes(rnd.randint(1, 3)) + bytes(rnd.choice(b"abcdefgh ij\n")
                                                      for _ in range(rnd.randint(1, 14)))
             for _ in range(80)]
    out = bytearray()
    while len(out) < n:
        r = rnd.random()
        if r < 0.04:
            out += rnd.randbytes(rnd.randint(1, 60))
        elif r < 0.06 and len(out) > 1000:
            k = rnd.randrange(len(out) - 500)
            out += out[k:k + rnd.randint(3, 400)]
        else:
            out += rnd.choice(words)
    return bytes(out[:n])


def run(mem: Memory, unit: DeflateUnit, compress: bool, alg: int, wbits: int, src: bytes,
        room: int) -> tuple[JobResult, bytes]:
    """One job over views of job memory as the model sees it (the destination marked first:
    bytes past `produced` are the engine's own)."""
    s, d = mem.job(src, room)
    try:
        res = (unit.compress_stateless(alg, wbits, s, d) if compress
               else unit.decompress_stateless(alg, s, d, wbits))
        return res, bytes(d[:res.produced])
    finally:
        s.release()
        d.release()


LD, LZ = DeflateUnit(6, "libdeflate"), DeflateUnit(6, "libz")


def same(mem: Memory, alg: int, src: bytes, room: int, wbits: int = 15) -> JobResult:
    """One decompression job on both codecs: everything the driver sees is the same."""
    a = run(mem, LD, False, alg, wbits, src, room)
    b = run(mem, LZ, False, alg, wbits, src, room)
    assert a == b, (alg, wbits, len(src), room, a[0], b[0])
    return a[0]


def libdeflate_answers(monkeypatch: pytest.MonkeyPatch) -> dict[int, int]:
    """libdeflate's results from now on (result code -> count), as the model gets them."""
    answers: dict[int, int] = {}
    real = _libdeflate.decompress

    def counted(*args: object) -> tuple[int, int, int]:
        r = real(*args)
        answers[r[0]] = answers.get(r[0], 0) + 1
        return r

    monkeypatch.setattr(_libdeflate, "decompress", counted)
    return answers


def test_codecs() -> None:
    assert LD.libdeflate and not LZ.libdeflate
    with pytest.raises(ValueError, match="codec="):
        DeflateUnit(6, "zstd")


def test_decompress_is_the_libz_path_job_for_job(mem: Memory,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = random.Random(22)
    answers = libdeflate_answers(monkeypatch)  # it ran, and was overruled too
    statuses: dict[int, int] = {}
    for n in (0, 1, 5, 300, 1500, 4096, 9000, 40000, 200000):
        data = sample(rnd, n)
        for alg in ALGS:
            level = rnd.choice((1, 6, 9))
            stream = zlib.compress(data, level, wbits_of(alg, 15))[HEAD[alg]:]
            r = same(mem, alg, stream, n + 10)
            assert (r.status, r.last, r.consumed, r.produced) == \
                (L.STATUS_OK, True, len(stream), n)
            for room in {n, max(n - 1, 0), n // 2, 0}:
                same(mem, alg, stream, room)
            for w in (12, 13, 14):  # declared smaller windows (libz: the same, as before)
                same(mem, alg, stream, n + 10, w)
            same(mem, alg, stream + b"trailing junk", n + 10)
            same(mem, alg, stream + stream, n + 10)  # a second member is not this job's
            for cut in {1, len(stream) // 2, len(stream) - 9, len(stream) - 4,
                        len(stream) - 1} | {rnd.randrange(len(stream) + 1) for _ in range(3)}:
                if 0 < cut < len(stream):
                    same(mem, alg, stream[:cut], n + 10)
            for k in range(25):  # corrupted: a bit anywhere (trailer included), or a run
                bad = bytearray(stream)
                if k % 5 == 4 and len(bad) > 8:
                    i = rnd.randrange(len(bad) - 4)
                    bad[i:i + 4] = rnd.randbytes(4)
                else:
                    bad[rnd.randrange(len(bad))] ^= 1 << rnd.randrange(8)
                for room in (n + 10, max(n - 1, 0)):
                    s = same(mem, alg, bytes(bad), room).status
                    statuses[s] = statuses.get(s, 0) + 1
    # the corpus reaches bad data, trailer errors, partial results and fitting output
    assert {L.STATUS_BAD_DATA, L.STATUS_CRC_ERR, L.STATUS_OK} <= set(statuses)
    assert {_libdeflate.SUCCESS, _libdeflate.BAD_DATA, _libdeflate.INSUFFICIENT_SPACE} <= \
        set(answers), answers


def test_short_input_long_output_goes_to_libdeflate_job_for_job(
        mem: Memory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under LIBDEFLATE_DECOMPRESS_MIN of input the module path starts, and output past
    LIBDEFLATE_PROBE sends the job to libdeflate: still the libz path's job for job (output
    ending at, just past and far past the probe; rooms around the output and the probe; cut
    and corrupted), and libdeflate did answer."""
    rnd = random.Random(11)
    answers = libdeflate_answers(monkeypatch)
    probe = _deflate.LIBDEFLATE_PROBE
    line = b"2026-12-02 18:00:00 INFO request ok id=12345 path=/api/v1/items status=200\n"
    for data in (bytes(probe), bytes(probe + 1), bytes(65536), (line * 1400)[:100000]):
        n = len(data)
        for alg in (L.ALG_ZLIB, L.ALG_GZIP):
            stream = zlib.compress(data, 6, wbits_of(alg, 15))[HEAD[alg]:]
            assert len(stream) < _deflate.LIBDEFLATE_DECOMPRESS_MIN
            r = same(mem, alg, stream, n + 10)
            assert (r.status, r.last, r.produced) == (L.STATUS_OK, True, n)
            for room in {n, n - 1, probe, probe - 1, n // 2}:
                same(mem, alg, stream, room)
            for cut in (len(stream) // 2, len(stream) - 3):
                same(mem, alg, stream[:cut], n + 10)
            for _ in range(6):
                bad = bytearray(stream)
                bad[rnd.randrange(len(bad))] ^= 1 << rnd.randrange(8)
                same(mem, alg, bytes(bad), n + 10)
    assert answers.get(_libdeflate.SUCCESS, 0) >= 6, answers


def test_staged_decompression_is_the_direct_one(mem: Memory,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Output room up to STAGE_MAX is inflated into the thread's staging buffer and copied
    into the destination: the same results and output bytes, on both codecs, as inflating
    straight into it (STAGE_MAX below every room), for whole, cut, roomless and corrupted
    jobs."""
    rnd = random.Random(64)
    jobs = []
    for n in (5000, 65536, 200000):
        data = sample(rnd, n)
        for alg in ALGS:
            stream = zlib.compress(data, 6, wbits_of(alg, 15))[HEAD[alg]:]
            bad = bytearray(stream)
            bad[rnd.randrange(len(bad))] ^= 1 << rnd.randrange(8)
            jobs += [(alg, stream, n), (alg, stream, n - 1), (alg, stream[:len(stream) // 2], n),
                     (alg, stream[:-2], n), (alg, bytes(bad), n + 10)]
    staged = [[run(mem, u, False, alg, 15, src, room) for u in (LD, LZ)]
              for alg, src, room in jobs]
    assert len(_libz._thread.stage) >= 200000  # (they were staged)
    monkeypatch.setattr(_deflate, "STAGE_MAX", -1)
    direct = [[run(mem, u, False, alg, 15, src, room) for u in (LD, LZ)]
              for alg, src, room in jobs]
    assert staged == direct
    assert {r[0].status for pair in staged for r in pair} >= {
        L.STATUS_OK, L.STATUS_DST_TOO_SMALL}


def test_junk_and_empty_input(mem: Memory) -> None:
    rnd = random.Random(5)
    for _ in range(600):
        junk = rnd.randbytes(rnd.choice((0, 1, 7, 100, 1100, 3000)))
        for alg in ALGS:
            same(mem, alg, junk, rnd.choice((0, 1, 100, 70000)))


class Bits:
    """An LSB-first bit writer for hand-built deflate streams."""

    def __init__(self) -> None:
        self.acc = self.n = 0
        self.out = bytearray()

    def put(self, v: int, k: int) -> None:
        self.acc |= v << self.n
        self.n += k
        while self.n >= 8:
            self.out.append(self.acc & 0xFF)
            self.acc >>= 8
            self.n -= 8

    def code(self, c: int, k: int) -> None:
        """A Huffman code, most significant bit first (RFC 1951, 3.1.1)."""
        self.put(int(f"{c:0{k}b}"[::-1], 2), k)

    def done(self) -> bytes:
        return bytes(self.out) + (bytes([self.acc]) if self.n else b"")


def fixed_literal(b: Bits, sym: int) -> None:
    """A fixed-Huffman literal/length symbol (RFC 1951, 3.2.6)."""
    if sym < 144:
        b.code(0x30 + sym, 8)
    elif sym < 256:
        b.code(0x190 + sym - 144, 9)
    elif sym < 280:
        b.code(sym - 256, 7)
    else:
        b.code(0xC0 + sym - 280, 8)


def test_what_libdeflate_accepts_and_zlib_refuses(mem: Memory) -> None:
    """libdeflate decodes literal/length symbols 286-287 (as length 258) and distance symbols
    30-31 where zlib stops with "invalid ... code" (docs/research/libdeflate.md): for a zlib
    or gzip job the checksum over what libdeflate made does not match, so the job goes to
    libz and says what zlib says; raw deflate jobs stay on libz."""
    for bad_sym, dist in ((286, 0), (287, 0), (257, 30), (257, 31)):
        b = Bits()
        b.put(1, 1)  # BFINAL
        b.put(1, 2)  # fixed Huffman
        for ch in b"abcd" * 300:
            fixed_literal(b, ch)
        fixed_literal(b, bad_sym)
        b.code(dist, 5)
        if dist:
            b.put(0, 13)  # distance 30/31's 13 extra bits
        fixed_literal(b, 256)
        body = b.done()
        with pytest.raises(zlib.error, match="invalid"):
            zlib.decompress(body, -15)
        assert len(body) >= _deflate.LIBDEFLATE_DECOMPRESS_MIN  # (libdeflate's to answer)
        rc = _libdeflate.decompress(body, len(body), bytearray(2000), 2000)[0]
        plain = b"abcd" * 300
        for alg, trailer in ((L.ALG_DEFLATE, b""),
                             (L.ALG_ZLIB, zlib.adler32(plain).to_bytes(4, "big")),
                             (L.ALG_GZIP, zlib.crc32(plain).to_bytes(4, "little")
                              + len(plain).to_bytes(4, "little"))):
            assert same(mem, alg, body + trailer, 2000).status == L.STATUS_BAD_DATA, \
                (bad_sym, dist, rc)


@pytest.mark.xfail(strict=True, reason="a difference left (docs/research/libdeflate.md, 10): "
                   "a stream built on purpose with a construct zlib refuses and a trailer "
                   "computed over libdeflate's reading of it is accepted on libdeflate")
def test_a_crafted_stream_with_a_trailer_for_libdeflates_reading(mem: Memory) -> None:
    b = Bits()
    b.put(1, 1)
    b.put(1, 2)
    for ch in b"abcd" * 300:
        fixed_literal(b, ch)
    fixed_literal(b, 286)  # length 258 on libdeflate; "invalid literal/length code" on zlib
    b.code(0, 5)  # distance 1
    fixed_literal(b, 256)
    body = b.done()
    made = bytearray(2000)
    rc, _used, m = _libdeflate.decompress(body, len(body), made, len(made))
    assert rc == _libdeflate.SUCCESS and m == 1200 + 258
    trailer = zlib.adler32(bytes(made[:m])).to_bytes(4, "big")
    same(mem, L.ALG_ZLIB, body + trailer, 2000)


def canonical(lengths: list[int]) -> dict[int, tuple[int, int]]:
    """The canonical Huffman code of `lengths` (RFC 1951, 3.2.2): symbol -> (code, length)."""
    count = [0] * (max(lengths) + 2)
    for k in lengths:
        count[k] += 1
    count[0] = 0
    first, code = [0] * len(count), 0
    for k in range(1, len(count)):
        code = (code + count[k - 1]) << 1
        first[k] = code
    out = {}
    for sym, k in enumerate(lengths):
        if k:
            out[sym] = (first[k], k)
            first[k] += 1
    return out


# The order code length code lengths are sent in (RFC 1951, 3.2.7)
PRECODE_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)


def dynamic_block(data: bytes, nlen: int, ndist: int) -> bytes:
    """One final dynamic-Huffman block of literals: every byte a 9-bit code, end of block and
    symbol 257 2 bits each, two 1-bit distance codes, and the header declaring `nlen`
    literal/length and `ndist` distance code lengths (the ones past those zero)."""
    lit = [9] * 256 + [2, 2] + [0] * (nlen - 258)
    lengths = lit + [1, 1] + [0] * (ndist - 2)
    pre_len = [{0: 2, 1: 2, 2: 2, 9: 3, 18: 3}.get(sym, 0) for sym in range(19)]
    pre = canonical(pre_len)
    b = Bits()
    b.put(1, 1)  # BFINAL
    b.put(2, 2)  # dynamic Huffman
    b.put(nlen - 257, 5)
    b.put(ndist - 1, 5)
    b.put(18 - 4, 4)  # code length code lengths sent: up to symbol 1's (the 18th)
    for sym in PRECODE_ORDER[:18]:
        b.put(pre_len[sym], 3)
    i = 0
    while i < len(lengths):
        run = 0
        while i + run < len(lengths) and lengths[i + run] == 0 and run < 138:
            run += 1
        if run >= 11:  # symbol 18: 11-138 zeros
            b.code(*pre[18])
            b.put(run - 11, 7)
            i += run
        else:
            b.code(*pre[lengths[i]])
            i += 1
    code = canonical(lit)
    for ch in data:
        b.code(*code[ch])
    b.code(*code[256])
    return b.done()


def test_a_dynamic_header_at_zlibs_limits_is_the_same_on_both(mem: Memory) -> None:
    """The control for the next test: 286 literal/length and 30 distance codes, the most zlib
    takes, decode on both codecs to the data the trailer is over."""
    plain = b"abcd" * 300
    body = dynamic_block(plain, 286, 30)
    assert zlib.decompress(body, -15) == plain
    assert len(body) >= _deflate.LIBDEFLATE_DECOMPRESS_MIN  # (libdeflate's to answer)
    trailer = zlib.adler32(plain).to_bytes(4, "big")
    assert same(mem, L.ALG_ZLIB, body + trailer, 2000).status == L.STATUS_OK


@pytest.mark.xfail(strict=True, reason="a difference left (docs/research/libdeflate.md, 10): "
                   "a dynamic header declaring more than 286 literal/length or 30 distance "
                   "codes, the extra ones unused, is refused by zlib; libdeflate decodes the "
                   "intended data, so the trailer of that data checks and its answer is kept")
@pytest.mark.parametrize("nlen,ndist", [(288, 30), (286, 32)])
def test_a_header_with_more_codes_than_zlib_takes(mem: Memory, nlen: int, ndist: int) -> None:
    plain = b"abcd" * 300
    body = dynamic_block(plain, nlen, ndist)
    with pytest.raises(zlib.error, match="too many length or distance symbols"):
        zlib.decompress(body, -15)
    made = bytearray(2000)
    rc, _used, m = _libdeflate.decompress(body, len(body), made, len(made))
    assert rc == _libdeflate.SUCCESS and made[:m] == plain  # (the encoder's meaning)
    for alg, trailer in ((L.ALG_ZLIB, zlib.adler32(plain).to_bytes(4, "big")),
                         (L.ALG_GZIP, zlib.crc32(plain).to_bytes(4, "little")
                          + len(plain).to_bytes(4, "little"))):
        assert same(mem, alg, body + trailer, 2000).status == L.STATUS_BAD_DATA


@pytest.mark.parametrize("level", [1, 6, 9])
def test_compressed_output_decodes_within_the_declared_window(mem: Memory, level: int,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """Every window code (24 KiB is zlib's 16 KiB), every container, sizes around each window's
    edge: zlib with the declared window decodes the body (a zlib header declaring it, a gzip
    header) to the input; consumed, checksum and length as the libz codec says; the same job
    gives the same bytes."""
    rnd = random.Random(level)
    ld, lz = DeflateUnit(level, "libdeflate"), DeflateUnit(level, "libz")
    ran: list[int] = []  # windows libdeflate compressed for
    real = _libdeflate.compress
    monkeypatch.setattr(_libdeflate, "compress", lambda *a: ran.append(w) or real(*a))
    sizes = [0, 1, 100, 4095, 4096, 4097, 8192, 8193, 16384, 16385, 20000, 32768, 40000,
             150000]
    for code, w in WINDOW_WBITS.items():
        for n in sizes:
            if n > 40000 and w != 15:
                continue
            # far repeats: matches libdeflate would take from beyond a small window
            data = sample(rnd, n // 2)
            data = (data + data[:n - len(data)])[:n]
            for alg in ALGS:
                room = n + n // 8 + 64
                res, out = run(mem, ld, True, alg, w, data, room)
                ref, _ = run(mem, lz, True, alg, w, data, room)
                assert res.status in (L.STATUS_OK, L.STATUS_NEGACOMPRESS), (code, n, alg)
                assert (res.consumed, res.last, res.checksum, res.isize) == \
                    (ref.consumed, ref.last, ref.checksum, ref.isize)
                if alg == L.ALG_ZLIB:
                    cmf = 8 | (w - 8) << 4
                    head = bytes((cmf, 31 - (cmf << 8) % 31))
                    stream = head + out
                elif alg == L.ALG_GZIP:
                    stream = b"\x1f\x8b\x08\0\0\0\0\0\0\xff" + out
                else:
                    stream = out
                d = zlib.decompressobj(wbits_of(alg, w))
                assert d.decompress(stream) == data and d.eof and not d.unused_data, \
                    (code, n, alg, level)
                assert run(mem, ld, True, alg, w, data, room)[1] == out  # deterministic
    assert set(ran) == {13, 14, 15}  # (8 KiB and more: a 4 KiB window never fits one)


def test_room_the_libz_path_fits_is_enough(mem: Memory) -> None:
    """Output that does not fit libdeflate's room (or its end padding) is the libz path's job:
    a room zlib's output fits is never "too small"; smaller rooms are as libz says."""
    rnd = random.Random(9)
    for n in (5000, 30000, 100000):
        data = sample(rnd, n)
        for alg in ALGS:
            want = run(mem, LZ, True, alg, 15, data, 2 * n)[1]
            mine = run(mem, LD, True, alg, 15, data, 2 * n)[1]
            for room in sorted({len(want) - 1, len(want), len(want) + 1, len(mine) - 1,
                                len(mine), len(mine) + 8, 0, 10}):
                a = run(mem, LD, True, alg, 15, data, room)[0]
                b = run(mem, LZ, True, alg, 15, data, room)[0]
                if b.status != L.STATUS_DST_TOO_SMALL:
                    assert a.status in (L.STATUS_OK, L.STATUS_NEGACOMPRESS), (n, alg, room)
                elif a.status == L.STATUS_DST_TOO_SMALL:
                    assert a == b


def test_incompressible_and_level_0(mem: Memory) -> None:
    rnd = random.Random(3)
    data = rnd.randbytes(50000)
    res, out = run(mem, LD, True, L.ALG_GZIP, 15, data, 60000)
    assert res.status == L.STATUS_NEGACOMPRESS and zlib.decompress(out, -15) == data
    zero = DeflateUnit(0, "libdeflate")  # stored blocks stay zlib's
    assert run(mem, zero, True, L.ALG_DEFLATE, 15, data, 60000)[1] == zlib.compress(data, 0, -15)


def test_without_libdeflate_the_model_runs_on_libz(monkeypatch: pytest.MonkeyPatch,
                                                   mem: Memory) -> None:
    """A missing library is no error: the codec falls back to libz, output zlib's."""
    monkeypatch.setattr(_libdeflate, "_tried", False)
    monkeypatch.setattr(_libdeflate, "_lib", None)
    monkeypatch.setattr(_libdeflate, "SONAME", "libdeflate-absent.so.0")
    monkeypatch.setattr(_libdeflate, "_why", "")
    unit = DeflateUnit(6, "libdeflate")
    assert not unit.libdeflate and "libdeflate-absent" in _libdeflate.why()
    data = sample(random.Random(1), 20000)
    out = run(mem, unit, True, L.ALG_ZLIB, 15, data, 30000)[1]
    assert out == zlib.compress(data, 6)[2:]
    assert run(mem, unit, False, L.ALG_ZLIB, 15, out, 30000)[1] == data


def test_the_model_option_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from warpdrive.emu.models.zip import ZipModel

    monkeypatch.delenv(_deflate.CODEC_ENV, raising=False)
    assert ZipModel().codec == "libdeflate"
    assert ZipModel(codec="libz").codec == "libz"
    monkeypatch.setenv(_deflate.CODEC_ENV, "libz")
    assert ZipModel().codec == "libz"
    assert ZipModel(codec="libdeflate").codec == "libdeflate"  # the option wins
    with pytest.raises(InvalidArgumentError, match="codec="):
        ZipModel(codec="lz4")
    monkeypatch.setenv(_deflate.CODEC_ENV, "fast")
    with pytest.raises(InvalidArgumentError, match=_deflate.CODEC_ENV):
        ZipModel()


def test_pieces_and_streams_that_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first job of a stream on libdeflate (the CLI's pieces, large one-shots): a piece
    that goes on ends open on a byte boundary, so pieces concatenate into one stream zlib
    decodes; a stream continued after such a first job (on libz, from its last window) decodes
    to all its input; results as the libz codec's but for the bytes."""
    rnd = random.Random(12)
    ran: list[bool] = []
    real = _libdeflate.compress
    monkeypatch.setattr(_libdeflate, "compress", lambda *a: ran.append(True) or real(*a))
    for level in (1, 6, 9):
        ld, lz = DeflateUnit(level, "libdeflate"), DeflateUnit(level, "libz")
        for alg in ALGS:
            for w in (13, 15):
                sizes = [rnd.choice((8192, 9000, 40000, 70000, 300000)) for _ in range(3)]
                if w == 13:
                    sizes = [8192, 8000, 8192]
                pieces = [sample(rnd, k) if k % 2 else rnd.randbytes(k) if k == 9000
                          else bytes(k) if k == 8000 else sample(rnd, k) for k in sizes]
                # pigz-style: each piece the first job of its own stream, the last finishing
                body = b""
                for i, piece in enumerate(pieces):
                    last = i == len(pieces) - 1
                    dst = bytearray(len(piece) + len(piece) // 8 + 64)
                    res, st = ld.compress_first(alg, w, piece, dst, last)
                    ref, _ = lz.compress_first(alg, w, piece, bytearray(len(dst)), last)
                    assert (res.status in (L.STATUS_OK, L.STATUS_NEGACOMPRESS), res.consumed,
                            res.last, res.checksum, res.isize) == \
                        (True, ref.consumed, ref.last, ref.checksum, ref.isize)
                    assert (st is None) == last
                    out = bytes(dst[:res.produced])
                    if not last:
                        assert out.endswith(b"\x00\x00\xff\xff")
                    tlen = {L.ALG_ZLIB: 4, L.ALG_GZIP: 8}.get(alg, 0) if last else 0
                    body += out[:len(out) - tlen]
                d = zlib.decompressobj(-w)
                assert d.decompress(body) == b"".join(pieces) and d.eof, (level, alg, w)
                # one stream of three jobs: the first on libdeflate, the rest continue on libz
                key = 7
                body = b""
                checksum, isize = (1 if alg == L.ALG_ZLIB else 0), 0
                for i, piece in enumerate(pieces):
                    last = i == len(pieces) - 1
                    dst = bytearray(len(piece) + len(piece) // 8 + 64)
                    res = ld.compress_stateful(key, i == 0, alg, w, piece, dst, last,
                                               checksum, isize)
                    assert res.status in (L.STATUS_OK, L.STATUS_NEGACOMPRESS)
                    checksum, isize = res.checksum, res.isize
                    body += dst[:res.produced]
                whole = b"".join(pieces)
                if alg == L.ALG_ZLIB:
                    want = zlib.adler32(whole).to_bytes(4, "big")
                    assert body.endswith(want)
                    body = body[:-4]
                elif alg == L.ALG_GZIP:
                    assert body.endswith(zlib.crc32(whole).to_bytes(4, "little")
                                         + len(whole).to_bytes(4, "little"))
                    body = body[:-8]
                d = zlib.decompressobj(-w)
                assert d.decompress(body) == whole and d.eof, (level, alg, w)
                assert key not in ld.streams
    assert ran


def test_a_first_job_without_room_is_the_libz_paths() -> None:
    """Room libdeflate's output does not fit: the libz path answers (too small, or zlib's
    output), and a stream left fresh behind a refused job starts over."""
    rnd = random.Random(4)
    data = sample(rnd, 50000)
    for room in (0, 10, 1000, 14000, 16000, 20000):
        a, st_a = LD.compress_first(L.ALG_GZIP, 15, data, bytearray(room), False)
        b, st_b = LZ.compress_first(L.ALG_GZIP, 15, data, bytearray(room), False)
        if b.status != L.STATUS_DST_TOO_SMALL:
            assert a.status in (L.STATUS_OK, L.STATUS_NEGACOMPRESS)
        elif a.status == L.STATUS_DST_TOO_SMALL:
            assert a == b and st_a is not None and st_b is not None


def test_a_first_job_with_less_room_than_the_sync_flush_writes_nothing_past_it() -> None:
    """A first job that goes on keeps 5 bytes of its room for the sync flush: a room under
    that must reach libdeflate as no room (a negative size_t is ~2**64: it wrote past the
    destination), so the job is the libz path's and memory after the room is untouched."""
    data = sample(random.Random(6), 20000)
    for room in range(7):  # (room 0 first: it corrupted quietly, smaller rooms crashed)
        guard = bytearray(b"\xaa" * 65536)
        a, _ = LD.compress_first(L.ALG_GZIP, 15, data, memoryview(guard)[:room], False)
        assert guard[room:] == b"\xaa" * (len(guard) - room), room
        b, _ = LZ.compress_first(L.ALG_GZIP, 15, data, bytearray(room), False)
        assert a == b == JobResult(L.STATUS_DST_TOO_SMALL), room


def test_finding_the_final_block_takes_a_fixed_scratch() -> None:
    """`Inflater.last_block` over outputs smaller and many times larger than its scratch
    (text, incompressible, zeros): the first job ends open where zlib's sync flush would, so
    a finishing piece after it decodes with it as one stream; the scratch stays its size;
    a stream cut short, or of another size than said, is no answer."""
    rnd = random.Random(13)
    room = _libz.LAST_BLOCK_ROOM
    tail = sample(rnd, 9000)
    for n in (room - 1, room + 1, 5 * room + 3, 1 << 20):
        for data in (sample(rnd, n), rnd.randbytes(n), bytes(n)):
            dst = bytearray(n + n // 8 + 64)
            res, st = LD.compress_first(L.ALG_DEFLATE, 15, data, dst, False)
            assert st is not None and isinstance(st.obj, _deflate._Tail), n  # (libdeflate's)
            body = bytes(dst[:res.produced])
            assert body.endswith(b"\x00\x00\xff\xff")
            out = bytearray(len(tail) + 64)
            last = LD.compress_first(L.ALG_DEFLATE, 15, tail, out, True)[0]
            d = zlib.decompressobj(-15)
            assert d.decompress(body + out[:last.produced]) == data + tail and d.eof, n
    assert len(_libz._thread.out) == room
    data = sample(rnd, 300000)
    whole = zlib.compress(data, 6, -15)
    inf = _libz.inflater()
    assert inf.last_block(whole, len(whole), len(data)) is not None
    assert inf.last_block(whole, len(whole) - 1, len(data)) is None
    assert inf.last_block(whole, len(whole), len(data) - 1) is None
    assert inf.last_block(whole, len(whole), len(data) + 1) is None
