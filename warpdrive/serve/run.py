"""Putting the broker together: open the device, make the server, serve until stopped."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from ..backends import DeviceName, open_device, parse_name
from ..device import Device
from ..emu.model import DeviceModel
from ..emu.serve import configure_logging, listen_error, parse_options, positive
from ..emu.server import Peer, VfioUserServer, check_socket_path
from ..errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    UnsupportedError,
    UsageError,
)
from .access import AllowList, group_id, user_id
from .broker import GATHER, HOLD_S, Broker
from .function import VirtualZip

log = logging.getLogger("warpdrive.serve")

# The bundled model as the broker's device: enough queues that clients get their own, and a
# doorbell page per queue (V3 isolation), so hardware queues never hide each other's doorbells.
EMU_DEFAULTS = {"queues": "16", "isolation": "1"}
# After a pass that found nothing the broker's loop sleeps this long instead of yielding the
# CPU: its clients busy-poll, and a yield leaves the broker runnable, taking its fair share of a
# loaded machine for passes that find nothing (measured in docs/broker.md: at 4 KiB, 4 clients,
# broker CPU 22 us/job instead of 70, more jobs per pass, aggregate as good or better).
NAP_US = 300.0


def default_socket() -> str:
    if os.getuid() == 0:
        return "/run/warpdrive.sock"
    run = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(run, "warpdrive.sock") if run else f"/tmp/warpdrive-{os.getuid()}.sock"


def parse_cpus(text: str) -> set[int]:
    """A CPU list as taskset and sysfs write it ("3", "0,2", "2-3"): the CPUs, each one this
    process may run on."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi or lo)
            if first < 0 or last < first:
                raise ValueError
            cpus.update(range(first, last + 1))
    except ValueError:
        raise UsageError(f"--cpu {text}: not a CPU list such as 3, 0,2 or 2-3") from None
    allowed = os.sched_getaffinity(0)
    if not cpus <= allowed:
        raise UsageError(f"--cpu {text}: CPU {min(cpus - allowed)} is not one this "
                         f"process may use ({_cpu_list(allowed)})")
    return cpus


