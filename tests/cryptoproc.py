"""A process that dies holding virtio-crypto sessions (for the session-reclaim tests on the host
model and in the lab on QEMU's function)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from crypto_vectors import IV, K128, PT

import warpdrive
from warpdrive.crypto import Cipher, VirtioCrypto


def die_holding_sessions(name: str, *, backend: str = "auto", ciphers: int = 1,
                         reclaim: bool = True) -> str:
    """Fork a child that opens `name`, creates `ciphers` Ciphers (each an encrypt and a decrypt
    session), tells us "ok" (or what failed) and is SIGKILLed. Returns what it said."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        status = b"ok"
        try:
            dev = warpdrive.open(name, backend=backend)
            VirtioCrypto.of(dev, ring_size=16, max_request=4096, reclaim=reclaim)
            for _ in range(ciphers):
                c = Cipher("aes-cbc", K128, device=dev)
                c.decrypt(IV, c.encrypt(IV, PT))
        except BaseException as e:  # report, then die like the others
            status = repr(e).encode()[:300]
        os.write(w, status)
        signal.pause()
        os._exit(0)
    os.close(w)
    said = os.read(r, 512).decode()
    os.close(r)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return said


class Forker:
    """`die_holding_sessions` run in a small helper process, so the children are forked from it
    and not from the test process: a fork copies the parent's page tables, and each DMA map's
    smaps check walks every mapping, both in proportion to the parent's size (pytest's hundreds
    of MB doubled what each of 260 deaths cost)."""

    def __init__(self) -> None:
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p))
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)

    def die_holding_sessions(self, name: str, **kw: Any) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([name, kw]).encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the forker exited with status {self.proc.wait(10)}"
        return str(json.loads(line))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.proc.wait(30) != 0:
            raise AssertionError(f"the forker exited with status {self.proc.returncode}")
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Forker:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
            return
        self.proc.kill()  # the test's own failure is the news
        self.proc.wait()


if __name__ == "__main__":  # the Forker's helper: one request per line, one answer per line
    for request in sys.stdin:
        target, options = json.loads(request)
        print(json.dumps(die_holding_sessions(target, **options)), flush=True)
