"""Encrypt and decrypt with AES on a virtio-crypto device from user space.

    python lab/run.py -- python examples/crypto_aes.py            # in the lab guest
    python examples/crypto_aes.py 0000:00:02.0                    # a function already on vfio-pci

In the lab (WARPDRIVE_IN_LAB=1) the example finds QEMU's virtio-crypto function, moves it to
vfio-pci for the duration and gives it back to the kernel's virtio_crypto driver at the end.
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import warpdrive
from warpdrive.crypto import Cipher, algorithms
from warpdrive.errors import WarpdriveError


def find_virtio_crypto() -> str:
    for d in sorted(Path("/sys/bus/pci/devices").iterdir()):
        if (d / "vendor").read_text().strip() == "0x1af4" and \
                (d / "device").read_text().strip() == "0x1054":
            return d.name
    raise SystemExit("no virtio-crypto function (1af4:1054) found")


def main() -> int:
    bdf = sys.argv[1] if len(sys.argv) > 1 else find_virtio_crypto()
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    iv = os.urandom(16)
    message = b"warpdrive: zero syscalls per request, one doorbell per batch.".ljust(64, b".")
    with ExitStack() as stack:
        if os.environ.get("WARPDRIVE_IN_LAB") == "1":
            from warpdrive import binding

            stack.enter_context(binding.bound_to(bdf))
        dev = stack.enter_context(warpdrive.open(bdf))
        print(f"{bdf} opened through {dev.backend}; the device advertises {algorithms(dev)}")

        with Cipher("aes-cbc", key, device=dev) as aes:
            ct = aes.encrypt(iv, message)
            print(f"aes-256-cbc  ciphertext {ct[:16].hex()}...  ({len(ct)} bytes)")
            assert aes.decrypt(iv, ct) == message

            # A batch: staged, sent with one doorbell, completions polled from the used ring.
            blocks = [os.urandom(4096) for _ in range(16)]
            ids = {aes.submit(iv, b): b for b in blocks}
            done = aes.wait()
            print(f"batch of {len(done)} x 4 KiB encrypted, all ok: "
                  f"{all(c.ok for c in done) and {c.id for c in done} == set(ids)}")

        # Not advertised by QEMU's builtin backend, but implemented by it: tried, and it works.
        with Cipher("aes-ctr", key, device=dev) as ctr:
            print(f"aes-256-ctr  ciphertext {ctr.encrypt(iv, message)[:16].hex()}...")

        try:
            Cipher("aes-cbc", key[:10], device=dev)
        except WarpdriveError as e:
            print(f"refused before reaching the device: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
