"""Binding on the host: safety checks, dry runs and the write guard. Nothing here binds anything.

What is real and what is fake, per test:
  * `real_host` tests plan against this machine's real /sys, netlink and /proc (its NIC eth0 with
    the default route, its root disk); they only read, and prove that a dry run writes nothing.
  * holder tests use REAL processes (started here) holding REAL fds and mmaps; the files they hold
    are FAKE stand-ins under tmp_path for /dev/vfio/N and a BAR's resource0 file (plus the real
    /dev/null standing in for a device's char node, matched by its real device number).
  * planner/executor tests run on a FAKE sysfs tree (tests/fakesysfs.py FakeSysfs) and, for
    execution, a FAKE kernel (`FakeKernel` below) that reacts to binding writes the way the PCI
    core does. They test the logic (order of writes, rollback, records); the real kernel's
    behaviour is tested in the lab guest (tests/lab/test_lab_binding.py).
WARPDRIVE_FORBID_SYSFS_WRITES=1 is set for every test here.
"""

from __future__ import annotations

import builtins
import errno
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakesysfs import FakeSysfs
from tests.hostnet import default_route_ifname
from warpdrive import binding, pci
from warpdrive.binding import apply, netuse, planner, state
from warpdrive.binding.holders import Targets, find_holders
from warpdrive.binding.sysfs_write import (
    FORBID_ENV,
    SysfsWritesForbiddenError,
    sysfs_write,
    writes_forbidden,
)
from warpdrive.errors import (
    BindingRefusedError,
    DeviceTimeoutError,
    GroupNotViableError,
    UnsupportedError,
    from_errno,
)


@pytest.fixture(autouse=True)
def _no_binding_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FORBID_ENV, "1")


# ------------------------------------------------------------------------------ real host, dry run




def host_nic() -> tuple[str, str]:
    ifname = default_route_ifname()
    bdf = pci.netdev_function(ifname)
    if bdf is None:
        pytest.skip(f"{ifname} is not backed by a PCI function")
    return ifname, bdf


def binding_files(bdf: str) -> tuple[str, str | None]:
    with open(f"/sys/bus/pci/devices/{bdf}/driver_override") as f:
        override = f.read()
    try:
        driver = os.readlink(f"/sys/bus/pci/devices/{bdf}/driver")
    except OSError:
        driver = None
    return override, driver


