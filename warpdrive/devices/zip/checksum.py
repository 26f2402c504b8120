"""Joining the checksums of consecutive pieces of data: Adler-32 and CRC-32 of `A + B` from
those of `A` and `B` and the length of `B`, as zlib's `adler32_combine` and `crc32_combine`
compute them. The engine reports each piece's checksum (pieces compressed at once as separate
jobs); the container's trailer needs the whole input's.

Adler-32 is two sums modulo 65521 (RFC 1950, section 8.2): appending B adds B's byte sum to
the first, and to the second B's own second sum plus len(B) times A's first sum (each of B's
bytes was counted once per later position, A's running sum once per byte of B), corrected for
the 1 both sums start from. CRC-32 (the gzip polynomial, RFC 1952, section 8) is linear over
GF(2): crc(A + B) is crc(A) multiplied by x^(8 len(B)) modulo the polynomial, XOR crc(B) (the
pre- and post-inversions cancel out, since both CRCs start from the same state); the power of
x is built from a table of x^(2^k) by square-and-multiply, in the reflected bit order CRC-32
is computed in (bit 31 holds x^0).
"""

from __future__ import annotations

_ADLER_BASE = 65521
_CRC_POLY = 0xEDB88320  # reflected x^32 + x^26 + ... + 1


def adler32_combine(adler_a: int, adler_b: int, len_b: int) -> int:
    a1, a2 = adler_a & 0xFFFF, adler_a >> 16
    b1, b2 = adler_b & 0xFFFF, adler_b >> 16
    s1 = (a1 + b1 - 1) % _ADLER_BASE
    s2 = (a2 + b2 + len_b * (a1 - 1)) % _ADLER_BASE
    return s2 << 16 | s1


def _mulmod(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial, both reflected."""
    prod = 0
    bit = 1 << 31  # x^0
    while a:
        if a & bit:
            prod ^= b
            a ^= bit
        bit >>= 1
        b = b >> 1 ^ _CRC_POLY if b & 1 else b >> 1  # b * x
    return prod


_X_2K: list[int] = []  # x^(2^k) mod P, k = 0..63 (made on first use: imports stay cheap)


def _powers() -> list[int]:
    if not _X_2K:
        table = [1 << 30]  # x^1
        for _ in range(63):
            table.append(_mulmod(table[-1], table[-1]))
        _X_2K[:] = table
    return _X_2K


def crc32_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    if len_b <= 0:
        return crc_a
    powers = _powers()
    shift = 1 << 31  # x^0: the product starts at 1
    n, k = len_b * 8, 0
    while n:
        if n & 1:
            shift = _mulmod(powers[k], shift)
        n >>= 1
        k += 1
    return _mulmod(shift, crc_a) ^ crc_b
