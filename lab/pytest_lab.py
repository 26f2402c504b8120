"""pytest plugin: `lab`-marked tests run inside one lab guest boot per kernel per session.

Every lab test is parametrized by lab kernel (`lab_kernel`: 6.12 and 7.3, or those named in
$WARPDRIVE_LAB_KERNELS, e.g. "6.12"). On the host, the selected lab items are collected as usual;
as the run starts, one guest per kernel boots in the background (side by side; one after the
other with -s, whose consoles are streamed) while host tests run, each running pytest on exactly
its kernel's node ids and writing each test report (the same serialization pytest-xdist uses) as
a JSON line into its results share. Every host lab item then passes, fails or
skips by name with the guest's report: traceback, captured output and duration included. If the
lab cannot run (no QEMU, kernel build failure, boot timeout), every lab item fails with the reason.
`WARPDRIVE_LAB=skip` skips them instead, loudly, for developers without the lab.

A lab test marked `@pytest.mark.lab_boot("virtio_crypto")` runs in a boot of its own per kernel
(after that kernel's main boot): Linux's virtio_crypto not blacklisted and QEMU's virtio-crypto
left out (lab/vm.py qemu_command), for the witness of the virtio-crypto model.

In the guest (WARPDRIVE_IN_LAB=1) non-lab items are deselected and lab items run normally.

Fixtures (all fail outside the guest, except lab_kernel_headers/lab_kernel_dir):
    iommu_mode          "vfio" (legacy group + container) or "iommufd" (cdev + /dev/iommu);
                        a test taking it runs once per mode, node ids end in [vfio] / [iommufd]
    edu_bdf             BDF of QEMU's edu device (1234:11e8), found in the guest's sysfs
    crypto_bdf          BDF of the virtio-crypto function (1af4:1054)
    nic_bdf, nic_ifname the guest's virtio-net function and its interface (up, default route)
    zip_bdf             the ZIP model (19e5:a251/a250) served on the host over vfio-user and
                        attached with QEMU's vfio-user-pci (one fixture per lab/emu.py device)
    lab_kernel          the lab kernel version a lab test runs on ("6.12", "7.3"): every lab test
                        runs once per kernel, node ids end in [...-k6.12] / [...-k7.3]
    lab_kernel_dir      the lab kernel's cache dir (bzImage, config, release, headers/, modules/)
    lab_kernel_headers  the lab kernel's installed uAPI headers (…/headers/include)
    kernel_modules      loads the lab kernel's modules (modprobe -d <kernel dir>/modules)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pytest import TestReport

from lab.emu import EMU_DEVICES, EmuDevice

IN_LAB = os.environ.get("WARPDRIVE_IN_LAB") == "1"
IOMMU_MODES = ("vfio", "iommufd")
IOMMU_MODE_NODES = {"vfio": "/dev/vfio/vfio", "iommufd": "/dev/iommu"}
PCI_DEVICES = Path("/sys/bus/pci/devices")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("warpdrive-lab", "warpdrive lab guest")
    g.addoption("--lab-report", metavar="PATH",
                help="(in the guest) append each test report to PATH as a JSON line")
    g.addoption("--lab-timeout", type=float, metavar="S",
                default=float(os.environ.get("WARPDRIVE_LAB_TIMEOUT", "1800")),
                help="seconds for the whole guest run (default 1800, or $WARPDRIVE_LAB_TIMEOUT)")
    g.addoption("--lab-keep-log", action="store_true",
                help="keep the guest's results dir (console.log, dmesg, report) and print it")


# Boots other than the default one a lab test may ask for (lab_boot marker): run_in_lab options.
LAB_BOOTS: dict[str, dict[str, Any]] = {"virtio_crypto": {"virtio_crypto": True}}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab_boot(name): run this lab test in its own guest boot "
                            f"per kernel, one of {sorted(LAB_BOOTS)} (lab/pytest_lab.py)")
    plugin: _GuestSide | _HostSide = _GuestSide(config) if IN_LAB else _HostSide(config)
    config.pluginmanager.register(plugin, "warpdrive-lab-side")


def lab_kernels() -> list[str]:
    """The kernels lab tests run on: all of lab/versions.env, or $WARPDRIVE_LAB_KERNELS."""
    from lab import kernel

    try:
        return kernel.selected_versions()
    except kernel.KernelBuildError as e:
        raise pytest.UsageError(str(e)) from None


# Lab tests whose subject is user space, not the kernel: a driver's data path on a device already
# open, the CLI and examples, the broker, README examples. They run on one lab kernel only, which
# keeps a warm `make test` within its budget; every test of a kernel interface (binding,
# VFIO/iommufd ioctls, the IOMMU modes, DMA faults, interrupts, modules, uAPI, opening each device
# and one real job per plugin through each backend) runs on every kernel. Node-id prefixes, each
# with the kernel it runs on: the two kernels' guests run side by side, so the split keeps them
# about equally long (7.3 also has the longer witness boot); a kernel that is not selected
# ($WARPDRIVE_LAB_KERNELS) hands its tests to the first selected one.
ONE_KERNEL: dict[str, str] = {
    "tests/lab/test_lab_broker.py::": "6.12",
    "tests/lab/test_lab_readme.py::": "6.12",
    "tests/lab/test_lab_zip_driver.py::test_zip_round_trips_on_the_v3_function": "6.12",
    "tests/lab/test_lab_zip_driver.py::test_gzip_reads_ours_and_we_read_gzips": "6.12",
    "tests/lab/test_lab_zip_driver.py::test_cli_and_example_on_the_function": "7.3",
    **{f"tests/lab/test_lab_crypto.py::{name}": "6.12" for name in (
        "test_random_cases_match_cryptography",
        "test_batch_many_in_flight_one_doorbell_each", "test_results_into_caller_buffers",
        "test_two_ciphers_share_the_queue", "test_sessions_per_direction_and_cleanup",
        "test_bad_input_is_refused_and_the_device_keeps_working", "test_closed_cipher",
        "test_unadvertised_algorithms", "test_zero_copy_requests_through_the_iommu")},
    # a request split over several ring slots: the driver's own bookkeeping
    "tests/lab/test_lab_crypto.py::test_requests_longer_than_a_slot": "7.3",
}


def one_kernel(nodeid: str, kernels: list[str]) -> str | None:
    """The one kernel of `kernels` a test function (node id without parameters) in ONE_KERNEL
    runs on; None if it runs on all of them."""
    for prefix, version in ONE_KERNEL.items():
        if nodeid.startswith(prefix) if prefix.endswith("::") else nodeid == prefix:
            return version if version in kernels else kernels[0]
    return None


@pytest.hookimpl(trylast=True)  # after the fixtures' own params: ids read "[iommufd-k7.3]"
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every lab test runs once per lab kernel (one guest boot per kernel runs them all), except
    the user-space ones of ONE_KERNEL (on the kernel named there)."""
    if metafunc.definition.get_closest_marker("lab") is None:
        return
    kernels = lab_kernels()
    only = one_kernel(metafunc.definition.nodeid, kernels)
    if only is not None:
        kernels = [only]
    metafunc.parametrize("lab_kernel", kernels, ids=lambda v: f"k{v}")


