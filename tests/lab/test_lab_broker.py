"""The broker on a real kernel: `warpdrive serve` owns the lab's ZIP function through the guest's
vfio-pci and iommufd (the function is the ZIP model on the host behind QEMU's vfio-user-pci and
intel-iommu) and serves four client processes, each its own virtual function. The clients'
buffers are pinned into the function's IOAS by the broker; zlib judges every result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from warpdrive import binding

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]

# Four client processes, forked from one interpreter once it has imported warpdrive.zip (each
# interpreter start and import costs seconds of TCG CPU): each opens its own broker connection
# after the fork, so the broker sees four processes, as with four separate programs.
CLIENTS = textwrap.dedent("""
    import os, random, sys, traceback, zlib
    import warpdrive.zip as wz

    def client(seed):
        rng = random.Random(seed)
        eng = wz.default_engine()              # WARPDRIVE_DEVICE=broker:...
        assert eng.name.startswith("broker:"), eng.name
        for i in range(3):
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 2000))) * 9
            blob = wz.compress(data, wbits=31)
            assert zlib.decompress(blob, 31) == data
            assert wz.decompress(zlib.compress(data), wbits=15) == data

    pids = []
    for seed in range(4):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                client(seed)
                print("ok", os.getpid(), flush=True)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        pids.append(pid)
    sys.exit(sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in pids))
""")


def test_broker_owns_the_function_and_serves_four_processes(zip_bdf: str,
                                                            tmp_path: Path) -> None:
    sock = tmp_path / "broker.sock"
    log = tmp_path / "broker.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with binding.bound_to(zip_bdf), open(log, "wb") as logf:
        broker = subprocess.Popen([sys.executable, "-m", "warpdrive", "serve", zip_bdf,
                                   "--backend", "iommufd", "--socket", str(sock),
                                   "--spin-us", "500"],  # two vCPUs under TCG: do not hog one
                                  env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        try:
            deadline = time.monotonic() + 120
            while not sock.exists():
                assert broker.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the broker did not start"
                time.sleep(0.1)
            clients = subprocess.run([sys.executable, "-c", CLIENTS],
                                     env=dict(env, WARPDRIVE_DEVICE=f"broker:{sock}"),
                                     capture_output=True, text=True, timeout=900)
            assert clients.returncode == 0, clients.stderr + "\n--- broker:\n" + log.read_text()
            oks = clients.stdout.split()
            assert oks[::2] == ["ok"] * 4 and len(set(oks[1::2])) == 4, clients.stdout
            broker.send_signal(signal.SIGTERM)
            assert broker.wait(120) == 0, log.read_text()
        finally:
            if broker.poll() is None:
                broker.kill()
                broker.wait()
    text = log.read_text()
    assert f"broker: {zip_bdf}" in text or zip_bdf in text
    assert text.count("accepted client") == 4
    assert "hardware queue" in text
    assert "refused" not in text
