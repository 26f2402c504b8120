"""The ZIP model's pass per job, in process: no client, no socket, no scheduler (issue 11).

    python benchmarks/zip_model_pass.py [--baseline PATH] [--jobs 2000]

What one stateless job costs the model from its doorbell to its CQE (`QmFunction.doorbell` +
`process`: the SQE, the buffers, zlib, the results, the CQE), driven by the driver stand-in the
tests use too (`rigs/zip_model.py` `Client`) over real client memory, the ring views kept as
`ZipModel` keeps them (a checkout whose QM ignores kept views makes its own per pass, as its
model did). Two figures per job: Python bytecodes executed (`sys.settrace` opcode events: the same
on any machine and at any load) and thread CPU (best of 10 rounds; moves with the load, so the
checkouts are measured in alternation), with zlib's own call on the same data beside it.
`--baseline PATH`: another checkout (e.g. a `git worktree` of an older main; one from before
`rigs/` is driven by the same stand-in from its own tests). Prints a table and one JSON line
(`zip_model_pass: {...}`) with the load average.

`--served`: the pass as the served model makes it instead: a `ZipModel` (the embedded default's
two workers) hosted by a server `Function` in this process (`rigs.zip_model.model_client`), its
doorbell stored into the mapped doorbell word and seen by one `ZipModel.poll` (the doorbell pass,
through to the CQE); the CQ doorbell every 64 jobs keeps room in the CQ. The driver's side is the
same stand-in.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from zip_oneshot_cpu import compare  # noqa: E402

CALLS = ("compress 5", "decompress 5", "compress 4096", "decompress 4096", "decompress 65536")

# One checkout's figures, in a fresh interpreter on checkout sys.argv[1]; prints a JSON line.
_CHILD = r'''
import json, os, sys, time, timeit, zlib
root, jobs = sys.argv[1], int(sys.argv[2])
sys.path[:0] = [root, os.path.join(root, "benchmarks")]
try:
    from rigs.zip_model import DEPTH, DST, IOVA, SQ, SRC, Client, model_client
except ImportError:  # a --baseline checkout from before rigs/ (session 23): its tests had them
    from tests.test_zip_model import DEPTH, DST, IOVA, SQ, SRC, Client
    model_client = None
from warpdrive.devices.hisi_qm import regs as qm
from warpdrive.devices.zip import hw
from warpdrive.devices.zip.sqe import Format, SqeTemplate
from zip_bench import sample

def rig(op, data):
    c = Client({"sq_depth": 1024, "cq_depth": 1024})
    c.bring_up(hw.ZIP_QC_COMPRESS if op == "compress" else hw.ZIP_QC_DECOMPRESS)
    views = {}
    def rings(q):
        v = views.get(q.qn)
        if v is None:
            v = views[q.qn] = (c.cm.view(q.sq_base, q.sq_depth * q.sqe_size, write=True),
                               c.cm.view(q.cq_base, q.cq_depth * 16, write=True))
        return v
    c.qm.rings = rings
    c.mem[SRC:SRC + len(data)] = data
    tmpl = SqeTemplate.for_format(Format("zlib", 15), qm.QM_HW_V2)
    for slot in range(16):
        tmpl.fill(c.mem, SQ + slot * hw.SQE_SIZE, in_len=len(data), dst=IOVA + DST,
                  avail=1 << 20, src=IOVA + SRC, tag=slot)
    bells = [qm.doorbell_v2(0, qm.QM_DB_CMD_SQ, t) for t in range(16)]
    state = {"tail": 0}
    def job():
        state["tail"] = t = (state["tail"] + 1) % 16
        c.qm.doorbell(bells[t])
        return c.qm.process()
    return job

def served(op, data):
    # The stand-in's ZipModel on a server Function, with the embedded default's workers.
    if model_client is not None:
        c, model, _fn = model_client(workers="2")
    else:  # (an older checkout: the same set-up, then in its tests)
        import tests.test_zip_model_fastpath as fastpath
        from warpdrive.emu.models.zip import ZipModel
        fastpath.ZipModel = lambda **_: ZipModel(workers="2")
        c, model, _fn = fastpath._model_client()
    c.bring_up(hw.ZIP_QC_COMPRESS if op == "compress" else hw.ZIP_QC_DECOMPRESS)
    c.mem[SRC:SRC + len(data)] = data
    tmpl = SqeTemplate.for_format(Format("zlib", 15), qm.QM_HW_V2)
    for slot in range(DEPTH):
        tmpl.fill(c.mem, SQ + slot * hw.SQE_SIZE, in_len=len(data), dst=IOVA + DST,
                  avail=1 << 20, src=IOVA + SRC, tag=slot)
    bells = [qm.doorbell_v2(0, qm.QM_DB_CMD_SQ, t) for t in range(DEPTH)]
    cq_bells = [qm.doorbell_v2(0, qm.QM_DB_CMD_CQ, t) for t in range(DEPTH)]
    cell, poll = model._bells[0][0], model.poll
    state = {"tail": 0}
    def job():
        state["tail"] = t = (state["tail"] + 1) % DEPTH
        cell.value = bells[t]
        worked = poll()
        if not t % 64:  # (outside the pass: room in the CQ, as a driver's lazy CQ doorbell)
            cell.value = cq_bells[t]
            poll()
        return int(worked)
    return job

if os.environ.get("ZIP_MODEL_PASS_SERVED"):
    rig = served
out = {}
for call in sys.argv[3:]:
    op, size = call.split()
    data = sample(int(size))
    blob = zlib.compress(data)
    job = rig(op, data if op == "compress" else blob[2:])  # software owns the header
    for _ in range(20):
        assert job() == 1
    count = [0]
    def tracer(frame, event, arg):
        frame.f_trace_opcodes = True
        if event == "opcode":
            count[0] += 1
        return tracer
    n = 50
    sys.settrace(tracer)
    for _ in range(n):
        job()
    sys.settrace(None)
    ops = count[0] / n
    k = max(10, jobs // 10 if int(size) < 10000 else jobs // 100)
    cpu = min(timeit.repeat(job, number=k, repeat=10, timer=time.thread_time)) / k
    ref = (lambda: zlib.compress(data, 6)) if op == "compress" else (lambda: zlib.decompress(blob))
    zl = min(timeit.repeat(ref, number=k, repeat=10, timer=time.thread_time)) / k
    out[call] = {"bytecodes": round(ops), "model_us": round(cpu * 1e6, 2),
                 "zlib_us": round(zl * 1e6, 2)}
print(json.dumps(out))
'''


def measure(root: Path, jobs: int, calls: tuple[str, ...], served: bool = False) -> dict:
    env = dict(os.environ, ZIP_MODEL_PASS_SERVED="1" if served else "")
    r = subprocess.run([sys.executable, "-c", _CHILD, str(root), str(jobs), *calls],
                       capture_output=True, text=True, timeout=900, cwd=root, env=env)
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if r.returncode or not lines:
        raise SystemExit(f"{root}: exit {r.returncode}: {r.stderr[-600:]}")
    return dict(json.loads(lines[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--baseline", type=Path, help="another checkout, measured alongside")
    ap.add_argument("--served", action="store_true",
                    help="through ZipModel.poll as served (see the module docstring)")
    args = ap.parse_args()
    return compare("zip_model_pass", CALLS, args.baseline,
                   lambda root, call: measure(root, args.jobs, (call,), args.served)[call],
                   (("bytecodes", "bytecodes"), ("model_us", "model us"), ("zlib_us", "zlib us")))


if __name__ == "__main__":
    sys.exit(main())
