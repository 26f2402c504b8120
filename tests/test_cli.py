"""The `warpdrive` CLI on the host: `devices` on this real machine, `bind --dry-run` against the
real host NIC (refused, nothing written), and the rest on a FAKE sysfs tree
(tests/fakesysfs.py FakeSysfs under tmp_path, via the hidden --sysfs-root/--dev-root options),
which stands in for a machine with IOMMU groups, vfio-pci and uacce. WARPDRIVE_FORBID_SYSFS_WRITES=1
is set for every test, in-process and in the subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakesysfs import FakeSysfs
from tests.hostnet import default_route_ifname
from warpdrive import pci
from warpdrive.cli import (
    COMMANDS,
    EXIT_PERMISSION,
    EXIT_REFUSED,
    OPTIONAL_SUBCOMMAND_MODULES,
    SUBCOMMAND_MODULES,
    _load,
    build_parser,
    main,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_binding_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARPDRIVE_FORBID_SYSFS_WRITES", "1")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a fresh interpreter (as `warpdrive ...` runs)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), WARPDRIVE_FORBID_SYSFS_WRITES="1")
    return subprocess.run([sys.executable, "-m", "warpdrive.cli", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=120)


def fake_tree(tmp_path: Path) -> FakeSysfs:
    """FAKE machine: edu on vfio-pci (group 5, /dev/vfio/5, vfio0), virtio-crypto sharing group 6
    with an audio function, a ZIP PF with a uacce device."""
    f = FakeSysfs(tmp_path / "fake")
    f.add_iommu()
    f.add_function("0000:00:03.0", 0x1234, 0x11E8, 0xFF00, driver="vfio-pci", group=5)
    f.add_vfio_node(5)
    f.add_vfio_cdev("0000:00:03.0", "vfio0")
    f.add_function("0000:00:04.0", 0x1AF4, 0x1054, 0x100000, driver="virtio-pci", group=6)
    f.add_function("0000:00:04.1", 0x8086, 0x293E, 0x040300, driver="snd_hda_intel", group=6)
    f.add_function("0000:00:06.0", 0x19E5, 0xA250, 0x120000, driver="hisi_zip", group=8, numa=0)
    f.add_uacce("hisi_zip-0", "0000:00:06.0", {"api": "hisi_qm_v2", "flags": "1",
                                               "available_instances": "62",
                                               "algorithms": "zlib\ngzip"})
    return f


def roots(f: FakeSysfs) -> list[str]:
    return ["--sysfs-root", f.sysfs_root, "--dev-root", f.dev_root]


# ------------------------------------------------------------------------------------ real host


def test_devices_real_host_table() -> None:
    """Real host: every PCI function in sysfs is listed; no IOMMU is stated plainly."""
    proc = cli("devices")
    assert proc.returncode == 0, proc.stderr
    for bdf in os.listdir("/sys/bus/pci/devices"):
        assert bdf in proc.stdout
    if not os.listdir("/sys/kernel/iommu_groups"):
        assert "no IOMMU: VFIO unavailable on this machine" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_devices_real_host_json() -> None:
    """Real host: --json carries the same facts as the library."""
    proc = cli("devices", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    lib = {f.bdf: f for f in pci.devices()}
    assert sorted(d["bdf"] for d in data["pci"]) == sorted(lib)
    for d in data["pci"]:
        f = lib[d["bdf"]]
        assert (d["ids"], d["driver"], d["iommu_group"]) == (f.ids, f.driver, f.iommu_group)
        assert d["net_interfaces"] == list(f.net_interfaces)
    assert data["iommu"]["available"] == pci.iommu_status().available
    assert isinstance(data["uacce"], list)




def test_bind_dry_run_real_host_nic_refuses_and_writes_nothing() -> None:
    """Real host NIC (BDF found from /sys/class/net/<default-route iface>/device): `bind
    --dry-run` says it would refuse, names the interface and its default route, exits 3, and
    driver_override and the driver link are unchanged afterwards."""
    ifname = default_route_ifname()
    bdf = pci.netdev_function(ifname)
    if bdf is None:
        pytest.skip(f"{ifname} is not a PCI function")
    dev = f"/sys/bus/pci/devices/{bdf}"
    before = (Path(dev, "driver_override").read_text(), os.readlink(f"{dev}/driver"))
    proc = cli("bind", bdf, "--dry-run")
    assert proc.returncode == EXIT_REFUSED, proc.stdout + proc.stderr
    assert f"{ifname} is up" in proc.stdout
    assert "default via" in proc.stdout and "DEFAULT ROUTE" in proc.stdout
    assert "result: REFUSED" in proc.stdout and "nothing was written" in proc.stdout
    assert (Path(dev, "driver_override").read_text(), os.readlink(f"{dev}/driver")) == before


def test_bind_dry_run_json_real_host_nic() -> None:
    ifname = default_route_ifname()
    bdf = pci.netdev_function(ifname)
    if bdf is None:
        pytest.skip(f"{ifname} is not a PCI function")
    proc = cli("bind", bdf, "--dry-run", "--json")
    assert proc.returncode == EXIT_REFUSED
    data = json.loads(proc.stdout)
    assert data["dry_run"] and data["plan"]["refused"]
    net = [c for c in data["plan"]["checks"] if c["name"] == "network"]
    assert net[0]["status"] == "refuse" and ifname in net[0]["detail"]
    assert any(s.endswith("/driver_override") for s in data["plan"]["steps"])


# ------------------------------------------------------------------------------------ fake tree


def test_devices_fake_tree_table(tmp_path: Path, capsys) -> None:
    f = fake_tree(tmp_path)
    assert main(["devices", *roots(f)]) == 0
    out = capsys.readouterr().out
    assert "IOMMU: dmar0; 3 groups" in out
    assert f"{f.dev_root}/vfio/5,{f.dev_root}/vfio/devices/vfio0" in out
    assert ("IOMMU group 6: 0000:00:04.0 (virtio-pci), 0000:00:04.1 (snd_hda_intel, blocks VFIO)"
            in out)
    assert "uacce:hisi_zip-0" in out and "zip" in out
    uline = next(line for line in out.splitlines() if line.startswith("hisi_zip-0"))
    assert "hisi_qm_v2" in uline and "yes" in uline and "62" in uline and "zlib,gzip" in uline


def test_devices_fake_tree_filter_and_json(tmp_path: Path, capsys) -> None:
    f = fake_tree(tmp_path)
    assert main(["devices", "00:04.0", "--json", *roots(f)]) == 0
    data = json.loads(capsys.readouterr().out)
    (d,) = data["pci"]
    assert d["bdf"] == "0000:00:04.0" and d["plugin"] == "crypto"
    assert d["group_members"] == [{"bdf": "0000:00:04.1", "driver": "snd_hda_intel",
                                   "class_code": "0x040300"}]
    assert data["uacce"][0]["parent_bdf"] == "0000:00:06.0" and data["uacce"][0]["sva"]


def test_bind_group_refusal_exit_code(tmp_path: Path, capsys) -> None:
    f = fake_tree(tmp_path)
    assert main(["bind", "00:04.0", "--dry-run", *roots(f)]) == EXIT_REFUSED
    out = capsys.readouterr().out
    assert "REFUSE  group" in out and "0000:00:04.1 (driver snd_hda_intel)" in out
    assert main(["bind", "00:04.0", "--dry-run", "--group", *roots(f)]) == 0
    out = capsys.readouterr().out
    assert "drivers/snd_hda_intel/unbind" in out and "would proceed" in out


def test_bind_real_run_blocked_by_guard(tmp_path: Path, capsys) -> None:
    """FAKE tree, no --dry-run: the checks pass, then the write guard refuses (exit 3) before
    anything is written."""
    f = fake_tree(tmp_path)
    override = f.fn_dir("0000:00:04.0") / "driver_override"
    before = override.read_text()
    rc = main(["bind", "00:04.0", "--group", *roots(f)])
    err = capsys.readouterr().err
    assert rc == EXIT_REFUSED
    assert "WARPDRIVE_FORBID_SYSFS_WRITES" in err and "Traceback" not in err
    assert override.read_text() == before
    assert pci.read_function("00:04.0", f.sysfs_root).driver == "virtio-pci"


def test_bind_non_root_exit_code(tmp_path: Path, monkeypatch, capsys) -> None:
    f = fake_tree(tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["bind", "00:04.0", "--group", "--dry-run", *roots(f)]) == EXIT_PERMISSION
    assert "sudo warpdrive bind 0000:00:04.0" in capsys.readouterr().out
    assert main(["bind", "00:04.0", "--group", *roots(f)]) == EXIT_PERMISSION
    assert "needs root" in capsys.readouterr().err


def test_unbind_nothing_to_do(tmp_path: Path, capsys) -> None:
    f = fake_tree(tmp_path)
    assert main(["unbind", "00:04.0", *roots(f)]) == 0
    assert "on its kernel driver virtio-pci: nothing to unbind" in capsys.readouterr().out


def test_already_bound_nothing_to_do(tmp_path: Path, capsys) -> None:
    f = fake_tree(tmp_path)
    assert main(["bind", "00:03.0", *roots(f)]) == 0
    assert "already bound to vfio-pci" in capsys.readouterr().out


def test_dry_run_warns_of_a_driver_no_module_provides(tmp_path: Path, capsys) -> None:
    """`--driver` with a typo: the dry run says modprobe will fail (a FAKE modules directory for
    the running kernel: modules.dep and modules.builtin, as depmod writes them)."""
    f = fake_tree(tmp_path)
    mods = tmp_path / "modules"
    (mods / os.uname().release).mkdir(parents=True)
    (mods / os.uname().release / "modules.dep").write_text(
        "kernel/drivers/pci/pci-stub.ko.xz:\nkernel/drivers/vfio/pci/vfio-pci.ko.xz: x.ko\n")
    (mods / os.uname().release / "modules.builtin").write_text(
        "kernel/drivers/virtio/virtio_pci.ko\n")
    base = ["bind", "00:04.0", "--dry-run", *roots(f), "--modules-root", str(mods)]
    main([*base, "--driver", "pci_stub"])  # '-' and '_' are one to modprobe
    assert "will likely fail" not in capsys.readouterr().out
    main([*base, "--driver", "pci-stubb"])
    out = capsys.readouterr().out
    assert "WARN    driver       no module named pci-stubb for this kernel" in out, out
    assert "`modprobe pci-stubb` will likely fail" in out and "modinfo NAME" in out
    main([*base, "--driver", "pci-stubb", "--modules-root", str(tmp_path / "none")])
    assert "will likely fail" not in capsys.readouterr().out  # cannot tell: says nothing


# -------------------------------------------------------------------------------- usage, errors


def test_usage_errors() -> None:
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["bind"]) == 2
    assert main(["--help"]) == 0


def test_bad_address_is_an_error_not_a_traceback() -> None:
    proc = cli("bind", "eth0", "--dry-run")
    assert proc.returncode == 2  # a malformed argument: usage
    assert "not a PCI address" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("devices", "0000:7f:1f.7")
    assert proc.returncode == 1
    assert "no PCI function 0000:7f:1f.7" in proc.stderr and "Traceback" not in proc.stderr


def test_subcommand_registry() -> None:
    names = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr, arg-type]
    assert {"devices", "bind", "unbind"} <= names
    for mod in SUBCOMMAND_MODULES:
        assert callable(_load(mod, optional=False).register)
    assert _load("warpdrive.cli.not_written_yet", optional=True) is None
    assert all(m.startswith("warpdrive.cli.") for m in OPTIONAL_SUBCOMMAND_MODULES)
    # COMMANDS names every command with the module that registers it (a run of one command
    # builds the parser from that module alone).
    assert set(COMMANDS) == names
    for name, module in COMMANDS.items():
        parser = build_parser([name, "--help"])
        assert set(parser._subparsers._group_actions[0].choices) >= {name}  # type: ignore[union-attr, arg-type]
        assert module in sys.modules


def _new_modules(code: str) -> set[str]:
    """Modules a fresh interpreter imports to run `code`, beyond what `pass` imports."""
    probe = "import sys; print(' '.join(sys.modules))"

    def run(body: str) -> set[str]:
        proc = subprocess.run([sys.executable, "-c", f"{body}\n{probe}"], capture_output=True,
                              text=True, cwd=REPO, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert proc.returncode == 0, proc.stderr
        return set(proc.stdout.split())

    return run(code) - run("pass")


# What `import warpdrive` and a CLI run that does not need them must never pull in: the device API
# and backends (ctypes, mmap, the VFIO uAPI), the plugins, and the heavy third-party packages.
# In the TCG lab guest each costs seconds per process (`warpdrive.device` 1.1 s, pyroute2 6 s).
HEAVY = ("warpdrive.device", "warpdrive.dma", "warpdrive.memory", "warpdrive.mmio",
         "warpdrive.backends", "warpdrive.emu", "warpdrive.zip", "warpdrive.binding", "ctypes",
         "pyroute2", "psutil")


def heavy(modules: set[str]) -> list[str]:
    """The HEAVY packages among `modules`, and the plugins (`warpdrive.devices.*`)."""
    return sorted(m for m in modules if m.startswith("warpdrive.devices.")
                  or any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_import_warpdrive_and_version_stay_light() -> None:
    new = _new_modules("import warpdrive")
    assert not heavy(new), sorted(new)
    assert {m for m in new if m.startswith("warpdrive")} <= {
        "warpdrive", "warpdrive.errors", "warpdrive.devices"}
    # The public names still resolve (on first use).
    assert _new_modules("import warpdrive; warpdrive.Device; warpdrive.check_dma_memory") >= {
        "warpdrive.device", "warpdrive.memory"}

    version = _new_modules("from warpdrive.cli import main; main(['--version'])")
    assert not heavy(version), sorted(version)
    assert {m for m in version if m.startswith("warpdrive.cli.")} == set(), sorted(version)
    bind = _new_modules("from warpdrive.cli import main; main(['bind', '--help'])")
    assert {m for m in bind if m.startswith("warpdrive.cli.")} == {
        "warpdrive.cli.bind", "warpdrive.cli._common"}
    assert not heavy(bind), sorted(bind)


def test_log_lines_go_to_the_stderr_of_their_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands' log handler (`warpdrive.logs`: `warpdrive serve`, a model's process, the
    zip CLI) writes to `sys.stderr` as it is at each record. Before, it kept the stream of the
    moment it was installed: after an in-process run under pytest's capture that stream was
    closed, and every later record printed "--- Logging error ---" and a traceback (seen in a
    make test, from an in-process server's "closing the connection" line); with standard error
    itself closed the log call raised."""
    import argparse
    import io
    import logging

    from warpdrive.cli import zip as cli_zip
    from warpdrive.emu.serve import configure_logging

    root = logging.getLogger("warpdrive")
    saved = root.handlers[:], root.level, root.propagate
    log = logging.getLogger("warpdrive.test")
    try:
        root.handlers = []
        first = io.StringIO()
        monkeypatch.setattr(sys, "stderr", first)
        configure_logging()  # (as `warpdrive serve` and a model's process do)
        cli_zip._logging(argparse.Namespace(quiet=False, verbose=False))  # (the zip CLI)
        log.warning("one")
        assert first.getvalue().count("one") == 2  # (both handlers)
        first.close()  # the capture of that run ends
        second = io.StringIO()
        monkeypatch.setattr(sys, "stderr", second)
        log.warning("two")
        assert second.getvalue().count("two") == 2
        assert "Logging error" not in second.getvalue()
        second.close()  # standard error closed under the process: the call must not raise
        log.warning("three")
        monkeypatch.setattr(sys, "stderr", None)  # (interpreter shutdown)
        log.warning("four")
    finally:
        root.handlers, level, root.propagate = saved
        root.setLevel(level)
