"""Our etcd protos (paxoskv.etcdpb) are etcd 3.4's wire contract.

Checked three ways, none of which trusts our reading of etcd's sources:
the descriptors compiled into the installed etcd and etcdctl binaries are
the same as ours; a real etcd 3.4 answers our stubs with messages that
decode with no unknown field and mean what they should; and what etcdctl
itself sends (recorded by a proxy between it and etcd) decodes with no
unknown field into the requests its flags ask for.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import grpc
import pytest
from google.protobuf import descriptor_pb2

from etcd_wire import RecordingProxy, compiled_descriptors, request_type, response_type, shape
from etcdctl_compat import etcdctl, unknown_fields
import clusters
from paxoskv.etcdpb import auth_pb2, kv_pb2, rpc_pb2, rpc_pb2_grpc

# etcd's file name for each of ours
OURS = {"rpc.proto": rpc_pb2, "kv.proto": kv_pb2, "auth.proto": auth_pb2}
TIMEOUT_S = 10.0


def _our_descriptor(module) -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(fd)
    return fd


def _diff(ours: dict, theirs: dict) -> list[str]:
    return [f"{k}: ours {ours.get(k)!r} etcd {theirs.get(k)!r}"
            for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]


@pytest.mark.parametrize("binary", ["etcdctl", "etcd"])
def test_our_protos_declare_what_the_installed_etcd_binaries_were_compiled_with(binary, etcd_installed):
    theirs = compiled_descriptors(shutil.which(binary))
    for name, module in OURS.items():
        assert name in theirs, f"{binary} carries no {name} descriptor (found {sorted(theirs)})"
        assert _diff(shape(_our_descriptor(module)), shape(theirs[name])) == []


def test_the_descriptor_comparison_sees_a_changed_number_a_renamed_enum_value_and_a_missing_method(etcd_installed):
    theirs = shape(compiled_descriptors(shutil.which("etcdctl"))["rpc.proto"])
    for tamper in (
        lambda fd: setattr(_msg(fd, "RangeRequest").field[6], "number", 70),
        lambda fd: setattr(_msg(fd, "Compare").enum_type[0].value[3], "name", "UNEQUAL"),
        lambda fd: fd.service[1].method.pop(),
        lambda fd: setattr(fd.service[0].method[0], "server_streaming", True),
    ):
        fd = _our_descriptor(rpc_pb2)
        tamper(fd)
        assert _diff(shape(fd), theirs), "a tampered descriptor compared equal"


def _msg(fd, name):
    return next(m for m in fd.message_type if m.name == name)


# ---- a real etcd answers our stubs ---------------------------------------------------


def _clean(resp):
    """``resp`` decoded with nothing our protos cannot name."""
    assert unknown_fields(resp) == [], f"{type(resp).__name__} carries fields we do not declare"
    return resp


def _header_ok(h: rpc_pb2.ResponseHeader, members: set[int]) -> None:
    assert h.cluster_id != 0 and h.member_id in members and h.raft_term >= 1 and h.revision >= 1


def _error(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as exc:
        call(request, timeout=TIMEOUT_S)
    return exc.value.code(), exc.value.details()


@pytest.fixture(scope="module")
def stubs(etcd_cluster):
    with grpc.insecure_channel(etcd_cluster.endpoints[0]) as ch:
        yield {
            "kv": rpc_pb2_grpc.KVStub(ch), "lease": rpc_pb2_grpc.LeaseStub(ch),
            "cluster": rpc_pb2_grpc.ClusterStub(ch), "maint": rpc_pb2_grpc.MaintenanceStub(ch),
            "watch": rpc_pb2_grpc.WatchStub(ch),
        }


@pytest.fixture(scope="module")
def member_ids(stubs) -> set[int]:
    resp = _clean(stubs["cluster"].MemberList(rpc_pb2.MemberListRequest(), timeout=TIMEOUT_S))
    return {m.ID for m in resp.members}


def test_member_list_names_three_started_members(stubs, etcd_cluster):
    resp = _clean(stubs["cluster"].MemberList(rpc_pb2.MemberListRequest(), timeout=TIMEOUT_S))
    assert resp.header.cluster_id != 0 and resp.header.member_id in {m.ID for m in resp.members}
    assert len({m.ID for m in resp.members}) == 3 and 0 not in {m.ID for m in resp.members}
    assert sorted(m.name for m in resp.members) == ["m1", "m2", "m3"]
    assert sorted(u.removeprefix("http://") for m in resp.members for u in m.clientURLs) == sorted(etcd_cluster.endpoints)
    assert all(len(m.peerURLs) == 1 and not m.isLearner for m in resp.members)


def test_put_range_txn_delete_through_our_stubs(stubs, member_ids):
    kv = stubs["kv"]
    first = _clean(kv.Put(rpc_pb2.PutRequest(key=b"/c/a", value=b"1"), timeout=TIMEOUT_S))
    _header_ok(first.header, member_ids)
    rev_a = first.header.revision
    second = _clean(kv.Put(rpc_pb2.PutRequest(key=b"/c/a", value=b"2", prev_kv=True), timeout=TIMEOUT_S))
    assert second.header.revision == rev_a + 1
    assert (second.prev_kv.key, second.prev_kv.value, second.prev_kv.version) == (b"/c/a", b"1", 1)
    _clean(kv.Put(rpc_pb2.PutRequest(key=b"/c/b", value=b"3"), timeout=TIMEOUT_S))

    got = _clean(kv.Range(rpc_pb2.RangeRequest(key=b"/c/", range_end=b"/c0"), timeout=TIMEOUT_S))
    assert [(x.key, x.value, x.create_revision, x.mod_revision, x.version) for x in got.kvs] == [
        (b"/c/a", b"2", rev_a, rev_a + 1, 2), (b"/c/b", b"3", rev_a + 2, rev_a + 2, 1)]
    assert got.count == 2 and not got.more and got.header.revision == rev_a + 2

    limited = _clean(kv.Range(rpc_pb2.RangeRequest(
        key=b"/c/", range_end=b"/c0", limit=1, sort_order=rpc_pb2.RangeRequest.DESCEND,
        sort_target=rpc_pb2.RangeRequest.MOD), timeout=TIMEOUT_S))
    assert [x.key for x in limited.kvs] == [b"/c/b"] and limited.more and limited.count == 2
    past = _clean(kv.Range(rpc_pb2.RangeRequest(key=b"/c/a", revision=rev_a), timeout=TIMEOUT_S))
    assert [x.value for x in past.kvs] == [b"1"]
    only = _clean(kv.Range(rpc_pb2.RangeRequest(key=b"/c/", range_end=b"/c0", count_only=True), timeout=TIMEOUT_S))
    assert only.count == 2 and list(only.kvs) == []

    txn = _clean(kv.Txn(rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(key=b"/c/a", target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL,
                                 mod_revision=rev_a + 1)],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/c/t", value=b"yes")),
                 rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"/c/t"))],
        failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"/c/a"))],
    ), timeout=TIMEOUT_S))
    assert txn.succeeded and txn.header.revision == rev_a + 3
    assert [r.WhichOneof("response") for r in txn.responses] == ["response_put", "response_range"]
    assert [x.value for x in txn.responses[1].response_range.kvs] == [b"yes"]

    failed = _clean(kv.Txn(rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(key=b"/c/a", target=rpc_pb2.Compare.VALUE, result=rpc_pb2.Compare.EQUAL,
                                 value=b"nope")],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/c/t", value=b"no"))],
        failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"/c/a"))],
    ), timeout=TIMEOUT_S))
    assert not failed.succeeded and failed.header.revision == rev_a + 3  # nothing written, no new revision
    assert [x.value for x in failed.responses[0].response_range.kvs] == [b"2"]

    deleted = _clean(kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"/c/", range_end=b"/c0", prev_kv=True),
                                    timeout=TIMEOUT_S))
    assert deleted.deleted == 3 and sorted(x.key for x in deleted.prev_kvs) == [b"/c/a", b"/c/b", b"/c/t"]
    assert deleted.header.revision == rev_a + 4  # one revision for the whole range


def test_etcds_errors_reach_us_with_its_codes_and_strings(stubs):
    kv, lease = stubs["kv"], stubs["lease"]
    rev = kv.Put(rpc_pb2.PutRequest(key=b"/e/k", value=b"v"), timeout=TIMEOUT_S).header.revision
    put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/e/k", value=b"v"))
    assert _error(kv.Put, rpc_pb2.PutRequest(key=b"", value=b"v")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")
    assert _error(kv.Range, rpc_pb2.RangeRequest(key=b"/e/k", revision=rev + 1000)) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
    assert _error(kv.Txn, rpc_pb2.TxnRequest(success=[put, put])) == (
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
    many = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/e/%d" % i)) for i in range(129)]
    assert _error(kv.Txn, rpc_pb2.TxnRequest(success=many)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
    assert _error(kv.Put, rpc_pb2.PutRequest(key=b"/e/missing", ignore_value=True)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key not found")
    assert _error(kv.Put, rpc_pb2.PutRequest(key=b"/e/k", value=b"x", ignore_value=True)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: value is provided")
    assert _error(kv.Put, rpc_pb2.PutRequest(key=b"/e/k", value=b"x", lease=12345)) == (
        grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
    # over --max-request-bytes (1.5 MiB) but under gRPC's limit (that + 512 KiB)
    assert _error(kv.Put, rpc_pb2.PutRequest(key=b"/e/big", value=b"x" * 1_600_000)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large")
    granted = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60), timeout=TIMEOUT_S)
    assert _error(lease.LeaseGrant, rpc_pb2.LeaseGrantRequest(TTL=60, ID=granted.ID)) == (
        grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists")
    assert _error(lease.LeaseRevoke, rpc_pb2.LeaseRevokeRequest(ID=granted.ID + 1)) == (
        grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
    # nothing of the refused writes is there
    got = kv.Range(rpc_pb2.RangeRequest(key=b"/e/", range_end=b"/e0"), timeout=TIMEOUT_S)
    assert [(x.key, x.value) for x in got.kvs] == [(b"/e/k", b"v")] and got.header.revision == rev


def test_compaction_and_reads_below_it(stubs, member_ids):
    kv, maint = stubs["kv"], stubs["maint"]
    old = kv.Put(rpc_pb2.PutRequest(key=b"/k/a", value=b"old"), timeout=TIMEOUT_S).header.revision
    now = kv.Put(rpc_pb2.PutRequest(key=b"/k/a", value=b"new"), timeout=TIMEOUT_S).header.revision
    done = _clean(kv.Compact(rpc_pb2.CompactionRequest(revision=now, physical=True), timeout=TIMEOUT_S))
    _header_ok(done.header, member_ids)
    assert _error(kv.Range, rpc_pb2.RangeRequest(key=b"/k/a", revision=old)) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
    assert _error(kv.Compact, rpc_pb2.CompactionRequest(revision=old)) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
    assert _error(kv.Compact, rpc_pb2.CompactionRequest(revision=now + 1000)) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
    # a Range at the compaction revision itself is served ...
    at = _clean(kv.Range(rpc_pb2.RangeRequest(key=b"/k/a", revision=now), timeout=TIMEOUT_S))
    assert [x.value for x in at.kvs] == [b"new"]
    # ... a HashKV there is not (etcd refuses rev <= compact_rev)
    assert _error(maint.HashKV, rpc_pb2.HashKVRequest(revision=now)) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
    hashes = _clean(maint.HashKV(rpc_pb2.HashKVRequest(), timeout=TIMEOUT_S))
    assert hashes.compact_revision == now and hashes.hash != 0 and hashes.header.revision == now


def test_leases_through_our_stubs(stubs, member_ids):
    kv, lease = stubs["kv"], stubs["lease"]
    granted = _clean(lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60), timeout=TIMEOUT_S))
    _header_ok(granted.header, member_ids)
    assert granted.ID > 0 and granted.TTL == 60 and granted.error == ""
    chosen = _clean(lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30, ID=0x1234), timeout=TIMEOUT_S))
    assert chosen.ID == 0x1234
    kv.Put(rpc_pb2.PutRequest(key=b"/l/a", value=b"v", lease=granted.ID), timeout=TIMEOUT_S)
    ttl = _clean(lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=granted.ID, keys=True), timeout=TIMEOUT_S))
    assert ttl.ID == granted.ID and ttl.grantedTTL == 60 and 0 < ttl.TTL <= 60 and list(ttl.keys) == [b"/l/a"]
    listed = _clean(lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=TIMEOUT_S))
    assert {granted.ID, 0x1234} <= {x.ID for x in listed.leases}
    kept = [_clean(r) for r in lease.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=granted.ID)]),
                                                   timeout=TIMEOUT_S)]
    assert [(r.ID, r.TTL) for r in kept] == [(granted.ID, 60)]
    _clean(lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=granted.ID), timeout=TIMEOUT_S))
    gone = _clean(lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=granted.ID), timeout=TIMEOUT_S))
    assert gone.TTL == -1 and gone.grantedTTL == 0
    assert kv.Range(rpc_pb2.RangeRequest(key=b"/l/a"), timeout=TIMEOUT_S).count == 0  # went with its lease


def test_status_alarm_hashkv_of_every_member(etcd_cluster, member_ids):
    version = subprocess.run([clusters.etcd_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    statuses, hashes = [], []
    for ep in etcd_cluster.endpoints:
        with grpc.insecure_channel(ep) as ch:
            maint = rpc_pb2_grpc.MaintenanceStub(ch)
            st = _clean(maint.Status(rpc_pb2.StatusRequest(), timeout=TIMEOUT_S))
            _header_ok(st.header, member_ids)
            assert f"etcd Version: {st.version}\n" in version
            assert st.dbSize > 0 and 0 < st.dbSizeInUse <= st.dbSize and st.leader in member_ids
            assert st.raftTerm >= 1 and 0 < st.raftAppliedIndex and st.raftIndex > 0 and not st.isLearner
            assert list(st.errors) == []
            statuses.append(st)
            alarms = _clean(maint.Alarm(rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET), timeout=TIMEOUT_S))
            assert list(alarms.alarms) == [] and not alarms.HasField("header")  # etcd 3.4 sends none
    # every member names the same leader, and exactly one member is it (etcdctl's IS LEADER)
    assert len({st.leader for st in statuses}) == 1
    assert sum(st.leader == st.header.member_id for st in statuses) == 1
    assert len({st.header.member_id for st in statuses}) == 3
    rev = max(st.header.revision for st in statuses)
    for ep in etcd_cluster.endpoints:
        with grpc.insecure_channel(ep) as ch:
            hashes.append(_clean(rpc_pb2_grpc.MaintenanceStub(ch).HashKV(
                rpc_pb2.HashKVRequest(revision=rev), timeout=TIMEOUT_S)).hash)
    assert len(set(hashes)) == 1


def test_snapshot_stream_is_a_db_with_a_trailing_sha256(stubs):
    parts = [_clean(r) for r in stubs["maint"].Snapshot(rpc_pb2.SnapshotRequest(), timeout=TIMEOUT_S)]
    blob = b"".join(p.blob for p in parts)
    assert len(blob) % 512 == 32  # what `etcdctl snapshot save` checks
    assert hashlib.sha256(blob[:-32]).digest() == blob[-32:]
    assert [p.remaining_bytes for p in parts][-1] == 0


def test_a_watch_through_our_stubs(stubs):
    rev = stubs["kv"].Put(rpc_pb2.PutRequest(key=b"/w/a", value=b"1"), timeout=TIMEOUT_S).header.revision
    stubs["kv"].Put(rpc_pb2.PutRequest(key=b"/w/a", value=b"2"), timeout=TIMEOUT_S)
    create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
        key=b"/w/", range_end=b"/w0", start_revision=rev, prev_kv=True))
    call = stubs["watch"].Watch(iter([create]), timeout=TIMEOUT_S)
    got = []
    for resp in call:
        got.append(_clean(resp))
        if sum(len(r.events) for r in got) >= 2:
            break
    call.cancel()
    assert got[0].created and got[0].watch_id == got[-1].watch_id
    events = [e for r in got for e in r.events]
    assert [(e.type, e.kv.value, e.prev_kv.value) for e in events] == [
        (kv_pb2.Event.PUT, b"1", b""), (kv_pb2.Event.PUT, b"2", b"1")]


# ---- what etcdctl sends, recorded between it and etcd --------------------------------


def _parsed(call):
    reqs, resps = [], []
    for raw in call.requests:
        m = request_type(call.method)()
        m.ParseFromString(raw)
        assert unknown_fields(m) == [], f"{call.method}: etcdctl sent fields we do not declare: {raw.hex()}"
        reqs.append(m)
    for raw in call.responses:
        m = response_type(call.method)()
        m.ParseFromString(raw)
        assert unknown_fields(m) == [], f"{call.method}: etcd answered fields we do not declare"
        resps.append(m)
    return reqs, resps


def _set_fields(m) -> dict:
    return {fd.name: v for fd, v in m.ListFields()}


def test_what_etcdctl_sends_is_what_our_protos_declare(etcd_cluster):
    with RecordingProxy(etcd_cluster.endpoints[0]) as proxy:
        ep = [proxy.endpoint]

        def run(*args, **kw):
            r = etcdctl(ep, *args, **kw)
            calls = proxy.take()
            parsed = [(c.method, dict(c.metadata), *_parsed(c)) for c in calls]
            return r, parsed

        r, calls = run("put", "/x/a", "1")
        assert r.code == 0 and [c[0] for c in calls] == ["/etcdserverpb.KV/Put"]
        rev = calls[0][3][0].header.revision

        r, calls = run("get", "/x/", "--prefix", "--limit=2", f"--rev={rev}", "--sort-by=MODIFY", "--order=DESCEND")
        assert r.code == 0 and [c[0] for c in calls] == ["/etcdserverpb.KV/Range"]
        assert _set_fields(calls[0][2][0]) == {
            "key": b"/x/", "range_end": b"/x0", "limit": 2, "revision": rev,
            "sort_order": rpc_pb2.RangeRequest.DESCEND, "sort_target": rpc_pb2.RangeRequest.MOD}

        r, calls = run("get", "", "--prefix", "--keys-only", "--consistency=s")
        assert _set_fields(calls[0][2][0]) == {
            "key": b"\0", "range_end": b"\0", "keys_only": True, "serializable": True}

        r, calls = run("get", "/x/a", "--sort-by=KEY", "--order=ASCEND")
        assert _set_fields(calls[0][2][0]) == {"key": b"/x/a"}  # etcdctl drops key-ascending: the default

        r, calls = run("lease", "grant", "60")
        (grant_method, _, grant_req, grant_resp), = calls
        assert grant_method == "/etcdserverpb.Lease/LeaseGrant" and _set_fields(grant_req[0]) == {"TTL": 60}
        lease_id = grant_resp[0].ID
        assert r.stdout == f"lease {lease_id:016x} granted with TTL(60s)\n".encode()

        r, calls = run("put", "/x/a", "2", f"--lease={lease_id:x}", "--prev-kv")
        assert r.code == 0 and r.stdout == b"OK\n/x/a\n1\n"
        assert _set_fields(calls[0][2][0]) == {"key": b"/x/a", "value": b"2", "lease": lease_id, "prev_kv": True}

        r, calls = run("txn", "-i", stdin='value("/x/a") = "2"\nver("/x/a") > "1"\ncreate("/x/a") != "0"\n'
                                          'mod("/x/a") < "100000"\n\nput /x/b 3\n\nget /x/a\ndel /x/b\n\n')
        assert r.code == 0 and b"SUCCESS" in r.stdout
        txn = calls[0][2][0]
        assert [(c.target, c.result, c.WhichOneof("target_union")) for c in txn.compare] == [
            (rpc_pb2.Compare.VALUE, rpc_pb2.Compare.EQUAL, "value"),
            (rpc_pb2.Compare.VERSION, rpc_pb2.Compare.GREATER, "version"),
            (rpc_pb2.Compare.CREATE, rpc_pb2.Compare.NOT_EQUAL, "create_revision"),
            (rpc_pb2.Compare.MOD, rpc_pb2.Compare.LESS, "mod_revision")]
        assert [op.WhichOneof("request") for op in txn.success] == ["request_put"]
        assert [op.WhichOneof("request") for op in txn.failure] == ["request_range", "request_delete_range"]

        r, calls = run("watch", "/x/", "--prefix", "--prev-kv", f"--rev={rev}", until_lines=8)
        (method, metadata, reqs, resps), = calls
        assert method == "/etcdserverpb.Watch/Watch" and metadata.get("hasleader") == "true"
        assert reqs[0].WhichOneof("request_union") == "create_request"
        assert _set_fields(reqs[0].create_request) == {
            "key": b"/x/", "range_end": b"/x0", "start_revision": rev, "prev_kv": True}
        # the first put, then the second with its prev_kv before it
        assert r.stdout.startswith(b"PUT\n/x/a\n1\nPUT\n/x/a\n1\n/x/a\n2\n")

        r, calls = run("lease", "keep-alive", "--once", f"{lease_id:x}")
        (method, metadata, reqs, resps), = calls
        assert method == "/etcdserverpb.Lease/LeaseKeepAlive" and "hasleader" not in metadata  # --once: none
        assert [_set_fields(q) for q in reqs] == [{"ID": lease_id}] and resps[0].TTL == 60

        r, calls = run("lease", "timetolive", f"{lease_id:x}", "--keys")
        assert _set_fields(calls[0][2][0]) == {"ID": lease_id, "keys": True}
        assert list(calls[0][3][0].keys) == [b"/x/a"]

        r, calls = run("compaction", str(rev), "--physical")
        assert r.code == 0 and _set_fields(calls[0][2][0]) == {"revision": rev, "physical": True}

        for args in (("endpoint", "status"), ("endpoint", "hashkv"), ("endpoint", "health"), ("member", "list"),
                     ("alarm", "list"), ("defrag",), ("lease", "list"), ("del", "/x/", "--prefix", "--prev-kv")):
            r, calls = run(*args)
            assert r.code == 0 and calls, args
        snap = etcd_cluster.base_dir / "recorded.db"
        r, calls = run("snapshot", "save", str(snap))
        assert r.code == 0 and [c[0] for c in calls] == ["/etcdserverpb.Maintenance/Snapshot"]
        assert snap.stat().st_size == len(b"".join(p.blob for p in calls[0][3]))
        assert proxy.unknown_methods == []
