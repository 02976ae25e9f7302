"""The simulated peer network: delay, loss, duplication, reordering, partitions.

Rules:

- Every decision (delay, loss, duplicate) is drawn from the network's own
  ``random.Random``, in the order messages are sent, so a seed replays.
- Each copy of a message gets an independent delay, so messages reorder
  freely; a ``DelayProfile`` (chosen by the seed) shapes the distribution,
  with occasional long spikes in the jittery profiles.
- A partition is a set of cut directed links ``(frm, to)``. A message is
  dropped if its link is cut when it is sent *or* when it would arrive (a
  partition that starts while a message is in flight loses it). A cut in one
  direction only is an asymmetric partition: ``to`` still reaches ``frm``.
- The network knows nothing of crashes: the simulation drops a message that
  arrives at a crashed node. Messages already sent by a node that then crashes
  stay in flight, as on a real wire.
- Two layers of cuts: ``cuts`` set by the nemesis (replaced as a whole), and
  ``flap_cuts`` toggled by a flapping node; a link is cut if either cuts it.
- ``heal`` clears both and ``calm`` stops loss and duplication (the liveness
  phase); delays remain.
- In ``wire`` mode (drawn per run) every message is encoded to its protobuf
  ``Envelope`` and decoded back before it travels, exactly as the real bus
  does; a message that does not survive the round trip unchanged is reported
  to ``on_wire_error`` (and still dropped, as a real peer would).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from paxoskv.paxos import codec
from paxoskv.paxos.types import Message
from paxoskv.sim.scheduler import Scheduler


@dataclass(frozen=True, slots=True)
class DelayProfile:
    """One-way delay: ``min + Exp(mean)``, plus with ``spike_probability`` a
    uniform extra in ``[spike_min_us, spike_max_us]``."""

    name: str
    min_us: int
    mean_us: int
    spike_probability: float = 0.0
    spike_min_us: int = 0
    spike_max_us: int = 0


DELAY_PROFILES: tuple[DelayProfile, ...] = (
    DelayProfile("lan", min_us=100, mean_us=400),
    DelayProfile(
        "datacenter",
        min_us=300,
        mean_us=1_500,
        spike_probability=0.01,
        spike_min_us=5_000,
        spike_max_us=20_000,
    ),
    DelayProfile("wan", min_us=4_000, mean_us=8_000),
    DelayProfile(
        "jittery",
        min_us=200,
        mean_us=2_000,
        spike_probability=0.05,
        spike_min_us=30_000,
        spike_max_us=150_000,
    ),
)


@dataclass(slots=True)
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    cut: int = 0
    duplicated: int = 0


class Network:
    """Carries core messages between nodes through the scheduler."""

    def __init__(
        self,
        scheduler: Scheduler,
        rng: random.Random,
        profile: DelayProfile,
        *,
        loss: float,
        duplicate: float,
        deliver: Callable[[Message], None],
        wire: bool = False,
        on_wire_error: Callable[[str], None] | None = None,
    ) -> None:
        assert 0.0 <= loss <= 0.3, loss
        assert 0.0 <= duplicate <= 0.5, duplicate
        self._sched = scheduler
        self._rng = rng
        self.profile = profile
        self.loss = loss
        self.duplicate = duplicate
        self._deliver = deliver
        self.wire = wire
        self._on_wire_error = on_wire_error
        self.cuts: frozenset[tuple[int, int]] = frozenset()
        self.flap_cuts: frozenset[tuple[int, int]] = frozenset()
        self._cut_all: frozenset[tuple[int, int]] = frozenset()
        self.stats = NetworkStats()

    # ---- Faults ---------------------------------------------------------------

    def set_cuts(self, links: Iterable[tuple[int, int]]) -> None:
        self.cuts = frozenset(links)
        self._cut_all = self.cuts | self.flap_cuts

    def set_flap_cuts(self, links: Iterable[tuple[int, int]]) -> None:
        self.flap_cuts = frozenset(links)
        self._cut_all = self.cuts | self.flap_cuts

    def heal(self) -> None:
        self.set_cuts(())
        self.set_flap_cuts(())

    def calm(self) -> None:
        """No more loss or duplication (delays stay)."""
        self.loss = 0.0
        self.duplicate = 0.0

    def is_cut(self, frm: int, to: int) -> bool:
        return (frm, to) in self._cut_all

    # ---- Carrying -------------------------------------------------------------

    def delay_us(self) -> int:
        p = self.profile
        rng = self._rng
        d = p.min_us + int(rng.expovariate(1.0 / p.mean_us))
        if p.spike_probability and rng.random() < p.spike_probability:
            d += rng.randint(p.spike_min_us, p.spike_max_us)
        return d

    def send(self, msg: Message) -> None:
        stats = self.stats
        stats.sent += 1
        assert msg.frm != msg.to, f"message to self: {msg}"
        if self._cut_all and (msg.frm, msg.to) in self._cut_all:
            stats.cut += 1
            return
        if self.wire:
            try:
                _, back = codec.decode(codec.encode(msg, "sim"))
            except Exception as exc:  # noqa: BLE001 - reported, never raised
                back = None
                problem = f"{type(exc).__name__}: {exc}"
            else:
                problem = "" if back == msg else f"decoded as {back!r}"
            if problem:
                if self._on_wire_error is not None:
                    self._on_wire_error(f"{msg!r} does not survive the wire: {problem}")
                return
            assert back is not None
            msg = back
        rng = self._rng
        if self.loss and rng.random() < self.loss:
            stats.lost += 1
            return
        self._sched.after(self.delay_us(), self._arrive, msg)
        if self.duplicate and rng.random() < self.duplicate:
            stats.duplicated += 1
            self._sched.after(self.delay_us(), self._arrive, msg)

    def _arrive(self, msg: Message) -> None:
        if self._cut_all and (msg.frm, msg.to) in self._cut_all:
            self.stats.cut += 1
            return
        self.stats.delivered += 1
        self._deliver(msg)
