"""`warpdrive compress|decompress` and `examples/compress_files.py` as a user runs them (separate
processes, the bundled model since this machine has no ZIP hardware), and interoperability with
the `gzip` command in both directions."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import warpdrive.zip as wz
from tests.ziputil import ROOT, cli, sample

GZIP = shutil.which("gzip")
needs_gzip = pytest.mark.skipif(GZIP is None, reason="the gzip command is not installed")


@needs_gzip
def test_cli_compress_then_gzip_d(tmp_path: Path) -> None:
    data = sample(9 << 20)  # more than one job: stream mode, and a progress bar when asked
    (tmp_path / "a.txt").write_bytes(data)
    r = cli("compress", "a.txt", "--progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    err = r.stderr.decode()
    assert "using the bundled device model" in err  # no hardware: says so
    assert "compressed 9437184 ->" in err and "MB/s" in err and "ratio" in err
    assert "%" in err  # the progress bar
    out = subprocess.run([GZIP, "-dc", str(tmp_path / "a.txt.gz")], capture_output=True,
                         check=True).stdout
    assert out == data


@needs_gzip
def test_gzip_output_decompresses_with_ours(tmp_path: Path) -> None:
    data = sample(300_000, seed=2)
    f = tmp_path / "named.txt"
    f.write_bytes(data)
    subprocess.run([GZIP, "-k", "-9", str(f)], check=True)  # stores the name (FNAME)
    blob = (tmp_path / "named.txt.gz").read_bytes()
    assert blob[3] & 0x08  # FNAME set
    assert wz.decompress(blob, wbits=31) == data
    # a multi-member file, as `cat a.gz b.gz` makes
    (tmp_path / "multi.gz").write_bytes(blob + gzip.compress(b"second member\n"))
    r = cli("decompress", "multi.gz", "-o", "-", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == data + b"second member\n"


@needs_gzip
def test_library_gzip_output_with_gzip_t(tmp_path: Path) -> None:
    for size in (0, 1, 4096, 1 << 20):
        data = sample(size, seed=size)
        p = tmp_path / f"x{size}.gz"
        p.write_bytes(wz.compress(data, wbits=31))
        subprocess.run([GZIP, "-t", str(p)], check=True)
        assert subprocess.run([GZIP, "-dc", str(p)], capture_output=True,
                              check=True).stdout == data


def test_cli_formats_stdin_stdout_and_refusals(tmp_path: Path) -> None:
    data = sample(100_000, seed=3)
    for fmt, wbits in (("zlib", 15), ("deflate", -15)):
        r = cli("compress", "-", "-o", "-", "--format", fmt, "-q", stdin=data)
        assert r.returncode == 0 and r.stderr.decode().count("\n") <= 1  # only the emu note
        assert zlib.decompress(r.stdout, wbits) == data
        r2 = cli("decompress", "-", "-o", "-", "--format", fmt, "-q", stdin=r.stdout)
        assert r2.returncode == 0 and r2.stdout == data
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "a.gz").write_bytes(b"exists")
    r = cli("compress", "a", cwd=tmp_path)
    assert r.returncode != 0 and b"already exists" in r.stderr
    assert (tmp_path / "a.gz").read_bytes() == b"exists"


def test_cli_truncated_input_fails_and_leaves_nothing(tmp_path: Path) -> None:
    blob = gzip.compress(sample(200_000, seed=4))
    (tmp_path / "t.gz").write_bytes(blob[:len(blob) // 2])
    r = cli("decompress", "t.gz", cwd=tmp_path)
    assert r.returncode == 1
    assert b"truncated" in r.stderr and b"Traceback" not in r.stderr
    assert not (tmp_path / "t").exists()
    (tmp_path / "junk.gz").write_bytes(b"this is not gzip at all")
    r = cli("decompress", "junk.gz", cwd=tmp_path)
    assert r.returncode == 1 and b"header" in r.stderr


def test_example_compress_files(tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    for i in range(40):
        (src / f"f{i}.txt").write_bytes(sample(1000 * (i + 1), seed=i))
    (src / "sub" / "empty").write_bytes(b"")
    (src / "sub" / "big.bin").write_bytes(sample(8 << 20, seed=99))  # stream mode
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "compress_files.py"), str(src),
                        "--out", str(tmp_path / "out"), "--batch", "8"],
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
    assert b"42 files" in r.stdout and b"0 failed verification" in r.stdout
    assert gzip.decompress((tmp_path / "out" / "sub" / "big.bin.gz").read_bytes()) == \
        (src / "sub" / "big.bin").read_bytes()
