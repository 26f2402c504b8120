"""`crypto`: a virtio-crypto PCI function (virtio 1.2 §5.9) doing AES ECB/CBC/CTR/XTS.

    warpdrive emu crypto --socket /tmp/crypto.sock [--set KEY=VALUE ...]

The transport is `warpdrive.emu.virtio` (modern virtio-pci, split rings, MSI-X); this module is
the crypto device: queue N (= max_dataqueues) is the control queue, which creates and destroys
sessions, queues 0..N-1 carry cipher requests. It offers no virtio-crypto feature bit, so
requests use the padded layouts of §5.9.7 (what Linux 6.12's virtio_crypto sends), and it
judges every request as the specification describes, answering with the §5.9.7.1 status codes;
a request that breaks a ring rule stops the device with DEVICE_NEEDS_RESET instead. Facts and
citations: docs/research/virtio-crypto.md.

Options (``--set``):
  dataqueues=1        max_dataqueues (1-16)
  queue_size=256      the maximum size of every queue
  sessions=256        live sessions at most (QEMU's builtin backend allows 256)
  keep_sessions=0     1: sessions survive a device reset, as in QEMU's builtin backend (the
                      spec's reset forgets them; this is for testing drivers against QEMU)
  max_size=16777216   max_size in the config: iv + source + destination bytes per request
  algorithms=aes-ecb,aes-cbc,aes-ctr,aes-xts   offered (cipher_algo_l) and accepted
  indirect=1, event_idx=1   offer VIRTIO_F_INDIRECT_DESC / VIRTIO_F_EVENT_IDX
  latency_us=0        complete each data request no sooner than this after it was taken (a
                      slow device, for measuring how drivers wait)

Needs the `cryptography` package (`pip install 'warpdrive[emu-crypto]'`).
"""

from __future__ import annotations

import time
from collections import deque

from ....errors import InvalidArgumentError
from ...model import DmaFault
from ...virtio import layout as VL
from ...virtio.transport import (
    MAX_CHAINS_PER_POLL,
    VirtioPciModel,
    option_flag,
    option_int,
)
from ...virtio.vring import Chain, DeviceVirtqueue
from . import layout as L
from .service import MODES, CryptoService, RequestError

_ALGO_BY_NAME = {m.name: algo for algo, m in MODES.items()}
_LOG_FIRST = 20  # request errors logged one by one, then every 1000th