@pytest.fixture(autouse=True)
def lab_kernel() -> str | None:
    """The lab kernel version ("6.12", "7.3") a lab test runs on; None for host tests."""
    return None


# ---------------------------------------------------------------------------------------- guest


class _GuestSide:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        path = config.getoption("lab_report")
        self.report = open(path, "a", buffering=1) if path else None  # noqa: SIM115

    def _write(self, kind: str, report: Any) -> None:
        if self.report is None:
            return
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        self.report.write(json.dumps({"kind": kind, "data": data}) + "\n")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        # Here: lab items of the kernel this guest booted (the host sends exactly those; a
        # hand-started `lab/run.py --pytest` collects every kernel's variants).
        running = os.environ.get("WARPDRIVE_LAB_KERNEL_VERSION", "")
        keep = [i for i in items if i.get_closest_marker("lab") is not None
                and (not running or item_kernel(i) == running)]
        if len(keep) != len(items):
            drop = [i for i in items if i not in keep]
            items[:] = keep
            config.hook.pytest_deselected(items=drop)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        # Linux 6.12 corrupts memory when a virtio_crypto function leaves the driver while the
        # self-test of its cbc(aes) still runs (lab/virtio_crypto.py). A test that puts QEMU's
        # virtio-crypto back on virtio-pci starts such a self-test, so each test starts only
        # once the kernel has settled (a no-op when nothing was rebound). In a boot without
        # Linux's virtio_crypto (blacklisted: the default boot) nothing can register cbc(aes),
        # so /proc/crypto is not read and parsed before every test (tens of ms under TCG).
        from lab import virtio_crypto

        if virtio_crypto.VIRTIO_CRYPTO_DRIVER.is_dir():
            virtio_crypto.wait_settled(timeout=300)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self._write("collect", report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._write("test", report)

    def pytest_sessionfinish(self, exitstatus: int) -> None:
        if self.report is not None:
            self.report.write(json.dumps({"kind": "finish", "exitstatus": int(exitstatus)}) + "\n")
            self.report.close()
            self.report = None

    def pytest_report_header(self) -> str:
        return (f"warpdrive lab guest: kernel {os.uname().release} "
                f"(lab kernel {os.environ.get('WARPDRIVE_LAB_KERNEL_VERSION', '?')})")


# ----------------------------------------------------------------------------------------- host


def item_kernel(item: pytest.Item) -> str:
    """The lab kernel a lab item runs on: its `lab_kernel` parameter, or the first lab kernel for
    an item marked lab only through one of its parameters (pytest.param(..., marks=lab)), which
    pytest_generate_tests cannot see."""
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    return str(params["lab_kernel"]) if "lab_kernel" in params else lab_kernels()[0]


def item_boot(item: pytest.Item) -> str:
    """The boot a lab item asks for with its lab_boot marker ("" = the default boot)."""
    marker = item.get_closest_marker("lab_boot")
    if marker is None:
        return ""
    name = str(marker.args[0]) if marker.args else ""
    if name not in LAB_BOOTS:
        raise pytest.UsageError(f"{item.nodeid}: lab_boot({name!r}) is not one of "
                                f"{sorted(LAB_BOOTS)} (lab/pytest_lab.py LAB_BOOTS)")
    return name


class _GuestRun:
    """One guest boot on one kernel, running that kernel's lab items; in a thread of its own."""

    def __init__(self, side: _HostSide, version: str, nodeids: list[str],
                 boot: str = "") -> None:
        self.side = side
        self.version = version
        self.boot = boot
        self.name = f"{version} ({boot} boot)" if boot else version
        self.nodeids = nodeids
        self.failure: str | None = None  # why the guest produced no (or partial) results
        self.reports: dict[str, list[TestReport]] = {}
        self.collect_errors: list[str] = []
        self.summary: list[str] = []
        self.results: Path | None = None
        self.keep_log = False
        self.thread = threading.Thread(target=self._run, name=f"lab-guest-{version}", daemon=True)

    def _run(self) -> None:
        try:
            self._boot_and_collect()
        except Exception as e:  # a bug here must fail this kernel's items, not hang the session
            self.failure = f"the lab plugin failed: {e!r}"

    def _boot_and_collect(self) -> None:
        from lab import vm  # host only: the guest never boots a guest

        side, config = self.side, self.side.config
        try:
            results = vm.new_results_dir()
        except vm.LabError as e:
            self.failure = f"cannot run the lab: {e}"
            return
        self.results = results
        report = results / "pytest-report.jsonl"
        # No lab test uses hypothesis; its pytest plugin imports it at start, seconds in TCG.
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                "-p", "no:hypothesispytest", "--color=no",
                f"--lab-report={report}", f"--rootdir={config.rootpath}",
                f"--tb={config.getoption('tbstyle')}"]
        argv += ["-v"] * max(config.getoption("verbose"), 0)
        if config.getoption("showlocals"):
            argv.append("-l")
        argv += self.nodeids

        def run() -> vm.LabResult:
            return vm.run_in_lab(argv, results, cwd=config.rootpath,
                                 timeout=config.getoption("lab_timeout"),
                                 output=sys.stdout.buffer if side.stream else None,
                                 boot_output=None, kernel_version=self.version,
                                 cancel=side.cancel, **LAB_BOOTS.get(self.boot, {}))

        try:
            res = run()
            if res.boot_seconds is None and not res.timed_out and not side.cancel.is_set():
                # The guest died before pytest started (a TCG boot flake, not a test result):
                # boot once more rather than fail the whole session's lab tests.
                os.replace(results / "console.log", results / "console.failed-boot.log")
                self.summary.append(f"first boot failed ({res.error}); retried once, see "
                                    f"{results}/console.failed-boot.log")
                self.keep_log = True
                side.say(f"warpdrive lab: the {self.name} guest failed to boot; retrying once")
                res = run()
        except vm.LabError as e:
            self.failure = f"cannot run the lab: {e}"
            side.say(f"warpdrive lab: {self.failure}")
            shutil.rmtree(results, ignore_errors=True)  # no guest ran: nothing to keep
            self.results = None
            return
        boot = "n/a" if res.boot_seconds is None else f"{res.boot_seconds:.1f} s"
        self.summary.append(f"guest: boot-to-command {boot}, total {res.total_seconds:.1f} s")
        self._read_reports(report, res)

    def _read_reports(self, report: Path, res: Any) -> None:
        config = self.side.config
        finished = False
        try:
            lines = report.read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by a guest crash
            if rec["kind"] == "finish":
                finished = True
                continue
            rep = config.hook.pytest_report_from_serializable(config=config, data=rec["data"])
            if isinstance(rep.longrepr, list):  # a skip's (path, line, reason), listified by JSON
                rep.longrepr = tuple(rep.longrepr)
            if rec["kind"] == "collect":
                self.collect_errors.append(f"{rep.nodeid}:\n{rep.longreprtext}")
            else:
                self.reports.setdefault(rep.nodeid, []).append(rep)
        if res.error is not None or not finished:
            why = res.error or f"the guest's pytest exited {res.returncode} before finishing"
            self.failure = f"{why}\n\nguest console (last lines):\n{res.console_tail()}"
        if res.server_problems:
            self.summary.append("device model servers (vfio-user, host side) complained:")
            self.summary += [f"  {ln}" for ln in res.server_problems]
            self.keep_log = True
        if res.kernel_problems:
            self.summary.append("guest kernel messages (dmesg: warnings, BUGs, IOMMU faults; "
                                "expected only where a test provokes them):")
            self.summary += [f"  {ln}" for ln in res.kernel_problems]