@pytest.fixture
def no_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every write path raise: the binding write function, modprobe, and any open() for
    writing anywhere. Returns the list of attempts (must stay empty)."""
    attempts: list[str] = []

    def refuse(*args: object, **kw: object) -> None:
        attempts.append(repr(args))
        raise AssertionError(f"dry run tried to write: {args!r}")

    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *a, **kw):  # type: ignore[no-untyped-def]
        if any(c in mode for c in "wax+"):
            refuse(file, mode)
        return real_open(file, mode, *a, **kw)

    def guarded_os_open(path, flags, *a, **kw):  # type: ignore[no-untyped-def]
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            refuse(path, flags)
        return real_os_open(path, flags, *a, **kw)

    monkeypatch.setattr(apply, "sysfs_write", refuse)
    monkeypatch.setattr(apply, "modprobe", refuse)
    monkeypatch.setattr("warpdrive.binding.sysfs_write.sysfs_write", refuse)
    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    return attempts


def test_real_host_nic_dry_run_refuses_names_route_writes_nothing(no_writes, capsys) -> None:
    """Real host NIC (found from the default route): `bind --dry-run` refuses naming the interface
    and its default route, exits 3, and nothing can be written (every write path raises)."""
    from warpdrive.cli import main

    ifname, bdf = host_nic()
    before = binding_files(bdf)
    rc = main(["bind", bdf, "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 3, out
    assert ifname in out and "DEFAULT ROUTE" in out and "default via" in out
    assert "REFUSE  network" in out and "nothing is written" in out
    assert no_writes == []
    assert binding_files(bdf) == before


def test_real_host_nic_plan_force_lifts_only_network(no_writes) -> None:
    """Real host NIC: --force turns the network refusal into "forced"; nothing else changes."""
    ifname, bdf = host_nic()
    plain = binding.plan_bind(bdf)
    forced = binding.plan_bind(bdf, force=True)
    net = [c for c in forced.checks if c.name == "network"]
    assert net and all(c.status == "forced" for c in net) and ifname in net[0].detail
    assert [c.name for c in forced.refusals] == [c.name for c in plain.refusals
                                                 if c.name != "network"]
    assert no_writes == []


def test_real_host_root_disk_refused(no_writes) -> None:
    """Real host: the function behind the disk mounted on / is refused ("mounted on /")."""
    st = os.stat("/")
    link = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    if not os.path.exists(link):
        pytest.skip("/ is not on a block device here")
    path = os.path.realpath(link)
    bdf = next((p for p in reversed(path.split("/")) if pci.is_bdf(p)), None)
    if bdf is None:
        pytest.skip("/ is not on a PCI function here")
    plan = binding.plan_bind(bdf, "pci-stub")
    storage = [c for c in plan.refusals if c.name == "storage"]
    assert storage and "mounted on /" in storage[0].detail
    assert isinstance(plan.error(), BindingRefusedError)


def test_real_host_nic_unbind_is_nothing_to_do(no_writes) -> None:
    """Real host NIC on its native driver: `unbind` never takes a native driver away."""
    _, bdf = host_nic()
    plan = binding.plan_unbind(bdf)
    assert plan.nothing_to_do and not plan.targets


# ------------------------------------------------------------------------------------ the guard


def test_guard_refuses_with_env(tmp_path: Path) -> None:
    """With the env var set the write function refuses before opening anything (a fake file)."""
    target = tmp_path / "driver_override"
    target.write_text("(null)\n")
    assert writes_forbidden()
    with pytest.raises(SysfsWritesForbiddenError, match=FORBID_ENV):
        sysfs_write(str(target), "vfio-pci")
    assert target.read_text() == "(null)\n"
    with pytest.raises(SysfsWritesForbiddenError):
        apply.modprobe("vfio-pci")


def test_guard_off_writes_only_binding_files(tmp_path: Path, monkeypatch) -> None:
    """Without the env var: one write to a FAKE driver_override file under tmp_path; any other
    file name is rejected; an empty value is written as a newline (clears an override)."""
    monkeypatch.delenv(FORBID_ENV)
    target = tmp_path / "driver_override"
    target.write_text("")
    sysfs_write(str(target), "vfio-pci")
    assert target.read_text() == "vfio-pci"
    sysfs_write(str(target), "")
    assert target.read_text() == "\n"
    with pytest.raises(ValueError):
        sysfs_write(str(tmp_path / "remove"), "1")
    with pytest.raises(ValueError):
        sysfs_write(str(tmp_path / "config"), "1")


@pytest.mark.parametrize("value", ["1", "yes", "true"])
def test_guard_any_nonzero_value_forbids(monkeypatch, value: str) -> None:
    monkeypatch.setenv(FORBID_ENV, value)
    assert writes_forbidden()
    monkeypatch.setenv(FORBID_ENV, "0")
    assert not writes_forbidden()


# ------------------------------------------------------------------------------------- holders


HOLDER = """
import mmap, os, sys, time
fd_group = os.open(sys.argv[1], os.O_RDWR)
f = open(sys.argv[2], "r+b")
m = mmap.mmap(f.fileno(), 4096)
fd_null = os.open("/dev/null", os.O_RDONLY)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder_process(tmp_path: Path):
    """A REAL process holding a FAKE /dev/vfio/5 (regular file) open, mmapping a FAKE resource0
    file, and holding the REAL /dev/null open."""
    fake = FakeSysfs(tmp_path)
    fake.add_iommu()
    fake.add_function("0000:00:03.0", 0x1234, 0x11E8, 0xFF00, driver="vfio-pci", group=5)
    node = fake.add_vfio_node(5)
    resource = fake.fn_dir("0000:00:03.0") / "resource0"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(node), str(resource)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield fake, proc
    proc.kill()
    proc.wait()


def test_find_holders_by_path_mmap_and_devnum(holder_process) -> None:
    fake, proc = holder_process
    fn_dir = os.path.realpath(fake.fn_dir("0000:00:03.0"))
    null = os.stat("/dev/null").st_rdev
    targets = Targets(paths=(f"{fake.dev_root}/vfio/5",),
                      devnums=(("c", os.major(null), os.minor(null), "null (mem)"),),
                      map_prefixes=(fn_dir + "/resource",))
    mine = [h for h in find_holders(targets) if h.pid == proc.pid]
    assert any(h.holds.endswith(f"{fake.dev_root}/vfio/5") for h in mine), mine
    assert any(h.holds == f"mmap {fn_dir}/resource0" for h in mine), mine
    assert any("null (mem)" in h.holds for h in mine), mine
    h = mine[0]
    assert h.name.startswith("python") and "time.sleep(60)" in h.cmdline
    assert f"pid {proc.pid}" in h.describe()


