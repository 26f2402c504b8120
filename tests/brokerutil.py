"""Test helpers for the broker: a broker in a thread of the test process (so tests can look at
its state) over the bundled ZIP model, and a raw QM client that posts hand-made SQEs."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rigs.broker import SQE, sqe_words
from tests.ziputil import listening_process
from warpdrive.backends import open_device
from warpdrive.devices.hisi_qm.bringup import QmDevice
from warpdrive.devices.hisi_qm.queue import QmQueue
from warpdrive.devices.zip import hw
from warpdrive.emu.server import VfioUserServer
from warpdrive.memory import DmaBuffer
from warpdrive.serve.broker import Broker
from warpdrive.serve.run import make_server, open_shared_device

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunningBroker:
    broker: Broker
    server: VfioUserServer
    path: str
    thread: threading.Thread

    @property
    def name(self) -> str:
        return "broker:" + self.path


@contextlib.contextmanager
def broker_thread(path: str, *, model_options: dict[str, str] | None = None,
                  broker_opts: dict[str, Any] | None = None, emu_opts: dict[str, Any] | None = None,
                  **server_opts: Any) -> Iterator[RunningBroker]:
    dev = open_shared_device("emu", model_options=model_options, **(emu_opts or {}))
    broker = Broker(dev, **(broker_opts or {}))
    server = make_server(broker, path, **server_opts)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not os.path.exists(path):
        assert thread.is_alive() and time.monotonic() < deadline, "broker did not start"
        time.sleep(0.01)
    try:
        yield RunningBroker(broker, server, path, thread)
    finally:
        server.stop()
        thread.join(20)
        assert not thread.is_alive(), "the broker's loop did not stop"
        broker.close()


def serve_process(sock: str, *args: str,
                  text: bool = False) -> contextlib.AbstractContextManager[subprocess.Popen[Any]]:
    """`warpdrive serve emu --socket sock *args` in a process of its own: listening_process()."""
    return listening_process([sys.executable, "-m", "warpdrive", "serve", "emu", "--socket", sock,
                              *args], sock, text=text)


def eventually(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Wait for `cond` (a bound, not a timing assertion: it fails only if it never holds)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


class RawZip:
    """A client that brings its function up with the QM layer and posts SQEs it builds itself
    (to send the broker what a correct driver never would)."""

    def __init__(self, name: str, size: int = 0x10000, doorbell: str = "mmap") -> None:
        self.dev = open_device(name)
        self.qm = QmDevice(self.dev, hw.ZIP, doorbell=doorbell, interrupts=False)
        self.q: QmQueue = self.qm.start_queue(hw.ZIP_QC_COMPRESS, depth=64)
        self.src: DmaBuffer = self.dev.dma.alloc(size)
        self.dst: DmaBuffer = self.dev.dma.alloc(size)
        self.size = size

    def words(self, **dw: int) -> list[int]:
        assert self.src.iova is not None and self.dst.iova is not None
        return sqe_words(self.src.iova, self.dst.iova, alg=hw.ALG_DEFLATE, **dw)

    def run(self, words: list[int], timeout: float = 30.0) -> tuple[int, int]:
        """Post one SQE, wait for its CQE; (status, produced)."""
        q = self.q
        off = q.post(object())
        q.sq[off:off + hw.SQE_SIZE] = SQE.pack(*words)
        q.ring()
        q.wait(timeout)
        out = SQE.unpack_from(q.sq, off)
        return out[hw.DW_STATUS] & hw.STATUS_MASK, out[hw.DW_PRODUCED]

    def run_many(self, sqes: list[list[int]], timeout: float = 30.0) -> list[tuple[int, int]]:
        """Post the SQEs in consecutive slots behind one doorbell, wait for all their CQEs;
        (status, produced) of each, in order."""
        q = self.q
        offs = []
        for words in sqes:
            off = q.post(object())
            q.sq[off:off + hw.SQE_SIZE] = SQE.pack(*words)
            offs.append(off)
        q.ring()
        done = 0
        while done < len(sqes):
            done += len(q.wait(timeout))
        return [(w[hw.DW_STATUS] & hw.STATUS_MASK, w[hw.DW_PRODUCED])
                for w in (SQE.unpack_from(q.sq, off) for off in offs)]

    def close(self) -> None:
        self.qm.close()
        self.dev.close()
