"""Several threads on one QM function: queues started at once get their own numbers, and every
thread sleeping on the function's one completion interrupt (the EQ's MSI, an eventfd) wakes
when its job completes, not at its sleep's bound. Judged on the bundled ZIP model served in
this process (so the test sees when the model signals each queue) against `zlib`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import warpdrive.zip as wz
from tests.test_emu_server_errors import serve
from warpdrive.devices.hisi_qm.bringup import QmDevice
from warpdrive.devices.zip.engine import COMPRESS, DECOMPRESS
from warpdrive.emu.models.zip import ZipModel
from warpdrive.emu.server import VfioUserServer


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, ZipModel, VfioUserServer]]:
    # zlib (not libdeflate) runs the jobs: slower, so they outlast the poll into the sleep
    model = ZipModel(workers="1", codec="libz")
    path = str(tmp_path / "zip.sock")
    server, thread = serve(model, path)
    yield path, model, server
    server.stop()
    thread.join(5)
    assert not thread.is_alive()


def test_queues_started_at_once_by_two_threads_get_their_own_numbers(served, monkeypatch) -> None:
    """The queue number is registered after the queue's mailboxes: two lanes starting at once
    (a compress and a decompress thread on a fresh engine) both took queue 0, and their jobs
    then shared one ring ("CQE 3 names SQ slot 0, which holds no job", then a timeout)."""
    path, _model, _server = served
    real = QmDevice.mailbox_ctx

    def slow(self: QmDevice, cmd: int, queue: int, ctx: bytes) -> None:
        time.sleep(0.02)  # (widens the window between choosing a number and registering it)
        real(self, cmd, queue, ctx)

    monkeypatch.setattr(QmDevice, "mailbox_ctx", slow)
    eng = wz.open_engine("vfio-user:" + path, timeout=10.0, announce=False)
    try:
        start = threading.Barrier(2)
        qns: dict[int, int] = {}

        def first_use(lane: int) -> None:
            start.wait()
            qns[lane] = eng.lanes[lane].q.qn

        threads = [threading.Thread(target=first_use, args=(i,)) for i in (COMPRESS, DECOMPRESS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert qns[COMPRESS] != qns[DECOMPRESS]
        data = b"two queues " * 5000
        assert wz.decompress(wz.compress(data, device=eng), device=eng) == data
    finally:
        eng.close()

