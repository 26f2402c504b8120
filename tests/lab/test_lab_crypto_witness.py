"""The independent witness for warpdrive's virtio-crypto model: Linux's own virtio_crypto driver.

The model (`crypto_model_bdf`, `warpdrive emu crypto` on the host, attached with QEMU's
vfio-user-pci) is judged by a driver we did not write: with it alone on virtio_crypto, the kernel
registers cbc(aes) and runs its crypto self-tests on it (every AES-CBC test vector in several
buffer layouts: in place, split, misaligned, crossing pages; with the extra tests, random
requests against the generic implementation), and AF_ALG requests through the kernel driver must
match `cryptography`. Facts: docs/research/virtio-crypto.md.

The lab's default boot keeps Linux's virtio_crypto off (initcall_blacklist, lab/vm.py), so these
tests ask for a boot of their own (lab_boot "virtio_crypto": the driver on, QEMU's virtio-crypto
left out, nothing moves a function but these tests), one per lab kernel."""

from __future__ import annotations

import os
import random
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from crypto_vectors import reference

from lab import virtio_crypto as vc
from lab.pytest_lab import find_pci

pytestmark = [pytest.mark.lab, pytest.mark.lab_boot("virtio_crypto")]


@pytest.fixture(scope="module")
def on_the_model(crypto_model_bdf: str, lab_kernel_dir: Path) -> Iterator[float]:
    """cbc(aes) registered with the model as the only virtio_crypto function; the self-test
    duration. Where the kernel has the full (fuzzing) self-tests, they judge the model: the lab
    boots with them off and they are on for this registration."""
    if not vc.selftests_enabled(lab_kernel_dir / "config"):
        pytest.skip("this lab kernel runs no crypto self-tests (CRYPTO_MANAGER_DISABLE_TESTS)")
    if not vc.VIRTIO_CRYPTO_DRIVER.is_dir():
        pytest.skip("Linux's virtio_crypto is off in this boot (lab/vm.py initcall_blacklist): "
                    "these tests run in the lab_boot('virtio_crypto') guest that "
                    "lab/pytest_lab.py boots for them (by hand: lab/run.py --virtio-crypto)")
    vc.wait_settled()  # the boot's own registration and self-tests are done
    others = [b for b in find_pci(0x1AF4, 0x1054) if b != crypto_model_bdf]
    with vc.registered_on(crypto_model_bdf, others) as (took, full):
        has_full = vc.slow_selftests_built(lab_kernel_dir / "config")
        assert full == has_full, f"full self-tests on: {full}, kernel has them: {has_full}"
        yield took


def test_kernel_selftests_pass_on_the_model(on_the_model: float, crypto_model_bdf: str) -> None:
    [entry] = vc.alg_entries()
    assert entry["name"] == "cbc(aes)" and entry["driver"] == vc.KERNEL_DRIVER
    assert entry["selftest"] == "passed" and entry["type"] == "skcipher"
    assert vc.kernel_functions() == [crypto_model_bdf]
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    assert not [ln for ln in dmesg.splitlines() if "alg:" in ln and "virtio" in ln
                and ("fail" in ln or "mismatch" in ln)]
    results = os.environ.get("WARPDRIVE_LAB_RESULTS")
    if results:  # for the record: the line the kernel printed, and how long the tests took
        block = "\n".join(f"{k:<12} : {v}" for k, v in entry.items())
        Path(results, "crypto-model-selftest.txt").write_text(
            f"{block}\nself-tests took {on_the_model:.1f} s on {crypto_model_bdf}\n")


AF_ALG_RESTRICT = Path("/proc/sys/crypto/af_alg_restrict")  # Linux >= 7.3


def test_af_alg_through_virtio_crypto_on_the_model_matches_cryptography(
        on_the_model: float) -> None:
    if AF_ALG_RESTRICT.exists():
        # 7.3: AF_ALG allocates with CRYPTO_ALG_ASYNC in the mask, so no async driver (as
        # virtio_crypto is) is reachable, restricted or not (docs/research/virtio-crypto.md §10).
        saved = AF_ALG_RESTRICT.read_text()
        try:
            for level in ("1", "0"):
                AF_ALG_RESTRICT.write_text(level)
                with socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0) as s, \
                        pytest.raises(FileNotFoundError):
                    s.bind(("skcipher", vc.KERNEL_DRIVER))
        finally:
            AF_ALG_RESTRICT.write_text(saved)
        pytest.skip("Linux >= 7.3: AF_ALG cannot reach an async driver (ENOENT checked); "
                    "the self-tests are this kernel's judge of the model")
    rng = random.Random(0xAF)
    for ksize in (16, 24, 32):
        key = rng.randbytes(ksize)
        with socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0) as s:
            s.bind(("skcipher", vc.KERNEL_DRIVER))  # by driver name: never the generic one
            s.setsockopt(socket.SOL_ALG, socket.ALG_SET_KEY, key)
            op, _ = s.accept()
            with op:
                for n in (16, 4096, 65536, 16 * rng.randint(2, 4096)):
                    iv, data = rng.randbytes(16), rng.randbytes(n)
                    op.sendmsg_afalg([data], op=socket.ALG_OP_ENCRYPT, iv=iv)
                    ct = op.recv(n)
                    assert ct == reference("aes-cbc", key, iv, data), (ksize, n)
                    op.sendmsg_afalg([ct], op=socket.ALG_OP_DECRYPT, iv=iv)
                    assert op.recv(n) == data, (ksize, n)
