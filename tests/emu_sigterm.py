"""Run `python -m warpdrive.emu testdev` servers (forked from this one process, so each costs a
fork, not an interpreter start) and SIGTERM each at a random point while a client talks to it:
during its handshake, mid-message, between requests, while it maps DMA memory or right after it
started listening. Prints one JSON line: the rounds whose server did not exit 0 or left its
socket behind, with the server's stderr.

    python tests/emu_sigterm.py ROUNDS SEED DIR
"""

from __future__ import annotations

import faulthandler
import fcntl
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time

from warpdrive.backends.vfiouser.wire import Channel
from warpdrive.emu import serve
from warpdrive.emu.registry import load_model
from warpdrive.uapi import vfio_user as P

CAPS = json.dumps({"capabilities": {"max_msg_fds": 8, "max_data_xfer_size": 1 << 20,
                                    "pgsizes": 4096}}).encode() + b"\0"
RW = P.VFIO_USER_F_DMA_REGION_READ | P.VFIO_USER_F_DMA_REGION_WRITE


def talk(path: str, rng: random.Random, done: threading.Event) -> None:
    """A client that keeps the server busy with a mix of requests until the server goes away."""
    fd = os.memfd_create("dma", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 0x4000)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    msg_id = 0
    try:
        while not done.is_set():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            chan = Channel(sock)
            try:
                for step in range(rng.randrange(1, 40)):
                    msg_id += 1
                    if step == 0:
                        cmd, payload, fds = P.VFIO_USER_VERSION, struct.pack("<HH", 0, 0) + CAPS, ()
                    else:
                        cmd, payload, fds = rng.choice((
                            (P.VFIO_USER_DEVICE_GET_INFO,
                             bytes(P.vfio_user_device_info(argsz=16)), ()),
                            (P.VFIO_USER_REGION_READ,
                             bytes(P.vfio_user_region_access(0, 2, 64)), ()),
                            (P.VFIO_USER_REGION_WRITE,
                             bytes(P.vfio_user_region_access(0x10, 2, 4)) + b"wxyz", ()),
                            (P.VFIO_USER_DMA_MAP,
                             bytes(P.vfio_user_dma_map(32, RW, 0, 0x100000 * step, 0x4000)),
                             (fd,)),
                            (P.VFIO_USER_DMA_UNMAP,
                             bytes(P.vfio_user_dma_unmap(24, 0, 0x100000 * step, 0x4000)), ()),
                            (99, b"", ()),  # unknown: an error reply
                        ))
                    if rng.random() < 0.1:  # half a message, then the rest
                        hdr = bytes(P.vfio_user_header(msg_id, cmd, 16 + len(payload), 0, 0))
                        sock.sendall(hdr[:7])
                        time.sleep(rng.random() * 0.005)
                        sock.sendall(hdr[7:] + payload)
                    else:
                        chan.send(msg_id, cmd, 0, payload, fds)
                    chan.recv(time.monotonic() + 5).close_fds()
            except Exception:  # the server left mid-conversation: what this test is for
                pass
            finally:
                sock.close()
    except OSError:
        pass  # the socket is gone: the server has stopped
    finally:
        os.close(fd)


def one_round(directory: str, i: int, rng: random.Random) -> dict[str, object] | None:
    path = os.path.join(directory, f"s{i}.sock")
    log = os.path.join(directory, f"s{i}.log")
    pid = os.fork()
    if pid == 0:  # the server, as `python -m warpdrive.emu` runs it
        code = 99
        try:
            err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(err, 2)
            faulthandler.register(signal.SIGUSR1, file=sys.stderr)  # where a hung one is
            code = serve.main(["testdev", "--socket", path])
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.001)
    done = threading.Event()
    clients = [threading.Thread(target=talk, args=(path, random.Random(rng.random()), done))
               for _ in range(rng.choice((0, 1, 1, 2)))]
    for t in clients:
        t.start()
    time.sleep(rng.choice((0.0, rng.random() * 0.003, rng.random() * 0.05)))
    os.kill(pid, signal.SIGTERM)
    if rng.random() < 0.3:  # and sometimes again, while it is stopping
        time.sleep(rng.random() * 0.002)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    status = None
    deadline = time.monotonic() + 20
    while status is None and time.monotonic() < deadline:
        got, st = os.waitpid(pid, os.WNOHANG)
        status = os.waitstatus_to_exitcode(st) if got else None
        time.sleep(0 if got else 0.002)
    if status is None:
        os.kill(pid, signal.SIGUSR1)  # its threads' stacks into its log
        time.sleep(1)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        status = "still running 20 s after SIGTERM"
    done.set()
    for t in clients:
        t.join(30)
    with open(log) as f:
        stderr = f.read()
    left = os.path.exists(path)
    if status == 0 and not left:
        return None
    return {"round": i, "status": status, "socket_left": left, "stderr": stderr[-2000:]}


def main() -> None:
    rounds, seed, directory = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    load_model("testdev")  # imported once here, so each forked server starts at once
    rng = random.Random(seed)
    bad = [r for i in range(rounds) if (r := one_round(directory, i, rng)) is not None]
    print(json.dumps({"rounds": rounds, "bad": bad}))


if __name__ == "__main__":
    main()
