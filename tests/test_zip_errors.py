"""Bad input and bad situations fail cleanly: corrupt or truncated streams raise `ZipDataError`
(a `zlib.error` too), output that does not fit is grown or refused (never cut), a DMA fault is an
error status, and a dead device is a timeout, not a hang. All against the bundled model."""

from __future__ import annotations

import time
import zlib

import pytest

import warpdrive.zip as wz
from warpdrive.devices.zip.job import COMPRESS
from warpdrive.errors import ConnectionLostError, DeviceTimeoutError, WarpdriveError

TEXT = b"".join(b"record %06d: the engine compresses this line\n" % i for i in range(6000))
FORMATS = {"deflate": -15, "zlib": 15, "gzip": 31}


@pytest.fixture(scope="module")
def engine():
    eng = wz.open_engine("emu", announce=False)
    yield eng
    eng.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_input_raises(engine, fmt: str) -> None:
    wbits = FORMATS[fmt]
    blob = wz.compress(TEXT, wbits=wbits, device=engine)
    cuts = sorted({1, 2, 5, 9, 10, 11, 100, len(blob) // 2, len(blob) - 9, len(blob) - 5,
                   len(blob) - 4, len(blob) - 1})
    if fmt == "deflate":  # raw deflate has no trailer: only cuts inside the data are detectable
        cuts = [c for c in cuts if c < len(blob) - 2]
    for cut in cuts:
        with pytest.raises(wz.ZipDataError) as info:
            wz.decompress(blob[:cut], wbits=wbits, device=engine)
        assert isinstance(info.value, zlib.error) and isinstance(info.value, WarpdriveError)
        with pytest.raises(zlib.error):  # what zlib itself says about the same input
            zlib.decompress(blob[:cut], wbits)


