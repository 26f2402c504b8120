"""Host tests of the virtio-crypto driver's pure parts: argument checks and the wire layout.

No device is involved: these checks run before anything is sent (the lab tests prove the same
checks keep a real device working)."""

from __future__ import annotations

import ctypes

import pytest

from warpdrive.crypto import Cipher
from warpdrive.devices.crypto import engine
from warpdrive.devices.crypto.algorithms import ALGORITHMS, advertised, lookup
from warpdrive.errors import InvalidArgumentError, WarpdriveError
from warpdrive.uapi import virtio as U


def test_known_algorithms() -> None:
    assert set(ALGORITHMS) == {"aes-cbc", "aes-ecb", "aes-ctr", "aes-xts"}
    assert lookup("AES-CBC").virtio_algo == U.VIRTIO_CRYPTO_CIPHER_AES_CBC


def test_unknown_algorithm_is_refused_before_any_device_is_needed() -> None:
    with pytest.raises(InvalidArgumentError, match="unknown cipher algorithm 'aes-gcm'"):
        Cipher("aes-gcm", bytes(16), device=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name,good,bad", [
    ("aes-cbc", (16, 24, 32), (0, 8, 15, 31, 64)),
    ("aes-ecb", (16, 24, 32), (17, 48)),
    ("aes-ctr", (16, 24, 32), (20,)),
    ("aes-xts", (32, 64), (16, 24, 48)),
])
def test_key_sizes(name: str, good: tuple[int, ...], bad: tuple[int, ...]) -> None:
    alg = lookup(name)
    for n in good:
        alg.check_key(bytes(range(n)))
    for n in bad:
        with pytest.raises(InvalidArgumentError, match=f"{name} takes a"):
            alg.check_key(bytes(range(n)))


def test_wrong_key_size_is_refused_before_any_device_is_needed() -> None:
    with pytest.raises(InvalidArgumentError, match="16/24/32-byte key, got 10 bytes"):
        Cipher("aes-cbc", bytes(10), device=None)  # type: ignore[arg-type]


def test_xts_key_halves_must_differ() -> None:
    with pytest.raises(InvalidArgumentError, match="halves"):
        lookup("aes-xts").check_key(bytes(32))


def test_iv_rules() -> None:
    assert lookup("aes-ecb").check_iv(None) == b""
    assert lookup("aes-ecb").check_iv(bytes(16)) == b""  # ECB ignores the IV: iv_len stays 0
    assert lookup("aes-cbc").check_iv(bytes(16)) == bytes(16)
    for name in ("aes-cbc", "aes-ctr", "aes-xts"):
        with pytest.raises(InvalidArgumentError, match="16-byte IV, got none"):
            lookup(name).check_iv(None)
        with pytest.raises(InvalidArgumentError, match="16-byte IV, got 12 bytes"):
            lookup(name).check_iv(bytes(12))


def test_data_rules() -> None:
    for name in ALGORITHMS:  # QEMU refuses partial blocks in every mode, CTR and XTS included
        alg = lookup(name)
        alg.check_data(16)
        alg.check_data(1 << 20)  # longer than a request: split (or, XTS, sent alone)
        with pytest.raises(InvalidArgumentError, match="empty"):
            alg.check_data(0)
        with pytest.raises(InvalidArgumentError, match="multiple of the 16-byte block"):
            alg.check_data(17)


def test_errors_are_warpdrive_errors_and_value_errors() -> None:
    with pytest.raises(WarpdriveError):
        lookup("rot13")
    with pytest.raises(ValueError):
        lookup("rot13")


def test_advertised_bits() -> None:
    assert advertised(1 << U.VIRTIO_CRYPTO_CIPHER_AES_CBC, 0) == ["aes-cbc"]  # QEMU builtin
    everything = sum(1 << a.virtio_algo for a in ALGORITHMS.values())
    assert sorted(advertised(everything, 0)) == sorted(ALGORITHMS)
    assert advertised(0, 0) == []


def test_request_layout_matches_what_qemu_parses() -> None:
    # QEMU (no REVISION_1) reads exactly 72 bytes of each request header.
    assert engine.REQ_LEN == 72
    assert engine.CTRL_LEN == 72
    assert engine._PARA_OFF == 24  # iv_len, src_data_len, dst_data_len
    assert engine._OP_TYPE_OFF == 64  # u.sym_req.op_type
    assert ctypes.sizeof(U.virtio_crypto_session_input) == 16
    req = U.virtio_crypto_op_ctrl_req()
    req.u.sym_create_session.op_type = 1
    req.u.sym_create_session.u.cipher.para.keylen = 32
    raw = bytes(req)
    assert raw[64:68] == (1).to_bytes(4, "little")
    assert raw[20:24] == (32).to_bytes(4, "little")
