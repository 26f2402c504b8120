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

CLIENT = textwrap.dedent("""
    import os, random, sys, zlib
    import warpdrive.zip as wz
    rng = random.Random(int(sys.argv[1]))
    eng = wz.default_engine()              # WARPDRIVE_DEVICE=broker:...
    assert eng.name.startswith("broker:"), eng.name
    for i in range(3):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 2000))) * 9
        blob = wz.compress(data, wbits=31)
        assert zlib.decompress(blob, 31) == data
        assert wz.decompress(zlib.compress(data), wbits=15) == data
    print("ok", os.getpid())
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
            clients = [subprocess.Popen([sys.executable, "-c", CLIENT, str(i)],
                                        env=dict(env, WARPDRIVE_DEVICE=f"broker:{sock}"),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True) for i in range(4)]
            for c in clients:
                out, err = c.communicate(timeout=900)
                assert c.returncode == 0, err + "\n--- broker:\n" + log.read_text()
                assert out.startswith("ok")
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
