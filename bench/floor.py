"""The floor of a put: what three paxoskv replicas cost per command when
nothing but their own Python runs.

Run it from the repository root as ``.venv/bin/python bench/floor.py``.

Theory of operation
-------------------
Three ``ReplicaNode`` objects -- the node layer a server runs: consensus
core, state machine, storage and the table of waiting calls -- live in this
one process. A message one of them sends is handed straight to ``step`` of
the one it is for: no ZeroMQ, no sockets, no threads, no event loop, no
gRPC front end. One node is made leader, then, round after round, ``--slot``
puts are called (two in three of them at a follower, which forwards them,
as load spread over all nodes is) and the nodes run ``prepare -> write ->
finish`` until nothing is left to do. A round's puts enter at three nodes, so they make up to three slots
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

from paxoskv.paxos import codec
from paxoskv.paxos.types import Config, Message, Role
from paxoskv.replica import Call, Replica, ReplicaNode
from paxoskv.storage.memory import MemoryStorage
from paxoskv.v1 import kv_pb2

IDS = (1, 2, 3)
SESSIONS = 64
KEYS = 10_000


def _ignore(_: Call) -> None:
    pass  # the floor reads each call's answers once the nodes settle


class Floor:
    def __init__(self, *, storage: str, wire: bool, base_dir: str | None) -> None:
        self.wire = wire
        self.nodes: dict[int, ReplicaNode] = {}
        self.replicas: dict[int, Replica] = {}
        self._outbox: list[Message] = []
        for i in IDS:
            if storage == "leveldb":
                from paxoskv.storage.leveldb import LevelDBStorage

                store = LevelDBStorage.open(f"{base_dir}/node{i}", i, "floor", create=True)
            else:
                store = MemoryStorage()
            cfg = Config(node_id=i, peers=IDS, heartbeat_ticks=5, election_ticks_min=50)
            node = ReplicaNode(cfg, store, random.Random(i), send=self._outbox.extend)
            self.nodes[i] = node
            self.replicas[i] = node.replica
        self.sequences = [0] * SESSIONS
        self.proposed = 0
        self.read_ids = 0

    def settle(self) -> None:
        """prepare -> write -> finish on every node, and deliver what they
        send, until none has work."""
        busy = True
        while busy:
            busy = False
            for node in self.nodes.values():
                batch = node.prepare()
                if batch is None:
                    continue
                busy = True
                node.write(batch)
                node.finish(batch)
            out, self._outbox[:] = list(self._outbox), []
            for msg in out:
                busy = True
                if self.wire:
                    msg = codec.decode(codec.encode(msg, "floor"))[1]
                self.nodes[msg.to].step(msg)

    def elect(self) -> int:
        for _ in range(1000):
            for node in self.nodes.values():
                node.tick()
            self.settle()
            for i, replica in self.replicas.items():
                if replica.core.role is Role.LEADER and not replica.core.has_ready():
                    return i
        raise SystemExit("floor: no leader after 1000 ticks")

    def _take(self, calls: list[Call], what: str) -> None:
        for call in calls:
            if not call.done:
                raise SystemExit(f"floor: a {what} was never answered")
            (result,) = call.results
            if isinstance(result, Exception):
                raise SystemExit(f"floor: a {what} was refused: {result}")

    def round(self, slot: int, value: bytes) -> None:
        calls = []
        for _ in range(slot):
            n = self.proposed
            self.proposed += 1
            session = n % SESSIONS
            self.sequences[session] += 1
            req = kv_pb2.PutRequest(
                request=kv_pb2.RequestHeader(client_id=f"floor-{session}", sequence=self.sequences[session]),
                key=b"key%05d" % (n % KEYS),
                value=value,
            )
            calls.append(self.nodes[IDS[n % 3]].put(req, 60.0, _ignore))
        self.settle()
        self._take(calls, "put")

    def read_round(self, reads: int) -> None:
        """``reads`` linearizable reads, two in three at a follower (a
        read-index request to the leader), the rest at the leader (a round)."""
        calls = []
        for _ in range(reads):
            self.read_ids += 1
            req = kv_pb2.GetRequest(key=b"key%05d" % (self.read_ids % KEYS))
            calls.append(self.nodes[IDS[self.read_ids % 3]].get(req, 60.0, _ignore))
        self.settle()
        served = sum(1 for c in calls if c.done)
        if served != reads:
            raise SystemExit(f"floor: {served} of {reads} reads served")
        self._take(calls, "read")

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
        for node in self.nodes.values():
            node.stop("floor done")


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
        print(f"paxoskv floor: 3 nodes in one process, no sockets or threads; leader node {leader}; {extras}")
        sm = floor.replicas[leader].sm
        kinds = [("puts", lambda n: floor.round(n, value))] + ([("reads", floor.read_round)] if args.reads else [])
        for kind, one_round in kinds:
            per_slot_head = "puts per slot" if kind == "puts" else ""
            head = f"us CPU per {kind[:-1]} (3 nodes)"
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
        print(f"checked: all three nodes applied {floor.replicas[leader].sm.applied_index} slots and hold the same state")
    finally:
        floor.close()
        if base_dir is not None:
            shutil.rmtree(base_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
