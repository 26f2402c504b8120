"""`warpdrive compress/decompress` start the bundled model before importing the command's module
(issue 11): which command lines guess it, and the command's own decision keeping or dropping it.
Host-only; the model started is the real one."""

from __future__ import annotations

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
