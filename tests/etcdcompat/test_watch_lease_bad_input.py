"""Bad input to Watch and Lease, through raw gRPC, on a real etcd 3.4 cluster
and a paxoskv cluster in the same test: the responses (headers without the
ids and terms that differ between any two clusters) and the errors must be
the same, byte for byte, and nothing is lost after them.

Watch: a watch on the empty key without a range end (etcd watches "\\x00"),
a cancel of an unknown watch id and a second cancel of one, a start
revision below the compaction, an empty range, a duplicate client-chosen
watch id. What a stream answers to a request it ignores is seen by a
sentinel create after it: the responses up to the sentinel's are compared.
Lease: a keep-alive for an unknown lease (and the stream going
on after it) and for an expired lease, a Put and a
Txn put with a lease that does not exist, a grant of TTL 0, of a negative
TTL, of a negative id, of an id that exists, of a TTL over the maximum, a
revoke and a TimeToLive of an unknown lease.
"""

from __future__ import annotations

import queue
import threading

import grpc

from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc
from paxoskv.util.wait import wait_until

R = rpc_pb2
TIMEOUT_S = 10.0
SENTINEL_ID = 99


def _bare(resp):  # noqa: ANN001, ANN202
    """``resp`` serialized without what differs between any two clusters."""
    copy = type(resp)()
    copy.CopyFrom(resp)
    if copy.HasField("header"):
        copy.header.cluster_id = 0
        copy.header.member_id = 0
        copy.header.raft_term = 0
    return copy.SerializeToString(deterministic=True)


def _outcome(call, request) -> tuple:  # noqa: ANN001
    try:
        return ("OK", _bare(call(request, timeout=TIMEOUT_S)))
    except grpc.RpcError as exc:
        return (exc.code().name, exc.details())


class WatchConn:
    """One Watch stream fed request by request, read with a deadline."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._call = rpc_pb2_grpc.WatchStub(channel).Watch(iter(self._requests.get, None), timeout=60)
        self._responses: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._sentinels = 0

    def _read(self) -> None:
        try:
            for resp in self._call:
                self._responses.put(resp)
        except grpc.RpcError as exc:
            self._responses.put(exc)

    def send(self, **request) -> None:  # noqa: ANN003
        self._requests.put(R.WatchRequest(**request))

    def recv(self) -> R.WatchResponse:
        got = self._responses.get(timeout=TIMEOUT_S)
        if isinstance(got, grpc.RpcError):
            raise got
        return got

    def until_sentinel(self) -> list[bytes]:
        """Every response up to a new sentinel watch's created response."""
        wid = SENTINEL_ID + self._sentinels
        self._sentinels += 1
        self.send(create_request=R.WatchCreateRequest(key=b"/sentinel/%d" % wid, watch_id=wid))
        out = []
        while True:
            resp = self.recv()
            out.append(_bare(resp))
            if resp.watch_id == wid and resp.created:
                return out

    def close(self) -> None:
        self._call.cancel()
        self._requests.put(None)
        self._reader.join(timeout=TIMEOUT_S)


def _seed(kv: rpc_pb2_grpc.KVStub) -> None:
    """The same history on both clusters: revisions 2..6, compacted at 4."""
    for i in range(5):
        kv.Put(R.PutRequest(key=b"/b/%d" % i, value=b"v"), timeout=TIMEOUT_S)
    kv.Compact(R.CompactionRequest(revision=4), timeout=TIMEOUT_S)


def _watch_cases(channel: grpc.Channel, kv: rpc_pb2_grpc.KVStub) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    w = WatchConn(channel)
    try:
        # the empty key without a range end: etcd watches the key "\x00"
        w.send(create_request=R.WatchCreateRequest(key=b""))
        created = w.recv()
        kv.Put(R.PutRequest(key=b"\x00", value=b"zero"), timeout=TIMEOUT_S)
        kv.Put(R.PutRequest(key=b"\x00\x01", value=b"not watched"), timeout=TIMEOUT_S)
        kv.Put(R.PutRequest(key=b"\x00", value=b"again"), timeout=TIMEOUT_S)
        events = [w.recv(), w.recv()]
        out["empty key, no range end"] = [_bare(created), *map(_bare, events)]
        w.send(cancel_request=R.WatchCancelRequest(watch_id=12345))
        out["cancel of an unknown id"] = w.until_sentinel()
        w.send(cancel_request=R.WatchCancelRequest(watch_id=created.watch_id))
        w.send(cancel_request=R.WatchCancelRequest(watch_id=created.watch_id))
        out["cancel twice"] = w.until_sentinel()
        w.send(create_request=R.WatchCreateRequest(key=b"/b/0", start_revision=2))
        out["start revision below the compaction"] = [_bare(w.recv()), _bare(w.recv())]
        w.send(create_request=R.WatchCreateRequest(key=b"/b/3", range_end=b"/b/1"))
        out["range end below the key"] = w.until_sentinel()
        w.send(create_request=R.WatchCreateRequest(key=b"/dup", watch_id=SENTINEL_ID))
        out["a watch id in use"] = [_bare(w.recv())]
        # still serving: a new watch sees a put
        w.send(create_request=R.WatchCreateRequest(key=b"/final", prev_kv=True))
        out["the stream still serves"] = [_bare(w.recv())]
        kv.Put(R.PutRequest(key=b"/final", value=b"s"), timeout=TIMEOUT_S)
        out["the stream still serves"].append(_bare(w.recv()))
    finally:
        w.close()
    return out