class VirtioCryptoModel(VirtioPciModel):
    name = "crypto"
    virtio_id = L.VIRTIO_ID
    class_code = 0x108000  # encryption controller, other
    subsystem_vendor_id = VL.PCI_VENDOR
    subsystem_id = 0x5744  # "WD": tells this model from QEMU's device (subsystem 0x1100)

    def configure(self, options: dict[str, str]) -> None:
        self.dataqueues = option_int(options, "dataqueues", 1, 1, 16)
        self.queue_size = option_int(options, "queue_size", 256, 1, VL.MAX_QUEUE_SIZE)
        if self.queue_size & (self.queue_size - 1):
            raise InvalidArgumentError(f"option queue_size={self.queue_size} is not a power of 2")
        max_sessions = option_int(options, "sessions", 256, 1, 1 << 20)
        self.keep_sessions = option_flag(options, "keep_sessions", False)
        max_size = option_int(options, "max_size", 1 << 24, 16, 1 << 30)
        names = options.pop("algorithms", ",".join(_ALGO_BY_NAME)).split(",")
        unknown = [n for n in names if n not in _ALGO_BY_NAME]
        if unknown or not names:
            raise InvalidArgumentError(
                f"option algorithms: unknown {', '.join(unknown) or '(empty)'}",
                hint=f"choose from {', '.join(_ALGO_BY_NAME)}")
        self.service = CryptoService(
            algorithms=frozenset(_ALGO_BY_NAME[n] for n in names), max_sessions=max_sessions,
            max_key_len=64, max_size=max_size)
        self._errors = 0
        self.latency = option_int(options, "latency_us", 0, 0, 10_000_000) / 1e6
        self._held: deque[tuple[float, DeviceVirtqueue, Chain, int]] = deque()

    def num_queues(self) -> int:
        return self.dataqueues + 1  # data queues 0..N-1, then the control queue (§5.9.2)

    def queue_max_size(self, index: int) -> int:
        return self.queue_size

    def device_config(self) -> bytes:
        algo_mask = sum(1 << a for a in self.service.algorithms)
        return L.CONFIG.pack(
            L.S_HW_READY, self.dataqueues, 1 << L.SERVICE_CIPHER,
            algo_mask & 0xFFFF_FFFF, algo_mask >> 32, 0, 0, 0, 0,
            self.service.max_key_len, 0, 0, self.service.max_size)

    def device_reset(self) -> None:
        self._held.clear()
        if not self.keep_sessions:
            self.service.clear()

    def poll(self) -> bool:
        released = self._release_held()
        return super().poll() or released or bool(self._held)  # keep the server polling

    def _release_held(self) -> bool:
        """Complete the held requests whose latency has passed, oldest first."""
        if not self._held or self.broken:
            return False
        now = time.monotonic()
        queues = set()
        while self._held and self._held[0][0] <= now:
            _, queue, chain, written = self._held.popleft()
            queue.push(chain, written)
            queues.add(queue)
        try:
            for queue in queues:
                self.publish(queue)
        except DmaFault as e:
            self.needs_reset(f"used ring unreachable: {e}")
        return bool(queues)

    # -- requests -------------------------------------------------------------------------
    def process(self, queue: DeviceVirtqueue) -> None:
        control = queue.index == self.dataqueues
        for _ in range(min(queue.available(), MAX_CHAINS_PER_POLL)):
            chain = queue.pop()
            written = self._control(chain) if control else self._data(chain)
            if written is None:
                return  # the device needs a reset: leave the chain unanswered
            if self.latency and not control:
                self._held.append((time.monotonic() + self.latency, queue, chain, written))
            else:
                queue.push(chain, written)

    def _refuse(self, what: str, e: RequestError) -> None:
        self._errors += 1
        if self._errors <= _LOG_FIRST or self._errors % 1000 == 0:
            self.log(f"{what}: status {e.status}: {e} (request error #{self._errors})")

    def _control(self, chain: Chain) -> int | None:
        """§5.9.7.2: create or destroy a session; returns the bytes written."""
        dma = self.dma
        wlen = chain.writable_len
        if wlen < 1:  # not even a status byte
            self.needs_reset("control request without a device-writable status")
            return None
        opcode = sid = 0
        try:
            if chain.readable_len < L.CTRL_FIXED_LEN:
                raise RequestError(L.ERR, f"control request of {chain.readable_len} bytes is "
                                   f"shorter than its {L.CTRL_FIXED_LEN}-byte fixed part")
            fixed = chain.read(dma, 0, L.CTRL_FIXED_LEN)
            opcode = L.CTRL_HEADER.unpack_from(fixed)[0]
            if opcode == L.CIPHER_CREATE_SESSION:
                sid = self._create(chain, fixed)
            elif opcode == L.CIPHER_DESTROY_SESSION:
                self.service.destroy(L.DESTROY_FLF.unpack_from(fixed, 16)[0])
            else:
                raise RequestError(L.NOTSUPP, f"control opcode {opcode:#06x} is not supported")
            status = L.OK
        except RequestError as e:
            self._refuse(f"control opcode {opcode:#06x}", e)
            status = e.status
        except DmaFault as e:
            self._refuse(f"control opcode {opcode:#06x}", RequestError(L.ERR, str(e)))
            status = L.ERR
        # The outcome: a 16-byte session input for a create (and anything with room for one),
        # else the 1-byte status of a destroy.
        if wlen >= L.CREATE_SESSION_INPUT.size:
            out = L.CREATE_SESSION_INPUT.pack(sid if status == L.OK else 0, status, 0)
        else:
            out = bytes([status])
        try:
            chain.write(dma, 0, out)
        except DmaFault as e:
            self.needs_reset(f"control outcome unwritable: {e}")
            return None
        return len(out)

    def _create(self, chain: Chain, fixed: bytes) -> int:
        algo, key_len, op = L.CIPHER_SESSION_FLF.unpack_from(fixed, 16)
        (op_type,) = L.SYM_CREATE_OP_TYPE.unpack_from(fixed, L.SYM_CREATE_OP_TYPE_OFF)
        if op_type != L.SYM_OP_CIPHER:
            raise RequestError(L.NOTSUPP, f"symmetric session op_type {op_type} (only plain "
                               "cipher sessions are supported)")
        if key_len > self.service.max_key_len:
            raise RequestError(L.ERR, f"{key_len}-byte key exceeds max_cipher_key_len")
        if L.CTRL_FIXED_LEN + key_len > chain.readable_len:
            raise RequestError(L.ERR, f"the {key_len}-byte key runs past the request")
        key = chain.read(self.dma, L.CTRL_FIXED_LEN, key_len)
        return self.service.create(algo, key, op)

    def _data(self, chain: Chain) -> int | None:
        """§5.9.7.3 + Symmetric algorithms Operation: one cipher request; bytes written."""
        dma = self.dma
        wlen = chain.writable_len
        if wlen < 1:
            self.needs_reset("data request without a device-writable status byte")
            return None
        status_at = wlen - 1  # virtio_crypto_inhdr closes the device-writable part
        written = 0
        try:
            if chain.readable_len < L.DATA_FIXED_LEN:
                raise RequestError(L.ERR, f"data request of {chain.readable_len} bytes is "
                                   f"shorter than its {L.DATA_FIXED_LEN}-byte fixed part")
            fixed = chain.read(dma, 0, L.DATA_FIXED_LEN)
            opcode, _algo, sid, _flag, _ = L.DATA_HEADER.unpack_from(fixed)
            if opcode not in (L.CIPHER_ENCRYPT, L.CIPHER_DECRYPT):
                raise RequestError(L.NOTSUPP, f"data opcode {opcode:#06x} is not supported")
            (op_type,) = L.SYM_DATA_OP_TYPE.unpack_from(fixed, L.SYM_DATA_OP_TYPE_OFF)
            if op_type != L.SYM_OP_CIPHER:
                raise RequestError(L.NOTSUPP, f"symmetric op_type {op_type} (only plain cipher "
                                   "requests are supported)")
            iv_len, src_len, dst_len = L.CIPHER_DATA_FLF.unpack_from(fixed, 24)
            total = iv_len + src_len + dst_len
            if total > self.service.max_size:
                raise RequestError(L.ERR, f"iv + source + destination of {total} bytes exceeds "
                                   f"max_size {self.service.max_size}")
            if L.DATA_FIXED_LEN + iv_len + src_len > chain.readable_len:
                raise RequestError(L.ERR, f"iv ({iv_len}) and source ({src_len}) run past the "
                                   f"{chain.readable_len}-byte request")
            if dst_len < src_len or dst_len > status_at:
                raise RequestError(L.ERR, f"destination of {dst_len} bytes for {src_len} bytes of "
                                   f"source in a {wlen}-byte writable buffer")
            iv = chain.read(dma, L.DATA_FIXED_LEN, iv_len)
            src = chain.read(dma, L.DATA_FIXED_LEN + iv_len, src_len)  # all read before writing:
            out = self.service.cipher(opcode, sid, iv, src)  # source and destination may overlap
            chain.write(dma, 0, out)
            written = len(out)
            status = L.OK
        except RequestError as e:
            self._refuse("cipher request", e)
            status = e.status
        except DmaFault as e:
            self._refuse("cipher request", RequestError(L.ERR, str(e)))
            status = L.ERR
        try:
            chain.write(dma, status_at, bytes([status]))
        except DmaFault as e:
            self.needs_reset(f"status byte of a cipher request unwritable: {e}")
            return None
        # used len counts the bytes written from the start of the writable part (split ring:
        # The Virtqueue Used Ring); the status byte counts when it follows the output directly.
        return written + 1 if status_at == written else written


MODEL = VirtioCryptoModel
