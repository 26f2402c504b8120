"""A process that dies holding virtio-crypto sessions (for the session-reclaim tests on the host
model and in the lab on QEMU's function)."""

from __future__ import annotations

import os
import signal

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