def test_plan_unbind_refuses_while_held(holder_process) -> None:
    """FAKE tree + REAL holder: unbinding a vfio-pci function whose group node is held open is
    refused, naming the process."""
    fake, proc = holder_process
    plan = binding.plan_unbind("0000:00:03.0", sysfs_root=fake.sysfs_root,
                               dev_root=fake.dev_root)
    (refusal,) = plan.refusals
    assert refusal.name == "holders" and f"pid {proc.pid}" in refusal.detail
    assert "/vfio/5" in refusal.detail and "resource0" in refusal.detail
    err = plan.error()
    assert isinstance(err, BindingRefusedError) and f"pid {proc.pid}" in str(err)


# --------------------------------------------------------------------------- planner (fake tree)


def fake_machine(tmp_path: Path) -> FakeSysfs:
    """FAKE tree: edu (no driver, group 3), virtio-crypto (virtio-pci, group 4, shared with an
    audio function on snd_hda_intel), a root port, vfio-pci loaded."""
    f = FakeSysfs(tmp_path / "root")
    f.add_iommu()
    f.add_driver("vfio-pci")
    f.add_function("0000:00:01.0", 0x8086, 0x7C01, 0x060400, driver="pcieport", group=1)
    f.add_function("0000:00:03.0", 0x1234, 0x11E8, 0xFF00, group=3)
    f.add_function("0000:00:04.0", 0x1AF4, 0x1054, 0x100000, driver="virtio-pci", group=4)
    f.add_function("0000:00:04.1", 0x8086, 0x293E, 0x040300, driver="snd_hda_intel", group=4)
    f.add_function("0000:00:06.0", 0x1AF4, 0x1054, 0x100000, driver="virtio-pci")
    return f


def plan_for(f: FakeSysfs, bdf: str, **kw: Any) -> binding.Plan:
    return binding.plan_bind(bdf, sysfs_root=f.sysfs_root, dev_root=f.dev_root, **kw)


def test_plan_exact_writes(tmp_path: Path) -> None:
    f = fake_machine(tmp_path)
    plan = plan_for(f, "00:03.0")
    assert not plan.refusals
    (t,) = plan.targets
    s = f.sysfs_root
    assert [(x.action, x.path, x.value) for x in t.steps] == [
        ("write", f"{s}/bus/pci/devices/0000:00:03.0/driver_override", "vfio-pci"),
        ("write", f"{s}/bus/pci/drivers_probe", "0000:00:03.0"),
        ("wait", "", "")]
    assert (t.before_driver, t.before_override, t.after_driver) == (None, None, "vfio-pci")


def test_plan_group_not_viable_names_member(tmp_path: Path) -> None:
    f = fake_machine(tmp_path)
    plan = plan_for(f, "00:04.0")
    (r,) = plan.refusals
    assert r.name == "group" and "0000:00:04.1 (driver snd_hda_intel)" in r.detail
    assert "--group" in (r.hint or "")
    assert isinstance(plan.error(), GroupNotViableError)


def test_plan_group_moves_blockers_first(tmp_path: Path) -> None:
    f = fake_machine(tmp_path)
    plan = plan_for(f, "00:04.0", group=True)
    assert not plan.refusals
    assert [t.bdf for t in plan.targets] == ["0000:00:04.1", "0000:00:04.0"]
    paths = [s.path for t in plan.targets for s in t.steps if s.action == "write"]
    assert f"{f.sysfs_root}/bus/pci/drivers/snd_hda_intel/unbind" in paths
    assert f"{f.sysfs_root}/bus/pci/drivers/virtio-pci/unbind" in paths


def test_plan_refuses_bridge_and_no_group(tmp_path: Path) -> None:
    f = fake_machine(tmp_path)
    assert [c.name for c in plan_for(f, "00:01.0").refusals] == ["device"]
    no_group = plan_for(f, "00:06.0")
    assert [c.name for c in no_group.refusals] == ["iommu"]
    assert isinstance(no_group.error(), UnsupportedError)
    (f.sys / "module/vfio/parameters/enable_unsafe_noiommu_mode").write_text("Y\n")
    noiommu = plan_for(f, "00:06.0")
    assert not noiommu.refusals
    assert any(c.name == "iommu" and c.status == "warn" for c in noiommu.checks)


