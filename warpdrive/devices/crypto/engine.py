"""virtio-crypto over the modern virtio-pci transport: control queue sessions, data queue slots.

Wire format (non-REVISION_1, what QEMU parses; verified in QEMU 10.0 `hw/virtio/virtio-crypto.c`):
  * control request: a 72-byte `virtio_crypto_op_ctrl_req`, the cipher key right after it (same
    device-readable stream), then a device-writable 16-byte `virtio_crypto_session_input`;
    destroy: the 72-byte request, then one device-writable status byte.
  * data request: a 72-byte `virtio_crypto_op_data_req`, the IV, the source (device-readable);
    the destination, then one status byte as the very last byte of the device-writable part.
QEMU reads each part as a byte stream across descriptors, so a request slot here is a fixed chain
of four descriptors: [header+IV] [source] [destination] [status]. A copied request uses the slot's
own areas (only lengths change, and only when a request's size differs from the slot's last); a
prepared (zero-copy) request points the source and destination descriptors at the caller's DMA
memory (two address stores) and copies its prebuilt header + IV into the slot (one store).

Waiting: by default a waiter busy-polls the used ring (no syscall, one busy core). With
`poll=False` it sleeps on the data queue's MSI-X vector instead: it asks the device for
interrupts (clears VRING_AVAIL_F_NO_INTERRUPT), fences, looks at the used ring once more, then
blocks in poll() on the vector's eventfd; interrupts are asked for only while someone sleeps.

Requests larger than a slot (`max_request`) go as one request from a buffer of their own
(`submit_large`: one DMA map per request, one at a time); `warpdrive.crypto.Cipher` splits the
modes that can be split into slot-sized pieces first, so only XTS data units need this.

Sessions a process leaves when it dies are destroyed by the next engine on the same function
(`journal.SessionJournal`).

Requests this module never sends, because they break QEMU 10.0:
  * destroying a session id the device did not give us (`cryptodev_builtin_close_session`
    asserts and aborts QEMU); only ids returned by create are destroyed, each once;
  * src_data_len != dst_data_len (`virtio_error`: the device goes to DEVICE_NEEDS_RESET);
    both are always the same length here;
  * a non-zero IV length for ECB (see algorithms.py).
"""

from __future__ import annotations

import ctypes
import logging
import struct
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ... import syscalls as sc
from ...device import Device, Interrupt
from ...errors import (
    ClosedError,
    DeviceError,
    DeviceTimeoutError,
    InvalidArgumentError,
    UnsupportedError,
    WarpdriveError,
)
from ...forkguard import ForkSafe
from ...memory import DmaBuffer
from ...uapi import virtio as U
from ..virtio.pci import (
    VIRTIO_PCI_MODERN_DEVICE_BASE,
    VIRTIO_PCI_VENDOR_ID,
    VirtioPciTransport,
)
from ..virtio.virtqueue import SplitVirtqueue
from .algorithms import ALGORITHMS, CipherAlgorithm, advertised
from .journal import SessionJournal, journal_dir

log = logging.getLogger("warpdrive.crypto")

STATUS_NAMES = {
    U.VIRTIO_CRYPTO_OK: "OK",
    U.VIRTIO_CRYPTO_ERR: "ERR",
    U.VIRTIO_CRYPTO_BADMSG: "BADMSG",
    U.VIRTIO_CRYPTO_NOTSUPP: "NOTSUPP",
    U.VIRTIO_CRYPTO_INVSESS: "INVSESS",
    U.VIRTIO_CRYPTO_NOSPC: "NOSPC",
    U.VIRTIO_CRYPTO_KEY_REJECTED: "KEY_REJECTED",
}

REQ_LEN = ctypes.sizeof(U.virtio_crypto_op_data_req)  # 72
_OK = U.VIRTIO_CRYPTO_OK
_OP_CIPHER = U.VIRTIO_CRYPTO_SYM_OP_CIPHER
CTRL_LEN = ctypes.sizeof(U.virtio_crypto_op_ctrl_req)  # 72
_IV_MAX = 16
_STATUS_OFF = REQ_LEN + _IV_MAX  # a slot's status byte (device-writable), after header and IV
_SRC_OFF = 128  # source data starts here in a slot
_OP_TYPE_OFF = (U.virtio_crypto_op_data_req.u.offset
                + U._virtio_crypto_op_data_req_u.sym_req.offset
                + U.virtio_crypto_sym_data_req.op_type.offset)
_PARA_OFF = (U.virtio_crypto_op_data_req.u.offset
             + U._virtio_crypto_op_data_req_u.sym_req.offset)  # virtio_crypto_cipher_para
