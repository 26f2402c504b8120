"""`warpdrive serve DEVICE`: share one ZIP function among many processes (the broker)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="share one ZIP function among processes (a mediating broker)",
        description="Own DEVICE (a ZIP VF bound to vfio-pci, `emu` for the bundled model, or "
        "vfio-user:PATH) and serve every client process its own virtual ZIP function over "
        "vfio-user. Clients open it as device broker:SOCKET (or set "
        "WARPDRIVE_DEVICE=broker:SOCKET); every request is checked and translated before it "
        "reaches the device. Stops on SIGTERM, SIGHUP or Ctrl-C, "
        "removing its socket.",
        epilog="a uacce device (hisi_zip-N) is refused: with SVA the kernel already gives every "
        "process its own queue")
    parser.add_argument("device", help="the ZIP function to share")
    parser.add_argument("--socket", metavar="PATH",
                        help="UNIX socket to listen on (default: /run/warpdrive.sock as root, "
                        "else $XDG_RUNTIME_DIR/warpdrive.sock)")
    parser.add_argument("--mode", default="0600", metavar="OCTAL",
                        help="socket permissions (default %(default)s; 0660 with --group)")
    parser.add_argument("--group", metavar="GROUP",
                        help="socket group; its members may connect")
    parser.add_argument("--allow-uid", action="append", default=[], metavar="USER",
                        help="also allow this user (repeatable; root and the broker's own user "
                        "always may)")
    parser.add_argument("--allow-gid", action="append", default=[], metavar="GROUP",
                        help="also allow members of this group (repeatable)")
    parser.add_argument("--queues", type=int, default=2, metavar="N",
                        help="queue pairs in each client's function (default %(default)s: one "
                        "per direction)")
    parser.add_argument("--depth", type=int, default=1024, metavar="N",
                        help="queue depth the client functions offer (default %(default)s)")
    parser.add_argument("--inflight", type=int, default=256, metavar="N",
                        help="jobs one client queue may have on the device (default "
                        "%(default)s; less when it shares a hardware queue)")
    parser.add_argument("--max-clients", type=int, default=64, metavar="N",
                        help="connections at once (default %(default)s)")
    parser.add_argument("--backend", default="auto", choices=("auto", "iommufd", "vfio"),
                        help="kernel backend for a PCI function (default: iommufd if present)")
    parser.add_argument("--set", dest="model_options", action="append", default=[],
                        metavar="KEY=VALUE", help="option of the bundled model (DEVICE emu)")
    parser.add_argument("--spin-us", type=float, metavar="US",
                        help="keep polling this long after the last work (default 20000)")
    parser.add_argument("--nap-us", type=float, default=None, metavar="US",
                        help="while jobs flow, sleep this long after a pass that found nothing "
                        "(default 300; 0: yield the CPU instead)")
    parser.add_argument("--gather", type=int, default=None, metavar="N",
                        help="hand completions back once half of a hardware queue's jobs "
                        "in flight are done (at most N), "
                        "holding them for at most one nap (default 8; 1: as soon as seen)")
    parser.add_argument("--hold-us", type=float, default=None, metavar="US",
                        help="how long --gather may hold completions (default: --nap-us)")
    parser.add_argument("--nice", type=int, metavar="N",
                        help="run the broker at this nice value (the device, a bundled model "
                        "too, stays at its own); clients busy-poll while they wait, so on a "
                        "busy machine a negative value keeps them from starving the broker "
                        "(needs root or CAP_SYS_NICE)")
    parser.add_argument("--cpu", metavar="LIST",
                        help="run the broker on these CPUs (e.g. 3 or 2-3), polling while "
                        "jobs flow instead of napping (default --nap-us 0); a bundled model "
                        "moves to the other CPUs. Keep other work off them (systemd "
                        "CPUAffinity=, isolcpus) and the broker's passes stay warm")
    parser.add_argument("--measure", action="store_true",
                        help="measure the CPU time spent mediating (two clock reads per poll); "
                        "SIGUSR1 logs the counters")
    parser.add_argument("--verbose", "-v", action="store_true", help="log every client queue")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serve.run import serve_from_args

    return serve_from_args(args)
