"""AES-256-CBC through warpdrive's virtio-crypto driver, against the kernel and against software.

    python lab/run.py -- python benchmarks/crypto_bench.py [--quick]    # in the lab guest
    python benchmarks/crypto_bench.py [--quick]                         # on the host
    python lab/run.py -- python benchmarks/crypto_bench.py --driver     # the driver alone

In the lab guest (two virtio-crypto functions: QEMU's builtin backend and warpdrive's model over
vfio-user), per function:
  * `kernel`: Linux's virtio_crypto through AF_ALG (`skcipher` bound by driver name
    virtio_crypto_aes_cbc, so the generic software AES is never measured by mistake), one request
    per sendmsg + recv_into, the synchronous way AF_ALG is normally used;
  * `warpdrive`: the function on vfio-pci, `warpdrive.crypto.Cipher` submitting batches (one
    doorbell per batch) and busy-polling the used ring; `warpdrive-b1`: one request per doorbell,
    each waited for (the kernel path's pattern); `warpdrive-b1-irq`: the same, sleeping on the
    data queue's MSI-X vector (`poll=False`) instead of polling.
On the host: the same warpdrive paths on the bundled model (emu:crypto, its own process) against
`cryptography` in this process (`software`).

Method. Every (path, size) is timed for a fixed time (not a fixed count, so a run has a known
length), over several rounds; both phases of a round run back to back, so the ratio of a round
compares two paths under the same background load, and the table gives min / median / max over
rounds for every figure and for the per-round ratios. CPU per op is the worker process's CPU time
(user + system) over its hot loop. Each path is one fresh worker process per round (setup outside
the timing). Syscalls per op come from `strace -f` over a separate, shorter run of each path at
4 KiB: every syscall line between two marker stat() calls (`/@@wd-hot-begin@@`,
`/@@wd-hot-end@@`), in any thread of the worker, divided by the ops in between (strace slows
syscalls down, hence the separate run). Before every measurement the worker times a pure-Python
loop (`speed`, Mloop/s): the CPU the guest actually got, which under TCG on a shared host is what
moves.

`--hog` (on by default in the full lab run) measures why the ratio moves between runs: the 4 KiB
kernel and warpdrive (batch) figures on QEMU's function again, each without and then with one
extra busy process in the guest (one more runnable thread on the 2-core host, as another job on
the host would be), started by the worker after its setup.

The driver alone (`--driver`, issue 14; in the lab: QEMU's function on vfio-pci, on the host:
the bundled model with 1024-entry queues, as QEMU's): AES-256-CBC through `Cipher`, batches of 32
requests of 64 B and 4 KiB, two batches in flight, busy-polled, through two APIs. `copy`: bytes
in, results copied into the completed requests' `out` buffers (`Cipher.poll_many`: kick + reap +
Completions handed back; then one `Cipher.submit_many` of as many requests, and one `flush`).
`zero-copy`: prepared requests whose source and destination already live in DMA memory
(`Cipher.prepare` once; per turn `poll_many`, one comparison of `Cipher.failures`, then
`submit_prepared` of the requests that came back, and one `flush`). Once a batch has completed
(spinning untimed), two timed sections side by side, in alternating order: the driver's turn
and Python's floor for as many requests (`RingFloor`: one precompiled `pack_into` of the 72-byte
request into a free slot, one avail-ring store, one used-element unpack, 1/32 of an avail-index
store and of a notify store, on the data queue's own memory). Thread CPU time less the clock's
own cost; `ratio` = driver / floor, against issue 14's target (2x). The copy rows' figure
includes copying the data into the slot and the result out; what those two copies cost alone is
measured beside it (`copy_us_per_op`). Then what each check of the zero-copy path costs (its
code alone in a loop).

Progress goes to stderr line by line; the table and one JSON line (`{"bench": "crypto", ...}`) to
stdout at the end. The lab rebinds the functions: it never leaves virtio_crypto without a
function (that would make Linux register and self-test cbc(aes) again), and waits for the
kernel's self-tests to finish before moving any function.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KERNEL_DRIVER = "virtio_crypto_aes_cbc"
MARK_BEGIN = "/@@wd-hot-begin@@"
MARK_END = "/@@wd-hot-end@@"
SIZES = (64, 4096, 65536)
KEY = bytes(range(32))
IV = bytes(range(16, 32))
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages (of the guest, in the lab)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


# ------------------------------------------------------------------------------- worker side
def _mark(path: str) -> None:
    try:
        os.stat(path)
    except OSError:
        pass


def speed_index(seconds: float = 0.05) -> float:
    """Millions of trivial Python loop iterations per second: the CPU this process gets."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10_000):
            pass
        n += 10_000
    return n / (time.perf_counter() - t0) / 1e6


