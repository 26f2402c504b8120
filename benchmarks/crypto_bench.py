"""AES-CBC on QEMU's virtio-crypto: warpdrive's user-space driver vs the kernel's virtio_crypto.

    python lab/run.py -- python benchmarks/crypto_bench.py [--quick]

Runs in the lab guest, in one boot, on the same virtio-crypto function:
  1. kernel path: the function on virtio-pci, the kernel's `virtio_crypto` driver, used through
     AF_ALG (`skcipher` bound by driver name `virtio_crypto_aes_cbc`, so the generic software
     AES cannot be measured by mistake; /proc/crypto is checked for that driver first). One
     request per sendmsg + recv, the synchronous way AF_ALG is normally used.
  2. warpdrive: the function moved to vfio-pci (warpdrive.binding), the `warpdrive.crypto`
     Cipher submitting batches of requests (one doorbell per batch) and polling the used ring
     (`warpdrive`), and again one request per doorbell, each waited for (`warpdrive-b1`, the
     kernel path's pattern).
  3. the function is moved back to virtio-pci and the kernel driver is checked again.

The two phases alternate for three rounds (the function is rebound each time), so both paths see
the same background load on the shared host; each (path, size) is a fresh worker process timed
over its hot loop only (setup excluded), and the median of the rounds is reported with min/max.
In the first round each (path, size) also runs once under `strace -f` for the syscall count.
Both paths write results into preallocated buffers (recv_into / Cipher.submit(out=...)).
The worker marks the hot loop with two stat() calls of impossible paths (`/@@wd-hot-begin@@`,
`/@@wd-hot-end@@`); every syscall line strace records between the two markers, in any thread of
the worker, is counted and divided by the ops in that loop. Timing calls sit outside the markers.
strace slows syscalls down, which is why the timed runs are separate.

Both paths run under TCG in the lab, so absolute numbers mean little: the ratio is the result.
Output: a table, then one JSON line (`{"bench": "crypto", "rows": [...], "ratio_4k": ...}`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KERNEL_DRIVER = "virtio_crypto_aes_cbc"
MARK_BEGIN = "/@@wd-hot-begin@@"
MARK_END = "/@@wd-hot-end@@"
SIZES = (64, 4096, 65536)
ROUNDS = 3  # kernel phase + warpdrive phase, alternated; the median is reported (1: --quick)
KEY = bytes(range(32))
IV = bytes(range(16, 32))


# ------------------------------------------------------------------------------- worker side
def _mark(path: str) -> None:
    try:
        os.stat(path)
    except OSError:
        pass


def _kernel_loop(size: int, ops: int, mark: bool) -> float:
    s = socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0)
    s.bind(("skcipher", KERNEL_DRIVER))
    s.setsockopt(socket.SOL_ALG, socket.ALG_SET_KEY, KEY)
    op, _ = s.accept()
    data = os.urandom(size)
    out = bytearray(size)
    # one warm-up request (lazy session creation in the driver)
    op.sendmsg_afalg([data], op=socket.ALG_OP_ENCRYPT, iv=IV)
    op.recv_into(out)
    t0 = time.perf_counter()
    if mark:
        _mark(MARK_BEGIN)
    for _ in range(ops):
        op.sendmsg_afalg([data], op=socket.ALG_OP_ENCRYPT, iv=IV)
        op.recv_into(out)
    if mark:
        _mark(MARK_END)
    dt = time.perf_counter() - t0
    op.close()
    s.close()
    return dt


def _warpdrive_loop(bdf: str, backend: str, size: int, ops: int, batch: int,
                    mark: bool) -> float:
    import warpdrive
    from warpdrive.crypto import Cipher

    with warpdrive.open(bdf, backend=backend) as dev, Cipher("aes-cbc", KEY, device=dev) as c:
        data = os.urandom(size)
        # results land in preallocated buffers, as the kernel path's recv_into does
        outs = [bytearray(size) for _ in range(batch)]
        for i in range(batch):  # warm-up
            c.submit(IV, data, out=outs[i])
        c.wait()
        t0 = time.perf_counter()
        if mark:
            _mark(MARK_BEGIN)
        done = 0
        while done < ops:
            n = min(batch, ops - done)
            for i in range(n):
                c.submit(IV, data, out=outs[i])
            for comp in c.wait():
                if comp.data is None:
                    raise SystemExit(f"request failed: status {comp.status}")
            done += n
        if mark:
            _mark(MARK_END)
        return time.perf_counter() - t0


def worker(args: argparse.Namespace) -> None:
    if args.worker == "kernel":
        dt = _kernel_loop(args.size, args.ops, args.mark)
    else:
        dt = _warpdrive_loop(args.bdf, args.backend, args.size, args.ops, args.batch, args.mark)
    print(json.dumps({"seconds": dt, "ops": args.ops}))


# ------------------------------------------------------------------------------- driver side
def find_crypto_bdf() -> str:
    for d in sorted(Path("/sys/bus/pci/devices").iterdir()):
        try:
            ids = ((d / "vendor").read_text().strip(), (d / "device").read_text().strip())
        except OSError:
            continue
        if ids == ("0x1af4", "0x1054"):
            return d.name
    raise SystemExit("no virtio-crypto function (1af4:1054) in this machine")


def driver_of(bdf: str) -> str | None:
    link = Path("/sys/bus/pci/devices", bdf, "driver")
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def proc_crypto_has(driver: str) -> bool:
    text = Path("/proc/crypto").read_text()
    return any(re.search(rf"^driver\s*:\s*{re.escape(driver)}\s*$", block, re.M)
               and re.search(r"^selftest\s*:\s*passed", block, re.M)
               for block in text.split("\n\n"))


def wait_for(cond, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def run_worker(base: list[str], strace: bool) -> tuple[dict, int | None]:  # type: ignore[type-arg]
    cmd = [sys.executable, str(Path(__file__).resolve()), *base]
    trace = None
    if strace:
        fd, trace = tempfile.mkstemp(prefix="wd-strace-", suffix=".txt")
        os.close(fd)
        cmd = ["strace", "-f", "-qq", "-o", trace, *cmd, "--mark"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"worker {' '.join(base)} failed:\n{proc.stdout}{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    count = None
    if trace is not None:
        count = count_hot_syscalls(Path(trace).read_text())
        os.unlink(trace)
    return result, count


def count_hot_syscalls(trace: str) -> int:
    """Syscall lines strictly between the begin and end markers (a call split by another thread
    into `<unfinished ...>` and `<... resumed>` counts once)."""
    inside = False
    n = 0
    for line in trace.splitlines():
        if MARK_BEGIN in line:
            inside = True
            continue
        if MARK_END in line:
            if not inside:
                raise SystemExit("strace: end marker before begin marker")
            return n
        if not inside or "resumed>" in line or line.split(" ", 1)[-1].startswith("+++") \
                or "--- SIG" in line:
            continue
        n += 1
    raise SystemExit("strace: hot-loop markers not found in the trace")


def timed(path: str, size: int, ops: int, extra: list[str]) -> float:
    base = ["--worker", path, "--size", str(size), "--ops", str(ops), *extra]
    return float(run_worker(base, strace=False)[0]["seconds"])


def traced(path: str, size: int, ops: int, extra: list[str]) -> float:
    base = ["--worker", path, "--size", str(size), "--ops", str(ops), *extra]
    count = run_worker(base, strace=True)[1]
    assert count is not None
    return round(count / ops, 3)


def row(label: str, size: int, ops: int, seconds: list[float], per_op: float) -> dict:  # type: ignore[type-arg]
    rates = sorted(ops / s for s in seconds)
    med = rates[len(rates) // 2]
    return {"path": label, "size": size, "ops": ops, "ops_s": round(med, 1),
            "ops_s_min": round(rates[0], 1), "ops_s_max": round(rates[-1], 1),
            "MiB_s": round(med * size / 2**20, 3), "syscalls_per_op": per_op}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer ops per size")
    p.add_argument("--backend", default="auto", help="warpdrive backend (auto/vfio/iommufd)")
    p.add_argument("--batch", type=int, default=32, help="warpdrive requests per doorbell")
    p.add_argument("--worker", choices=("kernel", "warpdrive"), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--ops", type=int, help=argparse.SUPPRESS)
    p.add_argument("--bdf", help=argparse.SUPPRESS)
    p.add_argument("--mark", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    if os.environ.get("WARPDRIVE_IN_LAB") != "1":
        raise SystemExit("run this in the lab guest: python lab/run.py -- python "
                         "benchmarks/crypto_bench.py (it rebinds the virtio-crypto function)")
    if shutil.which("strace") is None:
        raise SystemExit("strace not found (bash lab/install-deps.sh installs it)")
    from warpdrive import binding

    bdf = find_crypto_bdf()
    # ops per size: enough for a stable rate under TCG, few enough for one boot
    base_ops = {64: 2000, 4096: 2000, 65536: 300}
    if args.quick:
        base_ops = {64: 300, 4096: 300, 65536: 60}
    trace_ops = {64: 200, 4096: 200, 65536: 40}
    if args.quick:
        trace_ops = {64: 64, 4096: 64, 65536: 16}
        global ROUNDS
        ROUNDS = 1

    start_driver = driver_of(bdf)
    if start_driver != "virtio-pci":
        raise SystemExit(f"{bdf} is on {start_driver}, expected virtio-pci at the start")
    extra = ["--bdf", bdf, "--backend", args.backend, "--batch", str(args.batch)]
    extra1 = ["--bdf", bdf, "--backend", args.backend, "--batch", "1"]
    # (label, worker path, extra args, ops factor): warpdrive-b1 is one request per doorbell,
    # each waited for before the next -- the kernel path's pattern.
    paths = [("warpdrive", "warpdrive", extra, 1), ("warpdrive-b1", "warpdrive", extra1, 2)]
    seconds: dict[tuple[str, int], list[float]] = {}
    per_op: dict[tuple[str, int], float] = {}
    for rnd in range(ROUNDS):
        # kernel phase: the function on virtio-pci, driven by virtio_crypto
        wait_for(lambda: driver_of(bdf) == "virtio-pci", f"{bdf} on virtio-pci")
        wait_for(lambda: proc_crypto_has(KERNEL_DRIVER), f"{KERNEL_DRIVER} in /proc/crypto")
        for size in SIZES:
            seconds.setdefault(("kernel", size), []).append(
                timed("kernel", size, base_ops[size], []))
            if rnd == 0:
                per_op["kernel", size] = traced("kernel", size, trace_ops[size], [])
        # warpdrive phase: the same function on vfio-pci
        with binding.bound_to(bdf):
            if proc_crypto_has(KERNEL_DRIVER):
                raise SystemExit(f"{KERNEL_DRIVER} still registered with {bdf} on vfio-pci")
            for label, worker_path, wextra, div in paths:
                for size in SIZES:
                    seconds.setdefault((label, size), []).append(
                        timed(worker_path, size, base_ops[size] // div, wextra))
                    if rnd == 0:
                        per_op[label, size] = traced(worker_path, size, trace_ops[size], wextra)
    wait_for(lambda: driver_of(bdf) == "virtio-pci", f"{bdf} back on virtio-pci")
    wait_for(lambda: proc_crypto_has(KERNEL_DRIVER), f"{KERNEL_DRIVER} back in /proc/crypto")
    rows = []
    for label, div in (("kernel", 1), ("warpdrive", 1), ("warpdrive-b1", 2)):
        for size in SIZES:
            rows.append(row(label, size, base_ops[size] // div, seconds[label, size],
                            per_op[label, size]))

    by = {(r["path"], r["size"]): r for r in rows}
    ratios = {size: round(by["warpdrive", size]["ops_s"] / by["kernel", size]["ops_s"], 2)
              for size in SIZES}
    print(f"AES-256-CBC on virtio-crypto {bdf} (QEMU builtin backend, TCG guest); "
          f"warpdrive batch {args.batch}, backend {args.backend}")
    print(f"{'path':<13} {'size':>6} {'ops':>6} {'ops/s':>10} {'(min-max)':>19} {'MiB/s':>9} "
          f"{'syscalls/op':>12} {'x kernel':>9}")
    for r in rows:
        kr = by["kernel", r["size"]]["ops_s"]
        ratio = f"{r['ops_s'] / kr:.2f}" if r["path"] != "kernel" else ""
        spread = f"({r['ops_s_min']:.0f}-{r['ops_s_max']:.0f})"
        print(f"{r['path']:<13} {r['size']:>6} {r['ops']:>6} {r['ops_s']:>10.1f} {spread:>19} "
              f"{r['MiB_s']:>9.3f} {r['syscalls_per_op']:>12.3f} {ratio:>9}")
    print(json.dumps({"bench": "crypto", "device": bdf, "algorithm": "aes-256-cbc",
                      "batch": args.batch, "backend": args.backend, "rounds": ROUNDS,
                      "rows": rows,
                      "ratio": {str(k): v for k, v in ratios.items()},
                      "ratio_4k": ratios[4096],
                      "ratio_b1": {str(k): round(by["warpdrive-b1", k]["ops_s"]
                                                  / by["kernel", k]["ops_s"], 2) for k in SIZES},
                      "target": {"ratio_4k": 2.0, "warpdrive_syscalls_per_op": 0}}))


if __name__ == "__main__":
    main()