# The request's header (opcode, algo, session_id; flag and padding 0) and cipher parameters
# (iv_len, src_data_len, dst_data_len): one store of the 36 bytes that change per request.
_REQ = struct.Struct("<IIQ8xIII")
assert _PARA_OFF == 24 and _REQ.size == _PARA_OFF + 12
# The same with op_type and a 16-byte IV (every AES mode but ECB): the whole request and its IV
# in one store.
_REQ_IV16 = struct.Struct("<IIQ8xIII28xI4x16s")
assert _OP_TYPE_OFF == 64 and _REQ_IV16.size == REQ_LEN + _IV_MAX
_REQ_ONLY = struct.Struct("<IIQ8xIII28xI4x")  # the same without an IV
assert _REQ_ONLY.size == REQ_LEN

# control scratch page layout
_CTRL_IN_OFF = 512  # session input / destroy status
DEFAULT_TIMEOUT = 10.0
# A sleeping waiter looks at the ring at least this often even without an interrupt: the last
# line of defence against a device that checks the interrupt flag before its used-index store
# is visible (the driver's side of that race is closed by a fence).
IRQ_RECHECK_S = 0.05


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, f"status {status}")


@dataclass(frozen=True)
class CryptoConfig:
    """`struct virtio_crypto_config`, read in one config_generation-consistent pass."""

    status: int
    max_dataqueues: int
    crypto_services: int
    cipher_algo_l: int
    cipher_algo_h: int
    max_cipher_key_len: int
    max_size: int

    @property
    def hw_ready(self) -> bool:
        return bool(self.status & U.VIRTIO_CRYPTO_S_HW_READY)

    @property
    def cipher_service(self) -> bool:
        return bool(self.crypto_services >> U.VIRTIO_CRYPTO_SERVICE_CIPHER & 1)

    def advertised_ciphers(self) -> list[str]:
        return advertised(self.cipher_algo_l, self.cipher_algo_h)


def _read_config(win: object) -> CryptoConfig:
    c = U.virtio_crypto_config
    r32 = win.read32  # type: ignore[attr-defined]
    return CryptoConfig(
        status=r32(c.status.offset),
        max_dataqueues=r32(c.max_dataqueues.offset),
        crypto_services=r32(c.crypto_services.offset),
        cipher_algo_l=r32(c.cipher_algo_l.offset),
        cipher_algo_h=r32(c.cipher_algo_h.offset),
        max_cipher_key_len=r32(c.max_cipher_key_len.offset),
        max_size=r32(c.max_size.offset) | (r32(c.max_size.offset + 4) << 32),
    )


class Receiver(Protocol):
    """Whoever submitted a data request gets its completion: (tag, status, output or None)."""

    def _deliver(self, tag: int, status: int,
                 data: bytes | bytearray | memoryview | None) -> None: ...


@dataclass
class _Large:
    """A request carried in a buffer of its own (larger than a slot)."""

    owner: Receiver
    tag: int
    buf: DmaBuffer
    n: int
    dst_off: int
    out: bytearray | memoryview | None


def _shape(n: int, hdr: int, own: bool) -> int:
    """What a slot's descriptors say, as one int: data length, header length (< 256), and
    whether source and destination are the slot's own areas."""
    return n << 9 | hdr << 1 | own


def request_header(opcode: int, algo: int, session_id: int, iv: bytes, n: int) -> bytes:
    """A whole cipher data request for `n` bytes and its IV, as a slot holds them (what a
    prepared request copies into a slot, in one store)."""
    if len(iv) == _IV_MAX:
        return _REQ_IV16.pack(opcode, algo, session_id, _IV_MAX, n, n, _OP_CIPHER, iv)
    if len(iv) > _IV_MAX:
        raise InvalidArgumentError(f"a {len(iv)}-byte IV exceeds {_IV_MAX} bytes")
    return _REQ_ONLY.pack(opcode, algo, session_id, len(iv), n, n, _OP_CIPHER) + iv


class PreparedRequest:
    """A reusable zero-copy request: the source and destination live in DMA memory of the
    engine's device; its header (request + IV) is built once. The engine reads `hdr`, `n`,
    `src_iova`, `dst_iova` when it stages it, and on completion sets `status` (counting a
    failure in `owner.failures`), sets `ready` back to `owner` and appends it to `sink` (the
    owner's list of completions). `ready` is
    None while it is in flight. `warpdrive.crypto.Cipher.prepare` makes and checks these."""

    __slots__ = ("__weakref__", "dst", "dst_iova", "dst_off", "hdr", "n", "owner", "ready",
                 "shape", "sink", "src", "src_iova", "src_off", "status")

    def __init__(self, owner: object, sink: list[Any], hdr: bytes, src: DmaBuffer,
                 src_off: int, dst: DmaBuffer, dst_off: int, n: int) -> None:
        assert src.iova is not None and dst.iova is not None
        self.owner = owner
        self.sink = sink
        self.hdr = hdr
        self.src, self.src_off, self.dst, self.dst_off, self.n = src, src_off, dst, dst_off, n
        self.src_iova = src.iova + src_off
        self.dst_iova = dst.iova + dst_off
        self.shape = _shape(n, len(hdr), False)  # what a slot's descriptors say for it
        self.status = -1  # not completed yet
        self.ready: object = owner