@pytest.mark.parametrize("fmt", ["zlib", "gzip"])
def test_corrupt_input_raises(engine, fmt: str) -> None:
    wbits = FORMATS[fmt]
    blob = bytearray(wz.compress(TEXT, wbits=wbits, device=engine))
    hdr = 2 if fmt == "zlib" else 10
    for pos in (hdr + 3, len(blob) // 2, len(blob) - 3):
        bad = bytearray(blob)
        bad[pos] ^= 0x55
        with pytest.raises(wz.ZipDataError):
            wz.decompress(bytes(bad), wbits=wbits, device=engine)
    bad = bytearray(blob)
    bad[0] ^= 0xFF  # header
    with pytest.raises(wz.ZipDataError, match="header"):
        wz.decompress(bytes(bad), wbits=wbits, device=engine)


def test_invalid_deflate_block_and_empty_input(engine) -> None:
    with pytest.raises(wz.ZipDataError, match="invalid"):
        wz.decompress(b"\x07\x00\x00\x00garbage", wbits=-15, device=engine)  # BTYPE=11
    for wbits in FORMATS.values():
        with pytest.raises(wz.ZipDataError):
            wz.decompress(b"", wbits=wbits, device=engine)


def test_stream_decoder_errors_and_truncation(engine) -> None:
    blob = wz.compress(TEXT, wbits=31, device=engine)
    d = wz.decompressobj(31, device=engine)
    part = d.decompress(blob[:len(blob) // 2]) + d.flush()
    assert not d.eof and TEXT.startswith(part)  # truncated: partial output, eof stays False
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0xFF
    d = wz.decompressobj(31, device=engine)
    with pytest.raises(wz.ZipDataError):
        d.decompress(bytes(bad))
        d.flush()


def test_bad_arguments(engine) -> None:
    with pytest.raises(wz.error):
        wz.compress(b"x", wbits=8 + 16 + 16, device=engine)
    with pytest.raises(wz.error):
        wz.compress(b"x", level=10, device=engine)
    with pytest.raises(wz.error):
        wz.compressobj(zdict=b"dictionary", device=engine)


def test_output_is_grown_or_refused_never_cut(engine) -> None:
    zeros = bytes(3 << 20)
    small = zlib.compress(zeros)  # ~3 KB in, 3 MiB out: the first guess is far too small
    s = engine.session("decompress")
    job = s.submit(small)
    (done,) = s.drain()
    assert done is job and job.result() == zeros  # grown and resubmitted by the driver

    huge = zlib.compress(bytes(9 << 20))  # more than one job may produce
    job = s.submit(huge)
    s.drain()
    with pytest.raises(wz.ZipBufferError):
        job.result()
    assert wz.decompress(huge, device=engine) == bytes(9 << 20)  # stream mode handles it

    src = s.buffer(len(small))
    src.view[:len(small)] = small
    dst = s.buffer(64 << 10)
    prepared = s.prepare(src, len(small), dst)  # caller's buffer: not grown, refused
    s.submit(prepared)
    s.drain()
    with pytest.raises(wz.ZipBufferError):
        prepared.output  # noqa: B018
    s.close()


def test_dma_fault_is_reported_and_the_queue_survives(engine) -> None:
    s = engine.session("compress")
    src = s.buffer(4096)
    src.view[:4096] = b"f" * 4096
    job = s.prepare(src, 4096)
    engine.source.dma.unmap(src)  # the device can no longer reach the source
    s.submit(job)
    s.drain()
    with pytest.raises(wz.ZipDeviceError, match="DMA fault"):
        job.result()
    assert zlib.decompress(s.submit(b"still fine").owner.drain()[0].result()) == b"still fine"
    s.close()
    src.close()


def test_dead_device_is_a_timeout_not_a_hang() -> None:
    eng = wz.open_engine("emu", announce=False, timeout=1.0, wait="spin")
    try:
        eng.compress(b"warm up")
        eng.source.dev.emulator.stop(grace=0.1)  # the model process is gone
        start = time.monotonic()
        with pytest.raises((DeviceTimeoutError, ConnectionLostError)):
            eng.compress(b"x" * 1000)
        assert time.monotonic() - start < 10
    finally:
        try:
            eng.close()
        except WarpdriveError:
            pass
    assert eng.lanes[COMPRESS]._q is None


@pytest.mark.parametrize("wait,stream", [("spin", False), ("auto", False), ("auto", True)])
def test_a_wedged_engine_times_a_call_out(wait: str, stream: bool) -> None:
    """A model that is alive but completes nothing (stopped: its heartbeat stands still, its
    socket stays open) is a DeviceTimeoutError after the engine's timeout for a one-shot call,
    with wait="spin" too (its call's own loop polls without end unless bounded by it); and for
    a stream's job when the engine's spin time is longer than its timeout (`Lane.poll`)."""
    import os
    import signal
    import threading

    from warpdrive.backends.vfiouser.launcher import model_spin

    # A model that polls the whole run, so never asks for a kick: a stopped one that did
    # would fill its socket with the kicks of every doorbell refresh, itself an error (in 5 s).
    with model_spin(600e6):
        eng = wz.open_engine("emu", announce=False, timeout=0.3, wait=wait)
    got: list[BaseException | None] = []
    took: list[float] = []

    # (the stream's buffers taken before the model stops: a new one is a request to it)
    z = zlib.compress(os.urandom(4000))
    d = wz.decompressobj(device=eng)

    def call() -> None:
        start = time.monotonic()
        try:
            if stream:
                d.decompress(z[2100:])
            else:
                eng.compress(b"x" * 1000)
            got.append(None)
        except WarpdriveError as e:
            got.append(e)
        took.append(time.monotonic() - start)

    pid = eng.source.dev.emulator.proc.pid
    try:
        eng.compress(b"warm up")
        d.decompress(z[:2100])
        if stream:
            eng.spin_s = 20.0  # (as ZipEngine(spin_us=) sets it)
        os.kill(pid, signal.SIGSTOP)
        try:
            th = threading.Thread(target=call, daemon=True)
            th.start()
            th.join(10)
        finally:
            os.kill(pid, signal.SIGCONT)  # (a call still waiting then completes)
        th.join(10)
        assert got and isinstance(got[0], DeviceTimeoutError), got
        assert "did not complete within 0.3 s" in str(got[0])
        assert took[0] < 5
    finally:
        try:
            eng.close()
        except WarpdriveError:
            pass


def test_forked_child_cannot_use_the_parents_engine(engine) -> None:
    """The child's copy of an engine is dead (its rings are not mapped there): a clear error,
    never a fault; the parent keeps working."""
    import os

    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            from warpdrive.errors import ForkedContextError

            try:
                wz.compress(b"child", device=engine)
            except ForkedContextError:
                code = 0
            s = engine.lanes[COMPRESS]
            if s._q is not None:
                code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert zlib.decompress(wz.compress(b"parent", device=engine)) == b"parent"
