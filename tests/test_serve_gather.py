"""The broker hands completions back in stretches (`Broker.gather`): a hardware queue keeps them
on its CQ until half its jobs in flight are done (at most `gather`), for at most `hold_s`; a
queue with up to three jobs in flight is answered at once. Driven through a client's function
(`tests.brokerutil.FunctionRig`) on the bundled model doing real zlib jobs, so completions come
one after another as they would from a device. A hold that runs out (jobs further apart than
a hold) stops holding on that queue for `HOLD_OFF_S`."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator

from rigs.broker import SQE, FunctionRig, sqe_words

BIG = 512 << 10  # incompressible input: milliseconds of zlib per job in the model


def _slots(rig: FunctionRig, first: int, n: int) -> list[int]:
    """The SQ slots the client's CQEs `first`..`first+n-1` name."""
    return [struct.unpack_from("<H", rig.mem, rig.CQ + (first + i) * 16 + 8)[0]
            for i in range(n)]


def _hw_ready(rig: FunctionRig) -> int:
    q = rig.broker.hw[0].q
    n = 0
    while n < q.outstanding and q.completed(n + 1):
        n += 1
    return n


def _passes(rig: FunctionRig, total: int) -> Iterator[tuple[int, int, int]]:
    """Passes until `total` CQEs have reached the client: for each, the CQEs it had before,
    those ready on the hardware CQ before it, and how many it handed back."""
    got = 0
    deadline = time.monotonic() + 60
    while got < total:
        assert time.monotonic() < deadline, f"{got} of {total} CQEs after 60 s"
        ready = _hw_ready(rig)
        rig.poll()
        n = rig.reap(total)
        yield got, ready, n
        got += n


def _big(rig: FunctionRig) -> bytes:
    rig.mem[rig.SRC:rig.SRC + BIG] = os.urandom(BIG)
    return SQE.pack(*sqe_words(rig.IOVA + rig.SRC, rig.IOVA + rig.DST, dw4=BIG,
                               dw14=BIG + (BIG >> 3) + 4096))


def test_completions_are_held_until_half_are_done_then_come_in_order() -> None:
    rig = FunctionRig(executor="zlib", gather=8, hold_s=60.0)  # (a hold that never expires)
    try:
        rig.write(16, _big(rig))
        rig.ring()
        rig.poll()  # the submit pass
        assert rig.broker.hw[0].q.outstanding == 16
        held = False
        for got, before, n in _passes(rig, 16):
            held |= before > 0 and n == 0  # done on the device, not yet the client's
            if n:
                # half of what was in flight (at most 8), or all of the last few
                assert n >= min(8, (16 - got) >> 1), (got, n)
                assert _slots(rig, got, n) == list(range(got, got + n))  # in order
        assert held, "no pass left a trickle of completions on the hardware CQ"
    finally:
        rig.close()


def test_a_hold_lasts_at_most_hold_s_and_few_jobs_are_answered_at_once() -> None:
    rig = FunctionRig(executor="zlib", gather=8, hold_s=0.02)
    try:
        big = _big(rig)
        # Three jobs in flight: each completion goes back as soon as a pass sees it.
        rig.write(3, big)
        rig.ring()
        rig.poll()
        for _, ready, n in _passes(rig, 3):
            assert n >= ready, "a completion was held with three jobs in flight"
        got = 3
        # Sixteen: the first completion is held, and handed back once eight are done or
        # the hold (20 ms) is out, whichever comes first.
        rig.write(16, big)
        rig.ring()
        rig.poll()
        while not _hw_ready(rig):
            time.sleep(0.0005)
        seen = time.monotonic()  # (the broker sees it at a pass after this)
        n = 0
        while not n:
            rig.poll()
            n = rig.reap(16)
        waited = time.monotonic() - seen
        assert n >= 8 or waited >= 0.02, (n, waited)
        assert waited < 5.0
        if n < 8:  # the hold ran out: counted, and the queue answers at once for a while
            assert rig.broker.holds == [0, 1] and rig.broker.hw[0].hold_off
            fresh = rig.broker.hw[0].hold_off - time.perf_counter() > 0.005
            ready = _hw_ready(rig)
            rig.poll()
            got += n
            n = rig.reap(16)
            assert n >= ready or not fresh
        while got < 19:
            rig.poll()
            got += n
            n = rig.reap(16)
    finally:
        rig.close()


def test_a_hold_of_zero_holds_nothing() -> None:
    """`--hold-us 0` (the default with `--nap-us 0`): every pass hands back what it finds, no
    hold of a pass first."""
    rig = FunctionRig(executor="zlib", gather=8, hold_s=0.0)
    try:
        rig.write(16, _big(rig))
        rig.ring()
        rig.poll()
        for _, ready, n in _passes(rig, 16):
            assert n >= ready, "a completion was held with a hold of 0"
        assert rig.broker.holds == [0, 0]
    finally:
        rig.close()
