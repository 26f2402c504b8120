"""`warpdrive compress|decompress` as a gzip user meets it (issue 11, "CLI conventions"), in
separate processes on the bundled model. gzip(1) itself is the witness where it can be: the
same inputs through both, same exit codes, `gzip -l` output, each reading the other's files.
"""

from __future__ import annotations

import gzip
import os
import pty
import random
import select
import shutil
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import warpdrive.zip as wz
from tests.ziputil import ROOT, cli, cli_argv, cli_env, sample

GZIP = shutil.which("gzip")
needs_gzip = pytest.mark.skipif(GZIP is None, reason="the gzip command is not installed")


def gz(*args: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    assert GZIP is not None
    return subprocess.run([GZIP, *args], cwd=cwd, input=stdin, capture_output=True)


def header(blob: bytes) -> tuple[int, int, bytes]:
    """(flags, mtime, name) of a gzip member header; flags without FEXTRA (our members carry
    their size there: `member_size`)."""
    flags, mtime = blob[3], struct.unpack("<I", blob[4:8])[0]
    pos = 12 + struct.unpack("<H", blob[10:12])[0] if flags & 0x04 else 10
    name = blob[pos:blob.index(b"\x00", pos)] if flags & 0x08 else b""
    return flags & ~0x04, mtime, name


def member_size(blob: bytes) -> tuple[int, int] | None:
    """(header length, the size the WZ subfield states) of a member header, if it has one."""
    if not blob[3] & 0x04:
        return None
    xlen = struct.unpack("<H", blob[10:12])[0]
    si, n, size = struct.unpack("<2sHL", blob[12:20])
    assert (si, n, xlen) == (b"WZ", 4, 8)
    pos = 12 + xlen
    if blob[3] & 0x08:
        pos = blob.index(b"\x00", pos) + 1
    return pos, size


@needs_gzip
def test_in_place_keeps_the_input_and_gzip_reads_the_result(tmp_path: Path) -> None:
    data = sample(3 << 20)  # several jobs
    (tmp_path / "a.txt").write_bytes(data)
    os.chmod(tmp_path / "a.txt", 0o600)
    os.utime(tmp_path / "a.txt", (1_600_000_000, 1_500_000_000))
    r = cli("compress", "-v", "a.txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert "created a.txt.gz, a.txt kept" in r.stderr.decode()  # kept, and says so
    assert (tmp_path / "a.txt").read_bytes() == data
    out = tmp_path / "a.txt.gz"
    st = out.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime == 1_500_000_000  # attributes kept
    assert header(out.read_bytes()) == (0x08, 1_500_000_000, b"a.txt")  # name + mtime stored
    assert gz("-dc", "a.txt.gz", cwd=tmp_path).stdout == data
    assert gz("-t", "a.txt.gz", cwd=tmp_path).returncode == 0
    # decompress in place: gzip's output name, the same attributes; --rm is gzip's default
    (tmp_path / "a.txt").unlink()
    r = cli("decompress", "--rm", "a.txt.gz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "a.txt").read_bytes() == data and not out.exists()
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o600


@needs_gzip
def test_gzip_output_and_multi_member_files_decompress_with_ours(tmp_path: Path) -> None:
    data = sample(300_000, seed=2)
    f = tmp_path / "named.txt"
    f.write_bytes(data)
    gz("-k", "-9", "named.txt", cwd=tmp_path)  # stores the name (FNAME)
    blob = (tmp_path / "named.txt.gz").read_bytes()
    (tmp_path / "multi.gz").write_bytes(blob + gzip.compress(b"second member\n"))
    r = cli("decompress", "-c", "multi.gz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == data + b"second member\n"
    # several files with -c: concatenated members, which gzip reads as one stream
    r = cli("compress", "-c", "named.txt", "named.txt", cwd=tmp_path)
    assert gz("-dc", cwd=tmp_path, stdin=r.stdout).stdout == data + data


def test_stdin_stdout_formats_and_levels(tmp_path: Path) -> None:
    data = sample(100_000, seed=3)
    for fmt, wbits in (("gzip", 31), ("zlib", 15), ("deflate", -15)):
        r = cli("compress", "--format", fmt, "-q", stdin=data)  # no FILE: stdin -> stdout
        assert r.returncode == 0 and r.stderr == b"", r.stderr  # -q: not even the model note
        assert zlib.decompress(r.stdout, wbits) == data
        r2 = cli("decompress", "-", "--format", fmt, "-q", stdin=r.stdout)
        assert r2.returncode == 0 and r2.stdout == data
    for flag, xfl in (("-1", 4), ("--fast", 4), ("-6", 0), ("-9", 2), ("--best", 2)):
        r = cli("compress", flag, "-q", "-", stdin=data)
        assert r.returncode == 0 and r.stdout[8] == xfl and gzip.decompress(r.stdout) == data
    r = cli("compress", "--help")
    assert b"one compression level" in r.stdout.replace(b"\n", b" ")
    assert b"kept unless --rm" in r.stdout.replace(b"\n", b" ")
    r = cli("compress", "-z")  # usage errors exit 1, as gzip's (2 is a warning)
    assert r.returncode == 1


@needs_gzip
def test_list_matches_gzip_l(tmp_path: Path) -> None:
    for name, data in (("a.txt", sample(50_000)), ("b.bin", os.urandom(20_000))):
        (tmp_path / name).write_bytes(data)
        os.utime(tmp_path / name, (1_700_000_000, 1_700_000_000))
        assert cli("compress", "-q", name, cwd=tmp_path).returncode == 0
    for flags in (["-l"], ["-lv"]):
        ours = cli("compress", *flags, "a.txt.gz", "b.bin.gz", cwd=tmp_path)
        theirs = gz(*flags, "a.txt.gz", "b.bin.gz", cwd=tmp_path)
        assert ours.returncode == 0
        assert ours.stdout.decode() == theirs.stdout.decode()


def test_list_without_a_trailer_to_read_decompresses_and_counts(tmp_path: Path) -> None:
    """-l where the sizes cannot come from the trailer (standard input, a zlib file): the
    input is decompressed and counted, its first bytes (read to look at it) included."""
    data = sample(300_000, seed=12)
    blob = gzip.compress(data, 6, mtime=0)
    r = cli("decompress", "-q", "-l", "-", stdin=blob)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.split()[4:6] == [str(len(blob)).encode(), str(len(data)).encode()]
    (tmp_path / "a.zz").write_bytes(zlib.compress(data))
    r = cli("decompress", "-q", "-l", "--format", "zlib", "a.zz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.split()[4:6] == [str(len(zlib.compress(data))).encode(),
                                     str(len(data)).encode()]


def test_test_option_and_errors_name_the_file(tmp_path: Path) -> None:
    blob = gzip.compress(sample(200_000, seed=4))
    (tmp_path / "good.gz").write_bytes(blob)
    (tmp_path / "t.gz").write_bytes(blob[:len(blob) // 2])
    bad = bytearray(blob)
    bad[-6] ^= 1  # the CRC
    (tmp_path / "crc.gz").write_bytes(bad)
    (tmp_path / "junk.gz").write_bytes(b"this is not gzip at all")
    r = cli("decompress", "-t", "-v", "good.gz", cwd=tmp_path)
    assert r.returncode == 0 and "good.gz:" in r.stderr.decode() and "OK" in r.stderr.decode()
    for name, words in (("t.gz", "unexpected end of file"),
                        ("crc.gz", "invalid compressed data--crc error"),
                        ("junk.gz", "not in gzip format")):
        r = cli("decompress", "-q", name, cwd=tmp_path)
        err = r.stderr.decode()
        assert r.returncode == 1 and f"{name}: {words}" in err, err
        assert "Error -" not in err and "Traceback" not in err  # gzip's words, not zlib's
        assert not (tmp_path / name[:-3]).exists()
        assert cli("decompress", "-t", "-q", name, cwd=tmp_path).returncode == 1


@needs_gzip
def test_exit_codes_and_warnings_as_gzip(tmp_path: Path) -> None:
    """The same situations through gzip and through ours: same exit status."""
    member = gzip.compress(b"hello\n")
    cases = {
        "garbage.gz": member + b"garbage\n",  # 2: decompression OK, trailing garbage ignored
        "zeros.gz": member + bytes(100),  # 0: zero padding is fine
        "notgz.gz": b"not gzip\n",  # 1
        "plain": member,  # 2: unknown suffix -- ignored
    }
    for name, blob in cases.items():
        for who in ("ours", "gzip"):
            d = tmp_path / who
            d.mkdir(exist_ok=True)
            (d / name).write_bytes(blob)
            r = cli("decompress", "-q", name, cwd=d) if who == "ours" else \
                gz("-d", "-k", "-q", name, cwd=d)  # -k: gzip would delete its input
            if who == "ours":
                ours = r.returncode
            else:
                assert ours == r.returncode, (name, ours, r.returncode)
        assert sorted(os.listdir(tmp_path / "ours")) == sorted(os.listdir(tmp_path / "gzip"))
    # output exists: a warning (2), not overwritten; -f overwrites
    (tmp_path / "x").write_bytes(b"x")
    (tmp_path / "x.gz").write_bytes(b"exists")
    r = cli("compress", "x", cwd=tmp_path)
    assert r.returncode == 2 and b"not overwritten" in r.stderr
    assert (tmp_path / "x.gz").read_bytes() == b"exists"
    assert cli("compress", "-f", "-q", "x", cwd=tmp_path).returncode == 0
    assert gzip.decompress((tmp_path / "x.gz").read_bytes()) == b"x"
    r = cli("compress", "x.gz", cwd=tmp_path)  # already has the suffix
    assert r.returncode == 2 and b"already has .gz suffix" in r.stderr
    r = cli("compress", "missing", "x", "-f", "-q", cwd=tmp_path)  # an error, the rest done
    assert r.returncode == 1 and b"missing" in r.stderr


def test_suffix_rules_name_and_time_restored(tmp_path: Path) -> None:
    data = sample(10_000)
    (tmp_path / "t.tgz").write_bytes(gzip.compress(data))
    (tmp_path / "u.txt-gz").write_bytes(gzip.compress(data))
    (tmp_path / "v.foo").write_bytes(gzip.compress(data))
    r = cli("decompress", "-q", "t.tgz", "u.txt-gz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "t.tar").read_bytes() == data and (tmp_path / "u.txt").read_bytes() == data
    assert cli("decompress", "-q", "-S", ".foo", "v.foo", cwd=tmp_path).returncode == 0
    assert (tmp_path / "v").read_bytes() == data
    assert cli("compress", "-q", "-S", ".z9", "v", cwd=tmp_path).returncode == 0
    assert gzip.decompress((tmp_path / "v.z9").read_bytes()) == data
    # -n: no name, no time; -N on decompress: the stored name and time come back
    (tmp_path / "orig.txt").write_bytes(data)
    os.utime(tmp_path / "orig.txt", (1_400_000_000, 1_400_000_000))
    assert header(cli("compress", "-q", "-n", "-c", "orig.txt", cwd=tmp_path).stdout) == \
        (0, 0, b"")  # (FEXTRA only: the member's size)
    assert cli("compress", "-q", "orig.txt", cwd=tmp_path).returncode == 0
    os.rename(tmp_path / "orig.txt.gz", tmp_path / "renamed.gz")
    (tmp_path / "orig.txt").unlink()
    assert cli("decompress", "-q", "-N", "renamed.gz", cwd=tmp_path).returncode == 0
    restored = tmp_path / "orig.txt"
    assert restored.read_bytes() == data and restored.stat().st_mtime == 1_400_000_000
    # gzip -d NAME finds NAME.gz
    (tmp_path / "w.gz").write_bytes(gzip.compress(data))
    assert cli("decompress", "-q", "w", cwd=tmp_path).returncode == 0
    assert (tmp_path / "w").read_bytes() == data


def test_recursive(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    files = {tree / "a": sample(1000), tree / "sub" / "b": sample(5000, 2),
             tree / "sub" / "deeper" / "c": b""}
    for p, data in files.items():
        p.write_bytes(data)
    r = cli("compress", "-r", "-q", str(tree))
    assert r.returncode == 0, r.stderr
    for p, data in files.items():
        assert gzip.decompress(Path(str(p) + ".gz").read_bytes()) == data
        p.unlink()
    r = cli("decompress", "-r", "-q", str(tree))
    assert r.returncode == 0, r.stderr
    for p, data in files.items():
        assert p.read_bytes() == data


def _run_on_pty(args: list[str], cwd: Path, *, stdout_tty: bool) -> tuple[int, bytes]:
    """Run with stderr (and stdout if asked) on a pseudo terminal: (status, what it showed).
    The progress line is asked for at once: on an idle machine the run ends within the default
    one-second delay, and the line would never appear."""
    master, slave = pty.openpty()
    env = dict(cli_env(), WARPDRIVE_PROGRESS_AFTER="0")
    proc = subprocess.Popen(cli_argv(*args), cwd=cwd, env=env, stderr=slave,
                            stdout=slave if stdout_tty else subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    os.close(slave)
    tty = b""
    while select.select([master], [], [], 120)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer closed
            break
        if not chunk:
            break
        tty += chunk
    os.close(master)
    return proc.wait(60), tty


def test_terminal_rules_and_progress_line(tmp_path: Path) -> None:
    data = sample(4 << 20)  # several read chunks: updates (the line is asked for at once)
    (tmp_path / "big").write_bytes(data)
    # compressed data is not written to a terminal without -f
    code, tty = _run_on_pty(["compress", "-c", "big"], tmp_path, stdout_tty=True)
    assert code == 1 and b"not written to a terminal" in tty
    # a progress line on a terminal: bytes, total, rate, ETA (at least one redraw)
    code, tty = _run_on_pty(["compress", "big"], tmp_path, stdout_tty=False)
    assert code == 0, tty
    assert b"compress big: " in tty and b"of 4.2 MB" in tty and b"MB/s" in tty \
        and b"ETA " in tty, tty
    assert gzip.decompress((tmp_path / "big.gz").read_bytes()) == data
    # and none when stderr is not a terminal
    r = cli("compress", "-f", "big", cwd=tmp_path)
    assert b"ETA" not in r.stderr and b"\r" not in r.stderr


def test_version_verbose_quiet_and_pass_through(tmp_path: Path) -> None:
    for args in (["--version"], ["compress", "--version"], ["decompress", "-V"]):
        r = cli(*args)
        assert r.returncode == 0 and b"warpdrive 0." in r.stdout + r.stderr, args
    r = cli("compress", "-", stdin=b"x")
    assert b"using the bundled device model" in r.stderr  # the note, by default
    r = cli("compress", "-v", "-", stdin=b"x")
    assert b"engine emu:zip" in r.stderr
    # zcat -f: what is not compressed passes through unchanged
    r = cli("decompress", "-c", "-f", "-q", "-", stdin=b"plain text\n")
    assert r.returncode == 0 and r.stdout == b"plain text\n"


def test_library_logger(caplog: pytest.LogCaptureFixture) -> None:
    """The library speaks through the "warpdrive.zip" logger, so applications can route it:
    the bundled-model note is a warning, work routed to the CPU an info."""
    import warpdrive.zip.engines as engines

    engines._announced = False
    with caplog.at_level("INFO", logger="warpdrive.zip"):
        eng = wz.open_engine()  # no hardware here: the bundled model, said once
        eng.close()
        wz.compress(b"abc", 0)  # level 0: stored, on the CPU
    msgs = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "warpdrive.zip"]
    assert ("WARNING", wz.EMU_NOTE) in msgs
    assert any(level == "INFO" and "CPU" in m for level, m in msgs)


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


def test_compress_writes_independent_members_of_a_read_chunk(tmp_path: Path) -> None:
    """gzip compression goes out as members of MEMBER (2 MiB) of input each, several on the
    engine at once (bgzip's layout): one gzip file to every reader, the name and time in the
    first."""
    from warpdrive.cli.zip import MEMBER

    data = sample(5 * MEMBER + 123, seed=5)
    (tmp_path / "big.txt").write_bytes(data)
    assert cli("compress", "-q", "big.txt", cwd=tmp_path).returncode == 0
    blob = (tmp_path / "big.txt.gz").read_bytes()
    assert gzip.decompress(blob) == data
    members, rest = [], blob
    while rest:
        d = zlib.decompressobj(31)
        members.append(d.decompress(rest))
        assert d.eof
        if not members[1:]:
            assert header(rest)[2] == b"big.txt"
        # each member states the bytes after its header (cut apart without inflating)
        stated = member_size(rest)
        assert stated is not None and sum(stated) == len(rest) - len(d.unused_data)
        rest = d.unused_data
    assert [len(m) for m in members] == [MEMBER] * 5 + [123]
    r = cli("decompress", "-c", "big.txt.gz", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == data


def _sized(members: list[bytes]) -> list[tuple[bytes, int, int]]:
    """(member, header length, stated size) of each member of our compression's output."""
    out = []
    for m in members:
        stated = member_size(m)
        assert stated is not None
        out.append((m, *stated))
    return out


def _restate(member: bytes, size: int) -> bytes:
    return member[:16] + struct.pack("<L", size) + member[20:]


def test_sized_members_decompress_at_once_and_a_wrong_size_costs_no_byte(tmp_path: Path) -> None:
    """Members that state their size go to the engine several at once; a stated size that is
    wrong (too small, too large, past the end), a member without one, a corrupt member or
    garbage after them all end as the stream path ends them: the same bytes, or the same
    message and status."""
    from warpdrive.cli.zip import MEMBER

    data = sample(3 * MEMBER + 77, seed=8)
    r = cli("compress", "-c", "-q", stdin=data)
    assert r.returncode == 0
    blob = r.stdout
    parts, rest = [], blob
    while rest:
        d = zlib.decompressobj(31)
        d.decompress(rest)
        parts.append(rest[:len(rest) - len(d.unused_data)])
        rest = d.unused_data
    sized = _sized(parts)
    assert len(sized) == 4 and all(h + n == len(m) for m, h, n in sized)
    plain = gzip.compress(b"no size stated\n")
    cases = {
        "good": (blob, data, 0),
        "small": (parts[0] + _restate(parts[1], sized[1][2] - 9) + b"".join(parts[2:]), data, 0),
        "large": (parts[0] + _restate(parts[1], sized[1][2] + 9) + b"".join(parts[2:]), data, 0),
        "past_end": (b"".join(parts[:3]) + _restate(parts[3], sized[3][2] + 100), data, 0),
        "mixed": (blob + plain + blob, data + b"no size stated\n" + data, 0),
        "zeros": (blob + bytes(1000), data, 0),
        "garbage": (blob + b"garbage\n", data, 2),
    }
    for name, (content, want, status) in cases.items():
        (tmp_path / f"{name}.gz").write_bytes(content)
        r = cli("decompress", "-c", "-q", f"{name}.gz", cwd=tmp_path)
        assert (r.returncode, r.stdout == want) == (status, True), (name, r.stderr)
    bad = bytearray(blob)
    bad[len(parts[0]) + len(parts[1]) - 6] ^= 1  # the second member's CRC
    (tmp_path / "crc.gz").write_bytes(bad)
    (tmp_path / "cut.gz").write_bytes(blob[:-5])
    for name, words in (("crc.gz", "invalid compressed data--crc error"),
                        ("cut.gz", "unexpected end of file")):
        r = cli("decompress", "-q", name, cwd=tmp_path)
        err = r.stderr.decode()
        assert r.returncode == 1 and f"{name}: {words}" in err, err
        assert not (tmp_path / name[:-3]).exists()
        assert cli("decompress", "-t", "-q", name, cwd=tmp_path).returncode == 1
    assert cli("decompress", "-t", "-q", "good.gz", cwd=tmp_path).returncode == 0


def test_a_one_member_file_decompresses_as_a_pipe_of_jobs(tmp_path: Path) -> None:
    """A file as gzip(1) makes it (one member, no member sizes), of several jobs' worth
    (`Inflater.pipe`: 1 MiB of input per job): its data on stdout, a second member and
    trailing garbage as gzip says; a wrong CRC after all of its data, as gzip -dc writes it."""
    rng = random.Random(3)
    data = b"".join(rng.randbytes(300_000) if i % 3 == 0 else sample(400_000, seed=i)
                    if i % 3 == 1 else bytes(500_000) for i in range(18))
    blob = gzip.compress(data, 6, mtime=0)
    assert len(blob) > 2 << 20  # (three jobs at least)
    (tmp_path / "one.gz").write_bytes(blob)
    r = cli("decompress", "-c", "-q", "one.gz", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == data
    (tmp_path / "two.gz").write_bytes(blob + gzip.compress(b"second\n") + b"junk")
    r = cli("decompress", "-c", "two.gz", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == data + b"second\n"
    assert "trailing garbage ignored" in r.stderr.decode()
    bad = bytearray(blob)
    bad[-6] ^= 1
    (tmp_path / "crc.gz").write_bytes(bad)
    r = cli("decompress", "-c", "-q", "crc.gz", cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == data
    assert "crc.gz: invalid compressed data--crc error" in r.stderr.decode()