def timed(step: Callable[[], int], seconds: float) -> dict[str, float]:
    """Run `step` (returns ops done) for `seconds`; ops, wall, CPU and the speed before."""
    speed = speed_index()
    step()  # warm-up (sessions, lazy setup, caches)
    ops = 0
    c0, t0 = time.process_time(), time.perf_counter()
    while True:
        ops += step()
        wall = time.perf_counter() - t0
        if wall >= seconds:
            break
    cpu = time.process_time() - c0
    return {"ops": ops, "seconds": wall, "cpu": cpu, "speed": speed}


def traced(step: Callable[[], int], ops: int) -> dict[str, float]:
    """A fixed number of ops between the two markers (for strace; no clock in the loop)."""
    step()
    done = 0
    _mark(MARK_BEGIN)
    while done < ops:
        done += step()
    _mark(MARK_END)
    return {"ops": done}


def _kernel_step(size: int) -> tuple[Callable[[], int], Callable[[], None]]:
    import socket

    s = socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0)
    s.bind(("skcipher", KERNEL_DRIVER))
    s.setsockopt(socket.SOL_ALG, socket.ALG_SET_KEY, KEY)
    op, _ = s.accept()
    data, out = os.urandom(size), bytearray(size)

    def step() -> int:
        op.sendmsg_afalg([data], op=socket.ALG_OP_ENCRYPT, iv=IV)
        op.recv_into(out)
        return 1

    def close() -> None:
        op.close()
        s.close()

    return step, close


def _software_step(size: int) -> tuple[Callable[[], int], Callable[[], None]]:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    aes, data, out = algorithms.AES(KEY), os.urandom(size), bytearray(size + 16)

    def step() -> int:
        Cipher(aes, modes.CBC(IV)).encryptor().update_into(data, out)
        return 1

    return step, lambda: None


def _warpdrive_step(cipher: Any, size: int, batch: int) -> Callable[[], int]:
    data = os.urandom(size)
    outs = [bytearray(size) for _ in range(batch)]  # results land in preallocated buffers

    def step() -> int:
        for i in range(batch):
            cipher.submit(IV, data, out=outs[i])
        for comp in cipher.wait():
            if comp.data is None:
                raise SystemExit(f"request failed: status {comp.status}")
        return batch

    return step


def worker(args: argparse.Namespace) -> None:
    """One path (or a group of warpdrive paths) over every size; a JSON line per result."""
    sizes = [int(x) for x in args.sizes.split(",")]
    results: list[dict[str, Any]] = []

    def run(path: str, size: int, step: Callable[[], int]) -> None:
        if args.mark:
            results.append({"path": path, "size": size, **traced(step, args.ops)})
            return
        for hog in ((False, True) if args.hog else (None,)):
            with busy(bool(hog)):
                r = timed(step, args.seconds)
            results.append({"path": path, "size": size, **r,
                            **({} if hog is None else {"hog": hog})})

    if args.worker in ("kernel", "software"):
        make = _kernel_step if args.worker == "kernel" else _software_step
        for size in sizes:
            step, close = make(size)
            try:
                run(args.worker, size, step)
            finally:
                close()
    else:
        import warpdrive
        from warpdrive.crypto import Cipher

        with warpdrive.open(args.device, backend=args.backend) as dev:
            for path in args.paths.split(","):
                batch = args.batch if path == "warpdrive" else 1
                with Cipher("aes-cbc", KEY, device=dev, poll=not path.endswith("-irq")) as c:
                    for size in sizes:
                        run(path, size, _warpdrive_step(c, size, batch))
    print(json.dumps(results))


# ------------------------------------------------------------------- the driver alone (--driver)
DRIVER_SIZES = (64, 4096)
DRIVER_TARGET = 2.0  # issue 14: driver CPU per op <= 2x the floor
DRIVER_APIS = ("copy", "zero-copy")