def _cpu_list(cpus: set[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def place(dev: Device, cpus: set[int]) -> None:
    """The broker's thread on `cpus`; a bundled model (its own process, started already) on
    the others where there are any: a broker that polls its CPU would otherwise take turns
    with the device it waits for."""
    emulator = getattr(dev, "emulator", None)
    pid = emulator.proc.pid if emulator is not None else 0
    rest = os.sched_getaffinity(pid) - cpus if pid else set()
    if pid and not rest:
        model = os.sched_getaffinity(pid)
        keep = cpus - {max(model)}
        raise UsageError(
            f"--cpu {_cpu_list(cpus)} covers every CPU the bundled model may use "
            f"({_cpu_list(model)}): the broker's polling loop would take turns with the device "
            "it waits for",
            hint=f"leave a CPU out for the model (e.g. --cpu {_cpu_list(keep)})" if keep
            else "drop --cpu (one CPU cannot hold both the broker's loop and the model)")
    os.sched_setaffinity(0, cpus)
    if rest:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(task), rest)
            except OSError:  # (a thread that just ended)
                pass
    log.info("broker on CPU %s%s", _cpu_list(cpus),
             f", its model on CPU {_cpu_list(rest)}" if rest else "")


def open_shared_device(name: str, *, backend: str = "auto",
                       model_options: dict[str, str] | None = None, **emu_opts: Any) -> Device:
    """The device the broker will own: a ZIP VF on vfio-pci, the bundled model, or vfio-user.
    `emu_opts` go to the bundled model's process (`spin_us`, `idle_us`: its poll loop)."""
    dn = shareable(name, model_options or emu_opts)
    if dn.kind == "emu":
        return open_device("emu:zip", model_options={**EMU_DEFAULTS, **(model_options or {})},
                           **emu_opts)
    if dn.kind == "vfio-user":
        return open_device(name)
    return open_device(name, backend=backend)


def shareable(name: str, model_options: object = None) -> DeviceName:
    """`name` parsed, if the broker can share it (a command checks before anything opens);
    `model_options`: given any, the device must be the bundled model."""
    dn = parse_name(name)
    if dn.kind == "uacce":
        raise UnsupportedError(
            f"{name} is a uacce device: the kernel already shares it among processes (SVA, one "
            "queue per process), there is nothing for a broker to do",
            hint=f"point each program at it directly: device={name!r}, or "
            f"WARPDRIVE_DEVICE={name}")
    if dn.kind == "broker":
        raise InvalidArgumentError(f"{name} is a broker already", hint="serve the device itself")
    if dn.kind == "emu":
        if dn.target not in ("", "zip"):
            raise InvalidArgumentError(f"{name}: the broker serves ZIP functions (emu or emu:zip)")
    elif model_options:
        raise InvalidArgumentError("--set applies to the bundled model (DEVICE emu) only")
    return dn


def client_factory(broker: Broker, *, queues: int = 2,
                   depth: int = 1024) -> Callable[[Peer], DeviceModel]:
    """What the server calls for each new client: a virtual ZIP function on the broker."""
    def make(peer: Peer) -> DeviceModel:
        client = broker.client(f"client pid {peer.pid} uid {peer.uid}")
        try:
            return VirtualZip(client, revision=broker.revision, queues=queues, depth=depth)
        except BaseException:
            client.close()
            raise

    return make


def make_server(broker: Broker, path: str, *, queues: int = 2, depth: int = 1024,
                nap_s: float = NAP_US / 1e6, **server_opts: Any) -> VfioUserServer:
    """The vfio-user server of `broker` on `path` (one virtual function per connection)."""
    return VfioUserServer(None, path, factory=client_factory(broker, queues=queues, depth=depth),
                          on_poll=broker.poll, nap_s=nap_s, **server_opts)


def serve_from_args(args: argparse.Namespace) -> int:
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    # Every argument is checked before the device opens (a bundled model takes a second to
    # boot, a PCI function is reset): a typo fails at once, with exit 2.
    for flag, value, lo, hi in (
            ("--queues", args.queues, 1, 64),
            # a QM queue context holds depth - 1 in 12 bits: the hardware's and the model's range
            ("--depth", args.depth, 2, 4096),
            ("--inflight", args.inflight, 1, 1 << 16),
            ("--max-clients", args.max_clients, 1, 1 << 16)):
        if not lo <= value <= hi:
            raise UsageError(f"{flag} {value}: give {lo}..{hi}")
    positive("--spin-us", args.spin_us, zero_ok=True)
    try:
        mode = int(args.mode, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise UsageError(f"--mode {args.mode!r} is not a socket mode such as 0600 or 0660",
                         hint="permission bits only (0..0777)")
    cpus = parse_cpus(args.cpu) if getattr(args, "cpu", None) else None
    nap_us = getattr(args, "nap_us", None)
    # On CPUs of its own the broker polls while jobs flow (nobody else waits for them), so its
    # passes start warm (docs/broker.md, session 22); elsewhere it naps between empty passes.
    nap_us = (0.0 if cpus else NAP_US) if nap_us is None else nap_us
    if not 0 <= nap_us <= 100_000:
        raise UsageError(f"--nap-us {nap_us:g}: give 0..100000 (0: yield instead)")
    gather = getattr(args, "gather", None)
    gather = GATHER if gather is None else gather
    if not 1 <= gather <= 1024:
        raise UsageError(f"--gather {gather}: give 1..1024")
    hold_us = getattr(args, "hold_us", None)
    hold_us = (HOLD_S * 1e6 if cpus else nap_us) if hold_us is None else hold_us
    if not 0 <= hold_us <= 100_000:
        raise UsageError(f"--hold-us {hold_us:g}: give 0..100000")
    nice = getattr(args, "nice", None)
    if nice is not None and not -20 <= nice <= 19:
        raise UsageError(f"--nice {nice}: give -20..19")
    group = group_id(args.group) if args.group else None
    if group is not None and args.mode == "0600":
        mode = 0o660  # a group on the socket is there to let its members in
    allow = AllowList([user_id(u) for u in args.allow_uid],
                      [group_id(g) for g in args.allow_gid] + ([group] if group is not None
                                                               else []))
    model_options = parse_options(args.model_options)
    try:
        shareable(args.device, model_options)
    except InvalidArgumentError as e:
        raise UsageError(e.what, errno=e.errno, hint=e.hint) from None
    path = os.path.abspath(args.socket or default_socket())
    try:
        check_socket_path(path)
    except OSError as e:
        raise listen_error(e, f"serving {args.device}") from None
    path = os.path.abspath(args.socket or default_socket())
    try:
        dev = open_shared_device(args.device, backend=args.backend, model_options=model_options)
    except InvalidArgumentError as e:  # DEVICE or a --set the model refused: usage (exit 2)
        raise UsageError(e.what, errno=e.errno, hint=e.hint) from None
    try:
        if cpus:
            place(dev, cpus)
        if nice is not None:
            # After the device opened: a bundled model (a child process) stays at its own.
            try:
                os.setpriority(os.PRIO_PROCESS, 0, nice)
            except OSError as e:
                raise PermissionDeniedError(f"--nice {nice}: setpriority failed",
                                            errno=e.errno, hint="a negative value needs root or "
                                            "CAP_SYS_NICE (or a high enough RLIMIT_NICE)") from None
        broker = Broker(dev, max_inflight=args.inflight, gather=gather, hold_s=hold_us / 1e6)
    except BaseException:
        dev.close()
        raise
    try:
        server = make_server(
            broker, path, queues=args.queues, depth=args.depth, socket_mode=mode,
            socket_group=group, allow=allow, max_clients=args.max_clients,
            spin_s=None if args.spin_us is None else args.spin_us / 1e6,
            nap_s=nap_us / 1e6, measure=args.measure)

        def log_stats(signum: int, frame: object) -> None:
            log.info("stats %s", json.dumps({**broker.stats(), "clients": server.clients,
                                             "mediation_cpu_s": round(server.work_s, 6),
                                             "mediation_passes": server.work_passes}))

        signal.signal(signal.SIGUSR1, log_stats)
        log.info("broker: %s (QM revision %#x, %d hardware queues) for %s; clients: "
                 "device=broker:%s", dev.name, broker.revision, broker.qp_num,
                 allow.describe(), path)
        server.serve_forever()
    except OSError as e:
        raise listen_error(e, f"serving {args.device} on {path}") from None
    finally:
        broker.close()
    return 0
