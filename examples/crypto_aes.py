"""Encrypt a file (or some random data) with AES on virtio-crypto, decrypt it, and check both.

    python examples/crypto_aes.py [FILE] [--mode cbc|ctr|ecb|xts] [--device NAME] [--sleep]
    python lab/run.py -- python examples/crypto_aes.py      # in the lab, on QEMU's function

With no `--device`, warpdrive picks the first virtio-crypto function bound to vfio-pci, else the
bundled device model (emu:crypto, which needs `pip install 'warpdrive[emu-crypto]'`), and says
which (the `warpdrive.crypto` logger, shown here). In the lab guest, QEMU's function is moved to
vfio-pci for the run and handed back to the kernel's virtio_crypto driver afterwards.

The data goes in one call, whatever its size: longer than a request (64 KiB) it is split and
chained as the mode requires (XTS: one data unit, sent whole). Then the same data goes again as a
batch of 4 KiB sectors, one doorbell for all of them. The ciphertext is checked against
`cryptography` when it is installed; the round trip always.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from warpdrive.crypto import Cipher, algorithms, close_devices
from warpdrive.errors import WarpdriveError

KEYS = {"cbc": 32, "ctr": 32, "ecb": 32, "xts": 64}  # AES-256 (XTS: two AES-256 keys)


def reference(mode: str, key: bytes, iv: bytes | None, data: bytes) -> bytes | None:
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher as C
        from cryptography.hazmat.primitives.ciphers import algorithms as A
        from cryptography.hazmat.primitives.ciphers import modes as M
    except ImportError:
        return None
    m = {"cbc": lambda: M.CBC(iv), "ctr": lambda: M.CTR(iv), "ecb": lambda: M.ECB(),
         "xts": lambda: M.XTS(iv)}[mode]()
    enc = C(A.AES(key), m).encryptor()
    return enc.update(data) + enc.finalize()


def lab_function() -> str:
    """QEMU's virtio-crypto function in the lab guest (not warpdrive's model at 00:11.0)."""
    for d in sorted(Path("/sys/bus/pci/devices").iterdir()):
        ids = ((d / "vendor").read_text().strip(), (d / "device").read_text().strip())
        if ids == ("0x1af4", "0x1054") and (d / "subsystem_device").read_text().strip() != "0x5744":
            return d.name
    raise SystemExit("no virtio-crypto function (1af4:1054) in this guest")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", nargs="?", help="data to encrypt (default: 1 MiB of random bytes)")
    ap.add_argument("--mode", choices=list(KEYS), default="cbc")
    ap.add_argument("--device", help="PCI address, emu:crypto or vfio-user:PATH (default: auto)")
    ap.add_argument("--sleep", action="store_true",
                    help="wait on the MSI-X interrupt instead of busy-polling")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        data = Path(args.file).read_bytes() if args.file else os.urandom(1 << 20)
    except OSError as e:
        print(f"crypto_aes: cannot read {args.file}: {e.strerror or e}", file=sys.stderr)
        return 1
    data = data[:len(data) - len(data) % 16]  # the device takes whole AES blocks only
    if not data:
        raise SystemExit(f"crypto_aes: {args.file} has less than 16 bytes: give a longer file")
    key = os.urandom(KEYS[args.mode])
    iv = None if args.mode == "ecb" else os.urandom(16)
    with ExitStack() as stack:
        device = args.device
        if device is None and os.environ.get("WARPDRIVE_IN_LAB") == "1":
            from lab import virtio_crypto
            from warpdrive import binding

            device = lab_function()
            virtio_crypto.wait_settled()  # never take a function the kernel is still testing
            stack.enter_context(binding.bound_to(device))
            stack.callback(close_devices)  # release it before it goes back to the kernel
        try:
            c = stack.enter_context(Cipher(f"aes-{args.mode}", key, device=device,
                                           poll=not args.sleep))
        except WarpdriveError as e:
            print(f"crypto_aes: {e}", file=sys.stderr)
            return 1
        print(f"{c.device.name} ({c.device.backend}) advertises {algorithms(c.device)}")
        t = time.monotonic()
        ct = c.encrypt(iv, data)
        t_enc = time.monotonic() - t
        assert c.decrypt(iv, ct) == data, "round trip failed"
        ref = reference(args.mode, key, iv, data)
        verdict = "matches cryptography" if ref == ct else (
            "cryptography not installed" if ref is None else "DIFFERS from cryptography")
        print(f"aes-{args.mode}: {len(data)} bytes in one call ({-(-len(data) // c.max_request)}"
              f" request(s) of <= {c.max_request} bytes): {len(data) / t_enc / 1e6:.2f} MB/s, "
              f"round trip ok, ciphertext {verdict}")
        if args.mode != "xts":
            # sectors as a batch: each its own request, all sent with one doorbell
            sectors = [data[i:i + 4096] for i in range(0, len(data), 4096)]
            ivs = [iv if iv is None else (int.from_bytes(iv, "big") + k).to_bytes(16, "big")
                   for k in range(len(sectors))]
            t = time.monotonic()
            ids = [c.submit(v, s) for v, s in zip(ivs, sectors)]
            done = {x.id: x for x in c.wait()}
            secs = time.monotonic() - t
            ok = all(done[i].ok for i in ids)
            print(f"batch: {len(sectors)} sectors of 4 KiB, {len(sectors) / secs:.0f} "
                  f"requests/s, all ok: {ok}")
        if ref is not None and ref != ct:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