class _HostSide:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.lab_items: list[pytest.Item] = []
        self.runs: dict[tuple[str, str], _GuestRun] = {}  # by (kernel, boot), once started
        self.cancel = threading.Event()
        self.stream = config.getoption("capture") == "no"
        self.started = False

    @property
    def skip(self) -> bool:
        return os.environ.get("WARPDRIVE_LAB", "").lower() == "skip"

    @pytest.hookimpl(trylast=True)  # after -k/-m deselection: boot only for what will run
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.lab_items = [i for i in items if i.get_closest_marker("lab") is not None]
        if self.lab_items and not self.skip:
            # Host tests first: they run while the guests boot and run, and the lab items, whose
            # reports only need replaying, come last.
            lab = set(map(id, self.lab_items))
            items[:] = [i for i in items if id(i) not in lab] + self.lab_items

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        """Boot one guest per kernel as the run starts, in the background, so host tests run
        meanwhile; the kernels' guests boot side by side unless the console is streamed (-s)."""
        if self.skip or not self.lab_items or session.config.option.collectonly:
            return
        by_boot: dict[tuple[str, str], list[str]] = {}
        for item in self.lab_items:
            by_boot.setdefault((item_kernel(item), item_boot(item)), []).append(item.nodeid)
        self.runs = {k: _GuestRun(self, k[0], ids, boot=k[1])  # a kernel's default boot first
                     for k, ids in sorted(by_boot.items(), key=lambda kv: kv[0][1])}
        self.started = True
        self.say(f"\nwarpdrive lab: running {len(self.lab_items)} lab test(s), one QEMU guest "
                 f"boot per kernel and boot ({', '.join(r.name for r in self.runs.values())})"
                 f"{' (guest consoles below)' if self.stream else ''} ...")
        # A kernel's boots run in turn (one guest per kernel at a time); every boot in turn
        # with -s, so the consoles do not interleave.
        chains: dict[str, list[_GuestRun]] = {}
        for r in self.runs.values():
            chains.setdefault("all" if self.stream else r.version, []).append(r)
        for chain in chains.values():
            first, *rest = chain
            if rest:
                def in_turn(chain: list[_GuestRun] = chain) -> None:
                    for r in chain:
                        r._run()

                first.thread = threading.Thread(target=in_turn, name=f"lab-guests-{first.name}",
                                                daemon=True)
                for r in rest:
                    r.thread = first.thread
            first.thread.start()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item,
                                nextitem: pytest.Item | None) -> bool | None:
        if item.get_closest_marker("lab") is None:
            return None
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        reps = self._reports_for(item)
        # The host ran no setup for this item, but the host item before it left its module/class
        # set up (nextitem was this one): tear down what nextitem does not share, as
        # runtestprotocol would, and report a failure there as this item's teardown.
        call = pytest.CallInfo.from_call(
            lambda: item.session._setupstate.teardown_exact(nextitem), "teardown")
        if call.excinfo is not None:
            reps = [r for r in reps if r.when != "teardown"]
            reps.append(pytest.TestReport.from_item_and_call(item, call))
        for rep in reps:
            item.ihook.pytest_runtest_logreport(report=rep)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def _reports_for(self, item: pytest.Item) -> list[TestReport]:
        if self.skip:
            path, line, _ = item.location
            reason = "WARPDRIVE_LAB=skip: lab test NOT run (unset it to run it in the QEMU guest)"
            return [_report(item, "setup", "skipped", (path, (line or 0) + 1, reason)),
                    _report(item, "teardown", "passed")]
        run = self.runs.get((item_kernel(item), item_boot(item)))
        if run is None:
            return [_report(item, "setup", "passed"),
                    _report(item, "call", "failed", "lab: no guest was started for this test"),
                    _report(item, "teardown", "passed")]
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            run.thread.join()
        reps = run.reports.get(item.nodeid, [])
        if not reps or reps[-1].when != "teardown":
            run.keep_log = True  # a test without its full result: its guest's logs are the evidence
        if not reps:
            why = run.failure or "the guest's pytest did not run this test (not collected there?)"
            text = f"lab: this test did not run in the {run.name} guest: {why}"
            if run.collect_errors:
                text += "\n\nguest collection errors:\n" + "\n".join(run.collect_errors)
            return [_report(item, "setup", "passed"), _report(item, "call", "failed", text),
                    _report(item, "teardown", "passed")]
        if reps[-1].when != "teardown":  # the guest died inside this test
            why = run.failure or "the guest stopped before this test finished"
            reps = [*reps, _report(item, "teardown", "failed", f"lab: {why}")]
        return reps

    def say(self, msg: str) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(msg)
        else:
            print(msg, file=sys.stderr)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.skip and self.lab_items:
            terminalreporter.write_sep("=", "warpdrive lab", yellow=True)
            terminalreporter.write_line(f"WARPDRIVE_LAB=skip: {len(self.lab_items)} lab test(s) "
                                        "were NOT run")
            return
        if not self.started:
            return
        terminalreporter.write_sep("-", "warpdrive lab")
        for run in self.runs.values():
            terminalreporter.write_line(f"kernel {run.name}:")
            for line in run.summary:
                terminalreporter.write_line(f"  {line}")
            if run.failure:
                terminalreporter.write_line(f"  lab failure: {run.failure.splitlines()[0]}")

    def pytest_unconfigure(self) -> None:
        # A session that ends early (-x, Ctrl-C) must not leave a guest running.
        self.cancel.set()
        for run in self.runs.values():
            run.thread.join(60)
            if run.results is None:
                continue
            if run.failure or run.keep_log or self.config.getoption("lab_keep_log"):
                print(f"warpdrive lab: {run.name} guest logs kept in {run.results}",
                      file=sys.stderr)
            else:
                shutil.rmtree(run.results, ignore_errors=True)


