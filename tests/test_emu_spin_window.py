"""The server's spin window (`warpdrive.emu.server.SpinWindow`): how long it keeps polling
mapped doorbells after the last work. It starts short, doubles while work keeps coming back soon
after the server fell asleep, drops back to the shortest after a long quiet spell, and stays as
given when the caller chose one. The server runs in a thread of the test process with testdev
(its real socket and mapped doorbell page, a real client)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.test_vfiouser_client import Ring
from warpdrive.backends.vfiouser.client import open_vfio_user
from warpdrive.emu.models import testdev as T
from warpdrive.emu.server import SpinWindow, VfioUserServer


def test_window_grows_while_work_returns_and_backs_off_when_quiet() -> None:
    w = SpinWindow(0.2)
    assert w.s == SpinWindow.LOW_S == 0.02
    t = 100.0
    for want in (0.04, 0.08, 0.16, 0.2, 0.2):
        w.slept(t)
        t += 0.05  # back within the longest window: a longer spin would have caught it
        w.woke(t)
        assert w.s == want
    w.slept(t)
    w.woke(t + 0.3)  # quiet for longer than the longest window: start short again
    assert w.s == SpinWindow.LOW_S
    w.woke(t + 1.0)  # activity without a sleep before it changes nothing
    assert w.s == SpinWindow.LOW_S


def test_a_given_window_stays_fixed() -> None:
    for s in (0.0, 0.05):
        w = SpinWindow(s, fixed=True)
        w.slept(1.0)
        w.woke(1.001)
        assert w.s == s
    assert SpinWindow(0.001).s == 0.001  # a model whose longest window is short keeps it


class SlowSpin(T.TestDevice):
    poll_spin_s = 1.0  # any gap in this test counts as "back soon"; a window stays under 10 s


def _asleep(dev, server: VfioUserServer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not dev._need_wakeup.read():
        assert time.monotonic() < deadline, f"the server kept polling ({server.window.s} s)"
        time.sleep(0.002)


@contextlib.contextmanager
def _served(server: VfioUserServer, path: str) -> Iterator[Any]:
    """`server` in a thread named "server", and a client of it; both ended after."""
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="server")
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        dev = open_vfio_user(path)
        try:
            yield dev
        finally:
            dev.close()
    finally:
        server.stop()
        thread.join(5)
    assert not thread.is_alive()


def test_server_window_follows_its_client(tmp_path: Path) -> None:
    path = str(tmp_path / "t.sock")
    server = VfioUserServer(SlowSpin(), path)
    assert server.window.s == SpinWindow.LOW_S  # no spin_s given: the adaptive window
    with _served(server, path) as dev:
        ring = Ring(dev)
        src, dst = dev.dma.alloc(4096), dev.dma.alloc(4096)
        for _ in range(4):  # each job comes soon after the server fell asleep
            _asleep(dev, server)
            before = server.window.s  # (read while it sleeps: settled)
            kicks = dev.kicks
            assert ring.wait(ring.submit(src.iova, dst.iova, 64)) == T.STATUS_DONE
            assert dev.kicks == kicks + 1  # the store found it asleep: one wake-up kick
            deadline = time.monotonic() + 10  # (the job is done before the server notes
            while server.window.s == before < SlowSpin.poll_spin_s:  # its wake-up)
                assert time.monotonic() < deadline, "the window did not grow"
                time.sleep(0.0005)
            assert server.window.s == min(before * 2, SlowSpin.poll_spin_s)
    assert VfioUserServer(SlowSpin(), str(tmp_path / "u.sock"), spin_s=0.5).window.s == 0.5


def test_yields_that_keep_losing_time_slices_turn_the_spin_to_naps(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """While the spin's yields keep losing the CPU for time slices (`syscalls.YieldWatch`:
    another program's busy loop shares it), its empty passes nap (CONTENDED_NAP_S) instead,
    for YieldWatch.NAP_FOR_S, then a yield looks again; jobs are served meanwhile."""
    import warpdrive.emu.server as S
    from warpdrive.syscalls import YieldWatch

    real_yield, real_sleep = os.sched_yield, time.sleep
    calls: list[str] = []  # the server thread's yields and naps, in order
    steal = threading.Event()

    def on_server() -> bool:
        return threading.current_thread().name == "server"

    def sched_yield() -> None:
        if on_server():
            calls.append("yield")
            if steal.is_set():  # as if another program's busy loop took the CPU for a slice
                real_sleep(3 * YieldWatch.STOLEN_S)
                return
        real_yield()

    def sleep(s: float) -> None:
        if on_server() and s == S.VfioUserServer.CONTENDED_NAP_S:
            calls.append("nap")
        real_sleep(s)

    monkeypatch.setattr(S.os, "sched_yield", sched_yield)
    monkeypatch.setattr(S.time, "sleep", sleep)
    path = str(tmp_path / "t.sock")
    server = VfioUserServer(SlowSpin(), path, spin_s=10.0)  # (keeps spinning)
    with _served(server, path) as dev:
        deadline = time.monotonic() + 10
        ring = Ring(dev)
        src, dst = dev.dma.alloc(4096), dev.dma.alloc(4096)
        assert ring.wait(ring.submit(src.iova, dst.iova, 64)) == T.STATUS_DONE
        while "yield" not in calls:  # spinning, yielding
            assert time.monotonic() < deadline
            real_sleep(0.001)
        steal.set()
        while "nap" not in calls:
            assert time.monotonic() < deadline, "no naps while the yields lost slices"
            real_sleep(0.001)
        steal.clear()
        first = calls.index("nap")
        assert calls[first - 1] == "yield"
        assert ring.wait(ring.submit(src.iova, dst.iova, 64)) == T.STATUS_DONE
        while "yield" not in calls[first:]:  # NAP_FOR_S later: a yield again
            assert time.monotonic() < deadline, "the naps did not end"
            real_sleep(0.001)
        assert calls[first:].index("yield") > 1  # naps in between, not one


def test_the_serving_thread_gets_its_timer_slack_back(tmp_path: Path) -> None:
    """The loop naps with a 1 us timer slack; a thread that called `serve_forever` has its
    own slack again once it returns (a caller's thread is not left with a 1 us slack)."""
    from warpdrive import syscalls as sc

    path = str(tmp_path / "s.sock")
    server = VfioUserServer(T.TestDevice(), path)
    seen: list[int] = []

    def serve() -> None:
        sc.set_timer_slack(123_456)
        try:
            server.serve_forever()
        finally:
            seen.append(sc.timer_slack())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.stop()
    thread.join(5)
    assert seen == [123_456]