_engines: weakref.WeakKeyDictionary[Device, VirtioCrypto] = weakref.WeakKeyDictionary()


class VirtioCrypto(ForkSafe):
    """The virtio-crypto function behind a `Device`: one data queue of reusable request slots
    (many requests in flight, one doorbell per batch) and the control queue for sessions.

    The crypto plugin's driver class (the contract of `warpdrive.devices.registry`): `probe`
    by IDs; init (the constructor) enables bus mastering, routes one MSI-X vector to the data
    queue (for waiters that sleep; the device is asked to interrupt only while one does), brings
    the virtio device up and destroys sessions a dead previous owner left; `remove()` destroys
    the sessions and resets the device, so no DMA is in flight, then frees the rings. Get the
    engine of a device with `VirtioCrypto.of(device)`; it is removed when the device closes."""

    name = "crypto"

    @staticmethod
    def probe(dev: Device) -> bool:
        """A modern virtio-crypto function (there is no transitional one)."""
        return (dev.vendor_id == VIRTIO_PCI_VENDOR_ID
                and dev.device_id == VIRTIO_PCI_MODERN_DEVICE_BASE + U.VIRTIO_ID_CRYPTO)

    def __init__(self, device: Device, *, ring_size: int = 512, max_request: int = 65536,
                 timeout: float = DEFAULT_TIMEOUT, interrupts: bool = True,
                 reclaim: bool = True) -> None:
        """`interrupts`: route the data queue to an MSI-X vector so waiters may sleep
        (`wait_until(poll=False)`); polling works either way. `reclaim`: destroy, at start, the
        sessions a dead previous owner of the function left (and record ours for the next)."""
        if max_request <= 0 or max_request % 16:
            raise InvalidArgumentError(
                f"max_request must be a positive multiple of 16, got {max_request}")
        self.device = device
        self.timeout = timeout
        self.max_request = max_request
        self._closed = False
        self._sessions: dict[int, str] = {}  # live session ids the device gave us -> what
        t = self.transport = VirtioPciTransport(device, expect_device_id=U.VIRTIO_ID_CRYPTO)
        self.ctrlq: SplitVirtqueue | None = None
        self.dataq: SplitVirtqueue | None = None
        self._ctrl_buf: DmaBuffer | None = None
        self._slots_buf: DmaBuffer | None = None
        self._data_irq: Interrupt | None = None
        self._journal: SessionJournal | None = None
        self._large_busy = False
        self.interrupts_seen = 0  # wake-ups of sleeping waiters by the data queue's vector
        self.reclaimed: list[int] = []  # session ids a dead owner left, destroyed at start
        try:
            device.enable_bus_master()
            t.reset()
            t.add_status(U.VIRTIO_CONFIG_S_ACKNOWLEDGE)
            t.add_status(U.VIRTIO_CONFIG_S_DRIVER)
            # QEMU offers no virtio-crypto feature bits (no REVISION_1): the padded layout.
            t.negotiate()
            self.config = t.read_device_config(_read_config)
            if not self.config.cipher_service:
                raise UnsupportedError(f"virtio-crypto {device.name} offers no cipher service")
            nq = t.num_queues
            ndata = self.config.max_dataqueues
            if ndata < 1 or nq < ndata + 1:
                raise DeviceError(
                    f"virtio-crypto {device.name} reports {ndata} data queues but has {nq} "
                    "virtqueues (need data queues + 1 control queue)")
            self.ctrl_index = ndata  # the control queue follows the data queues
            self.ctrlq = SplitVirtqueue(t, self.ctrl_index, min(16, t.queue_max_size(ndata)))
            size = min(ring_size, t.queue_max_size(0))
            if interrupts and device.msix_table() is not None:
                self._data_irq = t.enable_msix(1)[0]
            # The device is asked not to interrupt until a waiter sleeps (want_interrupts).
            self.dataq = SplitVirtqueue(t, 0, size, interrupt=self._data_irq, no_interrupt=True)
            self._ctrl_buf = device.dma.alloc(4096)
            device.dma.hold(self._ctrl_buf, self, "virtio-crypto control requests")
            self._setup_slots(self.dataq)
            t.driver_ok()
            # HW_READY can only be trusted after DRIVER_OK; re-read the config.
            self.config = t.read_device_config(_read_config)
            if not self.config.hw_ready:
                raise DeviceError(f"virtio-crypto {device.name} is not ready (HW_READY clear)",
                                  hint="is the QEMU cryptodev backend running?")
            if reclaim:
                self._reclaim()
        except BaseException:
            t.fail()
            self._teardown()
            raise
        self._fork_register()
        device.on_close(self.close)

    @classmethod
    def of(cls, device: Device, **options: int | float) -> VirtioCrypto:
        """The engine driving `device`, started on first use (options apply then)."""
        eng = _engines.get(device)
        if eng is None or eng._closed:
            eng = cls(device, **options)  # type: ignore[arg-type]
            _engines[device] = eng
        return eng

    def _reclaim(self) -> None:
        """Take the function's session journal and destroy what a dead owner left in it."""
        ident = self.device.persistent_id
        directory = journal_dir() if ident is not None else None
        if ident is None or directory is None:
            if ident is not None:
                log.warning("virtio-crypto %s: no private runtime directory for the session "
                            "journal; sessions of a process that dies are not reclaimed",
                            self.device.name)
            return
        self._journal = SessionJournal(ident, directory)
        for sid in self._journal.acquire():
            # Recorded only after the device returned it, removed before it is destroyed: this
            # id exists on the device unless the device forgot it in a reset (then ERR).
            self._journal.remove(sid)
            req = U.virtio_crypto_op_ctrl_req()
            req.header.opcode = U.VIRTIO_CRYPTO_CIPHER_DESTROY_SESSION
            req.u.destroy_session.session_id = sid
            status = self._control(bytes(req), 1, f"destroying leftover session {sid}")[0]
            self.reclaimed.append(sid)
            log.info("virtio-crypto %s: destroyed session %d a dead process left (%s)",
                     self.device.name, sid, status_name(status))

    # -- data slots ------------------------------------------------------------------------
    def _setup_slots(self, q: SplitVirtqueue) -> None:
        n = self.max_request
        self._in_off = (_SRC_OFF + n + 63) & ~63  # destination part of a slot
        stride = self._stride = (self._in_off + n + 63) & ~63
        # Four descriptors each: [header+IV] [source] [destination] [status]. The status has one
        # of its own so a destination may be the caller's memory (zero-copy requests); three
        # stay free for submit_large.
        nslots = (q.size - 3) // 4
        if nslots < 1:
            raise InvalidArgumentError(f"a {q.size}-entry data queue holds no request slot")
        self._slots_buf = buf = self.device.dma.alloc(nslots * stride)
        self.device.dma.hold(buf, self, "virtio-crypto request slots")
        assert buf.iova is not None
        self._view = buf.view
        self._heads: list[int] = []
        self._src_idx: list[int] = []  # u64 index of each slot's source-descriptor address
        self._own_src: list[int] = []  # the slot's own source and destination areas (IOVAs)
        self._own_dst: list[int] = []
        for s in range(nslots):
            iova = buf.iova + s * stride
            head = q.reserve_chain([(iova, REQ_LEN + _IV_MAX, False),
                                    (iova + _SRC_OFF, n, False),
                                    (iova + self._in_off, n, True),
                                    (iova + _STATUS_OFF, 1, True)], s)
            src = q.next_desc(head)
            if (src, q.next_desc(src), q.next_desc(q.next_desc(src))) != \
                    (head + 1, head + 2, head + 3):  # a fresh ring links in order
                raise DeviceError(f"virtio-crypto {self.device.name}: slot {s}'s descriptors "
                                  "are not consecutive")
            self._heads.append(head)
            self._src_idx.append(2 * src)
            self._own_src.append(iova + _SRC_OFF)
            self._own_dst.append(iova + self._in_off)
            struct.pack_into("<I", self._view, s * stride + _OP_TYPE_OFF,
                             U.VIRTIO_CRYPTO_SYM_OP_CIPHER)
        # Addresses and lengths are rewritten per request through u64 / u32 views of the
        # descriptor table (descriptor d: address at u64 2d, length at u32 4d + 2).
        table = memoryview((ctypes.c_uint8 * (16 * q.size)).from_address(
            ctypes.addressof(q.desc))).cast("B")
        self._desc64, self._desc32 = table.cast("Q"), table.cast("I")
        self._free_slots = list(range(nslots - 1, -1, -1))
        # Per busy slot: (owner, tag, length, out) of a copied request, or the
        # `PreparedRequest`; one store when submitted, one load when reaped; None when free.
        self._slot_req: list[tuple[Receiver, int, int, bytearray | memoryview | None]
                             | PreparedRequest | None] = [None] * nslots
        # What each slot's descriptors say now, as one int (`_shape`: data length, header
        # length, whether the data descriptors point at the slot's own areas): a request of the
        # same shape as the slot's last one stores no length (the device never writes them).
        self._slot_shape = [_shape(n, REQ_LEN + _IV_MAX, True)] * nslots
        self.nslots = nslots
        self._submit_reserved = q.submit_reserved
        self._staged = 0
        self.doorbells = 0  # data-queue notifications sent (one per batch)

    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    def submit(self, owner: Receiver, tag: int, opcode: int, algo: int, session_id: int,
               iv: bytes, data: bytes | bytearray | memoryview,
               out: bytearray | memoryview | None = None) -> None:
        """Stage one cipher request (checked by the caller). Visible to the device at `kick`.
        The result is copied into `out` when given (no allocation), else into new bytes.
        When every slot is busy, kicks and reaps until one frees up."""
        self.submit_many(owner, tag, opcode, algo, session_id, (iv,), (data,), (out,))

    def submit_many(self, owner: Receiver, tag: int, opcode: int, algo: int, session_id: int,
                    ivs: Sequence[bytes], datas: Sequence[bytes | bytearray | memoryview],
                    outs: Sequence[bytearray | memoryview | None]) -> None:
        """`submit` for requests of one session (tags `tag`, `tag` + 1, ...; each fits a slot),
        in one call: what is the same for all of them is looked up once."""
        if self._forked_dead or self._closed:  # the checks, without a call when they pass
            self._check_alive()
            raise ClosedError("virtio-crypto engine is closed")
        free, view, stride = self._free_slots, self._view, self._stride
        reqs, shapes, heads = self._slot_req, self._slot_shape, self._heads
        # heads staged by this call, published to the avail ring at the end
        hs: list[ctypes.c_uint16 | int] = []
        for iv, data, out in zip(ivs, datas, outs):
            if not free:
                self._stage(hs)  # a wait for a slot kicks what is staged
                self._wait_for_slot()
            slot = free.pop()
            n = len(data)
            base = slot * stride
            iv_len = len(iv)
            if iv_len == 16:
                _REQ_IV16.pack_into(view, base, opcode, algo, session_id, 16, n, n, _OP_CIPHER,
                                    iv)
            else:
                _REQ.pack_into(view, base, opcode, algo, session_id, iv_len, n, n)
                if iv_len:
                    view[base + REQ_LEN:base + REQ_LEN + iv_len] = iv
            view[base + _SRC_OFF:base + _SRC_OFF + n] = data
            if shapes[slot] != (n << 9 | (REQ_LEN + iv_len) << 1 | 1):  # _shape(n, hdr, True)
                self._own_areas(slot, REQ_LEN + iv_len, n)
            reqs[slot] = (owner, tag, n, out)
            hs.append(heads[slot])
            tag += 1
        self._stage(hs)

    def _stage(self, hs: list[ctypes.c_uint16 | int]) -> None:
        """Put the heads a submit filled on the avail ring (seen by the device at `kick`)."""
        if hs:
            self._submit_reserved(hs)
            self._staged += len(hs)
            hs.clear()

    def _own_areas(self, slot: int, hdr: int, n: int) -> None:
        """Point a slot's descriptors back at its own areas, with these lengths."""
        i = self._src_idx[slot]
        d64, d32 = self._desc64, self._desc32
        d64[i] = self._own_src[slot]
        d64[i + 2] = self._own_dst[slot]
        d32[2 * i - 2] = hdr
        d32[2 * i + 2] = d32[2 * i + 6] = n
        self._slot_shape[slot] = _shape(n, hdr, True)

    def submit_prepared(self, reqs: Sequence[PreparedRequest]) -> None:
        """Stage prepared (zero-copy) requests, checked by the caller: per request, its header
        and IV (built at prepare) copied into a free slot and the slot's source and destination
        descriptors pointed at the request's own DMA memory. Visible to the device at `kick`."""
        if self._forked_dead or self._closed:
            self._check_alive()
            raise ClosedError("virtio-crypto engine is closed")
        free, view, stride = self._free_slots, self._view, self._stride
        slot_req, shapes, heads = self._slot_req, self._slot_shape, self._heads
        src_idx, d64 = self._src_idx, self._desc64
        hs: list[ctypes.c_uint16 | int] = []
        for r in reqs:
            if not free:
                self._stage(hs)
                self._wait_for_slot()
            slot = free.pop()
            base = slot * stride
            hdr = r.hdr
            view[base:base + len(hdr)] = hdr
            i = src_idx[slot]
            d64[i] = r.src_iova
            d64[i + 2] = r.dst_iova
            if shapes[slot] != r.shape:
                d32 = self._desc32
                d32[2 * i - 2] = len(hdr)
                d32[2 * i + 2] = d32[2 * i + 6] = r.n
                shapes[slot] = r.shape
            slot_req[slot] = r
            hs.append(heads[slot])
        self._stage(hs)

    def submit_large(self, owner: Receiver, tag: int, opcode: int, algo: int, session_id: int,
                     iv: bytes, data: bytes | bytearray | memoryview,
                     out: bytearray | memoryview | None = None) -> None:
        """Stage one request larger than a slot, from a DMA buffer of its own (mapped now,
        unmapped when it completes). One at a time: a second waits for the first."""
        self._check_alive()
        if self._closed:
            raise ClosedError("virtio-crypto engine is closed")
        n = len(data)
        if len(iv) + 2 * n > self.config.max_size:
            raise InvalidArgumentError(
                f"a {n}-byte request exceeds the device's max_size ({self.config.max_size} bytes"
                " of IV + source + destination)", hint="use smaller data units")
        if self._large_busy:
            self.wait_until(lambda: not self._large_busy)
        src_off = REQ_LEN + _IV_MAX
        dst_off = sc.align_up(src_off + n, 64)
        buf = self.device.dma.alloc(dst_off + n + 1)
        assert buf.iova is not None
        view = buf.view
        _REQ.pack_into(view, 0, opcode, algo, session_id, len(iv), n, n)
        struct.pack_into("<I", view, _OP_TYPE_OFF, U.VIRTIO_CRYPTO_SYM_OP_CIPHER)
        view[REQ_LEN:REQ_LEN + len(iv)] = iv
        view[src_off:src_off + n] = data
        q = self.dataq
        assert q is not None
        try:
            q.add([(buf.iova, REQ_LEN + len(iv), False), (buf.iova + src_off, n, False),
                   (buf.iova + dst_off, n + 1, True)], _Large(owner, tag, buf, n, dst_off, out))
        except BaseException:
            self.device.dma.unmap(buf)
            buf.close()
            raise
        self._large_busy = True
        self._staged += 1

    def _finish_large(self, big: _Large) -> None:
        self._large_busy = False
        view = big.buf.view
        status = view[big.dst_off + big.n]
        data: bytes | bytearray | memoryview | None = None
        if status == U.VIRTIO_CRYPTO_OK:
            if big.out is None:
                data = bytes(view[big.dst_off:big.dst_off + big.n])
            else:
                big.out[:big.n] = view[big.dst_off:big.dst_off + big.n]
                data = big.out
        del view
        self.device.dma.unmap(big.buf)  # the device is done with it
        big.buf.close()
        big.owner._deliver(big.tag, status, data)

    def kick(self) -> int:
        """Publish every staged request with one doorbell; returns how many."""
        n = self._staged
        if n:
            self._staged = 0
            self.doorbells += 1
            self.dataq.kick()  # type: ignore[union-attr]
        return n

    def reap(self) -> int:
        """Hand every completed request to its submitter; returns how many completed. A
        prepared request goes back as itself (status set, appended to its owner's list): no
        call, nothing built."""
        done = self.dataq.poll_tokens()  # type: ignore[union-attr]
        if not done:
            return 0
        view = self._view
        in_off = self._in_off
        stride = self._stride
        reqs, free = self._slot_req, self._free_slots
        large = self._large_busy  # else every token is a slot number
        for s in done:
            if large and s.__class__ is _Large:
                self._finish_large(s)
                continue
            r = reqs[s]  # type: ignore[index]
            reqs[s] = None  # type: ignore[index]
            status = view[s * stride + _STATUS_OFF]  # type: ignore[operator]
            free.append(s)  # type: ignore[arg-type]  # read: a follow-up may take it now
            if r.__class__ is not tuple:
                r.status = status  # type: ignore[union-attr]
                if status != _OK:
                    r.owner.failures += 1  # type: ignore[union-attr]
                r.ready = r.owner  # type: ignore[union-attr]  # may be submitted again
                r.sink.append(r)  # type: ignore[union-attr]
                continue
            owner, tag, n, out = r
            data: bytes | bytearray | memoryview | None = None
            if status == _OK:  # the slot is free but only a follow-up in _deliver can take it
                base = s * stride + in_off  # type: ignore[operator]
                if out is None:
                    data = bytes(view[base:base + n])
                else:
                    out[:n] = view[base:base + n]
                    data = out
            owner._deliver(tag, status, data)
        # A completion may have submitted a follow-up (the next piece of a split CBC
        # encryption): send it now rather than at the waiter's next kick.
        self.kick()
        return len(done)

    @property
    def in_flight(self) -> int:
        return self.dataq.in_flight if self.dataq is not None else 0

    @property
    def can_sleep(self) -> bool:
        """Waiters may sleep on an interrupt (the data queue has an MSI-X vector)."""
        return self._data_irq is not None

    def wait_until(self, done: Callable[[], bool], timeout: float | None = None, *,
                   poll: bool = True) -> None:
        """Kick, then wait until `done()`: busy-polling the used ring (`poll`; the clock and the
        device status are looked at only every few thousand spins, so a wait costs no syscall),
        or sleeping on the data queue's interrupt."""
        self.kick()
        if done():
            return
        q = self.dataq
        assert q is not None
        limit = self.timeout if timeout is None else timeout
        if not poll:
            self._sleep_until(done, limit)
            return
        deadline = None
        spins = 0
        while True:
            if q.has_used():
                self.reap()
                if done():
                    return
                continue
            spins += 1
            if spins & 0xFFF == 0:
                self.device.watchdog()  # a vfio-user server that died: say so, do not time out
                now = time.monotonic()
                if deadline is None:
                    deadline = now + limit
                elif now > deadline:
                    self.transport.check_status()
                    raise DeviceTimeoutError(
                        f"virtio-crypto {self.device.name}: {q.in_flight} request(s) not "
                        f"completed within {limit} s",
                        hint="the device stopped processing; check the QEMU log and dmesg "
                        "for DMAR faults")
                if spins & 0xFFFF == 0:
                    self.transport.check_status()

    def _sleep_until(self, done: Callable[[], bool], limit: float) -> None:
        q, irq = self.dataq, self._data_irq
        assert q is not None
        if irq is None:
            raise UnsupportedError(
                f"virtio-crypto {self.device.name} has no interrupt for its data queue, so a "
                "waiter cannot sleep", hint="use poll=True (busy-polling)")
        irq._check_alive()
        deadline = time.monotonic() + limit
        q.want_interrupts(True)
        try:
            while True:
                sc.full_fence()  # the flag store is visible before we look at the ring again
                if q.has_used():
                    self.reap()
                    if done():
                        return
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    self.transport.check_status()
                    raise DeviceTimeoutError(
                        f"virtio-crypto {self.device.name}: {q.in_flight} request(s) not "
                        f"completed within {limit} s (waiting on MSI-X)",
                        hint="the device stopped processing or did not interrupt; check the "
                        "device's log and dmesg for DMAR faults")
                ready = sc.wait_readable([irq.fd], min(left, IRQ_RECHECK_S))
                if ready:
                    irq.poll()  # consume the count; the ring says what completed
                    self.interrupts_seen += 1
                else:
                    self.device.watchdog()
                    self.transport.check_status()
        finally:
            q.want_interrupts(False)

    def _wait_for_slot(self) -> None:
        self.wait_until(lambda: bool(self._free_slots))

    def drain(self, timeout: float | None = None) -> None:
        """Wait for every request in flight."""
        self.wait_until(lambda: self.in_flight == 0, timeout)

    # -- control queue: sessions -----------------------------------------------------------
    def _control(self, request: bytes, in_len: int, what: str) -> bytes:
        q, buf = self.ctrlq, self._ctrl_buf
        if q is None or buf is None or self._closed:
            raise ClosedError(f"virtio-crypto {self.device.name} is closed")
        self._check_alive()
        assert buf.iova is not None
        buf.write(0, request)
        buf.write(_CTRL_IN_OFF, b"\xff" * in_len)
        token = object()
        q.add([(buf.iova, len(request), False), (buf.iova + _CTRL_IN_OFF, in_len, True)], token)
        q.kick()
        deadline = time.monotonic() + self.timeout
        while True:
            for tok, _ in q.poll():
                if tok is token:
                    return buf.read(_CTRL_IN_OFF, in_len)
            self.device.watchdog()
            if time.monotonic() > deadline:
                self.transport.check_status()
                raise DeviceTimeoutError(
                    f"virtio-crypto {self.device.name} did not answer {what} within "
                    f"{self.timeout} s")
            time.sleep(0)

    def create_session(self, algorithm: CipherAlgorithm, key: bytes, encrypt: bool) -> int:
        """Create a cipher session for one direction (QEMU's builtin sessions are per
        direction); returns the device's session id."""
        if len(key) > self.config.max_cipher_key_len:
            raise InvalidArgumentError(
                f"{len(key)}-byte key exceeds the device's max_cipher_key_len "
                f"{self.config.max_cipher_key_len}")
        req = U.virtio_crypto_op_ctrl_req()
        req.header.opcode = U.VIRTIO_CRYPTO_CIPHER_CREATE_SESSION
        req.header.algo = algorithm.virtio_algo
        req.header.queue_id = 0
        sym = req.u.sym_create_session
        sym.op_type = U.VIRTIO_CRYPTO_SYM_OP_CIPHER
        para = sym.u.cipher.para
        para.algo = algorithm.virtio_algo
        para.keylen = len(key)
        para.op = U.VIRTIO_CRYPTO_OP_ENCRYPT if encrypt else U.VIRTIO_CRYPTO_OP_DECRYPT
        direction = "encrypt" if encrypt else "decrypt"
        what = f"{algorithm.name} {direction} session creation"
        raw = self._control(bytes(req) + bytes(key),
                            ctypes.sizeof(U.virtio_crypto_session_input), what)
        out = U.virtio_crypto_session_input.from_buffer_copy(raw)
        if out.status == U.VIRTIO_CRYPTO_OK:
            sid = int(out.session_id)
            self._sessions[sid] = f"{algorithm.name}/{direction}"
            if self._journal is not None:
                self._journal.add(sid)  # only after the device gave it (see journal.py)
            return sid
        ads = self.config.advertised_ciphers()
        if algorithm.name not in ads and out.status in (U.VIRTIO_CRYPTO_NOTSUPP,
                                                        U.VIRTIO_CRYPTO_ERR):
            raise UnsupportedError(
                f"virtio-crypto {self.device.name} does not implement {algorithm.name} "
                f"({status_name(out.status)} on session creation)",
                hint=f"it advertises {', '.join(ads) or 'no known cipher'}")
        if out.status == U.VIRTIO_CRYPTO_NOTSUPP:
            raise UnsupportedError(f"{what} on {self.device.name}: the device answered NOTSUPP")
        raise DeviceError(
            f"{what} on {self.device.name} failed: {status_name(out.status)}",
            hint=f"this driver holds {len(self._sessions)} session(s); QEMU's builtin backend "
            "allows 256 in all — close unused Ciphers")

    def destroy_session(self, session_id: int) -> None:
        """Destroy a session this engine created (others are refused: QEMU 10.0 aborts on an
        unknown id)."""
        if session_id not in self._sessions:
            raise InvalidArgumentError(
                f"session {session_id} was not created by this driver (or is already destroyed);"
                " destroying an unknown session would crash QEMU's builtin backend")
        what = f"destroying session {session_id} ({self._sessions[session_id]})"
        if self._journal is not None:
            self._journal.remove(session_id)  # before the destroy: a death now leaks, no more
        req = U.virtio_crypto_op_ctrl_req()
        req.header.opcode = U.VIRTIO_CRYPTO_CIPHER_DESTROY_SESSION
        req.u.destroy_session.session_id = session_id
        raw = self._control(bytes(req), 1, what)
        del self._sessions[session_id]
        if raw[0] != U.VIRTIO_CRYPTO_OK:
            raise DeviceError(f"{what} failed: {status_name(raw[0])}")

    @property
    def sessions(self) -> dict[int, str]:
        return dict(self._sessions)

    # -- lifetime --------------------------------------------------------------------------
    def remove(self) -> None:
        """The plugin contract's remove: the same as `close()`."""
        self.close()

    def close(self) -> None:
        """Destroy our sessions, reset the device (it stops touching the rings), free the
        rings. Runs first when the device closes."""
        if self._closed:
            return
        if self._forked_dead:
            self._closed = True
            return
        errors: list[WarpdriveError] = []
        healthy = True
        try:
            self.transport.check_status()
            if self.dataq is not None and self.dataq.in_flight:
                self.drain(timeout=min(self.timeout, 5.0))
        except WarpdriveError as e:
            healthy = False
            errors.append(e)
        if healthy:
            for sid in list(self._sessions):
                try:
                    self.destroy_session(sid)
                except WarpdriveError as e:
                    errors.append(e)
                    break
        self._closed = True
        try:
            self.transport.reset()
        except WarpdriveError as e:
            errors.append(e)
        self._teardown()
        self._fork_unregister()
        if errors:
            raise errors[0]

    def _teardown(self) -> None:
        self._closed = True
        if self._journal is not None:
            if self._sessions:  # not destroyed (the device failed): the next owner tries again
                log.warning("virtio-crypto %s: %d session(s) left for the next owner to destroy",
                            self.device.name, len(self._sessions))
            self._journal.release(keep_ids=bool(self._sessions))
        dma = self.device.dma
        self._view = None  # type: ignore[assignment]
        for buf in (self._slots_buf, self._ctrl_buf):
            if buf is not None and not dma._closed and not buf.closed:
                dma.release(buf, self)
                try:  # the device is reset (or never started): nothing reaches these any more
                    dma.unmap(buf)
                    buf.close()
                except WarpdriveError:
                    pass  # DmaSpace.close() frees it with the device
        for q in (self.dataq, self.ctrlq):
            if q is not None:
                q.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _fork_describe(self) -> str:
        return f"virtio-crypto engine of {self.device.name}"

    def __repr__(self) -> str:
        return (f"<VirtioCrypto {self.device.name} slots={self.nslots if self.dataq else 0} "
                f"sessions={len(self._sessions)}{' closed' if self._closed else ''}>")


def known_algorithms() -> list[str]:
    return list(ALGORITHMS)