def _report(item: pytest.Item, when: Literal["setup", "call", "teardown"],
            outcome: Literal["passed", "failed", "skipped"], longrepr: Any = None) -> TestReport:
    return TestReport(item.nodeid, item.location, dict.fromkeys(item.keywords, 1), outcome,
                      longrepr, when)


# ------------------------------------------------------------------------------------- fixtures


def _require_lab(name: str) -> None:
    if not IN_LAB:
        pytest.fail(f"fixture {name!r} only exists inside the lab guest: mark the test "
                    "@pytest.mark.lab so it runs there", pytrace=False)


def find_pci(vendor: int, *devices: int) -> list[str]:
    """BDFs of the PCI functions with this vendor and one of these device ids, sorted."""
    found = []
    for dev in sorted(PCI_DEVICES.iterdir()):
        try:
            v = int((dev / "vendor").read_text(), 16)
            d = int((dev / "device").read_text(), 16)
        except (OSError, ValueError):
            continue
        if v == vendor and d in devices:
            found.append(dev.name)
    return found


def _one_pci(name: str, vendor: int, *devices: int) -> str:
    _require_lab(name)
    emu_slots = {d.bdf for d in EMU_DEVICES}  # a model of the same ids is not QEMU's device
    found = [b for b in find_pci(vendor, *devices) if b not in emu_slots]
    if not found:
        ids = "/".join(f"{vendor:04x}:{d:04x}" for d in devices)
        pytest.fail(f"no PCI function {ids} in the lab guest (is it on lab/vm.py's QEMU line?)",
                    pytrace=False)
    return found[0]


