"""virtio-crypto plugin: sessions on the control queue, ciphers on a data queue of request slots.

The public API is `warpdrive.crypto` (Cipher, algorithms); this package is the driver under it.
"""

from .algorithms import ALGORITHMS, CipherAlgorithm, lookup
from .engine import CryptoConfig, VirtioCrypto

__all__ = ["ALGORITHMS", "CipherAlgorithm", "CryptoConfig", "VirtioCrypto", "lookup"]
