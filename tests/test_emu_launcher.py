"""The model launcher and the `warpdrive emu` / `python -m warpdrive.emu` entry points, with real
processes: start, failure reports with the model's output, stop on close, no orphans."""

from __future__ import annotations

import gzip
import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

import warpdrive
from tests.ziputil import cli_argv, listening_process
from warpdrive.backends.vfiouser.client import open_vfio_user
from warpdrive.backends.vfiouser.launcher import ModelProcess, model_spin, open_emulated
from warpdrive.cli import main as cli_main
from warpdrive.emu.models import testdev as T
from warpdrive.errors import DeviceError, InvalidArgumentError

ROOT = Path(__file__).resolve().parents[1]


def gone(pid: int, timeout: float = 10.0) -> bool:
    """True once `pid` has exited (reaped, or a zombie nobody reaps here)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_open_emulated_and_close_stops_the_model() -> None:
    dev = open_emulated("testdev")
    proc = dev.emulator
    assert proc.running and os.path.exists(proc.socket_path)
    assert oct(os.stat(proc.dir).st_mode & 0o777) == "0o700"  # a private socket directory
    assert dev.region_read(0, T.REG_ID, 4) == T.ID_VALUE.to_bytes(4, "little")
    dev.close()
    assert proc.proc.returncode == 0  # it exited by itself on disconnect
    assert not os.path.exists(proc.dir)


def test_warpdrive_open_emu_name() -> None:
    with warpdrive.open("emu:testdev") as dev:
        assert dev.backend == "vfio-user" and dev.device_id == 0x7E57


def test_default_spin_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Models started without a spin_us get the thread's model_spin() (the host suite runs with
    0), else WARPDRIVE_EMU_SPIN_US, else the model's own; a malformed value is refused before
    anything starts; another thread does not see this one's model_spin()."""
    def spin_arg(proc: ModelProcess) -> str | None:
        argv = Path(f"/proc/{proc.proc.pid}/cmdline").read_bytes().decode().split("\0")
        return argv[argv.index("--spin-us") + 1] if "--spin-us" in argv else None

    def started_spin(**kw: Any) -> str | None:
        with open_emulated("testdev", **kw) as dev:
            assert dev.device_id == 0x7E57
            return spin_arg(dev.emulator)

    monkeypatch.setenv("WARPDRIVE_EMU_SPIN_US", "250")
    with model_spin(0):
        assert started_spin() == "0"
        assert started_spin(spin_us=1500) == "1500"
        other: list[str | None] = []
        t = threading.Thread(target=lambda: other.append(started_spin()))
        t.start()
        t.join()
        assert other == ["250.0"]
    with model_spin(None):
        assert started_spin() == "250.0"
        monkeypatch.delenv("WARPDRIVE_EMU_SPIN_US")
        assert started_spin() is None
        monkeypatch.setenv("WARPDRIVE_EMU_SPIN_US", "soon")
        with pytest.raises(InvalidArgumentError, match="WARPDRIVE_EMU_SPIN_US"):
            open_emulated("testdev")


def test_unknown_model_is_reported_with_its_output() -> None:
    with pytest.raises(DeviceError) as ei:
        open_emulated("nosuchmodel")
    msg = str(ei.value)
    assert "device model 'nosuchmodel' refused to start: " in msg and "\n" not in msg
    assert "no device model named 'nosuchmodel'" in msg and "testdev" in msg


def test_model_that_fails_to_start_shows_its_stderr_tail() -> None:
    # the model refused its options (its exit status 2): the caller's InvalidArgumentError
    with pytest.raises(InvalidArgumentError, match="testdev takes no options, got bogus"):
        open_emulated("testdev", model_options={"bogus": 1})


