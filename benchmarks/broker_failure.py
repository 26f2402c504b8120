"""How fast failures are noticed, around the broker (the issue's time goals live here, not in
tests).

    python benchmarks/broker_failure.py [--trials N]

Rows:
* `server_death_<wait>`: a client waits on shared memory for a job (the broker's client, and a
  client of the bundled model directly) when its server is killed with SIGKILL; time from the
  kill to `ConnectionLostError` in the client (goal: within 100 ms), for `wait="spin"` (pure
  polling) and `wait="auto"` (polling, then the completion interrupt).
* `client_death`: a broker client with jobs in flight is killed with SIGKILL; time until the
  broker has dropped its connection, its queues and its maps (goal: within 1 s).
Printed: a table (median and worst of N trials), the load average, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def server_death(kind: str, wait: str) -> float:
    """Seconds from SIGKILL of the server to ConnectionLostError in a waiting client."""
    import warpdrive.zip as wz
    from warpdrive.errors import ConnectionLostError

    tmp = tempfile.mkdtemp(prefix="wd-bf-")
    server = None
    if kind == "broker":
        sock = os.path.join(tmp, "b.sock")
        server = subprocess.Popen([sys.executable, "-m", "warpdrive", "serve", "emu", "--socket",
                                   sock], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        while not os.path.exists(sock):
            time.sleep(0.02)
        eng = wz.open_engine("broker:" + sock, wait=wait, timeout=60)
        victim = server.pid
    else:
        eng = wz.open_engine("emu", wait=wait, timeout=60, announce=False)
        victim = eng.source.dev.emulator.proc.pid  # type: ignore[attr-defined]
    try:
        s = eng.session("compress")
        src = s.buffer(1 << 16)
        src.view[:] = os.urandom(1 << 16)
        job = s.prepare(src, 1 << 16)  # buffers mapped now: submitting needs no message
        s.submit(job)
        s.drain()
        os.kill(victim, signal.SIGSTOP)  # a job in flight that can never complete
        s.submit(job)
        killed = [0.0]

        def kill() -> None:
            time.sleep(0.2)  # the client is waiting by now
            killed[0] = time.monotonic()
            os.kill(victim, signal.SIGKILL)

        t = threading.Thread(target=kill)
        t.start()
        try:
            s.drain()
            raise SystemExit("the job completed: the server was not stopped")
        except ConnectionLostError:
            noticed = time.monotonic()
        t.join()
        return noticed - killed[0]
    finally:
        eng.close()
        if server is not None:
            server.wait()
        for f in Path(tmp).iterdir():
            f.unlink()
        os.rmdir(tmp)


def client_death() -> float:
    """Seconds from SIGKILL of a broker client with jobs in flight to its resources freed."""
    from warpdrive.serve.broker import Broker
    from warpdrive.serve.run import make_server, open_shared_device

    tmp = tempfile.mkdtemp(prefix="wd-bf-")
    sock = os.path.join(tmp, "b.sock")
    broker = Broker(open_shared_device("emu"))
    server = make_server(broker, sock)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    while not os.path.exists(sock):
        time.sleep(0.01)
    script = textwrap.dedent(f"""
        import os, time, warpdrive.zip as wz
        eng = wz.open_engine("broker:{sock}", wait="spin")
        s = eng.session("compress")
        for _ in range(64):
            s.submit(os.urandom(1 << 16), flush=False)
        s.flush()
        print("go", flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "go"
        while not any(h.q.outstanding for h in broker.hw):
            time.sleep(0.001)
        t0 = time.monotonic()
        p.kill()
        p.wait()
        base_maps = 4  # the broker's own: QM tables + its queues' rings
        while (server.clients or broker.clients or broker._parked
               or any(h.users for h in broker.hw)
               or len(broker.dev.dma.mappings) > base_maps + len(broker.hw)):
            time.sleep(0.0005)
        return time.monotonic() - t0
    finally:
        if p.stdout is not None:
            p.stdout.close()
        server.stop()
        th.join(10)
        broker.close()
        os.rmdir(tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description="failure detection times around the broker")
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    cases = [("server_death_spin", lambda: server_death("broker", "spin"), 0.1),
             ("server_death_auto", lambda: server_death("broker", "auto"), 0.1),
             ("model_death_spin", lambda: server_death("emu", "spin"), 0.1),
             ("client_death", client_death, 1.0)]
    for name, fn, goal in cases:
        times = [fn() for _ in range(args.trials)]
        rows.append({"case": name, "median_ms": round(statistics.median(times) * 1e3, 1),
                     "worst_ms": round(max(times) * 1e3, 1), "goal_ms": goal * 1e3,
                     "trials": args.trials})
    width = max(len(r["case"]) for r in rows)
    print(f"{'case':<{width}}  median ms  worst ms  goal ms")
    for r in rows:
        print(f"{r['case']:<{width}}  {r['median_ms']:9.1f}  {r['worst_ms']:8.1f}  "
              f"{r['goal_ms']:7.0f}")
    load1 = os.getloadavg()[0]
    print(f"load average {load0:.2f} at start, {load1:.2f} at end ({os.cpu_count()} CPUs)")
    print(json.dumps({"rows": rows, "load": [round(load0, 2), round(load1, 2)]}))


if __name__ == "__main__":
    main()
