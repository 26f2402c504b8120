"""`warpdrive plugins [--json]`: the device plugins this installation knows (built in and from the
`warpdrive.plugins` entry points), the PCI IDs each claims and the backends it is tested on."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import print_json, table


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plugins", help="list the device plugins, the IDs they claim and their backends",
        description="List the device plugins (built in, then those registered through the "
        "warpdrive.plugins entry-point group), the vendor:device IDs each claims and the "
        "backends it is tested on. Imports no plugin.")
    p.add_argument("--json", action="store_true", help="machine-readable output, same facts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..devices import registry

    plugins = registry.plugins()
    errors = registry.load_errors()
    if args.json:
        print_json({"plugins": [{"name": p.name, "driver": p.driver,
                                 "description": p.description,
                                 "ids": [f"{v:04x}:{d:04x}" for v, d in p.ids],
                                 "backends": list(p.backends)} for p in plugins],
                    "entry_point_errors": errors})
        return 0
    rows = [[p.name, ",".join(f"{v:04x}:{d:04x}" for v, d in p.ids), ",".join(p.backends),
             p.description] for p in plugins]
    print(table(rows, ["PLUGIN", "IDS", "BACKENDS", "DESCRIPTION"]))
    for e in errors:
        print(f"warning: plugin not loaded: {e}", file=sys.stderr)
    return 0