@pytest.fixture(params=IOMMU_MODES)
def iommu_mode(request: pytest.FixtureRequest) -> str:
    """"vfio" (legacy group/container, type1v2) or "iommufd" (VFIO cdev bound to /dev/iommu)."""
    _require_lab("iommu_mode")
    mode: str = request.param
    node = IOMMU_MODE_NODES[mode]
    if not os.path.exists(node):
        pytest.fail(f"{node} is missing in the lab guest, so {mode} mode cannot be tested; "
                    "check lab/kernel.config", pytrace=False)
    return mode


@pytest.fixture(scope="session")
def edu_bdf() -> str:
    return _one_pci("edu_bdf", 0x1234, 0x11E8)


@pytest.fixture(scope="session")
def crypto_bdf() -> str:
    return _one_pci("crypto_bdf", 0x1AF4, 0x1054)


@pytest.fixture(scope="session")
def nic_bdf() -> str:
    return _one_pci("nic_bdf", 0x1AF4, 0x1041, 0x1000)  # modern or transitional virtio-net


def _emu_fixture(device: EmuDevice) -> Any:
    """`<name>_bdf` for a device model the lab serves over vfio-user (lab/emu.py EMU_DEVICES):
    at its fixed slot, with its ids checked."""

    @pytest.fixture(scope="session", name=f"{device.name}_bdf")
    def fixture() -> str:
        _require_lab(f"{device.name}_bdf")
        path = PCI_DEVICES / device.bdf
        try:
            ids = (int((path / "vendor").read_text(), 16), int((path / "device").read_text(), 16))
        except (OSError, ValueError):
            pytest.fail(f"no PCI function at {device.bdf} in the lab guest: the {device.model} "
                        "model over vfio-user is missing (see emu-*.log in the results)",
                        pytrace=False)
        if ids[0] != device.vendor or ids[1] not in device.devices:
            pytest.fail(f"{device.bdf} is {ids[0]:04x}:{ids[1]:04x}, not the {device.model} model",
                        pytrace=False)
        return device.bdf

    fixture.__doc__ = f"BDF of the {device.model} model served over vfio-user"
    return fixture


