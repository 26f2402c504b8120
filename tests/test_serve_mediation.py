"""The broker's SQE check, field by field, against a real device's DMA space (the bundled test
model over vfio-user): what may reach the device, and what becomes an error status instead.
Client maps are real sealed memfds mapped for the device (`ClientMaps`)."""

from __future__ import annotations

import fcntl
import os
import random
import struct
from collections.abc import Iterator

import pytest

from rigs.broker import sqe_words
from warpdrive.backends.vfiouser.launcher import open_emulated
from warpdrive.devices.zip import hw
from warpdrive.serve.maps import ClientMaps, TranslationFault
from warpdrive.serve.sqe import CTX_SPAN, RUN_MAX, Refused, copy_results, mediate, mediate_run

PAGE = 4096
SQE = struct.Struct("<32I")


def memfd(size: int) -> int:
    fd = os.memfd_create("client", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


@pytest.fixture(scope="module")
def device() -> Iterator[object]:
    dev = open_emulated("testdev")
    yield dev
    dev.close()


@pytest.fixture
def maps(device) -> Iterator[ClientMaps]:
    m = ClientMaps(device.dma, "client A")  # type: ignore[attr-defined]
    fds = [memfd(0x20000), memfd(PAGE)]
    m.add(0x100000, 0x10000, fds[0], 0, True, True)  # buffers
    m.add(0x200000, 0x10000, fds[0], 0x10000, True, True)  # a stream context area
    m.add(0x300000, PAGE, fds[1], 0, True, False)  # read-only
    for fd in fds:
        os.close(fd)
    yield m
    m.clear()
    assert m.parked == 0


def sqe(**dw: int) -> bytearray:
    return bytearray(SQE.pack(*sqe_words(0x100000, 0x102000, dw26=0xABCD, **dw)))


def test_a_good_sqe_is_translated_and_cleaned(maps: ClientMaps) -> None:
    client = sqe(dw0=7, dw24=0xDEAD, dw25=0xBEEF, dw5=1)
    ring = bytearray(256)
    used = mediate(memoryview(client), 0, memoryview(ring), 128, maps)
    w = SQE.unpack_from(ring, 128)
    m = maps.translate(0x100000, 1, write=False)
    assert w[hw.DW_SRC_H] << 32 | w[hw.DW_SRC_L] == m.dev_iova
    assert w[hw.DW_DST_H] << 32 | w[hw.DW_DST_L] == m.dev_iova + 0x2000
    assert w[0] == 0 and w[24] == w[25] == w[5] == 0  # results and unused words cleared
    assert w[hw.DW_TAG_V3] == 0xABCD  # the client's tag passes
    assert used == (m, m)


def test_only_result_words_go_back_to_the_client() -> None:
    """`copy_results`: the device's result words (dw0-3, dw15, dw28-31) reach the client's
    slots, nothing else of the device's SQE (its IOVAs stay the broker's)."""
    hw_ring, client = bytearray(4 * 128), bytearray(4 * 128)
    for i in range(4):
        SQE.pack_into(hw_ring, i * 128, *[0xD0000000 | i << 8 | k for k in range(32)])
        SQE.pack_into(client, i * 128, *[0xC0000000 | i << 8 | k for k in range(32)])
    h, c = memoryview(hw_ring), memoryview(client)
    copy_results(h.cast("Q"), h.cast("I"), 1, c.cast("Q"), c.cast("I"), 2, 2)  # hw 1,2 -> 2,3
    result = {0, 1, 2, 3, hw.DW_CTX_DW0, 28, 29, 30, 31}
    for i in range(4):
        w = SQE.unpack_from(client, i * 128)
        for k in range(32):
            want = 0xD0000000 | (i - 1) << 8 | k if i >= 2 and k in result else \
                0xC0000000 | i << 8 | k
            assert w[k] == want, (i, k)


def test_a_stateful_sqe_needs_its_whole_context_mapped(maps: ClientMaps) -> None:
    dw7 = hw.sqe_dw7(finish=False, stateful=True, new_stream=True, sqe_type=hw.SQE_TYPE_V3)
    ok = sqe(dw7=dw7, dw22=0x200000 + hw.HW_CTX_RSV_OFFSET - 64)
    used = mediate(memoryview(ok), 0, memoryview(bytearray(128)), 0, maps)
    assert len(used) == 3
    too_far = sqe(dw7=dw7, dw22=0x200000 + 0x10000 - CTX_SPAN + 64)
    with pytest.raises(Refused) as ei:
        mediate(memoryview(too_far), 0, memoryview(bytearray(128)), 0, maps)
    assert ei.value.status == hw.STATUS_DMA_FAULT


@pytest.mark.parametrize(("fields", "status"), [
    ({"dw18": 0x400000}, hw.STATUS_DMA_FAULT),  # source not mapped at all
    ({"dw18": 0x10F800}, hw.STATUS_DMA_FAULT),  # source runs off the end of its map
    ({"dw20": 0x300000}, hw.STATUS_DMA_FAULT),  # destination mapped read-only
    ({"dw19": 1}, hw.STATUS_DMA_FAULT),  # a high address word
    ({"dw14": 0x10000}, hw.STATUS_DMA_FAULT),  # destination length runs off the map
    ({"dw9": hw.sqe_dw9(hw.ALG_ZLIB, buf_type=hw.SQE_BUF_SGL)}, hw.STATUS_BAD_REQUEST),  # SGL
    ({"dw9": 0x07}, hw.STATUS_BAD_REQUEST),  # request type not on the whitelist
    ({"dw9": hw.ALG_ZLIB | 9 << hw.SQE_WINDOW_SHIFT}, hw.STATUS_BAD_REQUEST),  # window
    ({"dw7": 0x5 << hw.SQE_TYPE_SHIFT}, hw.STATUS_BAD_REQUEST),  # SQE type
    ({"dw7": hw.SQE_TYPE_V3 << hw.SQE_TYPE_SHIFT | 0x40}, hw.STATUS_BAD_REQUEST),  # SGE offset
    ({"dw8": 0x10}, hw.STATUS_BAD_REQUEST),  # out SGE offset
    ({"dw4": hw.HZ_MAX_SIZE + 1}, hw.STATUS_BAD_REQUEST),  # too long
])
def test_what_never_reaches_the_device(maps: ClientMaps, fields: dict[str, int],
                                       status: int) -> None:
    ring = sqe(**fields)
    out = bytearray(128)
    with pytest.raises(Refused) as ei:
        mediate(memoryview(ring), 0, memoryview(out), 0, maps)
    assert out == bytearray(128)  # nothing reached the hardware ring
    assert ei.value.status == status, ei.value.reason


def test_translation_is_per_client(device, maps: ClientMaps) -> None:
    other = ClientMaps(device.dma, "client B")
    fd = memfd(PAGE)
    other.add(0x100000, PAGE, fd, 0, True, True)  # B uses the same client IOVA as A
    os.close(fd)
    b = other.translate(0x100000, PAGE, write=True)
    a = maps.translate(0x100000, PAGE, write=True)
    assert a.dev_iova != b.dev_iova
    with pytest.raises(TranslationFault):  # B's device IOVA means nothing in A's space
        maps.translate(b.dev_iova, 16, write=True)
    other.clear()


def test_random_sqes_never_escape(maps: ClientMaps) -> None:
    """A bounded seeded fuzz: whatever the 32 dwords hold, an SQE either is refused or names
    only device addresses inside this client's maps."""
    rng = random.Random(1212)
    windows = [(m.dev_iova, m.dev_iova + (m.end - m.iova)) for m in
               (maps.translate(a, 1, write=False) for a in (0x100000, 0x200000, 0x300000))]
    passed = 0
    for i in range(5000):
        w = [rng.getrandbits(32) for _ in range(32)]
        if i % 2:  # half of them near-valid, so the checks past the first are exercised too
            base = list(SQE.unpack(sqe()))
            for k in rng.sample(range(32), rng.randint(1, 4)):
                base[k] = rng.choice([rng.getrandbits(32), rng.getrandbits(16), 0,
                                      0x100000 + rng.getrandbits(17), 0x200000, 0x300000])
            w = base
        ring = bytearray(SQE.pack(*w))
        hw_ring = bytearray(128)
        try:
            mediate(memoryview(ring), 0, memoryview(hw_ring), 0, maps)
        except Refused:
            continue
        passed += 1
        out = SQE.unpack(hw_ring)
        for lo, n in ((hw.DW_SRC_L, out[hw.DW_INPUT_LENGTH]),
                      (hw.DW_DST_L, out[hw.DW_DEST_AVAIL_OUT])):
            a = out[lo + 1] << 32 | out[lo]
            assert any(s <= a and a + max(n, 1) <= e for s, e in windows)
    assert passed > 100


def test_a_run_is_checked_as_its_sqes_would_be(maps: ClientMaps) -> None:
    """`mediate_run` (a run checked field by field in one pass) against `mediate` SQE by SQE,
    seeded: whenever the run path takes a run, every SQE of it passes `mediate` and the
    hardware ring holds byte for byte what `mediate` writes; a run with any SQE `mediate`
    refuses is never taken (it goes SQE by SQE)."""
    rng = random.Random(4096)
    good = list(SQE.unpack(sqe()))
    taken = declined = 0
    for i in range(3000):
        n = rng.randint(1, RUN_MAX)
        ring = bytearray()
        for _ in range(n):
            w = list(good)
            w[hw.DW_SRC_L] = 0x100000 + rng.randrange(0, 0xF000, 64)
            w[hw.DW_DST_L] = 0x100000 + rng.randrange(0, 0xD000, 64)
            w[hw.DW_TAG_V3] = rng.getrandbits(32)
            if i % 2 and rng.random() < 0.1:  # now and then a field that may not pass
                k = rng.choice([4, 7, 8, 9, 14, 18, 19, 20, 21, 22, 0, 5, 24])
                w[k] = rng.choice([0, rng.getrandbits(32), 0x300000, 0x10000, 0x1F000,
                                   hw.HZ_MAX_SIZE + 1, w[k] | 1 << 26])
            ring += SQE.pack(*w)
        fast, slow = bytearray(n * 128), bytearray(n * 128)
        fv = memoryview(fast)
        used = mediate_run(memoryview(ring), 0, n, fv, fv.cast("I"), fv.cast("Q"), 0, maps)
        refused = False
        for j in range(n):
            try:
                mediate(memoryview(ring), j * 128, memoryview(slow), j * 128, maps)
            except Refused:
                refused = True
        if used is None:
            declined += 1
            continue
        taken += 1
        assert not refused and fast == slow
    assert taken > 1000 and declined > 100


def _run_vs_sqes(maps: ClientMaps, runs: list[list[list[int]]]) -> tuple[int, int]:
    """Each run through `mediate_run` and SQE by SQE through `mediate`: a run with a refused
    SQE is never taken, a run taken leaves the same bytes in the hardware ring. (taken, runs
    with a refused SQE)"""
    taken = bad = 0
    for run in runs:
        n = len(run)
        ring = b"".join(SQE.pack(*w) for w in run)
        fast, slow = bytearray(n * 128), bytearray(n * 128)
        fv = memoryview(fast)
        used = mediate_run(memoryview(ring), 0, n, fv, fv.cast("I"), fv.cast("Q"), 0, maps)
        refused = []
        for j in range(n):
            try:
                mediate(memoryview(ring), j * 128, memoryview(slow), j * 128, maps)
            except Refused as e:
                refused.append(e.status)
        bad += bool(refused)
        if used is not None:
            assert not refused and fast == slow
            taken += 1
    return taken, bad


def test_a_run_refuses_what_its_sqes_would(device, maps: ClientMaps) -> None:
    """The run path on the isolation cases, one bad SQE anywhere in a run (also the merged
    dw8/dw9 check and the address bound tried before the exact ends): a run naming another
    client's buffers, a device address (the broker's own rings live at such addresses), an
    unmapped or overflowing range, read-only memory as a destination, SGE offsets or an SGL is
    never taken; what it takes is byte for byte `mediate`'s."""
    other = ClientMaps(device.dma, "client B")
    fd = memfd(0x10000)
    other.add(0x500000, 0x10000, fd, 0, True, True)  # B's buffers, not A's
    os.close(fd)
    b_dev = other.translate(0x500000, 1, write=True).dev_iova
    a_dev = maps.translate(0x100000, 1, write=True).dev_iova
    bad: list[dict[int, int]] = [
        {hw.DW_SRC_L: 0x500000}, {hw.DW_DST_L: 0x500100},  # B's buffers by B's IOVAs
        {hw.DW_SRC_L: b_dev & 0xFFFF_FFFF, hw.DW_SRC_H: b_dev >> 32},  # B's device IOVA
        {hw.DW_DST_L: a_dev & 0xFFFF_FFFF, hw.DW_DST_H: a_dev >> 32},  # a device IOVA
        {hw.DW_SRC_L: 0x400000},  # unmapped
        {hw.DW_SRC_L: 0x10F000, hw.DW_INPUT_LENGTH: 0x1001},  # one byte past the map
        {hw.DW_DST_L: 0x10E000, hw.DW_DEST_AVAIL_OUT: 0x2001},
        {hw.DW_SRC_L: 0xFFFF_F000, hw.DW_SRC_H: 0xFFFF_FFFF},  # wraps 2^64
        {hw.DW_DST_L: 0x300000, hw.DW_DEST_AVAIL_OUT: 64},  # read-only destination
        {hw.DW_OUT_SGE: 0x10},  # an out SGE offset
        {hw.DW_REQ: hw.sqe_dw9(hw.ALG_ZLIB, buf_type=hw.SQE_BUF_SGL)},
        {hw.DW_DEST_AVAIL_OUT: hw.HZ_MAX_SIZE + 1},
        {hw.DW_IN_SGE_FLAGS: hw.sqe_dw7(finish=True, stateful=True, new_stream=True,
                                        sqe_type=hw.SQE_TYPE_V3)},  # a context outside A's maps
    ]
    good = list(SQE.unpack(sqe()))
    rng = random.Random(12)
    runs = []
    for case in bad:
        for n in (RUN_MAX // 8, RUN_MAX // 2, RUN_MAX):
            run = [list(good) for _ in range(n)]
            for w in run:
                w[hw.DW_SRC_L] = 0x100000 + rng.randrange(0, 0x8000, 64)
                w[hw.DW_TAG_V3] = rng.getrandbits(32)
            victim = run[rng.randrange(n)]
            for k, v in case.items():
                victim[k] = v
            runs.append(run)
    assert _run_vs_sqes(maps, runs) == (0, len(runs))
    # The bound (highest address + longest length) misses, the exact ends fit: taken.
    run = [list(good) for _ in range(8)]
    run[0][hw.DW_SRC_L], run[0][hw.DW_INPUT_LENGTH] = 0x100000, 0xF000
    run[1][hw.DW_SRC_L], run[1][hw.DW_INPUT_LENGTH] = 0x10FF00, 0x100
    assert _run_vs_sqes(maps, [run]) == (1, 0)
    run[1][hw.DW_INPUT_LENGTH] = 0x101  # and one byte more: refused, not taken
    assert _run_vs_sqes(maps, [run]) == (0, 1)
    run[1][hw.DW_INPUT_LENGTH] = 0  # an empty job passes `mediate`; a run leaves it to it
    assert _run_vs_sqes(maps, [run]) == (0, 0)
    other.clear()


def test_a_run_sees_the_clients_maps_as_they_are_now(maps: ClientMaps) -> None:
    """The last maps hit, tried before the table (by `mediate_run` inline and by `mediate`),
    never outlive an unmap: once the client unmaps the buffers a run used, the same run is not
    taken and every SQE of it is refused; mapped again (read-only, other pages) at the same
    IOVA, a run writing there is not taken and one reading there goes through the new map."""
    good = list(SQE.unpack(sqe()))
    n = RUN_MAX // 8

    def run(src: int, dst: int) -> bytes:
        ring = b""
        for j in range(n):
            w = list(good)
            w[hw.DW_SRC_L], w[hw.DW_DST_L] = src + 0x100 * j, dst + 0x100 * j
            ring += SQE.pack(*w)
        return ring

    def through(ring: bytes) -> tuple[object, bytearray]:
        fast = bytearray(n * 128)
        fv = memoryview(fast)
        return mediate_run(memoryview(ring), 0, n, fv, fv.cast("I"), fv.cast("Q"), 0, maps), fast

    first = run(0x100000, 0x102000)
    old = maps.translate(0x100000, 1, write=True)
    assert through(first)[0] == (old, old)
    assert maps.last_read is old and maps.last_write is old
    maps.remove(0x100000, 0x10000)
    assert through(first)[0] is None
    assert _run_vs_sqes(maps, [[list(SQE.unpack_from(first, j * 128)) for j in range(n)]]) \
        == (0, 1)
    fd = memfd(0x10000)
    maps.add(0x100000, 0x10000, fd, 0, True, False)  # the same IOVA, read-only, new pages
    os.close(fd)
    new = maps.translate(0x100000, 1, write=False)
    assert new is not old and not new.writable
    assert through(first)[0] is None  # a destination there is read-only now
    used, ring = through(run(0x100000, 0x200000))
    ctx = maps.translate(0x200000, 1, write=True)
    assert used == (new, ctx)
    srcs = [SQE.unpack_from(ring, j * 128) for j in range(n)]
    assert [w[hw.DW_SRC_H] << 32 | w[hw.DW_SRC_L] for w in srcs] == \
        [new.dev_iova + 0x100 * j for j in range(n)]
