"""DMA through the IOMMU with QEMU's edu device: RAM -> edu -> RAM, with an MSI on completion.

Run it in the lab guest (binds edu to vfio-pci there if needed, and back afterwards):

    python lab/run.py -- python examples/edu_dma.py [--backend auto|iommufd|vfio] [BDF]

Outside the lab it never binds anything: bind the device yourself first (`warpdrive bind BDF`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python examples/edu_dma.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import warpdrive
from warpdrive import pci
from warpdrive.devices.edu import DEVICE_ID, VENDOR_ID, Edu
from warpdrive.errors import WarpdriveError


def find_edu() -> str:
    for fn in pci.devices():
        if (fn.vendor, fn.device) == (VENDOR_ID, DEVICE_ID):
            return fn.bdf
    raise SystemExit("no edu device (1234:11e8) on this machine; start QEMU with -device edu")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bdf", nargs="?", help="edu's PCI address (default: the first edu found)")
    ap.add_argument("--backend", default="auto", choices=("auto", "iommufd", "vfio"))
    ap.add_argument("--size", type=int, default=4096, help="bytes to move (<= 4096)")
    args = ap.parse_args()
    bdf = args.bdf or find_edu()

    binding: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if os.environ.get("WARPDRIVE_IN_LAB") == "1":
        from warpdrive import binding as b

        binding = b.bound_to(bdf)
    try:
        with binding, warpdrive.open(bdf, backend=args.backend) as dev:
            edu = Edu(dev)
            major, minor = edu.identification
            print(f"opened {bdf} via {dev.backend}: edu {major}.{minor}, alive={edu.is_alive()}")
            print(f"  IOVA ranges {', '.join(map(str, dev.dma.iova_ranges()))} "
                  f"(mask {dev.dma.dma_mask:#x})")
            info = getattr(dev, "iommu_info", None)
            if info is not None:
                print(f"  IOMMU: {info.describe()}")
            print(f"  factorial(10) = {edu.factorial(10)} (polled), "
                  f"factorial(12) = {edu.factorial(12, irq=True)} (MSI)")

            src = dev.dma.alloc(args.size)
            dst = dev.dma.alloc(args.size)
            payload = os.urandom(args.size)
            src.write(0, payload)
            t0 = time.monotonic()
            edu.dma_to_device(src)
            edu.dma_from_device(dst)
            took = time.monotonic() - t0
            ok = dst.read(0, args.size) == payload
            print(f"  DMA {args.size} bytes RAM(IOVA {src.iova:#x}) -> edu -> RAM(IOVA "
                  f"{dst.iova:#x}) in {took * 1000:.0f} ms, MSI on each: "
                  f"{'data matches' if ok else 'DATA MISMATCH'}")
            return 0 if ok else 1
    except WarpdriveError as e:
        print(f"edu_dma: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
