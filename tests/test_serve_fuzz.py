"""Bounded, seeded fuzzing of the broker: thousands of vfio-user messages with mangled fields and
random fds, and thousands of SQEs with random fields, from misbehaving clients while a
well-behaved one keeps working. The broker must not crash or hang, must answer, must keep the
good client's data intact, and its memory must stay flat."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import warpdrive.zip as wz
from tests.brokerutil import RawZip, broker_thread, eventually
from tests.vfuraw import RawClient
from tests.ziputil import cli_env
from warpdrive.backends.vfiouser.wire import FrameError, PeerClosed, WireTimeout
from warpdrive.devices.zip import hw
from warpdrive.uapi import vfio_user as P

ROOT = Path(__file__).resolve().parent.parent
INTERESTING = (0, 1, 2, 7, 8, 16, 31, 32, 0x100, 0x1000, 0x2000, 0x3100, 0xFFFF, 0x10000,
               0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 32, (1 << 63), (1 << 64) - 1)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _value(rng: random.Random, bits: int) -> int:
    v = rng.choice(INTERESTING) if rng.random() < 0.6 else rng.getrandbits(bits)
    return v & ((1 << bits) - 1)


def _payload(rng: random.Random, command: int) -> bytes:
    """A payload for `command`: its structure with mangled fields, often cut or extended."""
    shapes = {
        P.VFIO_USER_VERSION: None,
        P.VFIO_USER_DMA_MAP: "<IIQQQ", P.VFIO_USER_DMA_UNMAP: "<IIQQ",
        P.VFIO_USER_DEVICE_GET_INFO: "<IIII", P.VFIO_USER_DEVICE_GET_REGION_INFO: "<IIIIQQ",
        P.VFIO_USER_DEVICE_GET_IRQ_INFO: "<IIII", P.VFIO_USER_DEVICE_SET_IRQS: "<IIIII",
        P.VFIO_USER_REGION_READ: "<QII", P.VFIO_USER_REGION_WRITE: "<QII",
    }
    fmt = shapes.get(command)
    if command == P.VFIO_USER_VERSION:
        body = struct.pack("<HH", _value(rng, 16), _value(rng, 16))
        return body + rng.choice([b"", b"{}\0", b"{not json", P.pack_version(0, 0, P.Capabilities(
            max_msg_fds=_value(rng, 16), max_data_xfer_size=_value(rng, 32)))[4:]])
    if fmt is None:
        return rng.randbytes(rng.randint(0, 64))
    fields = []
    for i, code in enumerate(fmt[1:]):
        bits = 64 if code == "Q" else 32
        if command in (P.VFIO_USER_REGION_READ, P.VFIO_USER_REGION_WRITE) and i == 1:
            fields.append(rng.choice([0, 2, 4, 7, 9, 10, 11, _value(rng, 32)]))  # region
        elif command in (P.VFIO_USER_REGION_READ, P.VFIO_USER_REGION_WRITE) and i == 2:
            fields.append(rng.choice([1, 2, 4, 8, 16, 4096, _value(rng, 32)]))  # count
        elif command in (P.VFIO_USER_REGION_READ, P.VFIO_USER_REGION_WRITE) and i == 0:
            # the QM's mailbox (a command runs on its last dword), doorbells, masks, caps
            fields.append(rng.choice([0, 0x300, 0x304, 0x308, 0x30C, 0x30C, 0x1000, 0x2000,
                                      0x3100, 0x4, 0xC, rng.randrange(0x10000),
                                      _value(rng, 64)]))
        elif command == P.VFIO_USER_DMA_MAP and i in (3, 4) and rng.random() < 0.7:
            fields.append(rng.choice([0x1000, 0x10000, 0x100000, 0x3000]))  # aligned addr/size
        else:
            fields.append(_value(rng, bits))
    body = struct.pack(fmt, *fields)
    if command == P.VFIO_USER_REGION_WRITE:
        body += rng.randbytes(min(fields[2], 64) if rng.random() < 0.8 else rng.randint(0, 16))
    cut = rng.random()
    if cut < 0.1:
        body = body[:rng.randrange(len(body) + 1)]
    elif cut < 0.2:
        body += rng.randbytes(rng.randint(1, 32))
    return body


def _fds(rng: random.Random, opened: list[int]) -> list[int]:
    kind = rng.random()
    if kind < 0.75:
        return []
    out = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        pick = rng.random()
        if pick < 0.3:
            fd = os.memfd_create("fuzz", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.ftruncate(fd, rng.choice([0x1000, 0x10000, 0x3000]))
            if rng.random() < 0.7:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        elif pick < 0.6:
            fd = os.eventfd(0, os.EFD_CLOEXEC)
        elif pick < 0.8:
            r, fd = os.pipe()
            opened.append(r)
        else:
            fd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        opened.append(fd)
        out.append(fd)
    return out


def fuzz_connection(path: str, rng: random.Random, messages: int) -> int:
    """One misbehaving client; returns how many replies it got."""
    c = RawClient(path, negotiate=rng.random() < 0.9)
    c.sock.settimeout(None)
    replies = 0
    opened: list[int] = []
    commands = [P.VFIO_USER_DMA_MAP, P.VFIO_USER_DMA_UNMAP, P.VFIO_USER_DEVICE_GET_INFO,
                P.VFIO_USER_DEVICE_GET_REGION_INFO, P.VFIO_USER_DEVICE_GET_IRQ_INFO,
                P.VFIO_USER_DEVICE_SET_IRQS, P.VFIO_USER_REGION_READ, P.VFIO_USER_REGION_WRITE,
                P.VFIO_USER_REGION_WRITE, P.VFIO_USER_REGION_WRITE, P.VFIO_USER_DEVICE_RESET,
                P.VFIO_USER_VERSION, P.VFIO_USER_DMA_READ, 0, 99, 0xFFFF]
    try:
        for _ in range(messages):
            command = rng.choice(commands)
            payload = _payload(rng, command)
            flags = 0 if rng.random() < 0.85 else rng.choice(
                [P.VFIO_USER_F_NO_REPLY, P.VFIO_USER_F_TYPE_REPLY, 0x7, 0xFFFF_FFFF])
            fds = _fds(rng, opened)
            size = 16 + len(payload)
            if rng.random() < 0.02:  # a header that lies about the size
                size = rng.choice([0, 8, 15, size + 8, 1 << 30])
            hdr = bytes(P.vfio_user_header(c.next_id(), command, size, flags, 0))
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                    b"".join(fd.to_bytes(4, "little") for fd in fds))] if fds else []
            try:
                c.sock.sendmsg([hdr + payload], anc)
            except (BrokenPipeError, ConnectionResetError):
                break
            if flags in (0,) and size == 16 + len(payload):
                try:
                    reply = c.recv(timeout=10)
                    reply.close_fds()
                    replies += 1
                except (PeerClosed, FrameError):
                    break
                except WireTimeout:
                    raise AssertionError("the broker did not answer within 10 s") from None
            if size != 16 + len(payload):
                break  # the stream is out of step now; the broker may drop us
    finally:
        c.close()
        for fd in opened:
            with contextlib.suppress(OSError):
                os.close(fd)
    return replies


@pytest.mark.slow
def test_fuzzed_vfio_user_messages_do_not_hurt_the_broker(tmp_path: Path) -> None:
    sock = str(tmp_path / "b.sock")
    broker = subprocess.Popen([sys.executable, "-m", "warpdrive", "serve", "emu", "--socket",
                               sock, "--spin-us", "2000"], env=cli_env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "broker.log", "wb"))  # noqa: SIM115
    try:
        eventually(lambda: os.path.exists(sock), 30, "broker listening")
        good = wz.open_engine("broker:" + sock, wait="block")
        data = os.urandom(2000) * 5
        rng = random.Random(12)
        total = replies = 0
        rss: list[int] = []
        for round_ in range(40):
            n = rng.randint(50, 150)
            replies += fuzz_connection(sock, rng, n)
            total += n
            assert broker.poll() is None, (tmp_path / "broker.log").read_text()[-3000:]
            assert zlib.decompress(good.compress(data)) == data  # the good client is fine
            if round_ in (5, 39):
                rss.append(rss_kib(broker.pid))
        print(f"fuzz: {total} messages, {replies} replies, broker RSS KiB (rounds 6, 40): {rss}")
        assert total >= 3000 and replies > 300
        # Flat: what the first rounds needed (maps, queues, caches) is reused, not grown.
        assert rss[1] - rss[0] < 16 * 1024, rss
        good.close()
    finally:
        broker.kill()
        broker.wait()


@pytest.mark.slow
def test_fuzzed_sqes_end_in_cqes_and_never_touch_another_client(tmp_path: Path) -> None:
    # No spin windows in the broker's loop or the model's: SQEs come one at a time, so both
    # would spin between every two of them (two busy cores for the whole run, four times the
    # CPU); the doorbell is then seen on the next idle poll, which is what the fields need.
    with broker_thread(str(tmp_path / "b.sock"), spin_s=0.0, emu_opts={"spin_us": 0}) as rb:
        a = RawZip(rb.name)
        b = RawZip(rb.name)
        try:
            canary = os.urandom(0x10000)
            b.src.write(0, canary)
            b.dst.write(0, canary)
            a.src.write(0, zlib.compress(os.urandom(3000) * 3)[2:])
            rng = random.Random(77)
            own = [a.src.iova, a.dst.iova]
            assert None not in own
            statuses: dict[int, int] = {}
            for _ in range(2000):
                w = a.words()
                for k in rng.sample(range(32), rng.randint(1, 5)):
                    choice = rng.random()
                    if k in (hw.DW_SRC_L, hw.DW_DST_L, hw.DW_CTX_ADDR_L) and choice < 0.6:
                        base = rng.choice(own + [m.dev_iova for m in rb.broker.clients[1]
                                                 .maps.maps])
                        w[k] = (base + rng.randrange(-0x100, 0x10100)) & 0xFFFF_FFFF  # type: ignore
                    elif k in (hw.DW_INPUT_LENGTH, hw.DW_DEST_AVAIL_OUT) and choice < 0.6:
                        w[k] = rng.randrange(0, 0x11000)
                    elif k == hw.DW_REQ and choice < 0.6:
                        w[k] = hw.sqe_dw9(rng.choice([1, 2, 3, 4]), rng.randrange(6),
                                          rng.choice([0, 0, 1]))
                    elif k == hw.DW_IN_SGE_FLAGS and choice < 0.6:
                        w[k] = hw.sqe_dw7(finish=rng.random() < 0.5,
                                          stateful=rng.random() < 0.3,
                                          new_stream=rng.random() < 0.5,
                                          sqe_type=rng.choice([0, 3, 3, 5]))
                    else:
                        w[k] = rng.getrandbits(32)
                status, _ = a.run(w, timeout=60)
                statuses[status] = statuses.get(status, 0) + 1
            print("SQE fuzz statuses:", {hw.STATUS_NAMES.get(k, hex(k)): v
                                         for k, v in sorted(statuses.items())})
            assert b.src.read(0, len(canary)) == canary and b.dst.read(0, len(canary)) == canary
            assert statuses.get(hw.STATUS_DMA_FAULT, 0) > 100
            assert statuses.get(hw.STATUS_BAD_REQUEST, 0) > 100
            assert a.run(a.words())[0] in (hw.STATUS_OK, hw.STATUS_NEGACOMPRESS)
            assert b.run(b.words())[0] in (hw.STATUS_OK, hw.STATUS_NEGACOMPRESS)
            assert rb.thread.is_alive()
        finally:
            a.close()
            b.close()

