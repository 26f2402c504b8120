"""What the engine's DMA buffer pool keeps mapped after one big job (docs/driver-bench.md, "the
buffer pool's idle memory"): a 50 MB compress and decompress on the default engine, then 2,000
one-shot 1 KB calls, a pause longer than the pool's IDLE_S and one session job, then trim().
Prints VmRSS, RssShmem (DMA buffers are memfd pages shared with the model) and the pool's idle
bytes after each step, and a JSON line. Run: .venv/bin/python benchmarks/pool_idle.py"""

import gc
import json
import os
import time

import warpdrive.zip as wz
from warpdrive.pool import BufferPool

rows: dict[str, dict[str, int]] = {}



def status() -> dict[str, int]:
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) >> 10 for k, _, v in (line.partition(":") for line in f)
                if k in ("VmRSS", "RssShmem")}


def show(what: str, eng: wz.ZipEngine) -> None:
    st = status()
    idle = eng.pool.idle_bytes() >> 20
    rows[what] = {**st, "pool_idle_mib": idle}
    print(f"{what:38s} VmRSS {st['VmRSS']:4d} MB  RssShmem {st['RssShmem']:3d} MB  "
          f"pool idle {idle} MiB", flush=True)


data = (os.urandom(1 << 20) * 10 + bytes(range(256)) * 4096 * 40)[:50_000_000]
eng = wz.default_engine()
wz.compress(b"warm")
show("start", eng)
out = wz.compress(data)
assert wz.decompress(out) == data
del out, data
gc.collect()
show("after 50 MB compress + decompress", eng)
for _ in range(2000):
    wz.compress(b"small job " * 100)
show("2000 one-shot 1 KB calls", eng)
time.sleep(BufferPool.IDLE_S + 0.5)
s = eng.session("compress")
s.submit(b"a session job" * 100)
s.drain()
s.close()
show("a pause > IDLE_S, then one session job", eng)
eng.trim()
show("engine.trim()", eng)
print(json.dumps({"bench": "pool_idle", "load": os.getloadavg()[0], "rows": rows}))
