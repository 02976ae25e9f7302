"""The floor of a put: what three paxoskv replicas cost per command when
nothing but their own Python runs.

Run it from the repository root as ``.venv/bin/python bench/floor.py``.

Theory of operation
-------------------
Three ``Replica`` objects -- the same consensus core, state machine and
storage code a node runs -- live in this one process. A message one of them
sends is handed straight to ``step`` of the one it is for: no ZeroMQ, no
sockets, no threads, no event loop, no gRPC, no client. One replica is made
leader, then, round after round, ``--slot`` puts are proposed (two in three
of them at a follower, which forwards them, as load spread over all nodes
is) and the replicas run ``persist -> send -> apply`` until nothing is left
to do. A round's puts enter at three nodes, so they make up to three slots
(the leader's own and each follower's forwarded batch): the table shows the
puts per slot that resulted. Every put is a real client command: 64 client sessions, each with
its own rising sequence number, 100-byte values (``--value-bytes``) over
10,000 keys.

The figure is the process's CPU time (every thread's) per put, for all three
replicas together. It is a floor, not an estimate of a node: a node pays
all of it and then its sockets, its event loop, the thread switches around
them and its gRPC front end. Options add what a node really does:

* ``--codec``: every message goes through the wire codec (encode, decode);
* ``--storage leveldb``: each replica keeps its log and state in LevelDB in
  a temporary directory, with the synced writes a node makes (``fsync``
  included, with the kernel's part of it, as far as it is charged to this
  process);
* ``--reads``: then as many linearizable reads per round, spread the same
  way (a read at a follower asks the leader for a read index; one at the
  leader waits for a heartbeat round), each looked up once served.

At the end the three state machines must hold the same keys and values and
have applied every command; the run fails (exit 1) otherwise, so a figure is
never printed for work that was not done.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time

from paxoskv.kv import commands
from paxoskv.paxos import codec
from paxoskv.paxos.types import Config, Role
from paxoskv.replica import Replica
from paxoskv.storage.memory import MemoryStorage

IDS = (1, 2, 3)
SESSIONS = 64
KEYS = 10_000


class Floor:
    def __init__(self, *, storage: str, wire: bool, base_dir: str | None) -> None:
        self.wire = wire
        self.replicas: dict[int, Replica] = {}
        for i in IDS:
            if storage == "leveldb":
                from paxoskv.storage.leveldb import LevelDBStorage

                store = LevelDBStorage.open(f"{base_dir}/node{i}", i, "floor", create=True)
            else:
                store = MemoryStorage()
            cfg = Config(node_id=i, peers=IDS, heartbeat_ticks=5, election_ticks_min=50)
            self.replicas[i] = Replica(cfg, store, random.Random(i))
        self.sequences = [0] * SESSIONS
        self.proposed = 0
        self.read_ids = 0

    def settle(self) -> int:
        """persist -> send -> apply on every replica until none has work;
        return how many reads were served (each looked up, as a node does)."""
        served = 0
        busy = True
        while busy:
            busy = False
            for replica in self.replicas.values():
                out: list = []
                done = replica.run_once(out.extend)
                if done is None:
                    continue
                busy = True
                for read_id, ok in done.reads:
                    if not ok:
                        raise SystemExit(f"floor: read {read_id} was refused")
                    replica.sm.get(b"key%05d" % (read_id % KEYS))
                    served += 1
                for msg in out:
                    if self.wire:
                        msg = codec.decode(codec.encode(msg, "floor"))[1]
                    self.replicas[msg.to].step(msg)
        return served

    def elect(self) -> int:
        for _ in range(1000):
            for replica in self.replicas.values():
                replica.tick()
            self.settle()
            for i, replica in self.replicas.items():
                if replica.core.role is Role.LEADER and not replica.core.has_ready():
                    return i
        raise SystemExit("floor: no leader after 1000 ticks")

    def round(self, slot: int, value: bytes) -> None:
        for _ in range(slot):
            n = self.proposed
            self.proposed += 1
            session = n % SESSIONS
            self.sequences[session] += 1
            cmd = commands.encode_put(f"floor-{session}", self.sequences[session], b"key%05d" % (n % KEYS), value)
            if not self.replicas[IDS[n % 3]].propose(cmd):
                raise SystemExit("floor: a replica refused a proposal (no leader known)")
        self.settle()

    def read_round(self, reads: int) -> None:
        """``reads`` linearizable reads, two in three at a follower (a
        read-index request to the leader), the rest at the leader (a round)."""
        for _ in range(reads):
            self.read_ids += 1
            self.replicas[IDS[self.read_ids % 3]].read(self.read_ids)
        served = self.settle()
        if served != reads:
            raise SystemExit(f"floor: {served} of {reads} reads served")

    def check(self) -> None:
        applied = {i: r.sm.applied_index for i, r in self.replicas.items()}
        if len(set(applied.values())) != 1:
            raise SystemExit(f"floor: replicas applied different prefixes: {applied}")
        first = self.replicas[IDS[0]].sm
        keys = [b"key%05d" % j for j in range(min(KEYS, self.proposed))]
        for i in IDS:
            sm = self.replicas[i].sm
            if len(sm) != len(first) or any(sm.get(k) != first.get(k) for k in keys):
                raise SystemExit(f"floor: node {i}'s state differs from node {IDS[0]}'s")
            for n, sequence in enumerate(self.sequences):
                session = sm.session(f"floor-{n}")
                if sequence and (session is None or session.sequence != sequence):
                    raise SystemExit(f"floor: node {i} has not applied put {sequence} of session {n}")

    def close(self) -> None:
        for replica in self.replicas.values():
            replica.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slot", type=int, action="append", help="puts proposed per round (repeatable; default 1, 7, 64)")
    ap.add_argument("--puts", type=int, default=20_000, help="puts measured per slot size (default 20000)")
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--codec", action="store_true", help="every message through the wire codec")
    ap.add_argument("--storage", choices=("memory", "leveldb"), default="memory")
    ap.add_argument("--reads", action="store_true", help="also linearizable reads, the same numbers per round")
    args = ap.parse_args(argv)
    slots = args.slot or [1, 7, 64]
    if any(s < 1 for s in slots) or args.puts < 1 or args.value_bytes < 0:
        ap.error("--slot and --puts must be at least 1, --value-bytes at least 0")
    base_dir = tempfile.mkdtemp(prefix="paxoskv-floor-") if args.storage == "leveldb" else None
    floor = Floor(storage=args.storage, wire=args.codec, base_dir=base_dir)
    try:
        leader = floor.elect()
        value = b"v" * args.value_bytes
        extras = ", ".join(x for x in ("wire codec" if args.codec else "", f"{args.storage} storage") if x)
        print(f"paxoskv floor: 3 replicas in one process, no sockets or threads; leader node {leader}; {extras}")
        sm = floor.replicas[leader].sm
        kinds = [("puts", lambda n: floor.round(n, value))] + ([("reads", floor.read_round)] if args.reads else [])
        for kind, one_round in kinds:
            per_slot_head = "puts per slot" if kind == "puts" else ""
            head = f"us CPU per {kind[:-1]} (3 replicas)"
            print(f"{kind + ' per round':>15}  {kind:>7}  {per_slot_head:>13}  {head:>28}  {kind + '/s of CPU':>14}")
            for slot in slots:
                rounds = max(1, args.puts // slot)
                applied = sm.applied_index
                t0 = time.process_time()
                for _ in range(rounds):
                    one_round(slot)
                cpu = time.process_time() - t0
                ops = rounds * slot
                per_slot = f"{ops / max(1, sm.applied_index - applied):.1f}" if kind == "puts" else ""
                print(f"{slot:>15}  {ops:>7}  {per_slot:>13}  {cpu / ops * 1e6:>28.1f}  {ops / cpu:>14,.0f}")
        floor.check()
        print(f"checked: all three replicas applied {floor.replicas[leader].sm.applied_index} slots and hold the same state")
    finally:
        floor.close()
        if base_dir is not None:
            shutil.rmtree(base_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
