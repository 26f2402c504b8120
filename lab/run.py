"""Run a command, or the lab-marked tests, inside the lab guest.

    python lab/run.py [options] -- <command...>     run a command in the checkout, as root
    python lab/run.py [options] --pytest [args...]  run pytest in the guest (lab tests only)

Builds or reuses the kernel and initramfs, boots QEMU, streams the command's output, powers off
and exits with the command's status: 124 on timeout, 125 when the lab itself failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python lab/run.py`: make `import lab` work from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import vm

EXIT_TIMEOUT = 124
EXIT_LAB_FAILED = 125


def _split(argv: list[str]) -> tuple[list[str], list[str], bool]:
    """Split our options from the command (after `--`) or the pytest args (after `--pytest`)."""
    for i, a in enumerate(argv):
        if a == "--":
            return argv[:i], argv[i + 1:], False
        if a == "--pytest":
            rest = argv[i + 1:]
            return argv[:i], rest[1:] if rest[:1] == ["--"] else rest, True
    return argv, [], False


def guest_python() -> str:
    venv = vm.CHECKOUT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def main(argv: list[str] | None = None) -> int:
    opts, rest, pytest_mode = _split(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="python lab/run.py", usage="%(prog)s [options] (-- command... | --pytest [args...])",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds for boot + command + poweroff before QEMU is killed (default 600)")
    p.add_argument("--keep-log", action="store_true",
                   help="keep the results dir (console.log, dmesg, qemu.cmdline, job.sh)")
    p.add_argument("--boot-log", action="store_true",
                   help="also stream the boot and shutdown console to stderr")
    p.add_argument("--qemu-arg", action="append", default=[], metavar="ARG",
                   help="extra QEMU argument (repeat for each word)")
    p.add_argument("--append", action="append", default=[], metavar="ARG",
                   help="extra kernel command-line argument")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="extra environment variable for the command")
    p.add_argument("--kernel", metavar="VERSION",
                   help="lab kernel to boot (6.12 or 7.3; default: the first of "
                   "$WARPDRIVE_LAB_KERNELS, else 6.12)")
    p.add_argument("--virtio-crypto", action="store_true",
                   help="the virtio_crypto witness boot: Linux's virtio_crypto on (not "
                        "blacklisted), QEMU's virtio-crypto left out (lab/README.md)")
    p.add_argument("--cwd", type=Path, default=vm.CHECKOUT,
                   help="directory to run in (default: the checkout)")
    p.add_argument("-q", "--quiet", action="store_true", help="no timing line on stderr")
    args = p.parse_args(opts)
    if pytest_mode:
        rest = [guest_python(), "-m", "pytest", *rest]
    if not rest:
        p.error("nothing to run: give `-- command...` or `--pytest [args]`")

    env: dict[str, str] = {}
    for kv in args.env:
        k, sep, v = kv.partition("=")
        if not sep:
            p.error(f"--env wants K=V, got {kv!r}")
        env[k] = v
    if sys.stdout.isatty():
        size = shutil.get_terminal_size()
        env.update(TERM=os.environ.get("TERM", "dumb"), COLUMNS=str(size.columns),
                   LINES=str(size.lines))

    try:
        results = vm.new_results_dir()
    except vm.LabError as e:
        print(f"lab: {e}", file=sys.stderr)
        return EXIT_LAB_FAILED
    keep = args.keep_log
    try:
        res = vm.run_in_lab(rest, results, cwd=args.cwd.resolve(), timeout=args.timeout,
                            output=sys.stdout.buffer,
                            boot_output=sys.stderr.buffer if args.boot_log else None,
                            env=env, kernel_args=args.append, qemu_args=args.qemu_arg,
                            kernel_version=args.kernel, virtio_crypto=args.virtio_crypto)
    except vm.LabError as e:
        print(f"lab: cannot run the lab: {e}", file=sys.stderr)
        shutil.rmtree(results, ignore_errors=True)
        return EXIT_LAB_FAILED
    except KeyboardInterrupt:
        print(f"\nlab: interrupted; QEMU killed; logs in {results}", file=sys.stderr)
        return 130
    try:
        for line in res.kernel_problems:
            print(f"lab: guest kernel: {line}", file=sys.stderr)
        for line in res.server_problems:
            print(f"lab: {line}", file=sys.stderr)
        if res.error is not None:
            keep = True
            print(f"lab: {res.error}\nlab: console log tail:\n{res.console_tail()}",
                  file=sys.stderr)
        if not args.quiet:
            boot = "n/a" if res.boot_seconds is None else f"{res.boot_seconds:.1f} s"
            cmd = "n/a" if res.command_seconds is None else f"{res.command_seconds:.1f} s"
            print(f"lab: boot-to-command {boot}, command {cmd}, total {res.total_seconds:.1f} s",
                  file=sys.stderr)
        if keep:
            print(f"lab: logs kept in {results}", file=sys.stderr)
    finally:
        if not keep:
            shutil.rmtree(results, ignore_errors=True)
    if res.timed_out:
        return EXIT_TIMEOUT
    return EXIT_LAB_FAILED if res.returncode is None else res.returncode


if __name__ == "__main__":
    sys.exit(main())
