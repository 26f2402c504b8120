"""`warpdrive compress|decompress` never loses data (issue 11, "Data loss").

A failed run leaves no file under the output name and removes nothing it did not create (not a
file given with -f, not a device node or FIFO); output == input is refused (same inode, through
symlinks and hard links); SIGINT/SIGTERM/SIGHUP, a full disk and `ulimit -f` end with one line,
no partial output, the input untouched; a broken pipe ends quietly, by SIGPIPE, as gzip does.
Separate processes on the bundled model, as a user runs them."""

from __future__ import annotations

import contextlib
import gzip
import os
import resource
import signal
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from tests.ziputil import cli, cli_argv, cli_env, sample

BAD_GZ = gzip.compress(sample(300_000))[:5000] + b"\x00garbage in the middle" * 100


def leftovers(d: Path, *keep: str) -> list[str]:
    """Names in `d` other than `keep` (temporary files must never stay behind)."""
    return sorted(n for n in os.listdir(d) if n not in keep)


def one_line(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode().splitlines() if "bundled device model" not in ln]
    assert len(lines) == 1, stderr.decode()
    assert "Traceback" not in lines[0]
    return lines[0]


def test_failed_run_keeps_an_existing_output_it_was_told_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "bad.gz").write_bytes(BAD_GZ)
    (tmp_path / "precious").write_bytes(b"precious data")
    r = cli("decompress", "bad.gz", "-o", "precious", "-f", "-q", cwd=tmp_path)
    assert r.returncode == 1
    one_line(r.stderr)
    assert (tmp_path / "precious").read_bytes() == b"precious data"
    assert leftovers(tmp_path, "bad.gz", "precious") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_failed_run_never_removes_a_device_node(tmp_path: Path) -> None:
    """The issue's `decompress bad.gz -o /dev/null -f`, on our own node with /dev/null's
    numbers (never the real one)."""
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (tmp_path / "bad.gz").write_bytes(BAD_GZ)
    r = cli("decompress", "bad.gz", "-o", str(null), "-f", "-q", cwd=tmp_path)
    assert r.returncode == 1
    one_line(r.stderr)
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    # and a good run writes to it directly (no temporary file, no rename over the node)
    (tmp_path / "good.gz").write_bytes(gzip.compress(b"fine"))
    r = cli("decompress", "good.gz", "-o", str(null), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert leftovers(tmp_path, "bad.gz", "good.gz", "null") == []


def test_failed_run_never_removes_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so the writer's open() returns
    try:
        (tmp_path / "bad.gz").write_bytes(BAD_GZ)
        r = cli("decompress", "bad.gz", "-o", str(fifo), "-f", "-q", cwd=tmp_path)
        assert r.returncode == 1
        one_line(r.stderr)
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    finally:
        os.close(reader)


@pytest.mark.parametrize("how", ["same name", "symlink", "hard link", "stdout"])
@pytest.mark.parametrize("verb", ["compress", "decompress"])
def test_output_that_is_the_input_is_refused(tmp_path: Path, how: str, verb: str) -> None:
    data = gzip.compress(sample(50_000)) if verb == "decompress" else sample(50_000)
    f = tmp_path / "f"
    f.write_bytes(data)
    before = os.stat(f)
    if how == "stdout":
        with open(f, "ab") as out:
            r = cli(verb, "f", "-o", "-", "-f", "-q", cwd=tmp_path, stdout=out,
                    stderr=subprocess.PIPE)
    else:
        target = "f"
        if how == "symlink":
            (tmp_path / "link").symlink_to("f")
            target = "link"
        elif how == "hard link":
            os.link(f, tmp_path / "twin")
            target = "twin"
        r = cli(verb, "f", "-o", target, "-f", "-q", cwd=tmp_path)
    assert r.returncode == 1
    assert "is the input file" in one_line(r.stderr)
    assert f.read_bytes() == data
    assert os.stat(f).st_mtime_ns == before.st_mtime_ns
    assert leftovers(tmp_path, "f", "link", "twin") == []


def _interruptible() -> None:
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_leaves_no_partial_output(tmp_path: Path, sig: signal.Signals) -> None:
    """The input is a FIFO we feed, so the signal lands mid-run: after a first job's output was
    written (to the temporary file), while the command waits for more input."""
    fifo = tmp_path / "in"
    os.mkfifo(fifo)
    out = tmp_path / "in.gz"
    # A background job inherits SIGINT ignored, a run under nohup SIGHUP (and must keep ignoring
    # them, as gzip does); this test is about a run that can be interrupted.
    p = subprocess.Popen(cli_argv("compress", str(fifo), "-o", str(out), "-q"),
                         env=cli_env(), stderr=subprocess.PIPE, cwd=tmp_path,
                         preexec_fn=_interruptible)
    try:
        with open(fifo, "wb") as w:  # returns once the command opened its input
            w.write(sample(5 << 20))  # > one 4 MiB read: one job done, waiting for the rest
            p.send_signal(sig)
            _, err = p.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            p.kill()
        p.wait()
    assert p.returncode == -sig, err  # dies by the signal after cleaning up, as gzip does
    line = one_line(err)
    assert f"interrupted by {sig.name}" in line and "nothing was written" in line
    assert leftovers(tmp_path, "in") == []


def test_disk_full_leaves_nothing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the ulimit -f test still runs)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        src = tmp_path / "random.bin"
        src.write_bytes(os.urandom(2 << 20))  # incompressible: > 256 KiB of output
        r = cli("compress", str(src), "-o", str(mnt / "random.bin.gz"), "-q")
        assert r.returncode == 1
        line = one_line(r.stderr)
        assert "No space left on device" in line and "disk is full" in line
        assert leftovers(mnt) == []
        assert src.stat().st_size == 2 << 20
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_file_size_limit_leaves_nothing(tmp_path: Path) -> None:
    """`ulimit -f`: above the DMA buffers' size (they are memfd files, which the limit also
    caps), below the output's."""
    src = tmp_path / "random.bin"
    src.write_bytes(os.urandom(24 << 20))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))

    r = cli("compress", "random.bin", "-q", cwd=tmp_path, preexec_fn=limit)
    assert r.returncode == 1
    assert "ulimit -f" in one_line(r.stderr)
    assert leftovers(tmp_path, "random.bin") == []


def test_broken_pipe_is_a_quiet_sigpipe(tmp_path: Path) -> None:
    data = sample(12 << 20)
    (tmp_path / "big.gz").write_bytes(gzip.compress(data, 1))
    p = subprocess.Popen(cli_argv("decompress", "big.gz", "-o", "-", "-q"), env=cli_env(),
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = b""

    def read_err() -> None:
        nonlocal err
        assert p.stderr is not None
        err = p.stderr.read()

    t = threading.Thread(target=read_err)
    t.start()
    assert p.stdout is not None
    assert p.stdout.read(1000) == data[:1000]
    p.stdout.close()  # `| head -c 1000`
    p.wait(timeout=120)
    t.join()
    assert p.returncode == -signal.SIGPIPE
    assert err == b"", err.decode()
    assert leftovers(tmp_path, "big.gz") == []


def test_file_size_limit_below_the_dma_buffers_says_so(tmp_path: Path) -> None:
    """`ulimit -f` under the size of one DMA buffer (a memfd) stops the run before any
    output, with a line that names the limit."""
    (tmp_path / "small").write_bytes(sample(1000))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))

    r = cli("compress", "small", "-q", cwd=tmp_path, preexec_fn=limit)
    assert r.returncode == 1
    assert "ulimit -f" in one_line(r.stderr)
    assert leftovers(tmp_path, "small") == []
