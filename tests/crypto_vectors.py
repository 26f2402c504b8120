"""Known-answer vectors for AES modes, and `cryptography` as the reference for everything else.

NIST SP 800-38A, appendix F: the same four-block plaintext under ECB (F.1), CBC (F.2) and CTR
(F.5) with AES-128/192/256 (the decrypt vectors F.1.2, F.2.2, ... are the same data reversed).
IEEE 1619-2007 (XTS-AES), annex B: vectors 2 and 3 (32 bytes) in full; vectors 4, 5 and 10 (one
512-byte data unit) by their first 32 published ciphertext bytes, the rest against `cryptography`.
Every table entry is first checked against `cryptography`, so a typo in the table cannot pass.
"""

from __future__ import annotations

H = bytes.fromhex

PT = H("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
       "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")
K128 = H("2b7e151628aed2a6abf7158809cf4f3c")
K192 = H("8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b")
K256 = H("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
IV = H("000102030405060708090a0b0c0d0e0f")
CTR0 = H("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")

NIST = [  # (section, algorithm, key, iv, ciphertext)
    ("F.1.1", "aes-ecb", K128, None,
     "3ad77bb40d7a3660a89ecaf32466ef97f5d3d58503b9699de785895a96fdbaaf"
     "43b1cd7f598ece23881b00e3ed0306887b0c785e27e8ad3f8223207104725dd4"),
    ("F.1.3", "aes-ecb", K192, None,
     "bd334f1d6e45f25ff712a214571fa5cc974104846d0ad3ad7734ecb3ecee4eef"
     "ef7afd2270e2e60adce0ba2face6444e9a4b41ba738d6c72fb16691603c18e0e"),
    ("F.1.5", "aes-ecb", K256, None,
     "f3eed1bdb5d2a03c064b5a7e3db181f8591ccb10d410ed26dc5ba74a31362870"
     "b6ed21b99ca6f4f9f153e7b1beafed1d23304b7a39f9f3ff067d8d8f9e24ecc7"),
    ("F.2.1", "aes-cbc", K128, IV,
     "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2"
     "73bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7"),
    ("F.2.3", "aes-cbc", K192, IV,
     "4f021db243bc633d7178183a9fa071e8b4d9ada9ad7dedf4e5e738763f69145a"
     "571b242012fb7ae07fa9baac3df102e008b0e27988598881d920a9e64f5615cd"),
    ("F.2.5", "aes-cbc", K256, IV,
     "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d"
     "39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b"),
    ("F.5.1", "aes-ctr", K128, CTR0,
     "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
     "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee"),
    ("F.5.3", "aes-ctr", K192, CTR0,
     "1abc932417521ca24f2b0459fe7e6e0b090339ec0aa6faefd5ccc2c6f4ce8e94"
     "1e36b26bd1ebc670d1bd1d665620abf74f78a7f6d29809585a97daec58c6b050"),
    ("F.5.5", "aes-ctr", K256, CTR0,
     "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
     "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6"),
]


def _tweak(dusn: int) -> bytes:
    return dusn.to_bytes(16, "little")  # IEEE 1619: the data unit sequence number, little endian


_P512 = bytes(range(256)) * 2
_K4 = H("27182818284590452353602874713526" "31415926535897932384626433832795")
_K10 = H("2718281828459045235360287471352662497757247093699959574966967627"
         "3141592653589793238462643383279502884197169399375105820974944592")
XTS = [  # (vector, key = key1 || key2, tweak, plaintext, ciphertext or its first 32 bytes)
    ("2", H("11" * 16 + "22" * 16), _tweak(0x3333333333), b"\x44" * 32,
     "c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0"),
    ("3", H("fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0" + "22" * 16), _tweak(0x3333333333), b"\x44" * 32,
     "af85336b597afc1a900b2eb21ec949d292df4c047e0b21532186a5971a227a89"),
    ("4", _K4, _tweak(0), _P512,
     "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c"),
    ("10", _K10, _tweak(0xFF), _P512,
     "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b"),
]


def reference(name: str, key: bytes, iv: bytes | None, data: bytes,
              decrypt: bool = False) -> bytes:
    # Imported here: a process that needs only the vectors (the dying processes' helper in
    # tests/cryptoproc.py) does not load cryptography's native library, seconds in a TCG guest.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    mode = {"aes-ecb": lambda: modes.ECB(), "aes-cbc": lambda: modes.CBC(iv),
            "aes-ctr": lambda: modes.CTR(iv), "aes-xts": lambda: modes.XTS(iv)}[name]()
    c = Cipher(algorithms.AES(key), mode)
    ctx = c.decryptor() if decrypt else c.encryptor()
    return ctx.update(data) + ctx.finalize()


def xts_expected(key: bytes, tweak: bytes, pt: bytes, published: str) -> bytes:
    """The full ciphertext of an XTS vector, after checking the published bytes against it."""
    ct = reference("aes-xts", key, tweak, pt)
    assert ct[:len(published) // 2].hex() == published
    return ct

NIST_CT = {section: H(ct) for section, _, _, _, ct in NIST}  # e.g. NIST_CT["F.2.1"]
