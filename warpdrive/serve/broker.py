"""The broker's core: one ZIP function, its hardware queues, and the clients that share them.

`Broker` brings the function up with the ZIP driver's QM layer (`hisi_qm.bringup.QmDevice`, over
any `Device`: vfio-pci through the legacy container or iommufd, or a model over vfio-user) and
polls its queues. Each client (`BrokerClient`) has its own maps (`ClientMaps`) and virtual queues
(`ClientQueue`); its SQEs are copied into a hardware ring, checked and translated there
(`serve.sqe.mediate`), and its completions copied back.

Queues. A hardware queue has a direction (compress or decompress: the SQC's alg type), so a
client queue is attached to a hardware queue of its own direction:
- while the function has unused queues, each client queue gets one of its own (dedicated), except
  that one is always kept for a direction no queue serves yet;
- after that, client queues share the hardware queue of their direction with the fewest users;
- a hardware queue left without users stays started for the next client of that direction, or is
  restarted for the other direction when that one needs it.
Fairness: a client queue may have at most `limit` jobs on the hardware, its share of the queue
(`capacity // users`, capped by `max_inflight`), and the server polls the clients in rotating
order, so every client gets its share of every hardware queue whatever the others submit.

Jobs in flight when a client unmaps memory, resets its function, stops a queue or dies cannot be
called back (the hardware has them): their completions are dropped, and the maps they use are
unmapped from the device only once they complete (`ClientMaps` parks them). A client that turns
bus mastering off is answered once its jobs have ended (`BrokerClient.quiesce`, bounded).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..device import Device
from ..devices.hisi_qm.bringup import QmDevice
from ..devices.hisi_qm.queue import QmQueue
from ..devices.hisi_qm.regs import CQE_W7_U16
from ..devices.zip import hw
from ..emu.server import POLL_BUSY, POLL_IDLE, POLL_WORKED
from ..errors import DeviceBusyError, WarpdriveError
from .maps import ClientMaps, DeviceMap
from .sqe import RUN_MAX, Refused, mediate, mediate_run, refuse

log = logging.getLogger("warpdrive.serve")

_REFRESH_S = QmQueue.REFRESH_S
_W7 = CQE_W7_U16  # the phase word's u16 index in a CQE
_NO_JOBS: list[object] = []  # (never changed)
_SQE = hw.SQE_SIZE
# Runs shorter than this go SQE by SQE: a run check has a fixed cost of about four SQE checks
# (measured: 1 SQE 9 us as a run, 2.4 alone; 8 SQEs 1.8 us each as a run, 1.9 alone; 32 SQEs
# 0.86 us each as a run, 1.7 alone; thread CPU, load 6).
RUN_MIN = 6
# Completions go back to a client once half its hardware queue's jobs in flight are done, at
# most this many (`Broker.poll`), held for at most HOLD_S (the server's nap: `serve.run`).
GATHER = 8
HOLD_S = 300e-6
HOLD_OFF_S = 0.02  # after a hold that ran out, how long a queue answers at once


@dataclass(eq=False)
class HwQueue:
    q: QmQueue
    alg: int
    users: list[ClientQueue] = field(default_factory=list)
    progress_at: float = 0.0  # last completion (or submission into an idle queue)
    held_at: float = 0.0  # when completions were first left waiting for more (`Broker.poll`)
    hold_off: float = 0.0  # no holding before then (a hold here ran out: `Broker.poll`)
    # the SQ ring as u64 and u32 words, for copying result words back (`sqe.copy_results`)
    sq64: memoryview = field(init=False)
    sq32: memoryview = field(init=False)

    def __post_init__(self) -> None:
        self.sq64, self.sq32 = self.q.sq.cast("Q"), self.q.sq.cast("I")

    def release(self) -> None:
        """Before the queue stops: its memory goes (no views of it may remain)."""
        self.sq64.release()
        self.sq32.release()


@dataclass(eq=False)
class ClientQueue:
    client: BrokerClient
    qn: int
    alg: int
    hw: HwQueue | None = None
    inflight: int = 0
    limit: int = 1
    dead: bool = False


class Run:
    """Jobs of one client queue posted together: `n` SQEs from client slot `c0` on, in hardware
    slots `h0`.. (wrapping at the ring's end), using `maps`. Every hardware slot of the run holds
    this one object, so a completion names its run and its client slot (`c0` + its place in the
    run) with no per-job record; the maps count runs in flight, not jobs (`left` says when the
    run's last job is done)."""

    __slots__ = ("c0", "cq", "h0", "left", "maps", "n")

    def __init__(self, cq: ClientQueue, c0: int, h0: int, n: int,
                 maps: tuple[DeviceMap, ...]) -> None:
        self.cq, self.c0, self.h0, self.n, self.left, self.maps = cq, c0, h0, n, n, maps
        for m in maps:
            m.inflight += 1


class BrokerClient:
    """One client's side of the broker: its maps, its queues, its submissions. `on_complete` is
    set by whoever presents the client its function (`serve.function`)."""

    def __init__(self, broker: Broker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.maps = ClientMaps(broker.dev.dma, name)
        self.queues: dict[int, ClientQueue] = {}
        self.refused = 0
        self.submitted = 0
        self.completed = 0
        self.closed = False
        # on_complete(qn, hardware queue, hardware slot, client slot, n): n consecutive jobs of
        # the client queue are done (their results in the hardware ring from that slot on)
        self.on_complete: Callable[[int, HwQueue, int, int, int], None] = lambda *a: None
        self.after_completions: Callable[[], None] = lambda: None

    # -- queues -----------------------------------------------------------------------------
    def start_queue(self, qn: int, alg: int) -> None:
        """The client started virtual queue `qn` with direction `alg` (its SQC)."""
        self.stop_queue(qn)
        cq = ClientQueue(self, qn, alg)
        self.broker._attach(cq)
        self.queues[qn] = cq

    def stop_queue(self, qn: int) -> None:
        """The client stopped (or restarts) queue `qn`: its jobs in flight are dropped."""
        cq = self.queues.pop(qn, None)
        if cq is not None:
            cq.dead = True
            self.broker._detach(cq)

    def reset(self) -> None:
        """Function reset: every queue stops; the maps stay (they belong to the client)."""
        for qn in list(self.queues):
            self.stop_queue(qn)

    def quiesce(self, timeout_s: float) -> int:
        """Bus mastering off (the client's config write): the device writes the client's
        memory itself and the broker cannot call its jobs back, so the write is answered once
        they have ended, within `timeout_s` (Linux's bounded wait for Transactions Pending:
        docs/research/pci-bus-master.md), the broker polling meanwhile. Their results are
        dropped (each queue starts a new life; it works on once bus mastering is back).
        Returns the client's jobs still on the device after the wait."""
        old = list(self.queues.values())
        for cq in old:
            self.start_queue(cq.qn, cq.alg)  # (the old life's completions are dropped)
        deadline = time.monotonic() + timeout_s
        while any(cq.inflight for cq in old) and time.monotonic() < deadline:
            if self.broker.poll() != POLL_WORKED:
                time.sleep(50e-6)  # (a model behind the broker needs the CPU)
        return sum(cq.inflight for cq in old)

    # -- memory -----------------------------------------------------------------------------
    def mapped(self, iova: int, size: int, fd: int, offset: int, readable: bool,
               writable: bool) -> None:
        self.maps.add(iova, size, fd, offset, readable, writable)

    def unmapped(self, iova: int, size: int) -> None:
        self.maps.remove(iova, size)
        if self.maps.parked:
            self.broker._parked.add(self)

    # -- jobs -------------------------------------------------------------------------------
    def submit_run(self, qn: int, ring: memoryview, slot: int, n: int) -> tuple[int, list[int]]:
        """The SQEs in slots `slot`..`slot+n-1` of the client's queue `qn` (its ring `ring`):
        checked and translated into the hardware ring a run at a time where they all pass
        (`serve.sqe.mediate_run`), else SQE by SQE (`mediate`), those that pass posted together
        (the doorbell is rung once per pass, by `Broker.poll`). Returns how many were taken, in
        order (the rest wait: the client queue's share of the hardware queue is in use), and
        the slots among them that were refused (their SQEs already carry the status: complete
        them at once)."""
        cq = self.queues.get(qn)
        if cq is None or cq.hw is None:
            refused = list(range(slot, slot + n))
            for s in refused:
                refuse(ring, s * _SQE, hw.STATUS_BAD_REQUEST)
            self.refused += n
            return n, refused
        hq = cq.hw
        q = hq.q
        room = min(cq.limit - cq.inflight, q.capacity - q.outstanding)  # (q.space, inline)
        posted: list[Run] = []  # one entry per hardware slot taken, in order
        refused = []
        maps, hsq, h32, h64, depth, t = self.maps, q.sq, hq.sq32, hq.sq64, q.sq_depth, q.tail
        s, end = slot, slot + n
        while s < end and room > 0:
            k = min(end - s, room, depth - t, RUN_MAX)
            used = mediate_run(ring, s * _SQE, k, hsq, h32, h64, t, maps) \
                if k >= RUN_MIN else None
            if used is not None:
                posted += [Run(cq, s, t, k, used)] * k
                s += k
                room -= k
                t = t + k if t + k < depth else 0
                continue
            stop = s + k
            while s < stop and room > 0:  # the run as it is, SQE by SQE
                try:
                    one = mediate(ring, s * _SQE, hsq, t * _SQE, maps)
                except Refused as e:
                    refuse(ring, s * _SQE, e.status)
                    refused.append(s)
                    self._refused(qn, s, e)
                else:
                    posted.append(Run(cq, s, t, 1, one))
                    room -= 1
                    t = t + 1 if t + 1 < depth else 0
                s += 1
        if posted:
            q.post_many(posted, cq)
            cq.inflight += len(posted)
            self.submitted += len(posted)
            self.broker._dirty.add(hq)
        return s - slot, refused

    def _refused(self, qn: int, slot: int, e: Refused) -> None:
        self.refused += 1
        self.broker.refused += 1
        if self.refused <= 10 or self.refused % 1000 == 0:
            log.warning("%s: SQE %d of queue %d refused (%s): %s", self.name, slot, qn,
                        hw.STATUS_NAMES.get(e.status, e.status), e.reason)

    def close(self) -> None:
        """The client is gone: its queues stop, its maps go as soon as no job uses them."""
        if self.closed:
            return
        self.closed = True
        self.reset()
        self.maps.clear()
        if self.maps.parked:
            self.broker._parked.add(self)
        self.broker._clients.pop(self, None)


class Broker:
    """The shared function (see the module docstring). `poll()` is the server loop's hook."""

    def __init__(self, dev: Device, *, max_inflight: int = 256, gather: int = GATHER,
                 hold_s: float = HOLD_S) -> None:
        self.dev = dev
        self.name = dev.name
        self.max_inflight = max(1, max_inflight)
        # Completions are handed back in stretches: a hardware queue leaves them on its CQ
        # until half its jobs in flight are done (at most `gather`), for up to `hold_s`, so a
        # pass pays its fixed costs (harvest, results back, CQEs) once per stretch, not for
        # each job the device trickles out; the other half keeps the device busy meanwhile,
        # and a queue with up to three jobs in flight is answered at once. 1 (or a hold of 0):
        # every pass hands back whatever it finds.
        self.gather = max(1, gather) if hold_s > 0 else 1
        self.hold_s = hold_s
        self.holds = [0, 0]  # holds that gathered what they waited for, holds that ran out
        self.qm = QmDevice(dev, hw.ZIP, doorbell="mmap", interrupts=False)
        # With doorbell isolation every queue has a doorbell page of its own (nothing to store
        # again, see `poll`); without it, one register serves them all.
        self._shared_doorbell = not self.qm.caps.db_isolation
        self.hw: list[HwQueue] = []
        self._clients: dict[BrokerClient, None] = {}  # in the order they connected
        self._dirty: set[HwQueue] = set()
        self._parked: set[BrokerClient] = set()
        self.jobs = 0
        self.refused = 0
        self.closed = False

    @property
    def qp_num(self) -> int:
        return int(self.qm.qp_num)

    @property
    def revision(self) -> int:
        return int(self.qm.version)

    def client(self, name: str) -> BrokerClient:
        c = BrokerClient(self, name)
        self._clients[c] = None
        return c

    @property
    def clients(self) -> list[BrokerClient]:
        return list(self._clients)

    # -- hardware queues --------------------------------------------------------------------
    def _start(self, alg: int) -> HwQueue:
        hq = HwQueue(self.qm.start_queue(alg), alg)
        self.hw.append(hq)
        log.info("hardware queue %d started (%s)", hq.q.qn,
                 "compress" if alg == hw.ZIP_QC_COMPRESS else "decompress")
        return hq

    def _restart(self, hq: HwQueue, alg: int) -> HwQueue:
        self.hw.remove(hq)
        self._dirty.discard(hq)
        hq.release()
        self.qm.stop_queue(hq.q)
        return self._start(alg)

    def _attach(self, cq: ClientQueue) -> None:
        alg = cq.alg
        if alg not in (hw.ZIP_QC_COMPRESS, hw.ZIP_QC_DECOMPRESS):
            raise DeviceBusyError(f"{cq.client.name}: queue {cq.qn} has direction {alg}, "
                                  "neither compress (0) nor decompress (1)")
        free = self.qp_num - len(self.hw)
        other_served = any(h.alg != alg for h in self.hw)
        idle_same = [h for h in self.hw if h.alg == alg and not h.users and not h.q.outstanding]
        chosen: HwQueue | None = None
        if idle_same:
            chosen = idle_same[0]
        elif free > (0 if other_served else 1):
            chosen = self._start(alg)
        else:
            same = [h for h in self.hw if h.alg == alg]
            idle_other = [h for h in self.hw if h.alg != alg and not h.users
                          and not h.q.outstanding]
            if same:
                chosen = min(same, key=lambda h: len(h.users))
            elif free:
                chosen = self._start(alg)
            elif idle_other:
                chosen = self._restart(idle_other[0], alg)
        if chosen is None:
            raise DeviceBusyError(f"no hardware queue for {cq.client.name}'s queue {cq.qn}: all "
                                  f"{self.qp_num} serve the other direction and are in use")
        chosen.users.append(cq)
        cq.hw = chosen
        self._share(chosen)
        log.info("%s: queue %d on hardware queue %d (%s, %d user%s)", cq.client.name, cq.qn,
                 chosen.q.qn, "dedicated" if len(chosen.users) == 1 else "shared",
                 len(chosen.users), "" if len(chosen.users) == 1 else "s")

    def _detach(self, cq: ClientQueue) -> None:
        hq, cq.hw = cq.hw, None
        if hq is not None and cq in hq.users:
            hq.users.remove(cq)
            self._share(hq)

    def _share(self, hq: HwQueue) -> None:
        n = max(1, len(hq.users))
        for u in hq.users:
            u.limit = max(1, min(self.max_inflight, hq.q.capacity // n))

    # -- the loop ---------------------------------------------------------------------------
    def poll(self) -> int:
        """Ring the hardware doorbells for this pass's submissions, reap completions and hand
        them back. POLL_WORKED if it did, POLL_BUSY while jobs are in flight (the server keeps
        spinning), else POLL_IDLE."""
        busy = worked = bool(self._dirty)
        stalled = False
        now = 0.0
        dirty = self._dirty
        if dirty:
            self._dirty = set()
            for hq in dirty:
                if not hq.q.outstanding - hq.q.unrung:
                    hq.progress_at = time.perf_counter()  # idle until now
                hq.q.ring()
        touched: set[BrokerClient] = set()
        gather = self.gather
        for hq in self.hw:
            q = hq.q
            if not q.outstanding:
                continue
            busy = True
            # The head CQE's phase word first: most passes find nothing, and need no call.
            if q.cq16[q.cq_head * 8 + _W7] & 1 == q.phase:
                want = q.outstanding >> 1
                if want > gather:
                    want = gather
                if want > 1 and not q.completed(want):
                    # Fewer than half the queue's jobs in flight done (or `gather`): leave
                    # them for a later pass, for at most `hold_s` (CQEs are written in ring
                    # order: the n-th one's phase word says n are waiting).
                    now = now or time.perf_counter()
                    if not hq.held_at:
                        if now >= hq.hold_off:
                            hq.held_at = now
                            continue
                    elif now - hq.held_at < self.hold_s:
                        continue
                    else:
                        # The hold ran out first: this queue's jobs finish further apart than
                        # a hold, which then only delays them. Answer at once for a while.
                        self.holds[1] += 1
                        hq.hold_off = now + HOLD_OFF_S
                elif hq.held_at:
                    self.holds[0] += 1
                hq.held_at = 0.0
                s0, slots, jobs, _owner = q.harvest()
            else:
                jobs = _NO_JOBS
            if jobs:
                worked = True
                hq.progress_at = time.perf_counter()
                depth = q.sq_depth
                while True:
                    # Handed back a run at a time, each stretch of one run's jobs at once
                    # (written out here, not called: most passes hand back one stretch).
                    # With consecutive slots (`s0` >= 0) a run's next jobs are in the next
                    # ones, unless its slots were harvested out of order before (the count).
                    k = len(jobs)
                    self.jobs += k
                    i = 0
                    while i < k:
                        run: Run = jobs[i]  # type: ignore[assignment]
                        h = slots[i]
                        pos = (h - run.h0) % depth  # the job's place in its run
                        cnt = 1
                        if s0 >= 0:
                            cnt = min(run.n - pos, k - i)
                            if cnt > 1 and jobs[i:i + cnt].count(run) != cnt:
                                cnt = 1
                        i += cnt
                        run.left -= cnt
                        if not run.left:
                            for m in run.maps:
                                m.inflight -= 1
                        cq = run.cq
                        cq.inflight -= cnt
                        if cq.dead:
                            continue  # stopped or reset meanwhile: an earlier life's results
                        c = cq.client
                        c.completed += cnt
                        c.on_complete(cq.qn, hq, h, run.c0 + pos, cnt)
                        touched.add(c)
                    # the rest, after a wrap (its head CQE's phase first, as above)
                    if not q.outstanding or q.cq16[q.cq_head * 8 + _W7] & 1 != q.phase:
                        break
                    s0, slots, jobs, _owner = q.harvest()
            else:
                now = now or time.perf_counter()
                if now - hq.progress_at > _REFRESH_S:
                    hq.progress_at = now
                    stalled = True
                    # A polled doorbell word shows only its last store: queues that share one
                    # (a function without doorbell isolation) may hide each other's, so a queue
                    # without progress stores its own again (same absolute tail: idempotent).
                    if self._shared_doorbell:
                        q.refresh()
        if stalled:
            # A device that went away (a model process that died) raises here
            # (ConnectionLostError): the broker stops, and its clients hear of it at once
            # instead of waiting out their job timeouts.
            self.dev.watchdog()
        for c in touched:
            c.after_completions()
        if self._parked:
            for c in list(self._parked):
                c.maps.release_idle()
                if not c.maps.parked:
                    self._parked.discard(c)
        return POLL_WORKED if worked else POLL_BUSY if busy else POLL_IDLE

    def stats(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "refused": self.refused, "clients": len(self._clients),
                "holds_gathered": self.holds[0], "holds_ran_out": self.holds[1],
                "device_kicks": getattr(self.dev, "kicks", 0),  # a vfio-user device's wake-ups
                "hw_queues": [{"qn": h.q.qn, "alg": h.alg, "users": len(h.users),
                               "in_flight": h.q.outstanding} for h in self.hw]}

    def close(self) -> None:
        """Stop every queue and reset the function (QmDevice.close), then close the device."""
        if self.closed:
            return
        self.closed = True
        for c in list(self._clients):
            c.close()
        deadline = time.monotonic() + 2.0
        while any(h.q.outstanding for h in self.hw) and time.monotonic() < deadline:
            self.poll()
        for hq in self.hw:
            hq.release()
        try:
            self.qm.close()
        except WarpdriveError as e:
            log.warning("closing %s: %s", self.name, e)
        for c in list(self._parked):
            c.maps.release_idle()
        self.dev.close()