def test_bad_client_option_stops_the_model(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A private temp dir: other runs on this machine create their own model dirs in /tmp.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(InvalidArgumentError, match="unknown vfio-user option"):
        open_emulated("testdev", frobnicate=True)
    assert [d.name for d in tmp_path.iterdir() if d.name.startswith("warpdrive-emu-testdev-")] == []


def test_model_exits_when_nobody_connects() -> None:
    proc = ModelProcess("testdev", accept_timeout=0.3)
    assert proc.proc.wait(10) == 0
    assert "no client connected" in proc.log_tail()
    proc.stop()


def test_model_exits_when_its_client_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(
        "import sys, time\n"
        "from warpdrive.backends.vfiouser.launcher import open_emulated\n"
        "dev = open_emulated('testdev')\n"
        "print(dev.emulator.proc.pid, flush=True)\n"
        "time.sleep(60)\n")
    client = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert client.stdout is not None
    model_pid = int(client.stdout.readline())
    assert not gone(model_pid, 0.2)
    client.kill()
    client.wait(5)
    client.stdout.close()
    assert gone(model_pid), "the model outlived its client"


def test_cli_serves_clients_one_after_another(tmp_path: Path) -> None:
    sock = str(tmp_path / "d.sock")
    with listening_process(cli_argv("emu", "testdev", "--socket", sock), sock,
                           timeout=20) as server:
        assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
        with open_vfio_user(sock) as dev:
            dev.region_write(0, T.REG_SCRATCH, (0x5EED).to_bytes(4, "little"))
            buf = dev.dma.alloc(4096)
            assert buf.iova is not None
        # spec: on disconnect the server drops the client's memory and eventfds but keeps the
        # device state, so a second client sees the first one's register writes
        with open_vfio_user(sock) as dev:
            assert dev.region_read(0, T.REG_SCRATCH, 4) == (0x5EED).to_bytes(4, "little")
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0
        assert not os.path.exists(sock)


def test_cli_lists_models_and_rejects_bad_usage() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(["emu", "--list"]) == 0
    assert "testdev" in out.getvalue().split()
    assert cli_main(["emu", "testdev"]) == 2  # no --socket: a usage error, not a traceback
    res = subprocess.run([sys.executable, "-m", "warpdrive.emu", "testdev", "--socket",
                          "/nonexistent-dir/x.sock"], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
    assert "cannot listen on /nonexistent-dir/x.sock" in res.stderr
    assert "Traceback" not in res.stderr


def test_fds_numbered_past_1024_start_a_model_and_sleep_on_its_interrupts() -> None:
    """select(2) refuses fd 1024 and above; a program holding many files must still start a
    model (the launcher's ready pipe) and sleep on completion interrupts (the eventfd), both
    numbered past 1024 here. Seen once in a long suite: ValueError from select."""
    import resource
    import zlib

    import warpdrive.zip as wz

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1200
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        with wz.open_engine("emu", wait="block") as eng:
            assert eng.source.dev.emulator.proc.pid > 0
            data = b"many files open " * 4000
            assert zlib.decompress(eng.compress(data)) == data
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_model_started_ahead_is_adopted_by_the_next_open() -> None:
    from warpdrive.backends.vfiouser import launcher

    ahead = launcher.prestart("testdev")
    dev = open_emulated("testdev")  # waits for the model started ahead instead of another
    try:
        assert dev.emulator is ahead
        assert dev.region_read(0, T.REG_ID, 4) == T.ID_VALUE.to_bytes(4, "little")
    finally:
        dev.close()
    assert ahead.proc.returncode == 0 and not os.path.exists(ahead.dir)
    launcher.drop_prestarted()  # nothing left to drop
    assert ahead.proc.returncode == 0


def test_a_model_started_ahead_with_other_options_is_stopped_not_adopted() -> None:
    from warpdrive.backends.vfiouser import launcher

    ahead = launcher.prestart("testdev")
    with open_emulated("testdev", spin_us=7.0) as dev:
        assert dev.emulator is not ahead
        assert "--spin-us" in dev.emulator.tuning
    assert gone(ahead.proc.pid, 5.0) and not os.path.exists(ahead.dir)


def test_a_model_started_ahead_and_never_used_is_stopped_at_once() -> None:
    from warpdrive.backends.vfiouser import launcher

    ahead = launcher.prestart("testdev")
    t0 = time.monotonic()
    launcher.drop_prestarted()
    assert ahead.proc.returncode is not None and not os.path.exists(ahead.dir)
    assert time.monotonic() - t0 < 1.0  # no grace period for a client that will never come


def test_stop_wakes_when_the_model_exits(tmp_path: Path) -> None:
    """The exit wait sleeps on a pidfd: it returns as soon as the model is gone."""
    dev = open_emulated("testdev")
    proc = dev.emulator
    os.kill(proc.proc.pid, signal.SIGTERM)
    t0 = time.monotonic()
    assert proc._wait_exit(5.0) is not None
    assert time.monotonic() - t0 < 2.0
    dev.close()


def test_cli_compress_starts_the_model_ahead_and_leaks_none(tmp_path: Path) -> None:
    """With no hardware in sight the CLI starts the model before its own imports; the run's
    output is right, the model and its directory are gone when the command returns, also when
    every input failed (then nothing adopted the model)."""
    src = tmp_path / "in.txt"
    src.write_bytes(b"warpdrive " * 1000)
    tmp = tmp_path / "tmp"  # the models' private directories land here
    tmp.mkdir()
    env = {**os.environ, "WARPDRIVE_DEVICE": "", "TMPDIR": str(tmp)}
    run = subprocess.run(cli_argv("compress", "-c", str(src)), capture_output=True, timeout=60,
                         env=env)
    assert run.returncode == 0, run.stderr
    assert gzip.decompress(run.stdout) == src.read_bytes()
    assert list(tmp.iterdir()) == []
    run = subprocess.run(cli_argv("compress", "-c", str(tmp_path / "missing")),
                         capture_output=True, timeout=60, env=env)
    assert run.returncode == 1 and b"missing" in run.stderr
    assert list(tmp.iterdir()) == []


def test_nothing_bound_is_told_by_two_listings(tmp_path: Path) -> None:
    from warpdrive.backends import nothing_bound
    from warpdrive.zip import find_hardware

    assert nothing_bound(str(tmp_path)) and find_hardware(str(tmp_path)) is None
    (tmp_path / "bus/pci/drivers/vfio-pci").mkdir(parents=True)
    (tmp_path / "bus/pci/drivers/vfio-pci/new_id").touch()  # the driver's files, no device
    assert nothing_bound(str(tmp_path))
    (tmp_path / "bus/pci/drivers/vfio-pci/0000:03:00.1").touch()
    assert not nothing_bound(str(tmp_path))
    (tmp_path / "bus/pci/drivers/vfio-pci/0000:03:00.1").unlink()
    (tmp_path / "class/uacce/hisi_zip-0").mkdir(parents=True)
    assert not nothing_bound(str(tmp_path))
