"""What CURVE costs on the peer bus: two ``PeerBus`` in one process, on loopback,
with and without keys.

Run it as ``.venv/bin/python -m paxoskv.bench.bus_curve`` (``--help``); the
unit test of the bus prints one round of it.

Three figures per mode, measured in rounds that alternate the modes (so a
noisy neighbour on the machine hits both alike), the median of the rounds:

* Heartbeat throughput: small messages (about 30 bytes encoded) one way,
  as fast as the receiver drains them;
* Accept throughput: one slot of 100 commands of 100 bytes (10 KB encoded);
* round trip: one Heartbeat there and one back, one in flight (p50, p99);

and, for the receive path, what reading ``User-Id`` costs per frame.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
import timeit

import zmq

from paxoskv.util.ports import free_ports
from paxoskv.paxos.types import Accept, Ballot, Heartbeat
from paxoskv.transport.bus import PeerBus
from paxoskv.transport.keys import BusKeys
from paxoskv.transport.zap import ZAP_DOMAIN, MemberZap


def _keys() -> dict[int, BusKeys]:
    pairs = {i: zmq.curve_keypair() for i in (1, 2)}
    members = {i: pub for i, (pub, _) in pairs.items()}
    return {i: BusKeys(i, pub, sec, members) for i, (pub, sec) in pairs.items()}


async def _pump(a: PeerBus, b: PeerBus, make, n: int) -> float:  # noqa: ANN001
    received = 0
    start = time.perf_counter()

    async def sender() -> None:
        k = 0
        while k < n:
            if a.send(make(k)):
                k += 1
            else:
                await asyncio.sleep(0)
            if k % 500 == 0:
                await asyncio.sleep(0)

    async def receiver() -> None:
        nonlocal received
        while received < n:
            received += len(await b.recv_batch())

    await asyncio.gather(sender(), receiver())
    return n / (time.perf_counter() - start)


async def _round_trips(a: PeerBus, b: PeerBus, n: int) -> list[float]:
    out = []
    for k in range(n):
        t = time.perf_counter()
        while not a.send(Heartbeat(frm=1, to=2, ballot=Ballot(1, 1), commit=k, read_seq=0)):
            await asyncio.sleep(0)
        await b.recv_batch()
        while not b.send(Heartbeat(frm=2, to=1, ballot=Ballot(1, 1), commit=k, read_seq=0)):
            await asyncio.sleep(0)
        await a.recv_batch()
        out.append(time.perf_counter() - t)
    return out


async def measure(secure: bool, n_small: int, n_big: int, n_rtt: int) -> dict[str, float]:
    """One round: Heartbeat and Accept messages/s (``hb``, ``accept``) and round trip p50/p99 in us."""
    p1, p2 = free_ports(2)
    addrs = {1: ("127.0.0.1", p1), 2: ("127.0.0.1", p2)}
    keys = _keys() if secure else {}
    a = PeerBus(1, "bench", "127.0.0.1", p1, addrs, keys=keys.get(1), probe_timeout_s=0.2)
    b = PeerBus(2, "bench", "127.0.0.1", p2, addrs, keys=keys.get(2), probe_timeout_s=0.2)
    await a.start()
    await b.start()
    try:
        while not (a.peer_status()[2].writable and b.peer_status()[1].writable):
            await asyncio.sleep(0.01)
        small = await _pump(a, b, lambda k: Heartbeat(frm=1, to=2, ballot=Ballot(1, 1), commit=k, read_seq=0), n_small)
        batch = tuple(bytes([i]) * 100 for i in range(100))
        big = await _pump(a, b, lambda k: Accept(frm=1, to=2, ballot=Ballot(2, 1), entries=((k + 1, batch),), commit=k), n_big)
        rtt = sorted(await _round_trips(a, b, n_rtt))
        return {"hb": small, "accept": big, "p50": rtt[len(rtt) // 2] * 1e6, "p99": rtt[int(len(rtt) * 0.99)] * 1e6}
    finally:
        await a.close()
        await b.close()


async def _user_id_cost_us() -> float:
    """Time ``Frame.get(b"User-Id")`` on a frame that came over a CURVE connection."""
    ctx = zmq.Context()
    keys = _keys()
    zap = MemberZap(ctx, keys[1].members, lambda address, key: None)
    zap.start()
    try:
        r = ctx.socket(zmq.ROUTER)
        r.curve_server, r.curve_secretkey, r.zap_domain = True, keys[1].secret, ZAP_DOMAIN.encode()
        port = r.bind_to_random_port("tcp://127.0.0.1")
        d = ctx.socket(zmq.DEALER)
        d.curve_publickey, d.curve_secretkey, d.curve_serverkey = keys[2].public, keys[2].secret, keys[1].public
        d.connect(f"tcp://127.0.0.1:{port}")
        d.send(b"x")
        while not r.poll(0):
            await asyncio.sleep(0.005)  # the ZAP handler runs on this loop
        r.recv()
        frame = r.recv(copy=False)
        assert frame.get(b"User-Id") == "2"
        n = 200_000
        return timeit.timeit(lambda: frame.get(b"User-Id"), number=n) / n * 1e6
    finally:
        zap.stop()
        ctx.destroy(linger=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--small", type=int, default=50_000)
    ap.add_argument("--big", type=int, default=5_000)
    ap.add_argument("--rtt", type=int, default=2_000)
    args = ap.parse_args()
    logging.getLogger("paxoskv.transport.bus").setLevel(logging.ERROR)  # a full queue is part of the test
    got: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for r in range(args.rounds):
        for secure in ((False, True) if r % 2 == 0 else (True, False)):
            got[secure].append(asyncio.run(measure(secure, args.small, args.big, args.rtt)))
    print(f"{'':10} {'Heartbeat msg/s':>16} {'Accept 10 KB msg/s':>19} {'RTT p50 us':>11} {'RTT p99 us':>11}")
    med = {s: {k: statistics.median(x[k] for x in got[s]) for k in got[s][0]} for s in got}
    for secure in (False, True):
        m = med[secure]
        print(f"{'CURVE' if secure else 'insecure':10} {m['hb']:16,.0f} {m['accept']:19,.0f} {m['p50']:11.0f} {m['p99']:11.0f}")
    off, on = med[False], med[True]
    print(f"{'cost':10} {1 - on['hb'] / off['hb']:16.0%} {1 - on['accept'] / off['accept']:19.0%} "
          f"{on['p50'] / off['p50'] - 1:11.0%} {on['p99'] / off['p99'] - 1:11.0%}")
    print(f"reading User-Id of a frame: {asyncio.run(_user_id_cost_us()):.2f} us (round ranges: "
          + ", ".join(f"{'CURVE' if s else 'insecure'} hb {min(x['hb'] for x in got[s]):,.0f}-"
                      f"{max(x['hb'] for x in got[s]):,.0f}" for s in (False, True)) + ")")


if __name__ == "__main__":
    main()