def test_plan_already_bound_is_nothing_to_do(tmp_path: Path) -> None:
    f = fake_machine(tmp_path)
    f.set_driver("0000:00:03.0", "vfio-pci")
    plan = plan_for(f, "00:03.0")
    assert plan.nothing_to_do and not plan.targets


def test_plan_modprobe_when_driver_missing(tmp_path: Path) -> None:
    f = fake_machine(tmp_path)
    plan = plan_for(f, "00:03.0", driver="pci-stub")
    assert [(s.action, s.value) for s in plan.pre_steps] == [("modprobe", "pci-stub")]
    assert "modprobe pci-stub" in plan.render(dry_run=True)


def test_plan_refuses_mounted_disk(tmp_path: Path) -> None:
    """FAKE NVMe function whose namespace has the REAL device number of the disk holding / (so
    the real /proc/self/mountinfo says it is mounted)."""
    st = os.stat("/")
    if os.major(st.st_dev) == 0:
        pytest.skip("/ is not on a block device here")
    f = fake_machine(tmp_path)
    f.add_function("0000:00:07.0", 0x1B36, 0x0010, 0x010802, driver="nvme", group=7)
    f.add_child("0000:00:07.0", "nvme/nvme0/nvme0n1", "block",
                (os.major(st.st_dev), os.minor(st.st_dev)))
    plan = plan_for(f, "00:07.0")
    (r,) = plan.refusals
    assert r.name == "storage" and "nvme0n1 is mounted on /" in r.detail


def test_plan_unknown_netdev_warns(tmp_path: Path) -> None:
    """FAKE NIC whose interface (wdfake9) does not exist in this netns: warn, not refuse."""
    f = fake_machine(tmp_path)
    f.add_function("0000:00:08.0", 0x1AF4, 0x1041, 0x020000, driver="virtio-pci", group=8)
    f.add_child("0000:00:08.0", "virtio3/net/wdfake9", "net")
    plan = plan_for(f, "00:08.0")
    assert not plan.refusals
    assert any(c.name == "network" and c.status == "warn" and "wdfake9" in c.detail
               for c in plan.checks)


def test_plan_permissions_non_root(tmp_path: Path, monkeypatch) -> None:
    f = fake_machine(tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    plan = plan_for(f, "00:03.0")
    (r,) = plan.refusals
    assert r.kind == "permission" and "needs root" in r.detail
    assert "sudo warpdrive bind 0000:00:03.0" in (r.hint or "")


def test_plan_unbind_variants(tmp_path: Path) -> None:
    f = fake_machine(tmp_path)
    sd = str(tmp_path / "state")
    kw: dict[str, Any] = {"sysfs_root": f.sysfs_root, "dev_root": f.dev_root,
                          "state_directory": sd}
    assert binding.plan_unbind("00:04.0", **kw).nothing_to_do  # native driver: left alone
    assert binding.plan_unbind("00:03.0", **kw).nothing_to_do  # no driver, no override

    f.set_driver("0000:00:04.0", "vfio-pci")
    plan = binding.plan_unbind("00:04.0", **kw)  # no record: the kernel picks
    (t,) = plan.targets
    assert t.kernel_picks and [s.action for s in t.steps] == ["write", "write", "write", "wait"]
    assert t.steps[0].value == ""  # clears driver_override

    state.save(state.Record("0000:00:04.0", "virtio-pci", None), sd)
    (t,) = binding.plan_unbind("00:04.0", **kw).targets
    assert not t.kernel_picks and t.after_driver == "virtio-pci"
    assert t.steps[-1].action == "fallback-bind"
    assert t.steps[-1].path == f"{f.sysfs_root}/bus/pci/drivers/virtio-pci/bind"


# -------------------------------------------------------------------- executor (fake kernel)


class FakeKernel:
    """FAKE PCI core: applies binding writes to a FakeSysfs tree as the kernel would (override
    beats id matching; unbind drops the link; drivers_probe attaches the override or the native
    driver; bind attaches unless the override names another driver). `refuse` lists
    (bdf, driver) pairs whose probe fails."""

    def __init__(self, fake: FakeSysfs, native: dict[str, str],
                 refuse: set[tuple[str, str]] | None = None) -> None:
        self.fake, self.native, self.refuse = fake, native, refuse or set()
        self.log: list[tuple[str, str]] = []

    def _override(self, bdf: str) -> str | None:
        text = (self.fake.fn_dir(bdf) / "driver_override").read_text().strip()
        return None if text in ("", "(null)") else text

    def _driver(self, bdf: str) -> str | None:
        link = self.fake.fn_dir(bdf) / "driver"
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None

    def _attach(self, bdf: str, drv: str) -> bool:
        if (bdf, drv) in self.refuse or not (self.fake.sys / "bus/pci/drivers" / drv).is_dir():
            return False
        self.fake.set_driver(bdf, drv)
        if drv == "vfio-pci":
            grp = os.path.basename(os.readlink(self.fake.fn_dir(bdf) / "iommu_group"))
            self.fake.add_vfio_node(int(grp))
        return True

    def write(self, path: str, value: str) -> None:
        self.log.append((path.removeprefix(self.fake.sysfs_root), value))
        p = Path(path)
        if p.name == "driver_override":
            p.write_text((value or "(null)") + "\n")
        elif p.name == "unbind":
            assert self._driver(value) == p.parent.name
            self.fake.set_driver(value, None)
        elif p.name == "drivers_probe":
            if self._driver(value) is None:
                cand = self._override(value) or self.native.get(value)
                if cand:
                    self._attach(value, cand)
        elif p.name == "bind":
            ov = self._override(value)
            if (ov and ov != p.parent.name) or not self._attach(value, p.parent.name):
                raise from_errno(errno.ENODEV, f"write {value!r} to {path}")


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch):
    f = fake_machine(tmp_path)
    k = FakeKernel(f, native={"0000:00:04.0": "virtio-pci", "0000:00:04.1": "snd_hda_intel"})
    # The FAKE kernel replaces the real writer (and its env guard) for these tests only: every
    # write lands in the fake tree under tmp_path.
    monkeypatch.setattr(apply, "sysfs_write", k.write)
    monkeypatch.setattr(apply, "ensure_writes_allowed", lambda what: None)
    monkeypatch.setattr(apply, "_SETTLE", 0.05)
    return k


