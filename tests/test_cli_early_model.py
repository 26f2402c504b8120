"""`warpdrive compress/decompress` start the bundled model before importing the command's module
(issue 11): which command lines guess it, and the command's own decision keeping or dropping it.
Host-only; the model started is the real one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from warpdrive import cli
from warpdrive.backends.vfiouser import launcher


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(launcher, "prestart", lambda name: calls.append(name))
    monkeypatch.setattr("warpdrive.backends.nothing_bound", lambda: True)
    monkeypatch.delenv("WARPDRIVE_DEVICE", raising=False)
    return calls


@pytest.mark.parametrize("argv", [["compress", "x"], ["decompress", "-c", "x.gz"],
                                  ["-v", "compress", "-k9", "x"], ["decompress", "--", "-l"]])
def test_zip_runs_start_the_model_early(started: list[str], argv: list[str]) -> None:
    cli._early_model(argv)
    assert started == ["zip"]


@pytest.mark.parametrize("argv", [[], ["devices"], ["compress", "-l", "x.gz"],
                                  ["decompress", "-lv", "x.gz"], ["compress", "--list", "x"],
                                  ["compress", "--device", "emu:zip", "x"],
                                  ["compress", "--dev=emu:zip", "x"], ["compress", "-h"],
                                  ["decompress", "--help"]])
def test_other_runs_do_not(started: list[str], argv: list[str]) -> None:
    cli._early_model(argv)
    assert started == []


def test_a_device_in_the_environment_or_bound_hardware_means_no_guess(
        started: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARPDRIVE_DEVICE", "emu:zip")
    cli._early_model(["compress", "x"])
    monkeypatch.delenv("WARPDRIVE_DEVICE")
    monkeypatch.setattr("warpdrive.backends.nothing_bound", lambda: False)
    cli._early_model(["compress", "x"])
    assert started == []


def test_a_second_prestart_keeps_the_model_booting_and_a_wrong_guess_is_dropped() -> None:
    first = launcher.prestart("testdev")
    try:
        assert launcher.prestart("testdev") is first and first.running
    finally:
        launcher.drop_prestarted()
    assert first.proc.returncode is not None


# The last exit handler (registered first, so it runs after the launcher's): did `main` guess the
# model (the launcher imported before any command ran), and what is left in the temp directory.
_WITNESS = ("import atexit, os, sys, tempfile;"
            "atexit.register(lambda: print('guessed' if 'warpdrive.backends.vfiouser.launcher'"
            " in sys.modules else 'no guess', sorted(os.listdir(tempfile.gettempdir())),"
            " file=sys.stderr));"
            "sys.argv = ['warpdrive', *sys.argv[1:]];"
            "from warpdrive.cli import entry; entry()")


@pytest.mark.parametrize(("argv", "code"), [(["compress", "--bogus", "f1"], 1),
                                            (["compress", "-o", "out", "f1", "f2"], 1),
                                            (["compress", "-V"], 0)])
def test_a_run_that_never_opens_the_engine_stops_the_early_model_and_its_directory(
        tmp_path: Path, argv: list[str], code: int) -> None:
    """A usage error, a failure before the command's run, --version: the model `main` started
    is stopped as the CLI exits (`exit_now` still runs the exit handlers) and its private
    directory removed; the inputs stay."""
    from warpdrive.backends import nothing_bound

    if not nothing_bound():
        pytest.skip("a device is bound here: `main` guesses no model")
    temp = tmp_path / "tmp"
    temp.mkdir()
    for name in ("f1", "f2"):
        (tmp_path / name).write_bytes(b"x")
    env = {k: v for k, v in os.environ.items() if k != "WARPDRIVE_DEVICE"}
    out = subprocess.run([sys.executable, "-c", _WITNESS, *argv], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60,
                         env={**env, "TMPDIR": str(temp),
                              "PYTHONPATH": ":".join(p for p in sys.path if p)})
    assert out.returncode == code, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "guessed []"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f1", "f2", "tmp"]
