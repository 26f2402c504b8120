"""Cipher algorithms this driver knows, and the checks a request must pass before it is sent.

The limits are QEMU's, read in its source (QEMU 10.0: `backends/cryptodev-builtin.c`,
`crypto/cipher-nettle.c.inc`, `crypto/cipher-gnutls.c.inc`, `crypto/cipher.c`):
  * AES-ECB/CBC/CTR take 16/24/32-byte keys; AES-XTS takes 32 or 64 (two AES-128/256 keys).
  * Every mode, CTR and XTS included, refuses a length that is not a multiple of the 16-byte
    block (`qcrypto_length_check` in the nettle backend, and the gnutls backend likewise).
  * ECB has no IV: the nettle backend fails `setiv`, and the gnutls backend would call
    `gnutls_cipher_set_iv` on a NULL handle, so an ECB request must carry `iv_len = 0`.
  * CBC/CTR/XTS IVs must be exactly one block (`Expected IV size 16`).
  * QEMU's builtin backend advertises only AES-CBC in `cipher_algo_l`, but creates sessions for
    ECB, CTR and XTS as well.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ArgumentTypeError, InvalidArgumentError
from ...uapi import virtio as U

AES_BLOCK = 16


@dataclass(frozen=True)
class CipherAlgorithm:
    name: str
    virtio_algo: int  # VIRTIO_CRYPTO_CIPHER_*; also its bit number in cipher_algo_l/h
    key_sizes: tuple[int, ...]
    iv_size: int  # 0: the mode takes no IV (the request carries iv_len = 0)
    block: int = AES_BLOCK
    # CTR decrypts by encrypting: one session serves both directions.
    symmetric: bool = False

    def check_key(self, key: bytes) -> None:
        if len(key) not in self.key_sizes:
            sizes = "/".join(str(s) for s in self.key_sizes)
            raise InvalidArgumentError(
                f"{self.name} takes a {sizes}-byte key, got {len(key)} bytes")
        if self.name == "aes-xts":
            half = len(key) // 2
            if key[:half] == key[half:]:
                # IEEE 1619 / the kernel's xts_verify_key: equal halves void XTS's security.
                raise InvalidArgumentError(
                    "aes-xts key halves (data key and tweak key) must differ")

    def check_iv(self, iv: bytes | None) -> bytes:
        """The IV bytes to send (b"" for ECB, whatever was passed)."""
        if self.iv_size == 0:
            return b""
        if iv is not None and not isinstance(iv, bytes | bytearray | memoryview):
            raise ArgumentTypeError(f"{self.name} IV must be bytes, not {type(iv).__name__}")
        if iv is None or len(iv) != self.iv_size:
            got = "none" if iv is None else f"{len(iv)} bytes"
            raise InvalidArgumentError(
                f"{self.name} takes a {self.iv_size}-byte IV, got {got}")
        return bytes(iv)

    def check_data(self, n: int) -> None:
        if n <= 0:
            raise InvalidArgumentError(f"{self.name}: nothing to do for empty data" if n == 0
                                       else f"{self.name}: length {n} is negative")
        if n % self.block:
            raise InvalidArgumentError(
                f"{self.name} data must be a multiple of the {self.block}-byte block, "
                f"got {n} bytes", hint="pad the data (e.g. PKCS#7) before encrypting")


ALGORITHMS: dict[str, CipherAlgorithm] = {
    a.name: a for a in (
        CipherAlgorithm("aes-ecb", U.VIRTIO_CRYPTO_CIPHER_AES_ECB, (16, 24, 32), 0),
        CipherAlgorithm("aes-cbc", U.VIRTIO_CRYPTO_CIPHER_AES_CBC, (16, 24, 32), 16),
        CipherAlgorithm("aes-ctr", U.VIRTIO_CRYPTO_CIPHER_AES_CTR, (16, 24, 32), 16,
                        symmetric=True),
        CipherAlgorithm("aes-xts", U.VIRTIO_CRYPTO_CIPHER_AES_XTS, (32, 64), 16),
    )
}


def lookup(name: str) -> CipherAlgorithm:
    try:
        return ALGORITHMS[name.lower()]
    except (KeyError, AttributeError):
        raise InvalidArgumentError(
            f"unknown cipher algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}"
        ) from None


def advertised(cipher_algo_l: int, cipher_algo_h: int) -> list[str]:
    """Names of the known algorithms whose bit the device sets in cipher_algo_l/h."""
    mask = cipher_algo_l | (cipher_algo_h << 32)
    return [a.name for a in ALGORITHMS.values() if mask >> a.virtio_algo & 1]