def _kw(k: FakeKernel, tmp_path: Path) -> dict[str, Any]:
    return {"sysfs_root": k.fake.sysfs_root, "dev_root": k.fake.dev_root,
            "state_directory": str(tmp_path / "state"), "timeout": 0.3}


def test_execute_bind_and_unbind_restores(kernel: FakeKernel, tmp_path: Path) -> None:
    kw = _kw(kernel, tmp_path)
    res = binding.bind("00:04.0", group=True, **kw)
    assert [(fn.bdf, fn.driver) for fn in res.functions] == [("0000:00:04.1", "vfio-pci"),
                                                             ("0000:00:04.0", "vfio-pci")]
    assert res.functions[1].vfio_group_node == f"{kernel.fake.dev_root}/vfio/4"
    rec = state.load("0000:00:04.0", str(tmp_path / "state"))
    assert rec == state.Record("0000:00:04.0", "virtio-pci", None)

    kernel.log.clear()
    binding.unbind("00:04.0", group=True, **kw)
    fns = {fn.bdf: fn for fn in pci.devices(kernel.fake.sysfs_root, kernel.fake.dev_root)}
    assert fns["0000:00:04.0"].driver == "virtio-pci" and fns["0000:00:04.1"].driver == \
        "snd_hda_intel"
    assert fns["0000:00:04.0"].driver_override is None
    assert state.load("0000:00:04.0", str(tmp_path / "state")) is None
    assert ("/bus/pci/devices/0000:00:04.0/driver_override", "") in kernel.log


def test_execute_unbind_falls_back_to_explicit_bind(kernel: FakeKernel, tmp_path: Path) -> None:
    """Recorded driver the kernel does not re-pick by itself: unbind writes drivers/<drv>/bind."""
    kw = _kw(kernel, tmp_path)
    kernel.fake.add_driver("edu_native")
    kernel.fake.set_driver("0000:00:03.0", "edu_native")  # no id match in FakeKernel.native
    binding.bind("00:03.0", **kw)
    binding.unbind("00:03.0", **kw)
    assert kernel.log[-1] == ("/bus/pci/drivers/edu_native/bind", "0000:00:03.0")
    assert pci.read_function("00:03.0", kernel.fake.sysfs_root).driver == "edu_native"


