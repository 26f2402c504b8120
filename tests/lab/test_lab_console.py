"""lab.vm's console demultiplexer: pure byte handling, no guest involved."""

from __future__ import annotations

import io

import pytest

from lab.vm import BEGIN, _Demux

STREAM = b"boot noise\n" + BEGIN + b"hello\npartial" + b"@@warpdrive-lab:end 3@@\n" + b"poweroff"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_markers_split_across_reads(size: int) -> None:
    out, boot = io.BytesIO(), io.BytesIO()
    d = _Demux(out, boot)
    for i in range(0, len(STREAM), size):
        d.feed(STREAM[i:i + size])
    assert out.getvalue() == b"hello\npartial"
    assert boot.getvalue() == b"boot noise\npoweroff"
    assert d.console_rc == 3
    assert d.begin_t is not None and d.end_t is not None


def test_marker_lookalike_in_output_is_passed_through() -> None:
    out = io.BytesIO()
    d = _Demux(out, None)
    d.feed(BEGIN + b"@@warpdrive-lab:en")
    d.feed(b"dless story\n")
    assert out.getvalue() == b"@@warpdrive-lab:endless story\n"
    assert d.console_rc is None


def test_no_begin_marker_means_no_command_output() -> None:
    out = io.BytesIO()
    d = _Demux(out, None)
    d.feed(b"Kernel panic - not syncing: Attempted to kill init!\n")
    assert out.getvalue() == b""
    assert d.begin_t is None


def test_marker_prefix_with_garbage_does_not_stall_output() -> None:
    out = io.BytesIO()
    d = _Demux(out, None)
    d.feed(BEGIN + b"@@warpdrive-lab:end of story\n")
    assert out.getvalue() == b"@@warpdrive-lab:end of story\n"