for _device in EMU_DEVICES:
    if f"{_device.name}_bdf" in globals():
        raise RuntimeError(f"lab/emu.py: device name {_device.name!r} clashes with a fixture")
    globals()[f"{_device.name}_bdf"] = _emu_fixture(_device)


@pytest.fixture(scope="session")
def nic_ifname(nic_bdf: str) -> str:
    names = sorted(p.name for p in (PCI_DEVICES / nic_bdf).glob("virtio*/net/*"))
    if not names:
        pytest.fail(f"{nic_bdf} has no network interface (not bound to virtio-pci/virtio_net?)",
                    pytrace=False)
    return names[0]


@pytest.fixture(scope="session")
def lab_kernel_dir() -> Path:
    """In the guest: the kernel it booted. On the host: built (or reused) on demand."""
    env = os.environ.get("WARPDRIVE_LAB_KERNEL")
    if env:
        return Path(env)
    from lab import kernel

    try:
        return kernel.ensure_kernel()
    except kernel.KernelBuildError as e:
        pytest.fail(f"cannot build the lab kernel: {e}", pytrace=False)


@pytest.fixture(scope="session")
def lab_kernel_headers(lab_kernel_dir: Path) -> Path:
    return lab_kernel_dir / "headers" / "include"


class KernelModules:
    """The booted lab kernel's loadable modules (installed in its cache dir, not in /lib/modules:
    the guest's root is the host's). Unloads at the end what it loaded."""

    def __init__(self, kernel_dir: Path) -> None:
        self.root = kernel_dir / "modules"
        self.loaded: list[str] = []

    def _modprobe(self, *args: str) -> None:
        proc = subprocess.run(["modprobe", "-d", str(self.root), *args], capture_output=True,
                              text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"modprobe {' '.join(args)} failed (exit {proc.returncode}): "
                               f"{proc.stderr.strip()}")

    def load(self, name: str, *params: str) -> None:
        """modprobe `name` (and what it needs) with module parameters `params` ("k=v")."""
        self._modprobe(name, *params)
        self.loaded.append(name)

    def unload(self, name: str) -> None:
        """modprobe -r: `name`, then the modules only it needed."""
        self._modprobe("-r", name)
        if name in self.loaded:
            self.loaded.remove(name)

    @staticmethod
    def present() -> set[str]:
        return {line.split()[0] for line in Path("/proc/modules").read_text().splitlines()}

    def close(self) -> None:
        for name in reversed(self.loaded):
            if name.replace("-", "_") in self.present():
                self.unload(name)


@pytest.fixture
def kernel_modules(lab_kernel_dir: Path) -> Iterator[KernelModules]:
    """Load the lab kernel's modules (hisi_zip, ...) in a test; unloaded again afterwards."""
    _require_lab("kernel_modules")
    mods = KernelModules(lab_kernel_dir)
    yield mods
    mods.close()

