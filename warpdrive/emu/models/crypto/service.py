"""The virtio-crypto CIPHER service as pure logic: sessions, and AES in ECB/CBC/CTR/XTS.

No rings, no DMA: `CryptoService` takes parsed requests and answers with a virtio-crypto status
(§5.9.7.1), so it is tested on its own. The arithmetic is the `cryptography` package's, an
optional extra of warpdrive (`pip install 'warpdrive[emu-crypto]'`): the runtime never needs it.

Sessions (§5.9.7.2.1): one algorithm, key and direction each; ids are never reused while the
model runs, so a driver that uses a destroyed id gets INVSESS instead of someone else's key.
Without VIRTIO_CRYPTO_F_REVISION_1 there is no NOSPC (§5.9.7.2.1 device requirements), so a full
table answers ERR, as QEMU's builtin backend does at its 256-session limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ....errors import UnsupportedError
from . import layout as L

EXTRA_HINT = "install the extra: pip install 'warpdrive[emu-crypto]'"


def load_cryptography() -> Any:
    """The `cryptography` cipher primitives, or UnsupportedError naming the extra."""
    try:
        from cryptography.hazmat.primitives import ciphers
    except ImportError as e:
        raise UnsupportedError(
            f"the virtio-crypto device model needs the `cryptography` package ({e})",
            hint=EXTRA_HINT) from None
    return ciphers


@dataclass(frozen=True)
class Mode:
    name: str
    key_sizes: tuple[int, ...]
    iv_size: int  # 0: no IV (any iv_len is read and ignored)

    def check_length(self, n: int) -> bool:
        if self.name in ("aes-ecb", "aes-cbc"):
            return n % 16 == 0
        if self.name == "aes-xts":
            return n >= 16  # one data unit; ciphertext stealing covers a partial last block
        return True  # CTR is a stream


MODES = {
    L.CIPHER_AES_ECB: Mode("aes-ecb", (16, 24, 32), 0),
    L.CIPHER_AES_CBC: Mode("aes-cbc", (16, 24, 32), 16),
    L.CIPHER_AES_CTR: Mode("aes-ctr", (16, 24, 32), 16),
    L.CIPHER_AES_XTS: Mode("aes-xts", (32, 64), 16),  # two AES-128 or AES-256 keys
}


class RequestError(Exception):
    """A request the device answers with `status` (and a line for the log)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass
class Session:
    algo: int
    key: bytes
    encrypt: bool
    aes: Any  # cryptography's AES(key)


class CryptoService:
    def __init__(self, *, algorithms: frozenset[int], max_sessions: int = 256,
                 max_key_len: int = 64, max_size: int = 1 << 24) -> None:
        self._ciphers = load_cryptography()
        self.algorithms = algorithms
        self.max_sessions = max_sessions
        self.max_key_len = max_key_len
        self.max_size = max_size
        self.sessions: dict[int, Session] = {}
        self._next_id = 0
        self.created = self.destroyed = self.requests = 0

    def clear(self) -> None:
        self.sessions.clear()

    # -- control queue ------------------------------------------------------------------------
    def create(self, algo: int, key: bytes, op: int) -> int:
        """A new session's id; RequestError(NOTSUPP/ERR) if it cannot be made."""
        mode = MODES.get(algo)
        if mode is None or algo not in self.algorithms:
            raise RequestError(L.NOTSUPP, f"cipher algorithm {algo} is not offered")
        if op not in (L.OP_ENCRYPT, L.OP_DECRYPT):
            raise RequestError(L.ERR, f"session op {op} is neither encrypt (1) nor decrypt (2)")
        if len(key) > self.max_key_len or len(key) not in mode.key_sizes:
            raise RequestError(L.ERR, f"{mode.name} takes a {'/'.join(map(str, mode.key_sizes))}"
                               f"-byte key, not {len(key)}")
        if mode.name == "aes-xts" and key[:len(key) // 2] == key[len(key) // 2:]:
            raise RequestError(L.ERR, "aes-xts key halves are equal (IEEE 1619 forbids it)")
        if len(self.sessions) >= self.max_sessions:
            raise RequestError(L.ERR, f"all {self.max_sessions} sessions are in use")
        try:
            aes = self._ciphers.algorithms.AES(key)  # XTS: both keys, 256 or 512 bits
        except ValueError as e:
            raise RequestError(L.ERR, f"key refused: {e}") from None
        sid = self._next_id
        self._next_id += 1
        self.sessions[sid] = Session(algo, bytes(key), op == L.OP_ENCRYPT, aes)
        self.created += 1
        return sid

    def destroy(self, sid: int) -> None:
        if self.sessions.pop(sid, None) is None:
            raise RequestError(L.ERR, f"session {sid} does not exist")
        self.destroyed += 1

    # -- data queue ---------------------------------------------------------------------------
    def cipher(self, opcode: int, sid: int, iv: bytes, src: bytes) -> bytes:
        """Encrypt or decrypt `src` in session `sid`; RequestError with the status otherwise."""
        s = self.sessions.get(sid)
        if s is None:
            raise RequestError(L.INVSESS, f"session {sid} does not exist")
        encrypt = opcode == L.CIPHER_ENCRYPT
        if encrypt != s.encrypt:
            # The session was created for one direction (cipher_session_flf.op); a request
            # for the other contradicts it.
            raise RequestError(L.ERR, f"{'encrypt' if encrypt else 'decrypt'} request on a "
                               f"{'encrypt' if s.encrypt else 'decrypt'} session {sid}")
        mode = MODES[s.algo]
        if not mode.check_length(len(src)):
            raise RequestError(L.ERR, f"{mode.name} cannot process {len(src)} bytes")
        if mode.iv_size and len(iv) != mode.iv_size:
            raise RequestError(L.ERR, f"{mode.name} needs a {mode.iv_size}-byte IV, got "
                               f"{len(iv)}")
        m = self._ciphers.modes
        mode_obj = {"aes-ecb": lambda: m.ECB(), "aes-cbc": lambda: m.CBC(iv),
                    "aes-ctr": lambda: m.CTR(iv), "aes-xts": lambda: m.XTS(iv)}[mode.name]()
        c = self._ciphers.Cipher(s.aes, mode_obj)
        ctx = c.encryptor() if encrypt else c.decryptor()
        self.requests += 1
        try:
            return bytes(ctx.update(src) + ctx.finalize())
        except ValueError as e:
            raise RequestError(L.ERR, f"{mode.name}: {e}") from None