def test_execute_rolls_back_when_driver_does_not_attach(kernel: FakeKernel,
                                                        tmp_path: Path) -> None:
    kernel.refuse.add(("0000:00:04.0", "vfio-pci"))
    kw = _kw(kernel, tmp_path)
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeoutError, match="rolled back") as ei:
        binding.bind("00:04.0", group=True, **kw)
    assert time.monotonic() - t0 < 5
    assert "0000:00:04.0 on virtio-pci" in str(ei.value)
    assert "0000:00:04.1 on snd_hda_intel" in str(ei.value)
    fns = {fn.bdf: fn for fn in pci.devices(kernel.fake.sysfs_root, kernel.fake.dev_root)}
    assert fns["0000:00:04.0"].driver == "virtio-pci"
    assert fns["0000:00:04.1"].driver == "snd_hda_intel"
    assert fns["0000:00:04.0"].driver_override is None
    assert fns["0000:00:04.1"].driver_override is None


def test_execute_refused_plan_writes_nothing(kernel: FakeKernel, tmp_path: Path) -> None:
    with pytest.raises(GroupNotViableError):
        binding.bind("00:04.0", **_kw(kernel, tmp_path))
    assert kernel.log == []
    assert not (tmp_path / "state").exists()


def test_execute_forbidden_before_state_record(tmp_path: Path) -> None:
    """Real guard, FAKE tree: a real bind attempt fails before the state record or any write."""
    f = fake_machine(tmp_path)
    before = (f.fn_dir("0000:00:03.0") / "driver_override").read_text()
    with pytest.raises(SysfsWritesForbiddenError):
        binding.bind("00:03.0", sysfs_root=f.sysfs_root, dev_root=f.dev_root,
                     state_directory=str(tmp_path / "state"))
    assert not (tmp_path / "state").exists()
    assert (f.fn_dir("0000:00:03.0") / "driver_override").read_text() == before


def test_bound_to_restores(kernel: FakeKernel, tmp_path: Path) -> None:
    kw = _kw(kernel, tmp_path)
    with binding.bound_to("00:03.0", **kw) as fn:
        assert fn.driver == "vfio-pci"
    after = pci.read_function("00:03.0", kernel.fake.sysfs_root)
    assert after.driver is None and after.driver_override is None


def test_planner_never_imports_the_write_function() -> None:
    """Structure: only `apply` may reach sysfs_write/modprobe (dry runs stop at the planner)."""
    import inspect

    from warpdrive.binding import blockuse, holders, netuse, plan

    for mod in (planner, plan, holders, netuse, blockuse):
        src = inspect.getsource(mod)
        assert "sysfs_write" not in src and "modprobe(" not in src, mod.__name__


def _fake_nic(tmp_path: Path) -> FakeSysfs:
    f = fake_machine(tmp_path)
    f.add_function("0000:00:08.0", 0x1AF4, 0x1041, 0x020000, driver="virtio-pci", group=8)
    f.add_child("0000:00:08.0", "virtio3/net/wdfake9", "net")
    return f


def test_netlink_failure_refuses(tmp_path: Path, monkeypatch) -> None:
    """FAKE NIC, netlink query made to fail: the check refuses (cannot prove it unused)."""
    f = _fake_nic(tmp_path)

    def boom(ifname: str) -> None:
        raise OSError(errno.EACCES, "denied")

    monkeypatch.setattr(netuse, "interface_use", boom)
    (r,) = plan_for(f, "00:08.0").refusals
    assert r.name == "network" and r.overridable and "wdfake9" in r.detail


def test_force_is_loud_and_only_lifts_network(tmp_path: Path, monkeypatch, capsys) -> None:
    """FAKE NIC reported in use (fake netlink answer): without --force the CLI refuses; with it,
    a WARNING naming the interface goes to stderr before any write (here the guard stops it)."""
    from warpdrive.cli import main

    f = _fake_nic(tmp_path)
    use = netuse.InterfaceUse("wdfake9", 9, True, "UP", ("198.51.100.7/24",),
                              ("default via 198.51.100.1",), True)
    monkeypatch.setattr(netuse, "interface_use", lambda ifname: use)
    roots = ["--sysfs-root", f.sysfs_root, "--dev-root", f.dev_root]
    assert main(["bind", "00:08.0", *roots]) == 3
    err = capsys.readouterr().err
    assert "wdfake9 is up" in err and "default via 198.51.100.1" in err and "WARNING" not in err
    assert main(["bind", "00:08.0", "--force", *roots]) == 3  # the write guard, not the check
    err = capsys.readouterr().err
    assert "WARNING: --force overrides a safety check" in err and "wdfake9" in err
    assert FORBID_ENV in err
    assert pci.read_function("00:08.0", f.sysfs_root).driver == "virtio-pci"
