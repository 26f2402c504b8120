"""The broker (`warpdrive serve`) against one process driving the same device directly.

    python benchmarks/broker_bench.py [--quick]

The device is the bundled ZIP model (over vfio-user, in its own process), with the options the
broker gives it (16 queues, doorbell isolation). Rows, for 4 KiB and 64 KiB compression jobs:
* `direct`    - one process opens the model itself (`warpdrive.zip.open_engine("emu")`).
* `broker`    - `warpdrive serve emu` owns the model; 1, 2, 4 or 8 client processes each open
                `broker:SOCKET` and run the same loop at the same time. The broker runs in a
                session of its own (as a service does), the model too (as it always does).
* `nice-5`    - with `--nice -5`: the same against a second broker at that priority
                (`warpdrive serve --nice`), its rows interleaved with the others; any
                `--variant NAME=OPTIONS` adds rows NAME for a broker with those serve options.
* `direct@CPUS` - for a variant whose broker has CPUs of its own (`--cpu`): its clients run on
                the other CPUs, and this row is one process (and its model) on those CPUs.
Every client keeps 16 prepared zero-copy jobs in flight (two batches of 8, one doorbell per batch)
and busy-polls completions in memory (`wait="spin"`), as `benchmarks/zip_bench.py` does.

How rows are measured (changed in session 23; the jobs, the clients, the 16 in flight and the
broker are what they were):
* Rounds, side by side. For each size and client count the direct client and the broker's
  clients are started once and take turns, ABA: direct, broker (and any variant), direct, ...,
  direct: 6 rounds of 0.4 s segments with `--quick` (8 of 1 s otherwise), 0.1 s apart (longer
  than the servers' spin windows, so the idle side is asleep). A broker segment's ratio is
  against direct at the same moment (interpolated between the direct segments around it); a
  row shows the median of its rounds' ratios and their range. Before, one direct row (or the
  best of three) was set against broker rows measured up to a minute later, while other work
  on this shared host started and stopped: direct alone moved 5x between two rows of one run.
* The device model on a CPU of its own (`--model-cpu`, default the last CPU; `none`: as
  before), in every row, direct and broker alike; the clients and the broker on the others.
  The model stands in for hardware, which takes no CPU from the clients. Left to the
  scheduler, its share behind the broker depended on where the kernel put the four busy-polling
  clients: with autogroups (`kernel.sched_autogroup_enabled`) the clients, the broker and the
  model are three groups of equal weight, and with two clients on the model's CPU the model got
  2/3 of it (33-36% of the machine against 44-49% in the direct row, session 23's runs): the
  0.5-0.64x against 0.78-0.94x on the same code a minute apart.
* Each row also says who had the CPUs (the machine's time: clients, broker, model, other work,
  idle), who waited for them (run-queue time per job, /proc/PID/task/*/schedstat), context
  switches per job and the broker's working passes per second.
`--passes N:SIZE` runs one row instead (per broker: `--variant` adds more, alternating) and sorts
the broker's working passes by what they carried: their CPU per pass and per job, by kind.

Metrics per row (the timed loop only: connection, bring-up and warm-up excluded):
* `jobs_s`: jobs completed by all clients together per second of wall time (clients start on
  one signal; the row's wall time is the longest client's).
* `vs_direct`: the median over the rounds of `jobs_s` over the `direct` row's of the same
  size at the same moment (its range beside it): the issue's goal, for every row, a `--cpu`
  variant's too. `jobs_s` itself: the median of the rounds'.
* `vs_direct_same_cpus`: for a `--cpu` variant, beside `vs_direct`: `jobs_s` over its
  `direct@CPUS` row's (the CPUs its clients were left).
* `client_cpu_us`: client CPU (getrusage) per job; with busy polling it includes the spinning.
* `client_syscalls`: syscalls per job of one client, counted by `strace` in a separate run of
  the same row (the others untraced, so the broker is as busy), between two marker stat() calls
  around the loop.
* `broker_cpu_us`: the broker process's CPU per job (/proc/<pid>/stat): mediation (polling the
  clients' rings, checking and translating every SQE, copying results back), plus its spinning.
* `model_cpu_us`: the device model's CPU per job (the "hardware" here).
* `steal_pct`: the share of the machine's CPU time the hypervisor ran something else meanwhile.
* `machine_pct`, `wait_us`, `switches`, `passes_s`: the scheduling figures above;
  `client_min_max`: the fewest jobs one client did over the most, in the row's worst segment.

The machine is shared and has 2 cores: the load average is printed with the figures; the
ratios are what survive load. Output: a table, a verdict against the issue's goals, then one
JSON line: {"rows": [...], "load": [start, end], "cpus": N}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

# the same data, clocks and strace markers as the engine benchmark
from zip_bench import _cpu, _mark, _proc_cpu, count_syscalls, sample  # noqa: E402

SIZES = (4 << 10, 64 << 10)
# Between two rows' segments: longer than the broker's and the model's spin windows (20 ms
# after their last work), so the row that just ran is asleep when the next one goes.
_PAUSE_S = 0.1
CLIENTS = (1, 2, 4, 8)
IN_FLIGHT, BATCH = 16, 8
MODEL_OPTIONS = {"queues": "16", "isolation": "1", "level": "6"}


def _steal() -> tuple[int, int, int]:
    """(steal, idle, all) ticks of the machine's CPUs so far (/proc/stat's first line): the
    time the hypervisor ran something else while our vCPUs wanted to run, and the time no task
    wanted them (idle + iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return ticks[7], ticks[3] + ticks[4], sum(ticks[:8])


def _sched(pid: int | str = "self") -> list[float]:
    """[CPU s, run-queue wait s, voluntary, involuntary context switches] of every thread of
    `pid` so far (/proc/PID/task/*/schedstat and status): the wait is the time a thread was
    runnable but another task had its CPU, what tells which process waited for which."""
    out = [0.0, 0.0, 0.0, 0.0]
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for t in tasks:
        try:
            run, wait, _ = (t / "schedstat").read_text().split()
            status = (t / "status").read_text()
        except (OSError, ValueError):  # (a thread that just ended)
            continue
        out[0] += int(run) / 1e9
        out[1] += int(wait) / 1e9
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                out[2] += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                out[3] += int(line.split()[1])
    return out


def _delta(a: list[float], b: list[float]) -> list[float]:
    return [y - x for x, y in zip(a, b)]


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


# ------------------------------------------------------------------------------- client side
def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` on `cpus` (threads it starts later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except OSError:  # (a thread that just ended)
            pass


def client(device: str, size: int, duration: float, count: int, mark: bool,
           cpus: str | None = None, model_cpus: str | None = None) -> None:
    import zlib

    if cpus:  # (before the engine opens: a bundled model started by it inherits the CPUs)
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})

    import warpdrive.zip as wz

    opts: dict[str, Any] = {"model_options": MODEL_OPTIONS} if device == "emu" else {}
    eng = wz.open_engine(device, wait="spin", announce=False, timeout=120, **opts)
    s = eng.session("compress", wbits=15)
    data = sample(size)
    src = s.buffer(size)
    src.view[:size] = data
    slot = -(-(size + size // 8 + 4096) // 4096) * 4096
    dst = s.buffer(IN_FLIGHT * slot)
    jobs = [s.prepare(src, size, dst, dst_offset=i * slot, dst_length=slot)
            for i in range(IN_FLIGHT)]
    s.submit_many(jobs[:2])  # warm up: queue started, the path hot
    s.drain()
    model_pid = eng.source.dev.emulator.proc.pid if device == "emu" else 0  # type: ignore
    if model_pid and model_cpus:
        _pin(model_pid, {int(c) for c in model_cpus.split(",")})
    print(json.dumps({"ready": True}), flush=True)
    # One timed segment per "go" line, until stdin closes: the driver alternates these
    # clients' segments with other rows' (direct, another broker) while all stay connected.
    while sys.stdin.readline().strip() == "go":
        print(json.dumps(_segment(s, jobs, duration, count, mark, size, model_pid)), flush=True)
    for j in jobs:
        if j.error is not None:
            raise j.error
    assert zlib.decompress(bytes(jobs[0].output)) == data
    s.close()
    eng.close()


def _segment(s: Any, jobs: list[Any], duration: float, count: int, mark: bool, size: int,
             model_pid: int) -> dict[str, Any]:
    """One timed loop: all jobs in flight, each batch of BATCH completions submitted again,
    until `duration` seconds passed (or `count` jobs were submitted); then every job done."""
    submit_many, poll, completed = s.submit_many, s.poll, s.lane.q.completed
    clock = time.perf_counter  # vDSO: no syscall
    m0 = _proc_cpu(model_pid) if model_pid and not mark else 0.0
    ms0 = _sched(model_pid) if model_pid and not mark else []
    s0 = _sched()
    c0, t0 = _cpu(), clock()
    until = t0 + duration
    if mark:
        _mark(f"begin-broker-{size}-{IN_FLIGHT}")
    submit_many(jobs)
    submitted, n = len(jobs), 0
    pending: list[Any] = []
    while n < submitted:
        if not completed():
            continue
        got = poll()
        n += len(got)
        pending += got
        if len(pending) >= BATCH and (submitted < count or (not count and clock() < until)):
            submit_many(pending)
            submitted += len(pending)
            pending = []
    if mark:
        _mark(f"end-broker-{size}-{IN_FLIGHT}")
    wall, cpu = clock() - t0, _cpu() - c0
    sched = _delta(s0, _sched())
    model_cpu = _proc_cpu(model_pid) - m0 if model_pid and not mark else 0.0
    model_sched = _delta(ms0, _sched(model_pid)) if ms0 else [0.0] * 4
    return {"jobs": n, "wall": wall, "cpu": cpu, "model_cpu": model_cpu, "sched": sched,
            "model_sched": model_sched}


# ------------------------------------------------------------------------------- driver side
# The tail of `_PROFILED` and `_PASSES` below: `warpdrive serve` run in this process, its stats
# signal (SIGUSR1) going to their `stats` first.
_SERVE_HOOKED = """
def install(signum, handler):
    global log_stats
    if signum == signal.SIGUSR1:
        log_stats, handler = handler, stats
    return signal.signal(signum, handler)
run.signal = type("S", (), {"signal": staticmethod(install), "SIGUSR1": signal.SIGUSR1})
sys.argv[0] = "warpdrive"
runpy.run_module("warpdrive", run_name="__main__")
"""

# The broker under a sampling profiler for the timed loop only: its stats signal (SIGUSR1), sent
# just before the clients go and just after they finish, starts and then stops the sampling.
# SIGPROF on the process's CPU time (ITIMER_PROF): each sample records the line the
# main thread was running and the functions on its stack, so the counts are CPU, not wall time
# (a deterministic profiler's own cost would swamp a path of ~20 calls per job).
_PROFILED = """
import collections, json, runpy, signal, sys
from warpdrive.serve import run
out, seen, log_stats = sys.argv.pop(1), [], None
lines, funcs = collections.Counter(), collections.Counter()
def sample(signum, frame):
    lines[f"{frame.f_code.co_filename}:{frame.f_lineno}({frame.f_code.co_name})"] += 1
    names = set()
    while frame is not None:
        names.add(f"{frame.f_code.co_filename}:{frame.f_code.co_firstlineno}({frame.f_code.co_name})")
        frame = frame.f_back
    funcs.update(names)
def stats(signum, frame):
    seen.append(1)
    log_stats(signum, frame)
    if len(seen) == 1:
        signal.signal(signal.SIGPROF, sample)
        signal.setitimer(signal.ITIMER_PROF, %(interval)s, %(interval)s)
    elif len(seen) == 2:
        signal.setitimer(signal.ITIMER_PROF, 0)
        with open(out, "w") as f:
            json.dump({"lines": lines, "funcs": funcs}, f)
""" + _SERVE_HOOKED
_SAMPLE_S = 0.001  # (the kernel delivers it at most once per tick: HZ 250 = 4 ms)

# The broker with its working passes sorted by what they carried, for the timed loop only (the
# stats signal starts and stops the count, as above): each pass's mediation CPU is what the
# server's `--measure` counts for it (`work_s`), and the pass is filed by the SQE runs it took
# (`BrokerClient.submit_run`) and the stretches of completions it handed back
# (`VirtualZip._complete`).
_PASSES = """
import collections, json, runpy, signal, sys
from warpdrive.emu import server as srv
from warpdrive.serve import broker as bm, function as fm, run
out, seen, log_stats = sys.argv.pop(1), [], None
cur = collections.Counter()
cats = collections.defaultdict(collections.Counter)
def counted(cls, name, what):
    orig = getattr(cls, name)
    def wrapper(self, *a):
        r = orig(self, *a)
        what(a, r)
        return r
    setattr(cls, name, wrapper)
def took(a, r):
    cur["runs"] += 1
    cur["sqes"] += r[0]
def done(a, r):
    cur["stretches"] += 1
    cur["jobs"] += a[-1]
counted(bm.BrokerClient, "submit_run", took)
counted(fm.VirtualZip, "_complete", done)
def filed(name):
    orig = getattr(srv.VfioUserServer, name)
    def wrapper(self, *a):
        cur.clear()
        w0, p0 = self.work_s, self.work_passes
        r = orig(self, *a)
        if len(seen) == 1 and self.work_passes > p0:
            c = ("submit + complete" if cur["stretches"] else "submit only") if cur["runs"] \
                else "complete, 1-2 jobs" if cur["jobs"] <= 2 else "complete, 3+ jobs"
            k = cats[c]
            k["passes"] += 1
            k["cpu_us"] += (self.work_s - w0) * 1e6
            k.update(cur)
        return r
    setattr(srv.VfioUserServer, name, wrapper)
filed("_poll_measured")
filed("_burst")
def stats(signum, frame):
    seen.append(1)
    log_stats(signum, frame)
    if len(seen) == 2:
        with open(out, "w") as f:
            json.dump(cats, f)
""" + _SERVE_HOOKED


def start_broker(sock: str, profile: str | None = None, extra: list[str] | None = None,
                 root: Path = ROOT, passes: str | None = None) -> subprocess.Popen[bytes]:
    prof = ["-c", _PROFILED % {"interval": _SAMPLE_S}, profile] if profile else \
        ["-c", _PASSES, passes] if passes else ["-m", "warpdrive"]
    args = [sys.executable, *prof, "serve", "emu", "--socket", sock,
            "--inflight", str(IN_FLIGHT), "--measure"]
    args += extra or []
    for k, v in MODEL_OPTIONS.items():
        args += ["--set", f"{k}={v}"]
    log = open(sock + ".log", "wb")  # noqa: SIM115 - the child owns it
    # A session of its own, as a service has (systemd starts one per unit) and as the bundled
    # model already has: with the kernel's autogroups (sched_autogroup_enabled, the default) a
    # broker in the benchmark's session would share one group's CPU with its busy-polling
    # clients, which no deployment does.
    p = subprocess.Popen(args, env=dict(os.environ, PYTHONPATH=str(root)),
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 60
    while not os.path.exists(sock):
        if p.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the broker did not start:\n" + Path(sock + ".log").read_text())
        time.sleep(0.05)
    return p


def broker_stats(broker: subprocess.Popen[bytes], log: str) -> dict[str, Any]:
    """Ask the broker for its counters (SIGUSR1: a `stats {json}` line in its log)."""
    before = Path(log).read_text().count(" stats ")
    broker.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while True:
        lines = [ln for ln in Path(log).read_text().splitlines() if " stats " in ln]
        if len(lines) > before:
            return dict(json.loads(lines[-1].split(" stats ", 1)[1]))
        if time.monotonic() > deadline:
            raise SystemExit("the broker did not report its stats")
        time.sleep(0.005)


class Group:
    """The `nclients` client processes of one row on `device` (on `cpus`, if given), started
    once and ready: each `segment()` lets them go together for one timed loop."""

    def __init__(self, device: str, nclients: int, size: int, duration: float, *,
                 count: int = 0, trace: str | None = None,
                 broker: subprocess.Popen[bytes] | None = None, log: str = "",
                 cpus: set[int] | None = None, model_cpus: set[int] | None = None) -> None:
        self.device, self.broker, self.log = device, broker, log
        self.procs: list[subprocess.Popen[str]] = []
        try:
            for i in range(nclients):
                cmd = [sys.executable, __file__, "--client", device, "--size", str(size),
                       "--duration", str(duration), "--count", str(count)]
                if cpus:
                    cmd += ["--cpus", ",".join(map(str, sorted(cpus)))]
                if model_cpus:
                    cmd += ["--model-cpus", ",".join(map(str, sorted(model_cpus)))]
                if trace is not None and i == 0:
                    cmd = ["strace", "-qq", "-o", trace, *cmd, "--mark"]
                self.procs.append(subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                    env=dict(os.environ, PYTHONPATH=str(ROOT))))
            for p in self.procs:
                assert p.stdout is not None
                if not p.stdout.readline():
                    raise SystemExit(f"a client of {device} failed to start")
        except BaseException:
            self.close(check=False)
            raise

    def close(self, check: bool = True) -> None:
        for p in self.procs:
            if p.stdin is not None and not p.stdin.closed:
                try:
                    p.stdin.close()  # (its loop ends: no more "go")
                except OSError:
                    pass
        for p in self.procs:
            try:
                if p.stdout is not None:
                    p.stdout.read()
                    p.stdout.close()
                p.wait(600)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if check and p.returncode != 0:
                raise SystemExit(f"a client of {self.device} failed (status {p.returncode})")

    def segment(self) -> dict[str, Any]:
        device, broker, log, procs = self.device, self.broker, self.log, self.procs
        broker_pid = broker.pid if broker is not None else None
        watched = [broker_pid, *_children(broker_pid)] if broker_pid else []  # + its model
        stats0 = broker_stats(broker, log) if broker is not None else {}
        cpu0 = {pid: _proc_cpu(pid) for pid in watched}
        sched0 = {pid: _sched(pid) for pid in watched}
        steal0 = _steal()
        started = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:  # (each client's result line, before it closes its engine)
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                p.wait(600)
                raise SystemExit(f"a client of {device} failed (status {p.returncode})")
            results.append(json.loads(line))
        cpu = {pid: _proc_cpu(pid) - c for pid, c in cpu0.items()}
        sched = {pid: _delta(v, _sched(pid)) for pid, v in sched0.items()}
        steal1 = _steal()
        ended = time.monotonic()
        stats1 = broker_stats(broker, log) if broker is not None else {}
        jobs = sum(r["jobs"] for r in results)
        row = {"jobs": jobs, "wall": max(r["wall"] for r in results),
               "client_cpu": sum(r["cpu"] for r in results), "jobs0": results[0]["jobs"],
               "spread": min(r["jobs"] for r in results) / max(1, max(r["jobs"] for r in results)),
               "t": (started + ended) / 2}
        row["broker_cpu"] = cpu.get(broker_pid, 0.0) if broker_pid else 0.0
        row["mediation_cpu"] = stats1.get("mediation_cpu_s", 0.0) - \
            stats0.get("mediation_cpu_s", 0.0)
        row["passes"] = stats1.get("mediation_passes", 0) - stats0.get("mediation_passes", 0)
        row["kicks"] = stats1.get("device_kicks", 0) - stats0.get("device_kicks", 0)
        row["holds"] = [stats1.get(k, 0) - stats0.get(k, 0) for k in ("holds_gathered",
                                                                        "holds_ran_out")]
        row["model_cpu"] = sum(v for pid, v in cpu.items() if pid != broker_pid) + \
            sum(r["model_cpu"] for r in results)
        # Who ran and who waited (run-queue time), per process kind, and what the rest of the
        # machine did meanwhile: the CPU our processes did not use (other work) and idle time.
        zero = [0.0] * 4
        row["sched"] = {
            "client": [sum(x) for x in zip(*(r.get("sched", zero) for r in results))],
            "broker": sched.get(broker_pid, zero) if broker_pid else zero,
            "model": [sum(x) for x in zip(*([v for pid, v in sched.items() if pid != broker_pid]
                                            + [r.get("model_sched", zero) for r in results]))]}
        ticks = max(1, steal1[2] - steal0[2])
        row["steal"] = (steal1[0] - steal0[0]) / ticks
        row["idle"] = (steal1[1] - steal0[1]) / ticks
        ours = sum(v[0] for v in row["sched"].values())
        row["other"] = max(0.0, 1 - row["idle"] - row["steal"]
                           - ours / ((ended - started) * (os.cpu_count() or 1)))
        return row


def run_row(device: str, nclients: int, size: int, duration: float, *, count: int = 0,
            trace: str | None = None, broker: subprocess.Popen[bytes] | None = None,
            log: str = "", cpus: set[int] | None = None) -> dict[str, Any]:
    """One row on its own: its clients started, one segment, its clients closed."""
    g = Group(device, nclients, size, duration, count=count, trace=trace, broker=broker,
              log=log, cpus=cpus)
    try:
        return g.segment()
    finally:
        g.close()


def syscalls_in(trace: str, size: int) -> int:
    """Syscalls between the loop's two markers (zip_bench's markers and counter)."""
    return count_syscalls(Path(trace).read_text(), "broker", size, IN_FLIGHT)


def main() -> None:
    ap = argparse.ArgumentParser(description="broker benchmark")
    ap.add_argument("--quick", action="store_true", help="short runs")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)),
                    help="job sizes in bytes, comma-separated (default: %(default)s)")
    ap.add_argument("--clients", default=",".join(map(str, CLIENTS)),
                    help="client counts, comma-separated (default: %(default)s)")
    ap.add_argument("--profile", metavar="N:SIZE", help="only run N clients on SIZE-byte jobs "
                    "with the broker under cProfile, and print where its time goes")
    ap.add_argument("--floor", action="store_true", help="only the mediation path alone, in "
                    "this process with warm caches, on a null device (no other process to share "
                    "the CPU with): broker CPU per job by batch size")
    ap.add_argument("--cold", action="store_true", help="what going cold costs the pieces of "
                    "a pass (functions, objects, the clock reads), warm and after 8/64 MB "
                    "written")
    ap.add_argument("--breakdown", action="store_true", help="where a working pass's time "
                    "goes, phase by phase (the --floor path, timed and bytecode-counted)")
    ap.add_argument("--passes", metavar="N:SIZE", help="only run N clients on SIZE-byte jobs, "
                    "the broker's working passes sorted by what they carried (jobs, CPU)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=OPTIONS",
                    help="also run every broker row against a broker started with these "
                    "`warpdrive serve` options (e.g. spin='--spin-us 100'), rows interleaved")
    ap.add_argument("--nice", type=int, metavar="N", help="a variant: the broker at nice N "
                    "(`warpdrive serve --nice`; the device model stays at 0 in every row)")
    ap.add_argument("--baseline", metavar="PATH", type=Path, help="a variant: the broker of "
                    "another checkout of warpdrive (e.g. main, for before/after in one run); "
                    "the clients stay this checkout's")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=4096, help=argparse.SUPPRESS)
    ap.add_argument("--duration", type=float, default=1.0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--mark", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cpus", help=argparse.SUPPRESS)
    ap.add_argument("--model-cpus", help=argparse.SUPPRESS)
    ap.add_argument("--model-cpu", metavar="LIST", default="auto", help="the device model "
                    "of every row on these CPUs, the clients and the broker on the others "
                    "(default: the last CPU, on a machine with 2 or more; 'none': wherever the "
                    "scheduler puts them, as before session 23)")
    args = ap.parse_args()
    if args.client:
        client(args.client, args.size, args.duration, args.count, args.mark, args.cpus,
               args.model_cpus)
        return
    if shutil.which("strace") is None:
        raise SystemExit("strace is not installed (needed for the syscall counts)")
    duration = 1.0 if args.quick else 3.0
    sizes = [int(x, 0) for x in args.sizes.split(",")]
    clients = [int(x, 0) for x in args.clients.split(",")]
    if args.floor:
        print_floor(floor())
        return
    if args.cold:
        print_cold(cold())
        return
    if args.breakdown:
        print_breakdown(breakdown())
        return
    if args.passes:
        n, size = (int(x, 0) for x in args.passes.split(":"))
        passes_row(n, size, 5.0 if args.quick else 10.0, args.variant)
        return
    if args.profile:
        n, size = (int(x, 0) for x in args.profile.split(":"))
        profile_row(n, size, 20.0)  # the kernel's profiling timer ticks at HZ: long enough
        return
    load0 = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="wd-bb-")
    # The default broker, and one more per variant (other `serve` options): their rows
    # interleaved in one run, so the comparison survives the machine's load changing.
    brokers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    variants = {"broker": []} | {name: opts.split() for name, _, opts in
                                 (v.partition("=") for v in args.variant)}
    if args.nice is not None:
        variants[f"nice{args.nice}"] = ["--nice", str(args.nice)]
    roots = {m: ROOT for m in variants}
    if args.baseline is not None:
        variants["baseline"] = []
        roots["baseline"] = args.baseline.resolve()
    modes = list(variants)
    # A broker on CPUs of its own (`serve --cpu`): its clients run on the others, as a
    # deployment keeping them off the broker's CPUs would, and a direct row on those CPUs
    # too ("direct@CPUS") besides the one on every CPU.
    pinned = {m: _others(variants[m]) for m in modes}
    directs = {"direct": None} | dict(sorted((_direct_name(c), c) for c in pinned.values() if c))
    # The device model is the hardware's stand-in: a CPU of its own in every row (see the
    # module docstring), unless its CPUs are given, or "none".
    model_cpus: set[int] | None = None
    mine = os.sched_getaffinity(0)
    if args.model_cpu == "auto":  # (a `--cpu` variant places its model itself)
        model_cpus = {max(mine)} if len(mine) > 1 and not any(pinned.values()) else None
    elif args.model_cpu != "none":
        from warpdrive.serve.run import parse_cpus

        model_cpus = parse_cpus(args.model_cpu)
    if model_cpus:
        if any(pinned.values()) or not mine - model_cpus:
            raise SystemExit("--model-cpu: leave CPUs for the clients, and give 'none' with a "
                             "--cpu variant (it places the model itself)")
        directs["direct"] = mine - model_cpus
    ccpus = {m: pinned[m] or directs["direct"] for m in modes}  # where each broker's clients run
    rows: list[dict[str, Any]] = []
    # Rounds instead of one sample (or the best of three) per row: the host drifts (other work
    # starts and stops) within seconds, and a direct row measured at one moment against a
    # broker row measured 20 s later compared the drift as much as the broker (session 22's
    # 0.64x and 0.91x a minute apart; session 23 saw direct alone move 5x between two rows of
    # one run). So for each size and client count, the direct client and the broker's clients
    # are started once, stay connected, and take turns: direct, broker (and any variant), direct,
    # ..., direct, short segments each, with a pause between them longer than the servers'
    # spin windows (so the idle ones are asleep). A broker segment's ratio is against direct at
    # the same moment (interpolated between the direct segments around it); a row reports the
    # median of its rounds' ratios and their range. The jobs, clients, jobs in flight and broker
    # are the same as before; only when and how often each is measured changed.
    rounds = 6 if args.quick else 8
    seg_s = 0.4 if args.quick else 1.0
    samples: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    try:
        for mode in modes:
            sock = os.path.join(tmp, f"{mode}.sock")
            brokers[mode] = (start_broker(sock, extra=variants[mode], root=roots[mode]), sock)
            if model_cpus:
                b = brokers[mode][0].pid
                _pin(b, ccpus[mode] or set())
                for child in _children(b):
                    _pin(child, model_cpus)
        for size in sizes:
            for n in clients:
                groups: dict[str, Group] = {}
                try:
                    for d, cpus in directs.items():
                        groups[d] = Group("emu", 1, size, seg_s, cpus=cpus,
                                          model_cpus=model_cpus)
                    for mode in modes:
                        proc, sock = brokers[mode]
                        groups[mode] = Group("broker:" + sock, n, size, seg_s, broker=proc,
                                             log=sock + ".log", cpus=ccpus[mode])
                    for rnd in range(rounds + 1):  # (the last: direct only, closing brackets)
                        turn = list(directs)
                        if rnd < rounds:
                            turn += modes if rnd % 2 == 0 else modes[::-1]
                        for name in turn:
                            time.sleep(_PAUSE_S)
                            r = groups[name].segment()
                            r["round"] = rnd
                            samples.setdefault((name, 1 if name in directs else n, size),
                                               []).append(r)
                finally:
                    for g in groups.values():
                        g.close()
        trace = os.path.join(tmp, "trace.txt")
        for size in sizes:
            ds = samples[("direct", 1, size)]
            count = 256 if size <= 16 << 10 else 64
            t = run_row("emu", 1, size, duration, trace=trace, count=count)
            rows.append(_row("direct", 1, size, ds, ds, syscalls_in(trace, size) / t["jobs0"]))
            for dname in list(directs)[1:]:
                rows.append(_row(dname, 1, size, samples[(dname, 1, size)],
                                 samples[(dname, 1, size)], None))
            for mode in modes:
                for n in clients:
                    sock = brokers[mode][1]
                    t = run_row("broker:" + sock, n, size, duration, trace=trace, count=count,
                                cpus=ccpus[mode])
                    row = _row(mode, n, size, samples[(mode, n, size)], ds,
                               syscalls_in(trace, size) / t["jobs0"])
                    if pinned[mode]:  # against direct on the clients' CPUs as well
                        same = _ratios(samples[(mode, n, size)],
                                       samples[(_direct_name(pinned[mode]), 1, size)])
                        row["vs_direct_same_cpus"] = round(_median(same), 3)
                    rows.append(row)
    finally:
        for proc, _sock in brokers.values():
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()[0]
    print_table(rows)
    print(f"load average {load0:.2f} at start, {load1:.2f} at end ({os.cpu_count()} CPUs); "
          f"{rounds} rounds of {seg_s:g} s segments per row, direct and broker rows taking "
          "turns (ratios: median of the rounds' ratios to direct at the same moment, and their "
          "range)"
          + "".join(f"; rows {m}: a broker with {' '.join(variants[m])}" for m in modes[1:]
                    if m != "baseline")
          + (f"; rows baseline: the broker of {roots['baseline']}" if "baseline" in roots else "")
          + ("" if len(modes) == 1 else " (the device model at nice 0 in every row)")
          + (f"; the device model on CPU {','.join(map(str, sorted(model_cpus)))}, clients and "
             f"brokers on the others" if model_cpus else "; the device model placed by the "
             "scheduler"))
    print(verdict(rows))
    print(json.dumps({"rows": rows, "load": [round(load0, 2), round(load1, 2)],
                      "cpus": os.cpu_count(), "variants": variants,
                      "model_cpus": sorted(model_cpus or ()),
                      "roots": {m: str(r) for m, r in roots.items()}}))


def _others(options: list[str]) -> set[int] | None:
    """The CPUs left for clients when a broker's options give it CPUs of its own (`--cpu`)."""
    if "--cpu" not in options:
        return None
    from warpdrive.serve.run import parse_cpus

    return os.sched_getaffinity(0) - parse_cpus(options[options.index("--cpu") + 1]) or None


def _direct_name(cpus: set[int] | None) -> str:
    return "direct@" + ",".join(map(str, sorted(cpus or ())))


def hooked_row(hook: str, nclients: int, size: int, duration: float,
               extra: list[str] | None = None) -> tuple[dict[str, Any], Any]:
    """One row against a broker started with `start_broker`'s `hook` ("profile" or "passes"):
    the row, and what the hook wrote (JSON) when the broker stopped."""
    tmp = tempfile.mkdtemp(prefix="wd-bb-")
    sock, out = os.path.join(tmp, "b.sock"), os.path.join(tmp, hook + ".json")
    broker = start_broker(sock, extra=extra, profile=out if hook == "profile" else None,
                          passes=out if hook == "passes" else None)
    try:
        r = run_row("broker:" + sock, nclients, size, duration, broker=broker, log=sock + ".log",
                    cpus=_others(extra or []))
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(60)
    data = json.loads(Path(out).read_text())
    shutil.rmtree(tmp, ignore_errors=True)
    return r, data


def passes_row(nclients: int, size: int, duration: float, variants: list[str]) -> None:
    """One row per broker (the default, and one per `--variant NAME=OPTIONS`, alternating,
    twice each), its working passes sorted by what they carried: how many, how many jobs
    they handed back, their mediation CPU (`--measure`'s count), per pass and per job."""
    configs = [("broker", [])] + [(n, o.split()) for n, _, o in
                                  (v.partition("=") for v in variants)]
    load0 = os.getloadavg()[0]
    for rep in range(2):
        for name, extra in configs:
            r, cats = hooked_row("passes", nclients, size, duration, extra)
            jobs = r["jobs"]
            print(f"{name} ({' '.join(extra) or 'defaults'}), run {rep + 1}: {nclients} "
                  f"clients x {size >> 10} KiB, {jobs / r['wall']:.0f} jobs/s, mediation "
                  f"{r['mediation_cpu'] / jobs * 1e6:.1f} us/job, {jobs / max(1, r['passes']):.1f}"
                  f" jobs per working pass, holds gathered / ran out {r['holds'][0]} / "
                  f"{r['holds'][1]}, load {os.getloadavg()[0]:.2f}")
            print(f"  {'working passes':20} {'share':>6} {'us/pass':>8} {'jobs/pass':>9} "
                  f"{'SQEs/pass':>9} {'stretches':>9} {'us/job':>7}")
            total = sum(c["passes"] for c in cats.values()) or 1
            for cat, c in sorted(cats.items(), key=lambda kv: -kv[1]["cpu_us"]):
                p = c["passes"]
                print(f"  {cat:20} {p / total:6.0%} {c['cpu_us'] / p:8.1f} "
                      f"{c.get('jobs', 0) / p:9.1f} {c.get('sqes', 0) / p:9.1f} "
                      f"{c.get('stretches', 0) / p:9.1f} {c['cpu_us'] / jobs:7.2f}")
            print(json.dumps({"passes": cats, "name": name, "options": extra, "jobs": jobs,
                              "wall": r["wall"], "mediation_cpu": r["mediation_cpu"]}))
    print(f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end")


def profile_row(nclients: int, size: int, duration: float) -> None:
    """One row with the broker under the sampling profiler (`_PROFILED`): where its CPU goes,
    by line and by function (inclusive), in us per job."""
    r, prof = hooked_row("profile", nclients, size, duration)
    jobs = r["jobs"]
    total = sum(prof["lines"].values())
    per_job = r["broker_cpu"] / max(1, total) / jobs * 1e6  # us of CPU per job a sample is
    print(f"{nclients} clients x {size >> 10} KiB: {jobs} jobs in {r['wall']:.2f} s, "
          f"{r['passes']} passes that worked ({jobs / max(1, r['passes']):.1f} jobs each), "
          f"{r['kicks'] / jobs:.2f} wake-up kicks to the device per job; broker CPU "
          f"{r['broker_cpu'] / jobs * 1e6:.1f} us/job ({total} samples), "
          f"mediation {r['mediation_cpu'] / jobs * 1e6:.1f}; load {os.getloadavg()[0]:.2f}")

    def short(key: str) -> str:
        path, _, rest = key.rpartition(":")
        return f"{Path(path).name}:{rest}"

    for title, table, n in (("by function, inclusive", prof["funcs"], 30),
                            ("by line, exclusive", prof["lines"], 30)):
        print(f"{'us/job':>8}  {title}")
        for key, count in sorted(table.items(), key=lambda kv: -kv[1])[:n]:
            print(f"{count * per_job:8.2f}  {short(key)}")


def floor(batches: tuple[int, ...] = (1, 8, 16, 64), jobs: int = 20000,
          naps: tuple[tuple[int, float], ...] = ((8, 300e-6),),
          evicts: tuple[tuple[int, int], ...] = tuple((b, mb << 20) for b in (8, 16, 64)
                                                      for mb in (8, 64))
          ) -> list[dict[str, Any]]:
    """The mediation path alone (`rigs.broker.FunctionRig`), caches warm. A batch of
    SQEs is written and its doorbell stored; the server pass (the function's poll, the broker's
    poll) runs until every CQE is out. Counted: the thread CPU of the passes that did work, per
    job, as `--measure` counts it in the broker. `naps`: (batch, seconds) rows that sleep
    between batches as the broker naps between passes (the other processes run meanwhile, and
    the passes start with cold caches, as in the benchmark's rows). `evicts`: (batch, bytes)
    rows that write one byte of every cache line of that much memory between batches instead
    (no sleep, no other process: only the caches go cold)."""
    from rigs.broker import FunctionRig
    from warpdrive.emu.server import POLL_WORKED

    rig = FunctionRig(MODEL_OPTIONS)
    fn, broker = rig.fn, rig.broker
    clock = time.thread_time
    rows = []
    junk = bytearray(max((b for _, b in evicts), default=0))
    try:
        for batch, nap, evict in [(b, 0.0, 0) for b in batches] + \
                [(b, n, 0) for b, n in naps] + [(b, 0.0, e) for b, e in evicts]:
            done = passes = 0
            work = 0.0
            line = memoryview(junk)[:evict:64]  # one byte per 64-byte cache line
            while done < (jobs if not (nap or evict) else jobs // 4):
                if nap:
                    time.sleep(nap)
                if evict:
                    line[:] = bytes(len(line)) if done & 8 else b"\1" * len(line)
                rig.write(batch)
                rig.ring()
                left = batch
                while left:
                    t0 = clock()
                    took = fn.poll()
                    if broker.poll() == POLL_WORKED or took:
                        work += clock() - t0
                        passes += 1
                    left -= rig.reap(left)
                rig.ack()
                done += batch
            line.release()
            rows.append({"batch": batch, "nap_us": round(nap * 1e6), "evict_mb": evict >> 20,
                         "mediation_us": round(work / done * 1e6, 2),
                         "jobs_per_pass": round(done / passes, 1)})
    finally:
        rig.close()
    return rows


class _Phases:
    """Inclusive time and calls of wrapped functions, and who called whom (a stack), so each
    phase's own time is its inclusive time less its wrapped callees' and less the wrappers'
    own cost (calibrated on a no-op: `overhead`)."""

    def __init__(self) -> None:
        from collections import Counter

        self.incl: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.child: Counter[str] = Counter()  # inclusive time of wrapped callees
        self.child_calls: Counter[str] = Counter()
        self.stack: list[str] = []
        self.undo: list[tuple[Any, str, Any, bool]] = []

    def wrapper(self, name: str, fn: Any) -> Any:
        clock = time.perf_counter_ns
        incl, calls, child, child_calls, stack = (self.incl, self.calls, self.child,
                                                  self.child_calls, self.stack)

        def timed(*a: Any, **k: Any) -> Any:
            stack.append(name)
            t0 = clock()
            r = fn(*a, **k)
            dt = clock() - t0
            stack.pop()
            incl[name] += dt
            calls[name] += 1
            if stack:
                child[stack[-1]] += dt
                child_calls[stack[-1]] += 1
            return r
        return timed

    def wrap(self, owner: Any, attr: str, name: str | None = None) -> None:
        had = attr in vars(owner) if not isinstance(owner, type) else attr in owner.__dict__
        old = getattr(owner, attr) if not isinstance(owner, type) else owner.__dict__[attr]
        fn = old.__func__ if isinstance(old, staticmethod) else old
        new = self.wrapper(name or attr, fn)
        setattr(owner, attr, staticmethod(new) if isinstance(old, staticmethod) else new)
        self.undo.append((owner, attr, old, had))

    def unwrap(self) -> None:
        for owner, attr, old, had in reversed(self.undo):
            if had:
                setattr(owner, attr, old)
            else:
                delattr(owner, attr)
        self.undo.clear()

    def reset(self) -> None:
        for c in (self.incl, self.calls, self.child, self.child_calls):
            c.clear()

    def overhead(self, n: int = 200000) -> tuple[float, float]:
        """(c, o) in ns: what a wrapped no-op's recorded time exceeds the no-op's own cost by
        (the clock read inside the interval), and what a wrapper costs its caller beyond the
        interval it records."""
        def noop() -> None:
            return None
        probe = _Phases()
        w = probe.wrapper("noop", noop)
        clock = time.perf_counter_ns
        best_plain = best_wrapped = float("inf")
        for _ in range(5):
            t0 = clock()
            for _ in range(n):
                noop()
            best_plain = min(best_plain, (clock() - t0) / n)
            probe.reset()
            t0 = clock()
            for _ in range(n):
                w()
            wrapped = (clock() - t0) / n
            if wrapped < best_wrapped:
                best_wrapped, recorded = wrapped, probe.incl["noop"] / n
        return recorded - best_plain, best_wrapped - recorded

    def own(self, c: float, o: float) -> dict[str, float]:
        """Each phase's own time (ns, all calls), wrappers' cost taken out."""
        return {k: self.incl[k] - self.child[k] - self.child_calls[k] * (o + c) - self.calls[k] * c
                for k in self.incl}


def _median(xs: list[Any]) -> float:
    v = sorted(xs)
    return float(v[len(v) // 2]) if v else 0.0


def _opcode_tracer(ops: Any, cur: dict[str, str]) -> Any:
    """A sys.settrace function counting the bytecodes each function executes, as
    `ops["<cur pass>:<qualified name>"]`."""
    def tracer(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        name = cur["pass"] + ":" + frame.f_code.co_qualname

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "opcode":
                ops[name] += 1
            return local
        return local
    return tracer


def breakdown(batches: tuple[int, ...] = (1, 8, 32), cycles: int = 5000,
              opcodes: int = 200) -> list[dict[str, Any]]:
    """Where a working pass's time goes (`rigs.broker.FunctionRig`, caches warm). Each
    cycle is a submit pass (the client's batch taken, checked, posted, the hardware doorbell
    rung), then, once the device has completed the batch, a complete pass (harvest, results
    and CQEs back to the client), then the pass that sees the client's CQ doorbell. Measured
    per phase with perf_counter_ns wrappers (their cost calibrated and taken out), against the
    same passes unwrapped; and, load-independent, the Python bytecodes each function executes
    (sys.settrace opcodes)."""
    import sys as _sys
    from collections import Counter

    import warpdrive.serve.broker as bmod
    import warpdrive.serve.function as fmod
    from rigs.broker import FunctionRig
    from warpdrive.emu.models.zip import ZipModel
    from warpdrive.emu.server import VfioUserServer

    rig = FunctionRig(MODEL_OPTIONS)
    fn, broker, model = rig.fn, rig.broker, rig.model
    client, qm = model.client, model.qm
    clock = time.perf_counter_ns
    ph = _Phases()
    c, o = ph.overhead()

    # The server's own pass around the function and the hook (`VfioUserServer._poll`), on a
    # stand-in for the server with this one function.
    import functools
    import types
    srv = types.SimpleNamespace(_active=[fn], _rr=0, _beat_due=float("inf"),
                                on_poll=broker.poll)
    srv._turn = functools.partial(VfioUserServer._turn, srv)
    server_pass = functools.partial(VfioUserServer._poll, srv)

    def hwq() -> Any:
        return broker.hw[0].q

    def cycle(batch: int, parts: list[list[int]]) -> None:
        rig.write(batch)
        rig.ring()
        t0 = clock()
        server_pass()  # the submit pass
        t1 = clock()
        q = hwq()
        while q.outstanding and not q.completed(q.outstanding):
            pass
        t2 = clock()
        server_pass()  # the complete pass
        t3 = clock()
        assert rig.reap(batch) == batch
        rig.ack()
        server_pass()  # (the CQ doorbell: nothing to do, one compare)
        t4 = clock()
        parts[0].append(t1 - t0)
        parts[1].append(t3 - t2)
        parts[2].append(t4 - t3)

    def install() -> None:
        q = hwq()
        ph.wrap(fn, "poll", "Function.poll")
        ph.wrap(model, "poll", "VirtualZip.poll")
        ph.wrap(ZipModel, "poll", "ZipModel.poll (doorbell scan)")
        ph.wrap(qm, "doorbell", "QmFunction.doorbell")
        ph.wrap(qm, "process", "QmFunction.process")
        ph.wrap(qm, "_run_queue", "QmFunction._run_queue")
        ph.wrap(qm, "_run_queue_runs", "QmFunction._run_queue_runs")
        ph.wrap(qm, "rings", "ZipModel._rings")
        ph.wrap(qm, "execute_run", "VirtualZip._submit_run")
        ph.wrap(client, "submit_run", "BrokerClient.submit_run")
        ph.wrap(bmod, "mediate_run", "sqe.mediate_run")
        ph.wrap(bmod, "mediate", "sqe.mediate")
        ph.wrap(bmod, "Run", "Run()")
        ph.wrap(q, "post_many", "QmQueue.post_many")
        ph.wrap(broker, "poll", "Broker.poll")
        srv.on_poll = broker.poll  # (the stand-in server took the unwrapped one)
        ph.wrap(model, "_doorbell", "VirtualZip._doorbell")
        ph.wrap(q, "ring", "QmQueue.ring (hw SQ doorbell)")
        ph.wrap(q, "_ring", "Doorbell.ring (store + wake check)")
        ph.wrap(q, "harvest", "QmQueue.harvest")
        ph.wrap(q, "ring_cq", "QmQueue.ring_cq")
        ph.wrap(client, "on_complete", "VirtualZip._complete")
        ph.wrap(fmod, "copy_results", "sqe.copy_results")
        ph.wrap(client, "after_completions", "VirtualZip._flush")
        ph.wrap(qm, "complete", "QmFunction.complete")
        ph.wrap(qm, "_post_cqes", "QmFunction._post_cqes")
        ph.wrap(qm, "_interrupt", "QmFunction._interrupt")
        ph.wrap(fn.dma, "view", "ClientMemory.view")

    rows = []
    try:
        for batch in batches:
            for _ in range(200):  # warm: rings taken, hardware queue started
                cycle(batch, [[], [], []])
            plain: list[list[int]] = [[], [], []]
            for _ in range(cycles):
                cycle(batch, plain)
            install()
            ph.reset()
            wrapped: list[list[int]] = [[], [], []]
            per_phase: dict[str, list[float]] = {}
            prev: dict[str, float] = {}
            for _ in range(cycles):
                cycle(batch, wrapped)
                own = ph.own(c, o)
                for k, v in own.items():
                    per_phase.setdefault(k, []).append(v - prev.get(k, 0.0))
                prev = own
            total_own = {k: _median(v) * cycles for k, v in per_phase.items()}
            calls = dict(ph.calls)
            ph.unwrap()
            srv.on_poll = broker.poll
            # Bytecodes per phase (a deterministic count: the load cannot move it).
            ops: Counter[str] = Counter()
            cur = {"pass": "submit"}
            tracer = _opcode_tracer(ops, cur)
            for _ in range(opcodes):
                rig.write(batch)
                rig.ring()
                cur["pass"] = "submit"
                _sys.settrace(tracer)
                server_pass()
                _sys.settrace(None)
                q = hwq()
                while q.outstanding and not q.completed(q.outstanding):
                    pass
                cur["pass"] = "complete"
                _sys.settrace(tracer)
                server_pass()
                _sys.settrace(None)
                assert rig.reap(batch) == batch
                rig.ack()
                cur["pass"] = "idle"
                _sys.settrace(tracer)
                server_pass()
                _sys.settrace(None)
            rows.append({
                "batch": batch, "cycles": cycles, "wrapper_ns": [round(c), round(o)],
                "plain_us": [round(_median(x) / 1e3, 2) for x in plain],
                "wrapped_us": [round(_median(x) / 1e3, 2) for x in wrapped],
                "own_us": {k: round(v / cycles / 1e3, 3) for k, v in total_own.items()},
                "calls_per_cycle": {k: round(v / cycles, 2) for k, v in calls.items()},
                "opcodes": {k: round(v / opcodes, 1) for k, v in
                            sorted(ops.items(), key=lambda kv: -kv[1])},
            })
    finally:
        ph.unwrap()
        rig.close()
    return rows


def print_breakdown(rows: list[dict[str, Any]]) -> None:
    print(f"where a working pass goes (one client, warm, null device; load "
          f"{os.getloadavg()[0]:.2f}); medians over the cycles, own time (callees and the "
          "timing wrappers' cost taken out)")
    for r in rows:
        b = r["batch"]
        print(f"\nbatch {b}: a cycle is a submit pass {r['plain_us'][0]:.2f} us, a complete "
              f"pass {r['plain_us'][1]:.2f} us, a pass after the CQ doorbell "
              f"{r['plain_us'][2]:.2f} us: {sum(r['plain_us']) / b:.2f} us/job (wrapped: "
              f"{sum(r['wrapped_us']):.2f} us a cycle; a wrapper costs "
              f"{r['wrapper_ns'][0]} + {r['wrapper_ns'][1]} ns a call, taken out below)")
        parts = r["own_us"]
        print(f"  per cycle, own time of each phase (sum {sum(parts.values()):.2f} us; the "
              "rest is the server pass itself and the benchmark's loop):")
        for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"    {v:7.2f}  {k}  ({r['calls_per_cycle'].get(k, 0):g} calls)")
        for p in ("submit", "complete", "idle"):
            mine = {k.split(":", 1)[1]: v for k, v in r["opcodes"].items()
                    if k.startswith(p + ":")}
            print(f"  bytecodes, {p} pass: {sum(mine.values()):.0f}: " + ", ".join(
                f"{k} {v:g}" for k, v in mine.items()))
    print(json.dumps({"breakdown": rows, "load": round(os.getloadavg()[0], 2)}))


def cold(reps: int = 1500) -> list[dict[str, Any]]:
    """What going cold costs the pieces a pass is made of, apart from the broker: thread CPU
    (as `--measure` counts a pass: between two `time.thread_time` reads) of a chain of K
    distinct small functions (10 attribute loads each), of a walk over M distinct objects, and
    of nothing (the two clock reads alone), warm and after writing 8 MB (beyond L2) or 64 MB
    (beyond L3) between calls; medians."""
    import statistics

    clock = time.thread_time
    junk = bytearray(64 << 20)

    class Obj:
        __slots__ = ("a", "b")

        def __init__(self) -> None:
            self.a = self.b = 1

    def chain(k: int) -> Any:
        g: dict[str, Any] = {}
        exec("\n".join(  # K distinct code objects
            f"def f{i}(o):\n" + "".join(f"    a = o.{'ab'[j & 1]}\n" for j in range(10)) +
            f"    return {f'f{i + 1}(o)' if i + 1 < k else '0'}\n" for i in range(k)), g)
        first, o = g["f0"], Obj()
        return lambda: first(o)

    def walk(m: int) -> Any:
        objs = [Obj() for _ in range(m)]

        def run() -> int:
            s = 0
            for o in objs:
                s += o.a
            return s
        return run

    def median_us(fn: Any, evict: int, n: int) -> float:
        line = memoryview(junk)[:evict:64]  # one byte per 64-byte cache line
        one, zero = b"\1" * len(line), bytes(len(line))
        xs = []
        for r in range(n):
            if evict:
                line[:] = one if r & 1 else zero
            t0 = clock()
            fn()
            xs.append(clock() - t0)
        line.release()
        return statistics.median(xs) * 1e6

    cases = [("nothing (the clock reads)", lambda: None)] + \
        [(f"{k} functions", chain(k)) for k in (1, 8, 24)] + \
        [(f"{m} objects", walk(m)) for m in (16, 64, 256)]
    return [{"what": name, "warm_us": round(median_us(fn, 0, reps), 2),
             "evict8_us": round(median_us(fn, 8 << 20, reps // 3), 2),
             "evict64_us": round(median_us(fn, 64 << 20, reps // 5), 2)} for name, fn in cases]


def print_cold(rows: list[dict[str, Any]]) -> None:
    print(f"cold pieces (thread CPU between two clock reads, medians; load "
          f"{os.getloadavg()[0]:.2f}): warm / 8 MB written before / 64 MB written before")
    for r in rows:
        print(f"  {r['what']:28} {r['warm_us']:6.2f} / {r['evict8_us']:6.2f} / "
              f"{r['evict64_us']:6.2f} us")
    print(json.dumps({"cold": rows, "load": round(os.getloadavg()[0], 2)}))


def print_floor(rows: list[dict[str, Any]]) -> None:
    print(f"mediation alone (one client, warm caches, null device; load "
          f"{os.getloadavg()[0]:.2f}):")
    for r in rows:
        nap = f", a {r['nap_us']} us nap before each batch" if r.get("nap_us") else \
            f", {r['evict_mb']} MB written before each batch" if r.get("evict_mb") else ""
        print(f"  batch {r['batch']:3d}: {r['mediation_us']:6.2f} us/job "
              f"({r['jobs_per_pass']:.1f} jobs per pass that worked{nap})")
    print(json.dumps({"floor": rows, "load": round(os.getloadavg()[0], 2)}))


def _ratios(rows: list[dict[str, Any]], direct: list[dict[str, Any]]) -> list[float]:
    """Each row's jobs/s over direct's at the same moment: linear in time between the direct
    rows measured before and after it (the nearest one outside their span)."""
    ds = sorted((d["t"], d["jobs"] / d["wall"]) for d in direct)
    out = []
    for r in rows:
        t = r["t"]
        after = next((i for i, (td, _) in enumerate(ds) if td >= t), len(ds) - 1)
        (t0, j0), (t1, j1) = ds[max(0, after - 1)], ds[after]
        base = j0 if t1 <= t0 else j0 + (j1 - j0) * min(1.0, max(0.0, (t - t0) / (t1 - t0)))
        out.append(r["jobs"] / r["wall"] / base)
    return out


def _row(mode: str, n: int, size: int, rs: list[dict[str, Any]], direct: list[dict[str, Any]],
         syscalls: float | None) -> dict[str, Any]:
    """A table row from a row's rounds: jobs/s and the ratio to direct as medians over the
    rounds (with the ratios' range), the per-job figures over all its rounds' jobs."""
    import statistics

    jobs = sum(r["jobs"] for r in rs)
    wall = sum(r["wall"] for r in rs)
    ratios = _ratios(rs, direct)
    cpus = os.cpu_count() or 1

    def total(key: str) -> float:
        return sum(r.get(key, 0.0) for r in rs)

    sched = {k: [sum(r["sched"][k][i] for r in rs) for i in range(4)]
             for k in ("client", "broker", "model")}
    passes = total("passes")
    return {"mode": mode, "clients": n, "size": size,
            "jobs_s": round(statistics.median(r["jobs"] / r["wall"] for r in rs), 1),
            "jobs_s_range": [round(min(r["jobs"] / r["wall"] for r in rs)),
                             round(max(r["jobs"] / r["wall"] for r in rs))],
            "vs_direct": round(statistics.median(ratios), 3),
            "vs_direct_rounds": [round(x, 3) for x in ratios],
            "client_cpu_us": round(total("client_cpu") / jobs * 1e6, 1),
            "client_syscalls": None if syscalls is None else round(syscalls, 3),
            "broker_cpu_us": round(total("broker_cpu") / jobs * 1e6, 1),
            "mediation_us": round(total("mediation_cpu") / jobs * 1e6, 1),
            "jobs_per_pass": round(jobs / passes, 1) if passes else None,
            "passes_s": round(passes / wall),
            "model_cpu_us": round(total("model_cpu") / jobs * 1e6, 1),
            # the machine's CPU time during the rows, in %: ours by kind, other work, idle
            "machine_pct": {**{k: round(100 * v[0] / (wall * cpus), 1) for k, v in sched.items()},
                            "other": round(100 * total("other") / len(rs), 1),
                            "idle": round(100 * total("idle") / len(rs), 1)},
            # run-queue wait (runnable, another task on the CPU) and context switches per job
            "wait_us": {k: round(v[1] / jobs * 1e6, 1) for k, v in sched.items()},
            "switches": {k: [round(v[2] / jobs, 2), round(v[3] / jobs, 2)]
                         for k, v in sched.items()},
            "steal_pct": round(100 * total("steal") / len(rs), 2),
            # fairness: the fewest jobs one client did over the most, worst segment
            "client_min_max": round(min(r.get("spread", 1.0) for r in rs), 2),
            "order": [r["round"] for r in rs]}


def print_table(rows: list[dict[str, Any]]) -> None:
    # The headline is against direct on every CPU (the goal); a `--cpu` variant's ratio to
    # direct on its clients' CPUs only beside it.
    hdr = ["mode", "clients", "size", "jobs/s", "vs direct (all CPUs)", "range",
           "vs direct@clients' CPUs", "client cpu us/job", "client syscalls/job",
           "broker cpu us/job", "mediation us/job", "jobs/pass", "model cpu us/job", "steal %"]
    lines = [hdr]
    for r in rows:
        lo, hi = min(r["vs_direct_rounds"]), max(r["vs_direct_rounds"])
        lines.append([r["mode"], str(r["clients"]), f"{r['size'] >> 10} KiB",
                      f"{r['jobs_s']:.0f}", f"{r['vs_direct']:.2f}x",
                      "-" if r["mode"].startswith("direct") else f"{lo:.2f}-{hi:.2f}",
                      f"{r['vs_direct_same_cpus']:.2f}x" if "vs_direct_same_cpus" in r
                      else "-",
                      f"{r['client_cpu_us']:.1f}",
                      "-" if r["client_syscalls"] is None else f"{r['client_syscalls']:.3f}",
                      f"{r['broker_cpu_us']:.1f}", f"{r['mediation_us']:.1f}",
                      "-" if r["jobs_per_pass"] is None else f"{r['jobs_per_pass']:.1f}",
                      f"{r['model_cpu_us']:.1f}", f"{r['steal_pct']:.1f}"])
    _print_aligned(lines)
    # Who had the CPUs, who waited for them, who was switched out: the machine's time in %
    # (clients / broker / model / other work / idle), run-queue wait in us per job and
    # context switches per job (voluntary + involuntary) for clients / broker / model.
    print()
    hdr = ["mode", "clients", "size", "jobs/s range", "machine % c/b/m/other/idle",
           "run-queue wait us/job c/b/m", "switches/job c/b/m (vol+invol)", "passes/s",
           "client jobs min/max"]
    lines = [hdr]
    for r in rows:
        m, w, sw = r["machine_pct"], r["wait_us"], r["switches"]
        lines.append([r["mode"], str(r["clients"]), f"{r['size'] >> 10} KiB",
                      "{}-{}".format(*r["jobs_s_range"]),
                      "/".join(f"{m[k]:.0f}" for k in ("client", "broker", "model", "other",
                                                         "idle")),
                      "/".join(f"{w[k]:.0f}" for k in ("client", "broker", "model")),
                      " ".join(f"{a:.1f}+{b:.1f}" for a, b in (sw[k] for k in
                                                               ("client", "broker", "model"))),
                      f"{r['passes_s']}" if r["passes_s"] else "-",
                      f"{r['client_min_max']:.2f}" if r["clients"] > 1 else "-"])
    _print_aligned(lines)


def _print_aligned(lines: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    for row in lines:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


def verdict(rows: list[dict[str, Any]]) -> str:
    notes = []
    brokers = [r for r in rows if not r["mode"].startswith("direct")]
    for four in (r for r in brokers if r["clients"] == 4):
        same = f", {four['vs_direct_same_cpus']:.2f}x direct on the clients' CPUs" \
            if "vs_direct_same_cpus" in four else ""
        rounds = ", ".join(f"{x:.2f}" for x in four["vs_direct_rounds"])
        notes.append(f"{four['mode']}, {four['size'] >> 10} KiB, 4 clients: "
                     f"{four['vs_direct']:.2f}x direct (goal >= 0.8x; rounds {rounds}){same}, "
                     "mediation "
                     f"{four['mediation_us']:.1f} us/job (goal <= 3)")
    sys_max = max(r["client_syscalls"] for r in brokers)
    notes.append(f"client syscalls/job while the broker is busy: max {sys_max:.3f} (goal 0)")
    med = sorted(r["mediation_us"] for r in brokers)
    tot = sorted(r["broker_cpu_us"] for r in brokers)
    notes.append(f"broker mediation CPU us/job: {med[0]:.1f}-{med[-1]:.1f} (goal <= 3); all its "
                 f"CPU, spinning included: {tot[0]:.1f}-{tot[-1]:.1f}")
    return "\n".join(notes)


if __name__ == "__main__":
    main()
