"""A new user's mistakes with the commands other than compress/decompress: each ends with one
line naming what was wrong and what to do, the documented exit code (2 usage, 1 failed,
4 permission denied), no traceback, and nothing removed that the run did not create. Servers
(`emu`, `serve`) stop cleanly on SIGHUP as on SIGTERM. Real commands throughout; `bind`/`unbind`
only with malformed addresses and option values (refused before any sysfs read), with
WARPDRIVE_FORBID_SYSFS_WRITES=1 as everywhere.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ziputil import listening_process
from warpdrive.backends import parse_name
from warpdrive.cli import EXIT_FAILED, EXIT_PERMISSION, EXIT_USAGE, main
from warpdrive.errors import DeviceError, InvalidArgumentError


@pytest.fixture(autouse=True)
def _no_binding_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARPDRIVE_FORBID_SYSFS_WRITES", "1")


@pytest.fixture
def no_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` must refuse its arguments before it opens (resets, boots) its device."""
    import warpdrive.serve.run as run

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("the device was opened before the arguments were checked")

    monkeypatch.setattr(run, "open_shared_device", refuse)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warpdrive: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("args, said", [
    (["emu"], "give a model name and --socket PATH"),
    (["emu", "zip", "--socket", "{d}/s.sock", "--set", "foo"], "'foo' is not KEY=VALUE"),
    (["emu", "zip", "--socket", "{d}/s.sock", "--accept-timeout", "-1"],
     "--accept-timeout -1: give a number > 0"),
    (["emu", "zip", "--socket", "{d}/s.sock", "--handshake-timeout", "0"],
     "--handshake-timeout 0: give a number > 0"),
    (["serve", "emu", "--socket", "{d}/b.sock", "--depth", "-5"], "--depth -5: give 2..4096"),
    (["serve", "emu", "--socket", "{d}/b.sock", "--depth", "5000"], "--depth 5000: give 2..4096"),
    (["serve", "emu", "--socket", "{d}/b.sock", "--inflight", "0"], "--inflight 0: give 1.."),
    (["serve", "emu", "--socket", "{d}/b.sock", "--max-clients", "0"],
     "--max-clients 0: give 1.."),
    (["serve", "emu", "--socket", "{d}/b.sock", "--queues", "0"], "--queues 0: give 1..64"),
    (["serve", "emu", "--socket", "{d}/b.sock", "--spin-us", "-1"], "--spin-us -1: give"),
    (["serve", "emu", "--socket", "{d}/b.sock", "--mode", "07777"],
     "--mode '07777' is not a socket mode"),
    (["serve", "emu", "--socket", "{d}/b.sock", "--mode", "abc"], "--mode 'abc' is not a socket"),
    (["serve", "emu", "--socket", "{d}/b.sock", "--nice", "50"], "--nice 50: give -20..19"),
    (["serve", "emu", "--socket", "{d}/b.sock", "--set", "queues"], "is not KEY=VALUE"),
    (["serve", "emu", "--socket", "{d}/b.sock", "--nap-us", "-1"], "--nap-us -1: give 0..100000"),
])
def test_a_bad_option_value_is_a_usage_error(tmp_path: Path, no_device: None, args: list[str],
                                             said: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([a.format(d=tmp_path) for a in args]) == EXIT_USAGE
    assert said in one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # no socket, nothing else


@pytest.mark.parametrize("args, said", [
    (["bind", "eth0", "--dry-run"], "argument bdf: 'eth0' is not a PCI address"),
    (["unbind", "0000:00:zz.0"], "argument bdf: '0000:00:zz.0' is not a PCI address"),
    (["devices", "00:03.0", "zz"], "argument bdf: 'zz' is not a PCI address"),
    (["bind", "00:04.0", "--dry-run", "--timeout", "-1"], "'-1' is not a number of seconds"),
    (["unbind", "00:04.0", "--timeout", "nan"], "'nan' is not a number of seconds"),
])
def test_a_malformed_argument_is_a_usage_error(args: list[str], said: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == EXIT_USAGE
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err, err
    assert err.splitlines()[0].startswith(f"usage: warpdrive {args[0]} "), err


def test_an_unknown_option_shows_the_commands_usage(capsys: pytest.CaptureFixture[str]) -> None:
    # (argparse itself blames the top-level parser, whose usage lists no option of `serve`)
    assert main(["serve", "emu", "--accept-timeout", "1"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: warpdrive serve ") and "--max-clients" in err
    assert err.strip().endswith("unrecognized arguments: --accept-timeout 1"), err
    assert main(["compress", "--no-such-option"]) == EXIT_FAILED  # gzip's usage status, as before
    assert capsys.readouterr().err.startswith("usage: warpdrive compress ")


@pytest.mark.parametrize("command", [["emu", "testdev"], ["serve", "emu"]])
def test_socket_path_problems_fail_before_the_device_and_touch_nothing(
        tmp_path: Path, no_device: None, command: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-dir" / "x.sock"
    assert main([*command, "--socket", str(missing)]) == EXIT_FAILED
    line = one_line(capsys.readouterr().err)
    assert f"the directory {missing.parent} does not exist" in line and "mkdir -p" in line
    assert line.count("No such file or directory") == 1, line

    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    assert main([*command, "--socket", str(keep)]) == EXIT_FAILED
    line = one_line(capsys.readouterr().err)
    assert "exists and is not a socket" in line and "choose another --socket" in line
    assert keep.read_text() == "mine"

    assert main([*command, "--socket", str(keep / "x.sock")]) == EXIT_FAILED
    assert f"{keep} is not a directory" in one_line(capsys.readouterr().err)

    live = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as other:  # someone else's server
        other.bind(str(live))
        other.listen(1)
        assert main([*command, "--socket", str(live)]) == EXIT_FAILED
        line = one_line(capsys.readouterr().err)
        assert "a server is already listening there" in line and "stop that server" in line
        assert live.is_socket()
    long = tmp_path / ("x" * (120 - len(str(tmp_path))) + ".sock")  # no client could reach it
    assert main([*command, "--socket", str(long)]) == EXIT_FAILED
    line = one_line(capsys.readouterr().err)
    assert "a socket path has at most 107 bytes" in line and "choose a shorter" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.sock", "notes.txt"]


def test_a_socket_directory_this_user_may_not_write_is_exit_4(tmp_path: Path) -> None:
    """Run as `nobody` (a forked child drops root: the test runs the real permission check)."""
    for module in ("warpdrive.emu.server", "warpdrive.serve.run", "warpdrive.cli.emu",
                   "warpdrive.cli.serve"):
        importlib.import_module(module)  # while root: the child only runs them

    if os.getuid() != 0:
        pytest.skip("needs root to become another user")
    unreachable = tmp_path / "x.sock"  # pytest's directories are 0700 root's
    closed = Path("/run")  # root's 0755 on Debian: nobody may look, not create
    if not closed.is_dir() or closed.stat().st_uid != 0 or closed.stat().st_mode & 0o022:
        pytest.skip("needs /run writable by root only")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 99
        try:
            os.close(r)
            sys.stderr = os.fdopen(w, "w")
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = main(["emu", "testdev", "--socket", str(unreachable)])
            code = code * 10 + main(["serve", "emu", "--socket", str(closed / "wd-test.sock")])
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == EXIT_PERMISSION * 11, err
    first, second = err.strip().splitlines()
    assert f"this user may not reach {tmp_path}: Permission denied (EACCES)" in first, err
    assert "this user may not create files in /run: Permission denied (EACCES)" in second, err
    assert "$XDG_RUNTIME_DIR" in first and "$XDG_RUNTIME_DIR" in second
    assert not unreachable.exists() and not (closed / "wd-test.sock").exists()


@pytest.mark.parametrize("ignored", [False, True], ids=["hup", "nohup"])
@pytest.mark.parametrize("command", [["emu", "testdev"], ["serve", "emu"]])
def test_sighup_stops_a_server_cleanly(tmp_path: Path, command: list[str],
                                       ignored: bool) -> None:
    """A closed terminal or ssh session (SIGHUP) stops `emu`/`serve` as SIGTERM does: exit 0,
    socket removed. Under nohup (SIGHUP ignored from the start) it keeps serving."""
    sock = tmp_path / "s.sock"
    argv = [sys.executable, "-m", "warpdrive", *command, "--socket", str(sock)]
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN if ignored else signal.SIG_DFL)
    try:
        with listening_process(argv, str(sock), text=True) as proc:
            proc.send_signal(signal.SIGHUP)
            if ignored:
                with pytest.raises(subprocess.TimeoutExpired):
                    proc.wait(1.0)
                assert sock.is_socket()
                proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            assert not sock.exists()
            assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        signal.signal(signal.SIGHUP, old)


def test_a_model_that_refuses_to_start_says_why_in_one_line(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    import warpdrive

    with pytest.raises(DeviceError) as e:
        warpdrive.open("emu:nosuch")
    msg = str(e.value)
    assert "\n" not in msg and "no device model named 'nosuch'" in msg, msg
    assert "bundled models: crypto, testdev, zip" in msg
    assert main(["serve", "emu", "--socket", str(tmp_path / "b.sock"), "--set", "foo=1"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "refused to start: zip model: unknown option(s) foo. known:" in line
    for command in (["emu", "zip"], ["serve", "emu"]):  # a value the model refuses: usage too
        assert main([*command, "--socket", str(tmp_path / "b.sock"), "--set", "depth=-1"]) == 2
        assert "queue depth -1 is out of range" in one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_a_short_pci_address_names_a_device_everywhere() -> None:
    # `warpdrive bind 00:04.0` takes it; so do open(), --device and `serve`
    assert parse_name("00:04.0").target == "0000:00:04.0"
    assert parse_name("0000:00:0A.0").target == "0000:00:0a.0"
    with pytest.raises(InvalidArgumentError, match="is not a device name"):
        parse_name("00:04")


@pytest.mark.parametrize("value, said", [
    ("garbage", "WARPDRIVE_DEVICE=garbage: 'garbage' is not a device name"),
    ("broker:/nonexistent-dir/b.sock", "WARPDRIVE_DEVICE=broker:/nonexistent-dir/b.sock: no "
     "vfio-user server listening on /nonexistent-dir/b.sock"),
])
def test_a_bad_warpdrive_device_says_it_came_from_the_environment(
        tmp_path: Path, value: str, said: str) -> None:
    """A program that names no device takes $WARPDRIVE_DEVICE (set in a profile or a unit, far
    from the command): an error about it names the variable."""
    src = tmp_path / "f"
    src.write_bytes(b"data " * 100)
    r = subprocess.run([sys.executable, "-m", "warpdrive", "compress", "-c", str(src)],
                       env={**os.environ, "WARPDRIVE_DEVICE": value}, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert said in one_line(r.stderr)