class RingFloor:
    """Python's floor for one request on the data queue's own memory: one precompiled
    `pack_into` of the whole 72-byte request into the header of a free slot, one avail-ring
    store and one used-element unpack half a ring away from the live entries (the device reads
    neither), and per 32 requests one avail-index store (the index already published: nothing
    new for the device) and one store into the notify doorbell."""

    def __init__(self, eng: Any) -> None:
        import ctypes
        import struct

        from warpdrive.devices.crypto import engine as E

        q = self.q = eng.dataq
        self.eng = eng
        self.req = struct.Struct("<IIQII" "III" "28x" "II")  # header, cipher para, op_type
        assert self.req.size == E.REQ_LEN
        self.args = (E.U.VIRTIO_CRYPTO_CIPHER_ENCRYPT, 0, 0, 0, 0, 16, 64, 64,
                     E.U.VIRTIO_CRYPTO_SYM_OP_CIPHER, 0)
        self.view = eng._view
        self.avail = q._avail
        self.used = (ctypes.c_char * (8 * q.size)).from_address(ctypes.addressof(q._used))
        self.elem = struct.Struct("<II").unpack_from
        notify = q.notify
        self.cell = notify._cell if notify.mapped else None  # the raw store, as zip's floor
        self.ring = notify.ring
        self.owed = 0

    def run(self, n: int) -> None:
        q, eng = self.q, self.eng
        pack, args, view, avail, used, elem = (self.req.pack_into, self.args, self.view,
                                               self.avail, self.used, self.elem)
        base = eng._free_slots[-1] * eng._stride if eng._free_slots else 0
        size = q.size
        far = (q._avail_idx + size // 2) % size
        for i in range(n):
            pack(view, base, *args)
            avail[2 + (far + i) % size] = 0
            elem(used, ((far + i) % size) * 8)
        self.owed += n
        while self.owed >= 32:
            avail[1] = q._published
            if self.cell is not None:
                self.cell.value = q.index
            else:
                self.ring(q.index)
            self.owed -= 32


def driver_rows(device: str, seconds: float, batch: int) -> list[dict[str, Any]]:
    """Driver CPU per op beside the ring floor, per API and size (see the module docstring)."""
    import warpdrive
    from warpdrive.crypto import Cipher

    rows = []
    options: dict[str, Any] = {}
    if device.startswith("emu:"):
        # QEMU's data queues take 1024 entries; the model's default is 256 (63 slots of four
        # descriptors), short of two batches of 32.
        options["model_options"] = {"queue_size": "1024"}
    with warpdrive.open(device, **options) as dev, Cipher("aes-cbc", KEY, device=dev) as c:
        eng = c._engine
        if 2 * batch > eng.nslots:
            raise SystemExit(f"batch {batch}: two batches need {2 * batch} slots, the data "
                             f"queue has {eng.nslots}")
        for size in DRIVER_SIZES:
            for api in DRIVER_APIS:
                r = _driver_row(c, api, size, seconds, batch)
                rows.append({"mode": "driver", "api": api, "device": dev.name, "size": size,
                             "batch": batch, **r, "target": DRIVER_TARGET,
                             "ring": eng.dataq.size, "slots": eng.nslots,
                             "loadavg": loadavg()})
    return rows


def _driver_row(c: Any, api: str, size: int, seconds: float, batch: int) -> dict[str, Any]:
    """One row: `copy` (submit_many of bytes into the completed requests' `out` buffers) or
    `zero-copy` (submit_prepared of the completed prepared requests themselves)."""
    from benchmarks.zip_bench import side_by_side
    from warpdrive.devices.crypto import engine as E

    eng = c._engine
    q = eng.dataq
    tclock = time.thread_time_ns
    data = os.urandom(size)
    got: list[Any] = []
    poll_many, flush = c.poll_many, c.flush
    if api == "copy":
        outs = [bytearray(size) for _ in range(2 * batch)]
        submit_many = c.submit_many
        ivs, datas = [IV] * 2 * batch, [data] * 2 * batch

        def start() -> None:
            submit_many(ivs, datas, outs=outs)

        def drive() -> int:
            k = poll_many(got)
            outs_k = [comp.data for comp in got]
            if None in outs_k:
                raise SystemExit(f"a request failed: {got}")
            submit_many(ivs[:k], datas[:k], outs=outs_k)
            flush()
            got.clear()
            return k
    else:
        src, dst = c.buffer(size), c.buffer(2 * batch * size)
        src.view[:size] = data
        reqs = [c.prepare(src, size, dst, dst_offset=i * size, iv=IV) for i in range(2 * batch)]
        submit_prepared = c.submit_prepared

        def start() -> None:
            submit_prepared(reqs)

        def drive() -> int:
            k = poll_many(got)
            if c.failures:
                raise SystemExit(f"a request failed: {[r.status for r in got]}")
            submit_prepared(got)
            flush()
            got.clear()
            return k

    start()
    flush()
    c.wait()  # warm-up
    floor = RingFloor(eng)
    start()
    flush()

    def ready() -> None:
        while q.used_waiting() < batch:  # untimed: the device works, we spin
            pass

    res = side_by_side(ready, drive, lambda: (floor.run, (batch,)), seconds, batch)
    c.wait()
    n, over = res["ops"], res["timer_us"] * 1e3
    copy = 0.0
    checks: list[dict[str, Any]] = []
    if api == "copy":
        # What the API's two copies cost alone: data into a slot, the result out.
        view, base, out0, src_off = eng._view, eng._in_off, outs[0], E._SRC_OFF
        t0 = tclock()
        for _ in range(n):
            view[src_off:src_off + size] = data
            out0[:size] = view[base:base + size]
        copy = max(tclock() - t0 - over, 0.0) / n / 1e3
    else:
        bad = [r.status for r in reqs if not r.ok]
        if bad or bytes(reqs[0].result()) == data:
            raise SystemExit(f"zero-copy requests failed or wrote nothing: {bad}")
        checks = check_costs(c, reqs, batch)
        for r in reqs:
            r.release()
        c.release_buffer(src)
        c.release_buffer(dst)
    return {"ops": n, "work_us_per_op": res["work_us"], "floor_us_per_op": res["floor_us"],
            "ratio": res["ratio"], "copy_us_per_op": round(copy, 3), "timer_us": res["timer_us"],
            **({"checks": checks} if api != "copy" else {})}


def check_costs(c: Any, reqs: list[Any], batch: int) -> list[dict[str, Any]]:
    """What each check of the zero-copy path costs: its code alone, timed in a loop on this
    Cipher and its prepared requests (idle), thread CPU, best of 5; per op at `batch`."""
    from benchmarks.zip_bench import best_ns_each
    from warpdrive.devices.crypto import engine as E

    eng = c._engine
    k = min(batch, len(reqs))
    mine = reqs[:k]
    ok = E._OK

    def cipher_open(n: int) -> None:
        for _ in range(n):
            if c._closed:
                pass

    def engine_alive(n: int) -> None:  # not closed, not inherited through fork
        for _ in range(n):
            if eng._forked_dead or eng._closed:
                pass

    def owned_idle(n: int) -> None:  # this Cipher's and not in flight, marked in flight
        for _ in range(n // k):
            for r in mine:
                if r.ready is not c:
                    pass
                r.ready = None
            for r in mine:
                r.ready = c

    def status_ok(n: int) -> None:  # reap: a failure counted
        status = ok
        for _ in range(n):
            if status != ok:
                pass

    def failures(n: int) -> None:  # the caller's one comparison per batch
        for _ in range(n):
            if c.failures:
                pass

    def empty(n: int) -> None:
        for _ in range(n):
            pass

    loop = best_ns_each(empty)
    checks = [  # (name, code, timed per request already?, occurrences per op)
        ("Cipher open (each submit_prepared)", cipher_open, False, 1 / k),
        ("engine open and not forked (each submit_prepared)", engine_alive, False, 1 / k),
        ("request is this Cipher's and not in flight (each request)", owned_idle, True, 1),
        ("status checked, failure counted (each completion)", status_ok, False, 1),
        ("any failure in the batch: Cipher.failures (each batch)", failures, False, 1 / k),
    ]
    out = []
    for name, fn, per_op, occ in checks:
        ns = best_ns_each(fn) - (0.0 if per_op else loop)
        out.append({"check": name, "ns": round(ns, 1), "ns_per_op": round(ns * occ, 1)})
    return out


def driver_main(args: argparse.Namespace) -> None:
    in_lab = os.environ.get("WARPDRIVE_IN_LAB") == "1"
    load = loadavg()
    if args.device:
        rows = driver_rows(args.device, args.seconds, args.batch)
    elif in_lab:
        from lab import virtio_crypto as vc

        qemu = find_function(model=False)
        assert qemu is not None
        vc.wait_settled()
        with vc.off_kernel(qemu):
            rows = driver_rows(qemu, args.seconds, args.batch)
    else:
        rows = driver_rows("emu:crypto", args.seconds, args.batch)
    print(f"driver alone (AES-256-CBC, batch {args.batch}, busy-polled; thread CPU per op, "
          "timer cost subtracted)")
    print(f"{'device':<14} {'api':<9} {'size':>6} {'ops':>8} {'driver us/op':>13} "
          f"{'floor us/op':>12} {'ratio':>6} {'target':>8}  {'of which copies':>15}")
    for r in rows:
        ok = "ok" if r["ratio"] <= r["target"] else "MISSED"
        if r["api"] == "copy":  # the target is the zero-copy path's; this row pays two copies
            ok = "(copies)"
        target = f"<= {r['target']}x"
        copies = f"{r['copy_us_per_op']:>13.3f}us" if r["api"] == "copy" else f"{'none':>15}"
        print(f"{r['device']:<14} {r['api']:<9} {r['size']:>6} {r['ops']:>8} "
              f"{r['work_us_per_op']:>13.3f} {r['floor_us_per_op']:>12.3f} {r['ratio']:>5.2f}x "
              f"{target:>8}  {copies} {ok}")
    checks = [r for r in rows if r.get("checks")][-1:]
    for r in checks:
        print(f"\nwhat each check of the zero-copy path costs ({r['size']} B requests; its code "
              "alone, thread CPU, best of 5 loops)")
        print(f"{'check':<62} {'ns each':>8} {'ns/op':>7}")
        for ch in r["checks"]:
            print(f"{ch['check']:<62} {ch['ns']:>8.0f} {ch['ns_per_op']:>7.0f}")
        total = sum(ch["ns_per_op"] for ch in r["checks"])
        print(f"all checks: {total:.0f} ns/op at batch {r['batch']} "
              f"({100 * total / 1e3 / r['work_us_per_op']:.0f}% of the driver's time)")
    print(f"loadavg {load} at start, {loadavg()} at end ({'lab guest' if in_lab else 'host'}); "
          "floor = one precompiled pack_into of the 72-byte request + one avail-ring store + one "
          "used-element unpack + 1/32 of an avail-index store and a notify store")
    print(json.dumps({"bench": "crypto_driver", "where": "lab" if in_lab else "host",
                      "rows": rows}))


# ------------------------------------------------------------------------------- driver side
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[dict[str, Any]] = []  # every measurement, with its round and target
        self.syscalls: dict[tuple[str, str], float] = {}

    def run_worker(self, label: str, extra: list[str], sizes: tuple[int, ...],
                   strace: bool = False, hog: bool = False) -> list[dict[str, Any]]:
        a = self.args
        cmd = [sys.executable, str(Path(__file__).resolve()), *extra,
               "--sizes", ",".join(map(str, sizes)), "--seconds", str(a.seconds),
               "--batch", str(a.batch), "--backend", a.backend]
        if hog:
            cmd.append("--hog")
        trace = None
        if strace:
            fd, trace = tempfile.mkstemp(prefix="wd-strace-", suffix=".txt")
            os.close(fd)
            cmd = ["strace", "-f", "-qq", "-o", trace, *cmd, "--mark", "--ops", str(a.trace_ops)]
        t = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"worker {label} failed:\n{proc.stdout}{proc.stderr}")
        results: list[dict[str, Any]] = json.loads(proc.stdout.strip().splitlines()[-1])
        if trace is not None:
            text = Path(trace).read_text()
            os.unlink(trace)
            # one marker pair per (path, size), in the order the worker ran them
            for r, n in zip(results, count_all_hot_syscalls(text)):
                r["syscalls"] = n
        for r in results:
            if "seconds" in r:
                say(f"{label:<22} {r['path'] + (' +hog' if r.get('hog') else ''):<17} "
                    f"{r['size']:>6} B  "
                    f"{r['ops'] / r['seconds']:>9.1f} ops/s  cpu {1e6 * r['cpu'] / r['ops']:>7.0f}"
                    f" us/op  speed {r['speed']:.2f}")
            else:
                say(f"{label:<22} {r['path']:<17} {r['size']:>6} B  "
                    f"{r['syscalls'] / r['ops']:.3f} syscalls/op (strace)")
        say(f"{label}: worker took {time.monotonic() - t:.1f} s")
        return results

    def record(self, target: str, rnd: int, results: list[dict[str, Any]]) -> None:
        for r in results:
            if "syscalls" in r:
                self.syscalls[target, r["path"]] = round(r["syscalls"] / r["ops"], 3)
            else:
                self.rows.append({"target": target, "round": rnd, **r})


def count_hot_syscalls(trace: str) -> int:
    """Syscall lines strictly between the first begin and end markers (a call split by another
    thread into `<unfinished ...>` and `<... resumed>` counts once)."""
    counts = count_all_hot_syscalls(trace)
    if not counts:
        raise SystemExit("strace: hot-loop markers not found in the trace")
    return counts[0]


def count_all_hot_syscalls(trace: str) -> list[int]:
    out: list[int] = []
    inside = False
    n = 0
    for line in trace.splitlines():
        if MARK_BEGIN in line:
            inside, n = True, 0
            continue
        if MARK_END in line:
            if not inside:
                raise SystemExit("strace: end marker before begin marker")
            out.append(n)
            inside = False
            continue
        if not inside or "resumed>" in line or line.split(" ", 1)[-1].startswith("+++") \
                or "--- SIG" in line:
            continue
        n += 1
    return out


# -- the lab: two functions, two states per round ------------------------------------------
def lab(b: Bench) -> dict[str, Any]:
    from lab import virtio_crypto as vc
    from warpdrive import binding

    a = b.args
    qemu = find_function(model=False)
    assert qemu is not None
    funcs = {"qemu": qemu}
    model = find_function(model=True)
    if model is not None:
        funcs["model"] = model
    targets = [t for t in a.targets.split(",") if t in funcs]
    for bdf in funcs.values():
        if vc.driver_of(bdf) != "virtio-pci":
            raise SystemExit(f"{bdf} is on {vc.driver_of(bdf)}, expected virtio-pci at the start")
    say(f"functions: {funcs}; waiting for the kernel's cbc(aes) self-tests to finish")
    vc.wait_settled()
    say("settled")

    def switch(to_kernel: str | None) -> None:
        """`to_kernel` alone on virtio_crypto (the other on vfio-pci); None: both back."""
        for name, bdf in funcs.items():  # first bind, then unbind: never zero functions
            if (to_kernel is None or name == to_kernel) and vc.driver_of(bdf) != "virtio-pci":
                vc.wait_settled()
                binding.unbind(bdf)
        for name, bdf in funcs.items():
            if to_kernel is not None and name != to_kernel and vc.driver_of(bdf) == "virtio-pci":
                vc.wait_settled()
                binding.bind(bdf)
        vc.wait_settled()

    wd_paths = "warpdrive,warpdrive-b1,warpdrive-b1-irq"

    def kernel(target: str, rnd: int, strace: bool = False, sizes: tuple[int, ...] = SIZES,
               hog: bool = False) -> None:
        res = b.run_worker(f"r{rnd} {target} kernel", ["--worker", "kernel"], sizes, strace,
                           hog)
        b.record(target, rnd, res)

    def wd(target: str, rnd: int, strace: bool = False, sizes: tuple[int, ...] = SIZES,
           paths: str = wd_paths, hog: bool = False) -> None:
        res = b.run_worker(f"r{rnd} {target} warpdrive",
                           ["--worker", "warpdrive", "--device", funcs[target],
                            "--paths", paths], sizes, strace, hog)
        b.record(target, rnd, res)

    try:
        for rnd in range(1, a.rounds + 1):
            spent = time.monotonic() - T0
            if rnd > 1 and spent / (rnd - 1) * rnd > a.budget:
                say(f"stopping after {rnd - 1} round(s): another would end past the "
                    f"{a.budget:.0f} s budget (the lab kills a command at 600 s)")
                a.rounds = rnd - 1
                break
            # Two states per round: the kernel serves one function while warpdrive drives the
            # other, then the other way round. Order: [wd(Y), kernel(X)] [wd(X), kernel(Y)],
            # so X's two phases are adjacent; X alternates between rounds.
            x, y = ("qemu", "model") if rnd % 2 else ("model", "qemu")
            for kt, wt in ((x, y), (y, x)):
                if kt not in funcs:
                    continue
                switch(kt)
                if wt in targets and wt in funcs and kt != wt:
                    wd(wt, rnd)
                    if rnd == 1 and a.strace:
                        wd(wt, rnd, strace=True, sizes=(4096,))
                if kt in targets:
                    kernel(kt, rnd)
                    if rnd == 1 and a.strace:
                        kernel(kt, rnd, strace=True, sizes=(4096,))
            if len(funcs) == 1:  # no model: QEMU's function both ways
                with vc.off_kernel(qemu):
                    wd("qemu", rnd)
        if a.hog and "qemu" in targets:
            # Why the ratio moves: the same 4 KiB figures, each without and then with one more
            # busy process (started by the worker after its setup).
            switch("qemu")
            kernel("qemu", 0, sizes=(4096,), hog=True)
            if "model" in funcs:
                switch("model")
                wd("qemu", 0, sizes=(4096,), paths="warpdrive", hog=True)
            else:
                with vc.off_kernel(qemu):
                    wd("qemu", 0, sizes=(4096,), paths="warpdrive", hog=True)
    finally:
        switch(None)
        say(f"functions back on virtio-pci: {[vc.driver_of(f) for f in funcs.values()]}")
    return {"functions": funcs}


@contextmanager
def busy(on: bool) -> Iterator[None]:
    """One extra busy process (a pure-Python loop) for the block."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def find_function(model: bool) -> str | None:
    """QEMU's virtio-crypto function, or (model=True) warpdrive's (subsystem device 0x5744)."""
    for d in sorted(Path("/sys/bus/pci/devices").iterdir()):
        try:
            ids = ((d / "vendor").read_text().strip(), (d / "device").read_text().strip())
            sub = (d / "subsystem_device").read_text().strip()
        except OSError:
            continue
        if ids == ("0x1af4", "0x1054") and (sub == "0x5744") == model:
            return d.name
    if model:
        return None
    raise SystemExit("no virtio-crypto function (1af4:1054) in this machine")


# -- the host: the model against software --------------------------------------------------
def host(b: Bench) -> dict[str, Any]:
    a = b.args
    for rnd in range(1, a.rounds + 1):
        res = b.run_worker(f"r{rnd} software", ["--worker", "software"], SIZES)
        b.record("emu", rnd, res)
        res = b.run_worker(f"r{rnd} emu:crypto", ["--worker", "warpdrive", "--device",
                                                    "emu:crypto", "--paths",
                                                    "warpdrive,warpdrive-b1,warpdrive-b1-irq"],
                           SIZES)
        b.record("emu", rnd, res)
        if rnd == 1 and a.strace and shutil.which("strace"):
            b.record("emu", rnd, b.run_worker("strace software", ["--worker", "software"],
                                              (4096,), strace=True))
            b.record("emu", rnd, b.run_worker(
                "strace emu:crypto", ["--worker", "warpdrive", "--device", "emu:crypto",
                                      "--paths", "warpdrive,warpdrive-b1,warpdrive-b1-irq"],
                (4096,), strace=True))
    return {}


# -- summary -------------------------------------------------------------------------------
def spread(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3),
            "max": round(max(values), 3)}


def summarize(b: Bench, base_path: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows (target, path, size) with spreads, and per-round ratios against `base_path`."""
    main = [r for r in b.rows if "hog" not in r]
    keys = sorted({(r["target"], r["path"], r["size"]) for r in main},
                  key=lambda k: (k[0], PATH_ORDER.index(k[1]), k[2]))
    rows = []
    for target, path, size in keys:
        rs = [r for r in main if (r["target"], r["path"], r["size"]) == (target, path, size)]
        rows.append({
            "target": target, "path": path, "size": size, "rounds": len(rs),
            "ops_s": spread([r["ops"] / r["seconds"] for r in rs]),
            "cpu_us_per_op": spread([1e6 * r["cpu"] / r["ops"] for r in rs]),
            "speed": spread([r["speed"] for r in rs]),
            "syscalls_per_op": b.syscalls.get((target, path)),
        })
    ratios: dict[str, Any] = {}
    for target, path, size in keys:
        if path == base_path:
            continue
        per_round = []
        for r in main:
            if (r["target"], r["path"], r["size"]) != (target, path, size):
                continue
            base = [x for x in main if (x["target"], x["path"], x["size"], x["round"])
                    == (target, base_path, size, r["round"])]
            if base:
                per_round.append((r["ops"] / r["seconds"]) / (base[0]["ops"] / base[0]["seconds"]))
        if per_round:
            ratios.setdefault(target, {}).setdefault(path, {})[str(size)] = spread(per_round)
    return rows, ratios


PATH_ORDER = ["kernel", "software", "warpdrive", "warpdrive-b1", "warpdrive-b1-irq"]


def hog_summary(b: Bench) -> dict[str, Any] | None:
    rows = [r for r in b.rows if "hog" in r]
    if not rows:
        return None
    out: dict[str, Any] = {}
    for hog in (False, True):
        k = [r["ops"] / r["seconds"] for r in rows if r["hog"] == hog and r["path"] == "kernel"]
        w = [r["ops"] / r["seconds"] for r in rows if r["hog"] == hog and r["path"] == "warpdrive"]
        sp = [r["speed"] for r in rows if r["hog"] == hog]
        if k and w:
            out["with_hog" if hog else "no_hog"] = {
                "kernel_ops_s": spread(k), "warpdrive_ops_s": spread(w),
                "ratio": round(statistics.median(w) / statistics.median(k), 2),
                "speed": spread(sp)}
    return out


def print_table(b: Bench, rows: list[dict[str, Any]], ratios: dict[str, Any],
                base_path: str) -> None:
    a = b.args
    print(f"AES-256-CBC, warpdrive batch {a.batch}, {a.rounds} round(s) x {a.seconds} s per "
          f"figure; min / median / max over rounds; ratio = per-round ops/s over {base_path}")
    print(f"{'target':<7} {'path':<17} {'size':>6} {'ops/s median':>12} {'(min-max)':>17} "
          f"{'cpu us/op':>10} {'syscalls/op':>11} {'x ' + base_path:>9} {'(min-max)':>13} "
          f"{'speed':>6}")
    for r in rows:
        rat = ratios.get(r["target"], {}).get(r["path"], {}).get(str(r["size"]))
        o, c = r["ops_s"], r["cpu_us_per_op"]
        sc = "" if r["syscalls_per_op"] is None or r["size"] != 4096 else \
            f"{r['syscalls_per_op']:.3f}"
        rtxt = f"{rat['median']:.2f}" if rat else ""
        rspread = f"({rat['min']:.2f}-{rat['max']:.2f})" if rat else ""
        ospread = f"({o['min']:.0f}-{o['max']:.0f})"
        print(f"{r['target']:<7} {r['path']:<17} {r['size']:>6} {o['median']:>12.1f} "
              f"{ospread:>17} {c['median']:>10.0f} {sc:>11} "
              f"{rtxt:>9} {rspread:>13} {r['speed']['median']:>6.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one round, short figures, no strace")
    p.add_argument("--rounds", type=int, help="rounds (default 3; --quick: 1)")
    p.add_argument("--seconds", type=float, help="time per figure (default 0.6; --quick 0.3)")
    p.add_argument("--batch", type=int, default=32, help="warpdrive requests per doorbell")
    p.add_argument("--budget", type=float, default=420.0,
                   help="lab: start no round that would end after this many seconds")
    p.add_argument("--backend", default="auto", help="warpdrive backend (auto/vfio/iommufd)")
    p.add_argument("--targets", default="qemu,model", help="lab functions to measure")
    p.add_argument("--no-strace", dest="strace", action="store_false", default=None)
    p.add_argument("--hog", action=argparse.BooleanOptionalAction, default=None,
                   help="measure the 4 KiB ratio with and without one busy guest process "
                   "(default: on in a full lab run)")
    p.add_argument("--driver", action="store_true",
                   help="the driver alone: CPU per op beside Python's ring floor (issue 14)")
    p.add_argument("--worker", choices=("kernel", "software", "warpdrive"), help=argparse.SUPPRESS)
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help=argparse.SUPPRESS)
    p.add_argument("--paths", default="warpdrive", help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    p.add_argument("--ops", type=int, default=200, help=argparse.SUPPRESS)
    p.add_argument("--mark", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (0.3 if args.quick else 0.6)
    if args.worker:
        worker(args)
        return
    if args.driver:
        driver_main(args)
        return
    in_lab = os.environ.get("WARPDRIVE_IN_LAB") == "1"
    if args.strace is None:
        args.strace = not args.quick
    if args.strace and shutil.which("strace") is None:
        raise SystemExit("strace not found (bash lab/install-deps.sh installs it); "
                         "or pass --no-strace")
    if args.hog is None:
        args.hog = in_lab and not args.quick
    args.trace_ops = 64 if args.quick else 200
    load_start = loadavg()
    say(f"{'lab guest' if in_lab else 'host'}; rounds {args.rounds} x {args.seconds} s; "
        f"loadavg {load_start}")
    b = Bench(args)
    extra = lab(b) if in_lab else host(b)
    base = "kernel" if in_lab else "software"
    rows, ratios = summarize(b, base)
    print_table(b, rows, ratios, base)
    hog = hog_summary(b)
    if hog:
        print(f"hog (4 KiB, QEMU's function, warpdrive batch {args.batch}): " + "; ".join(
            f"{k}: kernel {v['kernel_ops_s']['median']:.0f} ops/s, warpdrive "
            f"{v['warpdrive_ops_s']['median']:.0f} ops/s, ratio {v['ratio']:.2f}, speed "
            f"{v['speed']['median']:.2f}" for k, v in hog.items()))
    took = round(time.monotonic() - T0, 1)
    print(json.dumps({"bench": "crypto", "where": "lab" if in_lab else "host",
                      "algorithm": "aes-256-cbc", "batch": args.batch, "backend": args.backend,
                      "rounds": args.rounds, "seconds_per_figure": args.seconds,
                      "loadavg": {"start": load_start, "end": loadavg()}, "took_s": took,
                      **extra, "rows": rows, "ratio": ratios, "hog": hog,
                      "raw": b.rows}))
    say(f"done in {took} s")


if __name__ == "__main__":
    main()