def _lease_cases(lease: rpc_pb2_grpc.LeaseStub, kv: rpc_pb2_grpc.KVStub) -> dict[str, tuple]:
    def keep_alive(*lids: int) -> tuple:
        requests = [R.LeaseKeepAliveRequest(ID=lid) for lid in lids]
        try:
            return ("OK", *map(_bare, lease.LeaseKeepAlive(iter(requests), timeout=TIMEOUT_S)))
        except grpc.RpcError as exc:
            return (exc.code().name, exc.details())

    out: dict[str, tuple] = {}
    out["keep-alive of an unknown lease"] = keep_alive(0x4242)
    out["grant of TTL 0"] = _outcome(lease.LeaseGrant, R.LeaseGrantRequest(ID=0x51, TTL=0))
    out["grant of a negative TTL"] = _outcome(lease.LeaseGrant, R.LeaseGrantRequest(ID=0x52, TTL=-5))
    out["a keep-alive stream goes on after an unknown lease"] = keep_alive(0x4242, 0x52)
    out["grant of a negative id"] = _outcome(lease.LeaseGrant, R.LeaseGrantRequest(ID=-7, TTL=60))
    out["grant of an id that exists"] = _outcome(lease.LeaseGrant, R.LeaseGrantRequest(ID=0x51, TTL=60))
    out["grant of a TTL over the maximum"] = _outcome(lease.LeaseGrant, R.LeaseGrantRequest(ID=0x53, TTL=9_000_000_001))
    out["put with an unknown lease"] = _outcome(kv.Put, R.PutRequest(key=b"/l/x", value=b"v", lease=0x4343))
    out["txn put with an unknown lease"] = _outcome(kv.Txn, R.TxnRequest(success=[
        R.RequestOp(request_put=R.PutRequest(key=b"/l/y", value=b"v", lease=0x4343))]))
    out["revoke of an unknown lease"] = _outcome(lease.LeaseRevoke, R.LeaseRevokeRequest(ID=0x4444))
    out["time-to-live of an unknown lease"] = _outcome(lease.LeaseTimeToLive, R.LeaseTimeToLiveRequest(ID=0x4545))
    out["a lease of TTL 0 holds a key"] = _outcome(kv.Put, R.PutRequest(key=b"/l/zero", value=b"v", lease=0x51))
    return out


def _expired_keep_alive(lease: rpc_pb2_grpc.LeaseStub, kv: rpc_pb2_grpc.KVStub, lid: int) -> tuple:
    """A keep-alive of the lease ``lid`` (granted with the minimum TTL)
    after it expired and its key went."""
    wait_until(f"lease {lid:#x} to expire",
               lambda: lease.LeaseTimeToLive(R.LeaseTimeToLiveRequest(ID=lid), timeout=TIMEOUT_S).TTL == -1, 30)
    wait_until("the expired lease's key to go",
               lambda: kv.Range(R.RangeRequest(key=b"/l/zero"), timeout=TIMEOUT_S).count == 0, 30)
    return ("OK", *map(_bare, lease.LeaseKeepAlive(iter([R.LeaseKeepAliveRequest(ID=lid)]), timeout=TIMEOUT_S)))


def test_bad_watch_and_lease_input_gets_etcds_answers_and_loses_nothing(etcd_clusters, paxoskv_clusters) -> None:
    (etcd,) = etcd_clusters(1)
    paxos = paxoskv_clusters("badwatch")
    channels = {"etcd": grpc.insecure_channel(etcd.endpoints[0]), "paxoskv": grpc.insecure_channel(paxos.endpoints[1])}
    try:
        kvs = {name: rpc_pb2_grpc.KVStub(ch) for name, ch in channels.items()}
        leases = {name: rpc_pb2_grpc.LeaseStub(ch) for name, ch in channels.items()}
        for kv in kvs.values():
            _seed(kv)
        answers = {name: {**_watch_cases(channels[name], kvs[name]), **_lease_cases(leases[name], kvs[name])}
                   for name in channels}
        for name in channels:
            answers[name]["keep-alive of an expired lease"] = _expired_keep_alive(leases[name], kvs[name], 0x51)
        mismatches = [f"{case}:\n  etcd    {answers['etcd'][case]!r}\n  paxoskv {answers['paxoskv'][case]!r}"
                      for case in answers["etcd"] if answers["etcd"][case] != answers["paxoskv"][case]]
        assert not mismatches, "\n".join(mismatches)
        # nothing lost: the same keys, values and revisions on both, and both still write
        everything = R.RangeRequest(key=b"\x00", range_end=b"\x00")
        state = {name: _bare(kv.Range(everything, timeout=TIMEOUT_S)) for name, kv in kvs.items()}
        assert state["etcd"] == state["paxoskv"]
        after = {name: _outcome(kv.Put, R.PutRequest(key=b"/after", value=b"v", prev_kv=True)) for name, kv in kvs.items()}
        assert after["etcd"] == after["paxoskv"] and after["etcd"][0] == "OK"
    finally:
        for ch in channels.values():
            ch.close()

