"""Symmetric ciphers on a virtio-crypto device driven from user space.

    import warpdrive
    from warpdrive.crypto import Cipher, algorithms

    with warpdrive.open("0000:00:02.0") as dev:          # virtio-crypto on vfio-pci
        print(algorithms(dev))                           # what the device advertises
        with Cipher("aes-cbc", key, device=dev) as c:
            ct = c.encrypt(iv, data)                     # one request, waits for it
            ids = [c.submit(iv, blk) for blk in blocks]  # staged, nothing sent yet
            done = c.wait()                              # one doorbell for the batch, then poll

Algorithms: ``aes-cbc``, ``aes-ecb``, ``aes-ctr``, ``aes-xts`` (keys of 16/24/32 bytes; XTS 32 or
64). Data must be a non-empty multiple of 16 bytes in every mode (QEMU's backend refuses anything
else, CTR and XTS included) and at most the engine's request size (64 KiB by default). IVs are 16
bytes; ECB ignores the IV (pass None).

Advertised vs implemented algorithms: a device lists its ciphers in `cipher_algo_l/h`;
`algorithms(device)` returns exactly that list (QEMU's builtin backend advertises only AES-CBC).
A `Cipher` for an algorithm the device does not advertise is still *tried*: the session is
created eagerly in the constructor, and if the device answers NOTSUPP or ERR the constructor
raises `UnsupportedError` naming the algorithm and what the device does advertise — nothing else
was sent, and the device keeps working. QEMU's builtin backend in fact implements ECB, CTR and
XTS, so those work there. Pass ``strict=True`` to refuse unadvertised algorithms without asking
the device.

Sessions: QEMU's builtin sessions are per direction (the session's ``op`` decides, not the
request's opcode), so a Cipher holds an encrypt session (created up front) and a decrypt session
(created on first decrypt); CTR, which decrypts by encrypting, uses one session for both.

Every argument is checked before anything reaches the device (`InvalidArgumentError`); a closed
Cipher raises `ClosedError`. Both are `WarpdriveError`s.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import overload

from .device import Device
from .devices.crypto.algorithms import ALGORITHMS, CipherAlgorithm, lookup
from .devices.crypto.engine import VirtioCrypto, status_name
from .errors import ClosedError, DeviceError, InvalidArgumentError, UnsupportedError
from .uapi import virtio as U

__all__ = ["ALGORITHMS", "Cipher", "Completion", "VirtioCrypto", "algorithms", "engine"]


def engine(device: Device | VirtioCrypto) -> VirtioCrypto:
    """The virtio-crypto engine of `device` (started on first use, closed with the device)."""
    if isinstance(device, VirtioCrypto):
        return device
    if not isinstance(device, Device):
        raise InvalidArgumentError(
            f"device must be an open warpdrive Device (warpdrive.open(bdf)), not "
            f"{type(device).__name__}")
    return VirtioCrypto.of(device)


def algorithms(device: Device | VirtioCrypto) -> list[str]:
    """The cipher algorithms (of the ones this driver knows) the device advertises."""
    return engine(device).config.advertised_ciphers()


@dataclass(frozen=True)
class Completion:
    """The outcome of one submitted request: `id` from `submit`, `data` when `ok`."""

    id: int
    status: int
    data: bytes | bytearray | memoryview | None  # the caller's `out` buffer when one was given

    @property
    def ok(self) -> bool:
        return self.status == U.VIRTIO_CRYPTO_OK

    def result(self) -> bytes | bytearray | memoryview:
        """The output; raises DeviceError if the device failed the request."""
        if self.data is None:
            raise DeviceError(f"crypto request {self.id} failed: {status_name(self.status)}")
        return self.data


def _check_out(out: object, n: int) -> None:
    if isinstance(out, bytearray):
        size = len(out)
    elif isinstance(out, memoryview) and not out.readonly and out.contiguous:
        size = out.nbytes
    else:
        raise InvalidArgumentError(
            f"out must be a writable bytearray or memoryview, not {type(out).__name__}")
    if size < n:
        raise InvalidArgumentError(f"out holds {size} bytes; the result needs {n}")


class Cipher:
    """One algorithm and key on a virtio-crypto device; see the module docstring."""

    def __init__(self, algorithm: str, key: bytes, *, device: Device | VirtioCrypto,
                 strict: bool = False) -> None:
        self.algorithm: CipherAlgorithm = lookup(algorithm)
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError(f"key must be bytes, not {type(key).__name__}")
        key = bytes(key)
        self.algorithm.check_key(key)
        self._closed = True  # until the first session exists
        self._engine = engine(device)
        if strict and self.algorithm.name not in self._engine.config.advertised_ciphers():
            raise UnsupportedError(
                f"{self._engine.device.name} does not advertise {self.algorithm.name}",
                hint=f"it advertises {', '.join(algorithms(self._engine)) or 'nothing known'};"
                " pass strict=False to try anyway")
        self._key = key
        self._sessions: dict[bool, int] = {}  # encrypt? -> session id
        self._done: deque[Completion] = deque()
        self._results: dict[int, Completion] = {}
        self._pending: set[int] = set()
        self._next_id = 0
        self._sessions[True] = self._engine.create_session(self.algorithm, key, True)
        if self.algorithm.symmetric:
            self._sessions[False] = self._sessions[True]
        self._closed = False

    # -- properties ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.algorithm.name

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def max_request(self) -> int:
        return self._engine.max_request

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # -- requests --------------------------------------------------------------------------
    def _session(self, encrypt: bool) -> int:
        sid = self._sessions.get(encrypt)
        if sid is None:
            sid = self._sessions[encrypt] = self._engine.create_session(
                self.algorithm, self._key, encrypt)
        return sid

    def submit(self, iv: bytes | None, data: bytes | bytearray | memoryview, *,
               decrypt: bool = False, out: bytearray | memoryview | None = None) -> int:
        """Stage one request; returns its id. Nothing is sent until `poll`/`wait`/`flush`,
        which publish every staged request with a single doorbell. With `out` (a writable
        buffer of at least len(data) bytes) the result is copied there, allocating nothing;
        the caller must not touch `out` until the request completes."""
        if self._closed:
            raise ClosedError(f"{self.name} cipher is closed", hint="create a new Cipher")
        alg = self.algorithm
        ivb = alg.check_iv(iv)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError(f"data must be bytes-like, not {type(data).__name__}")
        alg.check_data(len(data), self._engine.max_request)
        if out is not None:
            _check_out(out, len(data))
            if isinstance(out, memoryview) and out.format != "B":
                out = out.cast("B")
        sid = self._session(not decrypt)
        rid = self._next_id
        self._next_id += 1
        # A session has one direction (virtio 1.2 §5.9.7.2.1); CTR decrypts by encrypting, on its
        # encrypt session, so it asks for encryption (a device may refuse the contradiction).
        backwards = decrypt and not alg.symmetric
        opcode = U.VIRTIO_CRYPTO_CIPHER_DECRYPT if backwards else U.VIRTIO_CRYPTO_CIPHER_ENCRYPT
        self._engine.submit(self, rid, opcode, alg.virtio_algo, sid, ivb, data, out)
        self._pending.add(rid)
        return rid

    def _deliver(self, tag: int, status: int,
                 data: bytes | bytearray | memoryview | None) -> None:
        self._pending.discard(tag)
        self._done.append(Completion(tag, status, data))

    def flush(self) -> None:
        """Send every staged request (one doorbell)."""
        self._engine.kick()

    def poll(self) -> list[Completion]:
        """Send staged requests, then return whatever has completed (possibly nothing)."""
        eng = self._engine
        eng.kick()
        eng.reap()
        out = list(self._done)
        self._done.clear()
        return out

    def wait(self, timeout: float | None = None) -> list[Completion]:
        """Send staged requests and wait for all of this Cipher's requests in flight."""
        self._engine.wait_until(lambda: not self._pending, timeout)
        return self.poll()

    def _run(self, iv: bytes | None, data: bytes | bytearray | memoryview, decrypt: bool,
             out: bytearray | memoryview | None) -> bytes | bytearray | memoryview:
        rid = self.submit(iv, data, decrypt=decrypt, out=out)
        eng = self._engine

        def finished() -> bool:
            return rid not in self._pending

        eng.wait_until(finished)
        # Completions of other requests stay queued for poll(); take ours out.
        for c in self._done:
            if c.id == rid:
                self._done.remove(c)
                if c.data is None:
                    raise DeviceError(
                        f"{self.name} {'decrypt' if decrypt else 'encrypt'} of {len(data)} "
                        f"bytes failed on {eng.device.name}: {status_name(c.status)}")
                return c.data
        raise AssertionError("completion vanished")  # pragma: no cover

    @overload
    def encrypt(self, iv: bytes | None, data: bytes | bytearray | memoryview) -> bytes: ...
    @overload
    def encrypt(self, iv: bytes | None, data: bytes | bytearray | memoryview,
                out: bytearray | memoryview) -> bytearray | memoryview: ...

    def encrypt(self, iv: bytes | None, data: bytes | bytearray | memoryview,
                out: bytearray | memoryview | None = None) -> bytes | bytearray | memoryview:
        """Encrypt `data` (a multiple of 16 bytes) and wait for the result (into `out` if
        given, which is then returned)."""
        return self._run(iv, data, False, out)

    @overload
    def decrypt(self, iv: bytes | None, data: bytes | bytearray | memoryview) -> bytes: ...
    @overload
    def decrypt(self, iv: bytes | None, data: bytes | bytearray | memoryview,
                out: bytearray | memoryview) -> bytearray | memoryview: ...

    def decrypt(self, iv: bytes | None, data: bytes | bytearray | memoryview,
                out: bytearray | memoryview | None = None) -> bytes | bytearray | memoryview:
        """Decrypt `data` (a multiple of 16 bytes) and wait for the result (into `out` if
        given, which is then returned)."""
        return self._run(iv, data, True, out)

    # -- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        """Wait for requests in flight, then destroy this Cipher's sessions."""
        if self._closed:
            return
        self._closed = True
        eng = self._engine
        if eng.closed:
            return
        try:
            if self._pending:
                eng.wait_until(lambda: not self._pending)
        finally:
            for sid in set(self._sessions.values()):
                if sid in eng.sessions:
                    eng.destroy_session(sid)
            self._sessions.clear()

    def __enter__(self) -> Cipher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._pending)} in flight"
        return f"<Cipher {self.name} on {self._engine.device.name} {state}>"
