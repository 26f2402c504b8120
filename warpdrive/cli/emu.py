"""`warpdrive emu <model> --socket PATH`: serve a bundled device model over vfio-user."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    from ..emu.serve import add_serve_arguments, run_serve

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "emu", help="serve a device model (testdev, zip, ...) over vfio-user",
        description="Serve a bundled device model on a UNIX socket; open it with "
        "warpdrive.open('vfio-user:PATH'). Stops on SIGTERM, SIGHUP or Ctrl-C, "
        "removing its socket.")
    add_serve_arguments(parser)
    parser.set_defaults(func=run_serve)
