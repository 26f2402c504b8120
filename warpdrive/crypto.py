"""Symmetric ciphers on a virtio-crypto device driven from user space.

    from warpdrive.crypto import Cipher

    with Cipher("aes-cbc", key) as c:                    # the first virtio-crypto function on
        ct = c.encrypt(iv, data)                         # vfio-pci, else the bundled model
        ids = [c.submit(iv, blk) for blk in blocks]      # staged, nothing sent yet
        done = c.wait()                                  # one doorbell for the batch, then poll
        first = c.submit_many(ivs, blocks, outs=outs)    # a batch in one call, completions
        n = c.poll_many(done)                            # appended to a list

        buf = c.buffer(32 * 4096)                        # zero-copy: data lives in DMA memory
        reqs = [c.prepare(buf, 4096, src_offset=i * 4096, iv=iv) for i in range(32)]
        c.submit_prepared(reqs)                          # the hot path: no copy, nothing built;
        n = c.poll_many(done)                            # the requests come back themselves

    with Cipher("aes-xts", key, device="0000:00:02.0", poll=False) as c:  # sleep on MSI-X
        ...

Which device (`device=`): an open `Device` (`warpdrive.open(...)`) or its engine, or a name: a
PCI address of a function bound to vfio-pci, ``"emu:crypto"`` (the bundled virtio-crypto model,
started in its own process) or ``"vfio-user:/path.sock"``. With none, the first virtio-crypto
function bound to vfio-pci, else the bundled model; the choice is logged on the
``warpdrive.crypto`` logger (INFO). A device opened from a name is opened once per process and
shared by every Cipher that names it; it closes when the process exits.

Algorithms: ``aes-cbc``, ``aes-ecb``, ``aes-ctr``, ``aes-xts`` (keys of 16/24/32 bytes; XTS 32 or
64). Data must be a non-empty multiple of 16 bytes in every mode (QEMU's backend refuses anything
else, CTR and XTS included). IVs are 16 bytes; ECB ignores the IV (pass None); XTS takes the
tweak (the data unit number, 16 bytes little endian).

Any length: a request longer than the engine's request size (64 KiB by default) is split into
requests of that size, chained as the mode requires (CTR: the counter advances, as a 128-bit
big-endian number; CBC: each piece's IV is the previous piece's last ciphertext block, so CBC
encryption sends its pieces one after another while the others go all at once). XTS cannot be
split (its tweak sequence runs through the whole data unit): a long data unit goes as one request
from a buffer of its own, up to the device's `max_size`.

Waiting (`poll=`): by default a Cipher busy-polls the ring (no syscall per request, one core busy
while it waits); ``poll=False`` sleeps on the data queue's MSI-X interrupt instead (a few syscalls
per wait, no CPU burnt while the device works).

Advertised vs implemented algorithms: a device lists its ciphers in `cipher_algo_l/h`;
`algorithms(device)` returns exactly that list (QEMU's builtin backend advertises only AES-CBC).
A `Cipher` for an algorithm the device does not advertise is still *tried*: the session is
created eagerly in the constructor, and if the device answers NOTSUPP or ERR the constructor
raises `UnsupportedError` naming the algorithm and what the device does advertise — nothing else
was sent, and the device keeps working. QEMU's builtin backend in fact implements ECB, CTR and
XTS, so those work there. Pass ``strict=True`` to refuse unadvertised algorithms without asking
the device.

Sessions: a virtio-crypto session has one direction (virtio 1.2 §5.9.7.2.1), so a Cipher holds
an encrypt session (created up front) and a decrypt session (created on first decrypt); CTR,
which decrypts by encrypting, uses its encrypt session both ways. Sessions of a process that dies
without closing are destroyed by the next process that opens the function.

Zero-copy requests (`buffer`, `prepare`, `submit_prepared`): the source and destination live in
DMA memory of the Cipher's device and a prepared `Request` is built and checked once (bounds, the
buffers' mappings, length, IV); each submission copies its prebuilt 88-byte header into a free
slot and points the slot's source and destination descriptors at the caller's memory, and
`poll_many` hands the request itself back (`ok`, `status`, `data`: a view of the destination).
What stays on that path to protect the caller, and what it costs: the Cipher is open and the
engine not inherited through fork (two flags per call), each request is this Cipher's and not
in flight (one identity test per request: a request given twice, another Cipher's or a released
one is refused, and none of the batch is staged); the buffers cannot be unmapped while a
request holds them (checked at `release_buffer`/`dma.unmap`, not per submission). A request
that failed counts in `failures` (one comparison per batch tells whether any did).

Every argument is checked before anything reaches the device (`InvalidArgumentError`); a closed
Cipher raises `ClosedError`. Both are `WarpdriveError`s.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, overload

from .device import Device
from .devices.crypto.algorithms import ALGORITHMS, CipherAlgorithm, lookup
from .devices.crypto.engine import PreparedRequest, VirtioCrypto, request_header, status_name
from .errors import (
    ClosedError,
    DeviceBusyError,
    DeviceError,
    InvalidArgumentError,
    UnsupportedError,
)
from .memory import DmaBuffer
from .uapi import virtio as U

__all__ = ["ALGORITHMS", "Cipher", "Completion", "Request", "VirtioCrypto", "algorithms",
           "close_devices", "engine", "find_device", "open_device"]

log = logging.getLogger("warpdrive.crypto")
EMU_NAME = "emu:crypto"
VIRTIO_CRYPTO_IDS = (0x1AF4, 0x1040 + U.VIRTIO_ID_CRYPTO)  # modern only: no transitional id

DeviceSpec = Device | VirtioCrypto | str | None


# -- devices ----------------------------------------------------------------------------------
def find_device(sysfs_root: str = "/sys") -> str | None:
    """The address of the first virtio-crypto function bound to vfio-pci, or None."""
    from . import pci

    for fn in pci.devices(sysfs_root):
        if (fn.vendor, fn.device) == VIRTIO_CRYPTO_IDS and fn.driver == "vfio-pci":
            return fn.bdf
    return None


_shared: dict[tuple[int, str], Device] = {}
_shared_lock = threading.Lock()


def open_device(name: str | None = None, *, backend: str = "auto") -> Device:
    """This process's shared `Device` for `name` (see the module docstring; None: the first
    virtio-crypto function on vfio-pci, else the bundled model). Opened on first use, closed
    when the process exits."""
    from .backends import open_device as _open

    if name is not None and not isinstance(name, str):
        raise InvalidArgumentError(
            f"device must be a Device, a VirtioCrypto engine or a name, not {type(name).__name__}")
    with _shared_lock:
        chosen = name
        if chosen is None:
            found = find_device()
            chosen = found or EMU_NAME
            if found:
                log.info("warpdrive.crypto: using virtio-crypto function %s on vfio-pci", found)
            else:
                log.info("warpdrive.crypto: no virtio-crypto function bound to vfio-pci; using "
                         "the bundled device model (%s)", EMU_NAME)
        key = (os.getpid(), chosen)  # a forked child opens its own
        dev = _shared.get(key)
        if dev is None or dev.closed:
            dev = _open(chosen, backend=backend)
            if not _shared:
                atexit.register(_close_shared)
            _shared[key] = dev
            log.info("warpdrive.crypto: opened %s (%s backend)", dev.name, dev.backend)
        return dev


def close_devices() -> None:
    """Close the devices this process opened by name (and stop a model it started); the next
    Cipher opens them again. Runs at exit anyway."""
    _close_shared()


def _close_shared() -> None:
    with _shared_lock:
        devs = [d for (pid, _), d in _shared.items() if pid == os.getpid()]
        _shared.clear()
    for d in devs:
        try:
            d.close()
        except Exception as e:  # exiting: say it, do not raise
            log.warning("warpdrive.crypto: closing %s: %s", d.name, e)


def engine(device: DeviceSpec = None, *, backend: str = "auto") -> VirtioCrypto:
    """The virtio-crypto engine of `device` (see the module docstring), started on first use and
    closed with its device."""
    if isinstance(device, VirtioCrypto):
        return device
    if not isinstance(device, Device):
        device = open_device(device, backend=backend)
    return VirtioCrypto.of(device)


def algorithms(device: DeviceSpec = None) -> list[str]:
    """The cipher algorithms (of the ones this driver knows) the device advertises."""
    return engine(device).config.advertised_ciphers()


class Completion(NamedTuple):
    """The outcome of one submitted request: `id` from `submit`, `data` when `ok`. Immutable
    (a named tuple: one is built per request, and a frozen dataclass costs ~4x as much)."""

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


# Builds a Completion without the named tuple's Python-level __new__ (a third of its cost).
_completion = tuple.__new__


class Request(PreparedRequest):
    """A prepared zero-copy request (`Cipher.prepare`): source and destination in DMA memory of
    the Cipher's device, header and IV built once; submit it again and again with
    `Cipher.submit_prepared`. `poll_many` hands it back itself (no Completion is built): then
    `ok`/`status` say how it went and `data` is the output, in the destination buffer."""

    __slots__ = ()

    @property
    def id(self) -> int:
        """Requests are known by identity (their `id()`), as Completions are by number."""
        return id(self)

    @property
    def ok(self) -> bool:
        return self.status == U.VIRTIO_CRYPTO_OK

    @property
    def in_flight(self) -> bool:
        return self.ready is None

    @property
    def data(self) -> memoryview | None:
        """The output (a view of the destination buffer) once completed well, else None."""
        if self.status != U.VIRTIO_CRYPTO_OK or self.ready is None:
            return None
        return self.dst.view[self.dst_off:self.dst_off + self.n]

    def result(self) -> memoryview:
        """The output; raises DeviceError if the device failed the request (or it has not
        completed)."""
        data = self.data
        if data is None:
            what = "is still in flight" if self.ready is None else (
                "has not been submitted" if self.status < 0 else
                f"failed: {status_name(self.status)}")
            raise DeviceError(f"prepared crypto request of {self.n} bytes {what}")
        return data

    def set_iv(self, iv: bytes | None) -> None:
        """Change the IV for the next submissions (not while in flight)."""
        owner = self.owner
        assert isinstance(owner, Cipher)
        if self.ready is None:
            raise InvalidArgumentError("the request is in flight; set its IV once it completed")
        ivb = owner._iv_bytes(iv)
        self.hdr = self.hdr[:len(self.hdr) - len(ivb)] + ivb if ivb else self.hdr

    def release(self) -> None:
        """Give up the request: its buffers may be unmapped again (not while in flight)."""
        owner = self.owner
        assert isinstance(owner, Cipher)
        owner._release_request(self)


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


@dataclass
class _Split:
    """One caller request carried as several device requests (see the module docstring)."""

    rid: int
    out: bytearray | memoryview  # the whole destination
    given: bool  # `out` is the caller's (else ours, returned as bytes)
    n: int
    left: int  # pieces not completed yet
    status: int = U.VIRTIO_CRYPTO_OK
    # CBC encryption only: what the next piece needs
    data: memoryview | None = None
    next_off: int = 0
    opcode: int = 0
    session: int = 0


class Cipher:
    """One algorithm and key on a virtio-crypto device; see the module docstring."""

    def __init__(self, algorithm: str, key: bytes, *, device: DeviceSpec = None,
                 strict: bool = False, poll: bool = True, backend: str = "auto") -> None:
        self.algorithm: CipherAlgorithm = lookup(algorithm)
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError(f"key must be bytes, not {type(key).__name__}")
        key = bytes(key)
        self.algorithm.check_key(key)
        self._closed = True  # until the first session exists
        self._engine = engine(device, backend=backend)
        if strict and self.algorithm.name not in self._engine.config.advertised_ciphers():
            raise UnsupportedError(
                f"{self._engine.device.name} does not advertise {self.algorithm.name}",
                hint=f"it advertises {', '.join(algorithms(self._engine)) or 'nothing known'};"
                " pass strict=False to try anyway")
        if not poll and not self._engine.can_sleep:
            raise UnsupportedError(
                f"{self._engine.device.name} gives its data queue no MSI-X vector, so a Cipher "
                "cannot sleep on it", hint="use poll=True")
        self.poll_mode = poll
        self._key = key
        self._sessions: dict[bool, int] = {}  # encrypt? -> session id
        self._done: list[Completion] = []
        self._pending: set[int] = set()
        self._splits: dict[int, _Split] = {}  # device request tag -> the caller request
        self._next_id = 0
        # Zero-copy: prepared requests land here (the engine appends them), how many are in
        # flight, the live ones (their buffers are held) and the buffers `buffer()` gave out.
        self._landed: list[Request] = []
        self._zc_flight = 0
        # Prepared requests that completed with an error status, ever: a batch's check is one
        # comparison (their `status` says which).
        self.failures = 0
        self._requests: set[Request] = set()
        self._buffers: list[DmaBuffer] = []
        self._sessions[True] = self._engine.create_session(self.algorithm, key, True)
        self._closed = False

    # -- properties ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.algorithm.name

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def device(self) -> Device:
        return self._engine.device

    @property
    def max_request(self) -> int:
        """The size of one device request: longer data is split (or, for XTS, sent alone)."""
        return self._engine.max_request

    @property
    def in_flight(self) -> int:
        return len(self._pending) + self._zc_flight - len(self._landed)

    def _idle(self) -> bool:
        return not self._pending and self._zc_flight == len(self._landed)

    # -- requests --------------------------------------------------------------------------
    def _session(self, encrypt: bool) -> int:
        sid = self._sessions.get(encrypt)
        if sid is None:
            sid = self._sessions[encrypt] = self._engine.create_session(
                self.algorithm, self._key, encrypt)
        return sid

    def _tag(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def submit(self, iv: bytes | None, data: bytes | bytearray | memoryview, *,
               decrypt: bool = False, out: bytearray | memoryview | None = None) -> int:
        """Stage one request; returns its id. Nothing is sent until `poll`/`wait`/`flush`,
        which publish every staged request with a single doorbell. With `out` (a writable
        buffer of at least len(data) bytes) the result is copied there, allocating nothing;
        the caller must not touch `out` until the request completes."""
        return self.submit_many((iv,), (data,), decrypt=decrypt, outs=(out,))

    def submit_many(self, ivs: Sequence[bytes | None],
                    datas: Sequence[bytes | bytearray | memoryview], *, decrypt: bool = False,
                    outs: Sequence[bytearray | memoryview | None] | None = None) -> int:
        """Stage one request per item of `datas` (with `ivs[i]` and, when given, `outs[i]`, as
        `submit` takes them); returns the first one's id, the others' follow (id + 1, ...).
        Every request is checked before any is staged. The batch's hot path: one call for the
        batch, its checks inline, what the requests share looked up once."""
        if self._closed:
            raise ClosedError(f"{self.name} cipher is closed", hint="create a new Cipher")
        k = len(datas)
        if len(ivs) != k or (outs is not None and len(outs) != k):
            raise InvalidArgumentError(
                f"submit_many: {len(ivs)} IVs, {k} data buffers and "
                f"{'no' if outs is None else len(outs)} outputs; give one of each per request")
        if outs is None:
            outs = (None,) * k
        # Every check runs on every request; the common case (bytes IV of the right size,
        # bytes/bytearray data, a bytearray `out`) is tested inline, anything else by the full
        # check, which raises with the reason.
        alg = self.algorithm
        iv_size, block = alg.iv_size, alg.block
        eng = self._engine
        limit = eng.max_request
        fits = True
        civs: list[bytes] = []
        cdatas: list[bytes | bytearray | memoryview] = []
        couts: list[bytearray | memoryview | None] = []
        for iv, data, out in zip(ivs, datas, outs):
            if not iv_size:
                ivb = b""
            elif iv.__class__ is bytes and len(iv) == iv_size:
                ivb = iv
            else:
                ivb = alg.check_iv(iv)
            cls = data.__class__
            if cls is bytes or cls is bytearray:
                mv = data
            elif isinstance(data, memoryview):
                if not data.c_contiguous:  # (cast() would refuse it in its own words)
                    raise InvalidArgumentError(
                        "data must be one contiguous buffer; this memoryview has strides",
                        hint="pass bytes(view) or a contiguous view")
                mv = memoryview(data).cast("B")
            elif isinstance(data, (bytes, bytearray)):
                mv = data
            else:
                raise InvalidArgumentError(
                    f"data must be bytes-like, not {type(data).__name__}")
            n = len(mv)
            if not n or n % block:
                alg.check_data(n)
            if n > limit:
                fits = False
            if out is not None and (out.__class__ is not bytearray or len(out) < n):
                _check_out(out, n)
                if isinstance(out, memoryview) and out.format != "B":
                    out = out.cast("B")
            civs.append(ivb)
            cdatas.append(mv)
            couts.append(out)
        # A session has one direction (virtio 1.2 §5.9.7.2.1); CTR decrypts by encrypting, on its
        # encrypt session, so it asks for encryption (a device may refuse the contradiction).
        backwards = decrypt and not alg.symmetric
        sid = self._sessions.get(not backwards)
        if sid is None:
            sid = self._session(not backwards)
        opcode = U.VIRTIO_CRYPTO_CIPHER_DECRYPT if backwards else U.VIRTIO_CRYPTO_CIPHER_ENCRYPT
        rid = self._next_id
        self._next_id = rid + k
        # Pending before staged: a wait inside the engine (for a slot, or for the one large
        # request in flight) may complete and deliver the first ones before this call returns.
        pending = self._pending
        if k == 1:
            pending.add(rid)
        else:
            pending.update(range(rid, rid + k))
        if fits:
            try:
                eng.submit_many(self, rid, opcode, alg.virtio_algo, sid, civs, cdatas, couts)
            except ClosedError:  # refused before staging anything
                pending.difference_update(range(rid, rid + k))
                raise
            return rid
        for i, (ivb, mv, out) in enumerate(zip(civs, cdatas, couts)):
            if len(mv) <= limit:
                eng.submit(self, rid + i, opcode, alg.virtio_algo, sid, ivb, mv, out)
            elif alg.name == "aes-xts":
                eng.submit_large(self, rid + i, opcode, alg.virtio_algo, sid, ivb, mv, out)
            else:
                self._submit_split(rid + i, opcode, sid, ivb, memoryview(mv).cast("B"),
                                   out, backwards)
        return rid

    def _submit_split(self, rid: int, opcode: int, sid: int, iv: bytes, data: memoryview,
                      out: bytearray | memoryview | None, decrypt: bool) -> None:
        n, step = len(data), self._engine.max_request
        dest: bytearray | memoryview = bytearray(n) if out is None else out
        offsets = range(0, n, step)
        split = _Split(rid, dest, out is not None, n, len(offsets))
        name = self.algorithm.name
        if name == "aes-cbc" and not decrypt:
            # each piece's IV is the previous piece's output: one piece at a time
            split.data, split.opcode, split.session = data, opcode, sid
            split.next_off = step
            self._submit_piece(split, 0, iv)
            return
        for off in offsets:
            if name == "aes-ctr":
                piece_iv = ((int.from_bytes(iv, "big") + off // 16) % (1 << 128)).to_bytes(16,
                                                                                        "big")
            elif name == "aes-cbc":
                piece_iv = iv if off == 0 else bytes(data[off - 16:off])  # previous ciphertext
            else:
                piece_iv = iv  # ECB: none
            tag = self._tag()
            self._splits[tag] = split
            self._engine.submit(self, tag, opcode, self.algorithm.virtio_algo, sid, piece_iv,
                                data[off:off + step], memoryview(dest)[off:off + step])

    def _submit_piece(self, split: _Split, off: int, iv: bytes) -> None:
        assert split.data is not None
        step = self._engine.max_request
        tag = self._tag()
        self._splits[tag] = split
        self._engine.submit(self, tag, split.opcode, self.algorithm.virtio_algo, split.session,
                            iv, split.data[off:off + step], memoryview(split.out)[off:off + step])

    def _deliver(self, tag: int, status: int,
                 data: bytes | bytearray | memoryview | None) -> None:
        split = self._splits.pop(tag, None) if self._splits else None
        if split is None:
            self._pending.discard(tag)
            self._done.append(_completion(Completion, (tag, status, data)))
            return
        if status != U.VIRTIO_CRYPTO_OK and split.status == U.VIRTIO_CRYPTO_OK:
            split.status = status
        split.left -= 1
        if split.data is not None and split.left and split.status == U.VIRTIO_CRYPTO_OK:
            off = split.next_off  # CBC encryption: the next piece, chained on this one's output
            split.next_off += self._engine.max_request
            self._submit_piece(split, off, bytes(memoryview(split.out)[off - 16:off]))
            return
        if split.left and split.data is None:
            return
        self._pending.discard(split.rid)
        result: bytes | bytearray | memoryview | None = None
        if split.status == U.VIRTIO_CRYPTO_OK:
            result = split.out if split.given else bytes(split.out)
        self._done.append(Completion(split.rid, split.status, result))

    # -- zero-copy requests ----------------------------------------------------------------
    def _iv_bytes(self, iv: bytes | None) -> bytes:
        if not self.algorithm.iv_size:
            return b""
        if iv.__class__ is bytes and len(iv) == self.algorithm.iv_size:
            return iv
        return self.algorithm.check_iv(iv)

    def buffer(self, size: int) -> DmaBuffer:
        """A DMA buffer of this Cipher's device (mapped, device-writable) for zero-copy
        requests: fill `buf.view`, then `prepare`. Freed by `release_buffer` or `close`."""
        if self._closed:
            raise ClosedError(f"{self.name} cipher is closed", hint="create a new Cipher")
        buf = self._engine.device.dma.alloc(size)
        self._buffers.append(buf)
        return buf

    def release_buffer(self, buf: DmaBuffer) -> None:
        """Unmap and free a buffer from `buffer()`; refused while a prepared request uses it."""
        if not any(b is buf for b in self._buffers):
            raise InvalidArgumentError("release_buffer() takes buffers from this Cipher's "
                                       "buffer()")
        dma = self._engine.device.dma
        dma.unmap(buf)  # DeviceBusyError while a request holds it
        self._buffers = [b for b in self._buffers if b is not buf]
        buf.close()

    def prepare(self, src: DmaBuffer, length: int, dst: DmaBuffer | None = None, *,
                iv: bytes | None = None, decrypt: bool = False, src_offset: int = 0,
                dst_offset: int | None = None) -> Request:
        """A reusable zero-copy request: `length` bytes at `src_offset` of `src`, the result
        written at `dst_offset` of `dst` (default: in place, over the source). Both buffers
        must be mapped in this Cipher's device's DMA space (`buffer()`, or the device's
        `dma.alloc`), the destination device-writable; every check runs here, once: bounds,
        the buffers' mappings (held until `release`: they cannot be unmapped under the
        device), the length (a non-empty multiple of 16 within the device's max_size) and
        the IV. Submit it with `submit_prepared`."""
        if self._closed:
            raise ClosedError(f"{self.name} cipher is closed", hint="create a new Cipher")
        if isinstance(length, bool) or not isinstance(length, int):
            raise InvalidArgumentError(f"length must be an int, not {type(length).__name__}")
        alg, eng = self.algorithm, self._engine
        if dst is None:
            dst = src
            if dst_offset is None:
                dst_offset = src_offset
        if dst_offset is None:
            dst_offset = 0
        for what, buf, off in (("source", src, src_offset), ("destination", dst, dst_offset)):
            if not isinstance(buf, DmaBuffer):
                raise InvalidArgumentError(
                    f"the {what} must be a DmaBuffer (Cipher.buffer()), not {type(buf).__name__}")
            if isinstance(off, bool) or not isinstance(off, int) or off < 0 or \
                    off + length > buf.size:
                raise InvalidArgumentError(
                    f"{length} bytes at offset {off} overrun the {buf.size}-byte {what} buffer")
        alg.check_data(length)
        ivb = self._iv_bytes(iv)
        if len(ivb) + 2 * length > eng.config.max_size:
            raise InvalidArgumentError(
                f"a {length}-byte request exceeds the device's max_size ({eng.config.max_size} "
                "bytes of IV + source + destination)", hint="use smaller requests")
        backwards = decrypt and not alg.symmetric
        sid = self._session(not backwards)
        opcode = U.VIRTIO_CRYPTO_CIPHER_DECRYPT if backwards else U.VIRTIO_CRYPTO_CIPHER_ENCRYPT
        dma = eng.device.dma
        mappings = []
        for what, buf in (("source", src), ("destination", dst)):
            m = dma.mapping_of(buf)
            if m is None:
                raise InvalidArgumentError(
                    f"the {what} buffer is not mapped in {eng.device.name}'s DMA space",
                    hint="get buffers from Cipher.buffer()")
            mappings.append(m)
        if not mappings[1].writable:
            raise InvalidArgumentError("the destination buffer is mapped read-only for the "
                                       "device", hint="map it writable (the device writes it)")
        r = Request(self, self._landed, request_header(opcode, alg.virtio_algo, sid, ivb, length),
                    src, src_offset, dst, dst_offset, length)
        what = f"prepared {self.name} request"
        dma.hold(src, r, what)  # unmapping either is refused until the request is released
        dma.hold(dst, r, what)
        self._requests.add(r)
        return r

    def submit_prepared(self, reqs: Sequence[Request]) -> None:
        """Stage prepared requests of this Cipher that are not in flight (sent at the next
        `poll`/`poll_many`/`wait`/`flush`: one doorbell for the batch). All or nothing: one
        refused, none is staged. The zero-copy hot path: per request one identity test (this
        Cipher's and not in flight), a slot, a header store and two descriptor addresses."""
        if self._closed:
            raise ClosedError(f"{self.name} cipher is closed", hint="create a new Cipher")
        i = 0
        try:
            for i, r in enumerate(reqs):  # ownership and "not in flight" in one identity test
                if r.ready is not self:
                    for back in reqs[:i]:
                        back.ready = self
                    if not isinstance(r, Request) or r.owner is not self:
                        raise InvalidArgumentError(
                            "submit_prepared() takes requests prepared by this Cipher",
                            hint="build them with cipher.prepare()")
                    raise InvalidArgumentError(
                        "a prepared request is in flight (or appears twice in the batch), or "
                        "was released", hint="wait for it to complete (poll_many/wait) first")
                r.ready = None
        except AttributeError:  # not a Request at all (no `ready`): costs nothing when all are
            for back in reqs[:i]:
                back.ready = self
            raise InvalidArgumentError(
                "submit_prepared() takes requests prepared by this Cipher, not "
                f"{type(reqs[i]).__name__}", hint="build them with cipher.prepare()") from None
        self._zc_flight += len(reqs)
        try:
            self._engine.submit_prepared(reqs)
        except BaseException:
            # Refused (closed, forked) or stopped waiting for a slot: what was not staged may
            # be submitted again.
            staged = {id(x) for x in self._engine._slot_req if x is not None}
            for r in reqs:
                if id(r) not in staged:
                    r.ready = self
                    self._zc_flight -= 1
            raise

    def _release_request(self, r: Request) -> None:
        if r.ready is None:
            raise DeviceBusyError("the prepared request is in flight",
                                  hint="wait for it to complete before releasing it")
        if r not in self._requests:
            return
        self._requests.discard(r)
        r.ready = False  # never submitted again (fails the identity test)
        dma = self._engine.device.dma
        if not dma.closed:
            dma.release(r.src, r)
            dma.release(r.dst, r)

    def flush(self) -> None:
        """Send every staged request (one doorbell)."""
        self._engine.kick()

    def poll(self) -> list[Completion | Request]:
        """Send staged requests, then return whatever has completed (possibly nothing)."""
        out: list[Completion | Request] = []
        self.poll_many(out)
        return out

    def poll_many(self, out: list[Completion | Request]) -> int:
        """`poll`, appending the completions to `out`; returns how many (no list built).
        Prepared requests come back as themselves (see `Request`)."""
        eng = self._engine
        eng.kick()
        eng.reap()
        done, landed = self._done, self._landed
        n = len(done)
        if n:
            out += done
            done.clear()
        if landed:
            k = len(landed)
            self._zc_flight -= k
            out += landed
            landed.clear()
            n += k
        return n

    def wait(self, timeout: float | None = None) -> list[Completion | Request]:
        """Send staged requests and wait for all of this Cipher's requests in flight (busy-
        polling, or sleeping on the interrupt with poll=False)."""
        self._engine.wait_until(self._idle, timeout, poll=self.poll_mode)
        return self.poll()

    def _run(self, iv: bytes | None, data: bytes | bytearray | memoryview, decrypt: bool,
             out: bytearray | memoryview | None) -> bytes | bytearray | memoryview:
        rid = self.submit(iv, data, decrypt=decrypt, out=out)
        eng = self._engine

        def finished() -> bool:
            return rid not in self._pending

        eng.wait_until(finished, poll=self.poll_mode)
        # Completions of other requests stay queued for poll(); take ours out.
        for c in self._done:
            if c[0] == rid:
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
        """Encrypt `data` (a multiple of 16 bytes, any length) and wait for the result (into
        `out` if given, which is then returned)."""
        return self._run(iv, data, False, out)

    @overload
    def decrypt(self, iv: bytes | None, data: bytes | bytearray | memoryview) -> bytes: ...
    @overload
    def decrypt(self, iv: bytes | None, data: bytes | bytearray | memoryview,
                out: bytearray | memoryview) -> bytearray | memoryview: ...

    def decrypt(self, iv: bytes | None, data: bytes | bytearray | memoryview,
                out: bytearray | memoryview | None = None) -> bytes | bytearray | memoryview:
        """Decrypt `data` (a multiple of 16 bytes, any length) and wait for the result (into
        `out` if given, which is then returned)."""
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
            if not self._idle():
                eng.wait_until(self._idle, poll=self.poll_mode)
        finally:
            for r in list(self._requests):
                if r.ready is not None:  # one still in flight (the wait failed) keeps its holds
                    self._release_request(r)
            dma = eng.device.dma
            for buf in self._buffers:
                m = None if dma.closed else dma.mapping_of(buf)
                if m is not None and not m.users:  # one held by a request in flight, or
                    dma.unmap(buf)                 # unmapped already, goes with the device
                    buf.close()
            self._buffers.clear()
            for sid in set(self._sessions.values()):
                if sid in eng.sessions:
                    eng.destroy_session(sid)
            self._sessions.clear()

    def __enter__(self) -> Cipher:
        if self._closed:  # as a closed file: `with` on it is a mistake, said at once
            raise ClosedError(f"{self.name} cipher is closed", hint="create a new Cipher")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._pending)} in flight"
        return f"<Cipher {self.name} on {self._engine.device.name} {state}>"
