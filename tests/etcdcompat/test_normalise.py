"""The normaliser on outputs written the way etcdctl 3.4 prints them
(etcdctl/ctlv3/command/printer*.go), for two made-up clusters: noise goes,
every semantic byte stays."""

from __future__ import annotations

import json

import pytest

from etcdctl_compat import Identities, Member, Row, Run, etcdctl, normalise, render_markdown, unknown_fields
from paxoskv.etcdpb import rpc_pb2


def _cluster(cluster_id: int, base_id: int, port0: int) -> Identities:
    members = tuple(
        Member(i, base_id + i * 0x1111, f"m{i + 1}", (f"http://127.0.0.1:{port0 + 10 + i}",),
               (f"http://127.0.0.1:{port0 + i}",))
        for i in range(3)
    )
    return Identities(cluster_id, members, scratch=f"/tmp/scratch{port0}")


A = lambda: _cluster(0x4002D8E63B8F1A0E, 0xA341998A975416C0, 41000)  # noqa: E731
B = lambda: _cluster(0xDAE0F3C1B2A49581, 0x45489B23101845FD, 52000)  # noqa: E731


def _run(args: tuple[str, ...], stdout: str | bytes = "", stderr: str = "", code: int = 0) -> Run:
    out = stdout.encode() if isinstance(stdout, str) else stdout
    return Run(("etcdctl", "--endpoints=x", *args), code, out, stderr.encode())


def _status_simple(ids: Identities, leader: int, size: str, term: int, index: int) -> str:
    rows = []
    for m in ids.members:
        ep = m.client_urls[0].removeprefix("http://")
        rows.append(f"{ep}, {m.id:x}, 3.4.23, {size}, {str(m.index == leader).lower()}, false, {term}, {index}, "
                    f"{index}, \n")
    return "".join(rows)


def _header(ids: Identities, member: int, rev: int, term: int) -> dict:
    return {"cluster_id": ids.cluster_id, "member_id": ids.members[member].id, "revision": rev, "raft_term": term}


def test_ids_addresses_sizes_terms_and_the_leaders_place_are_noise():
    a, b = A(), B()
    args = ("endpoint", "status")
    na = normalise(_run(args, _status_simple(a, leader=0, size="20 kB", term=2, index=10)), a)
    nb = normalise(_run(args, _status_simple(b, leader=2, size="25 kB", term=7, index=31)), b)
    assert na == nb
    assert "(normalised: 1 row(s) report IS LEADER true)" in na and "<endpoint:2>, <member:2>," in na


def test_a_changed_revision_value_key_exit_code_or_error_byte_is_a_difference():
    a, b = A(), B()

    def get(ids, rev=7, value="MTA=", key="L2FwcC9h", code=0, err=""):
        doc = {"header": _header(ids, 1, rev, 3), "kvs": [{"key": key, "create_revision": 2, "mod_revision": 5,
                                                              "version": 2, "value": value}], "count": 1}
        return normalise(_run(("get", "/app/a", "-w", "json"), json.dumps(doc) + "\n", err, code), ids)

    assert get(a) == get(b, rev=7) and get(a) != get(b, rev=8)
    assert get(a) != get(b, value="MTE=") and get(a) != get(b, key="L2FwcC9i")
    assert get(a) != get(b, code=1)
    assert get(a, err="Error: etcdserver: key not found\n") != get(b, err="Error: etcdserver: key not found.\n")
    # a header from another member of its own cluster is no difference, one from a stranger is
    doc = {"header": {**_header(b, 1, 7, 3), "member_id": 12345678901234}, "count": 0}
    stranger = normalise(_run(("get", "/x", "-w", "json"), json.dumps(doc) + "\n"), b)
    assert "<not a member: 12345678901234>" in stranger


def test_a_member_whose_hash_differs_is_a_difference():
    a, b = A(), B()

    def hashkv(ids, hashes):
        return "".join(f"{m.client_urls[0]}, {h}\n" for m, h in zip(ids.members, hashes, strict=True))

    args = ("endpoint", "hashkv", "--cluster")
    same_a = normalise(_run(args, hashkv(a, [111, 111, 111])), a)
    assert same_a == normalise(_run(args, hashkv(b, [999, 999, 999])), b)
    assert same_a != normalise(_run(args, hashkv(b, [999, 999, 998])), b)


def test_two_leaders_is_a_difference():
    a, b = A(), B()

    def status(ids, leaders):
        rows = []
        for m in ids.members:
            leader = ids.members[leaders[m.index]].id
            rows.append({"Endpoint": m.client_urls[0].removeprefix("http://"), "Status": {
                "header": _header(ids, m.index, 9, 2), "version": "3.4.23", "dbSize": 20480, "leader": leader,
                "raftIndex": 12, "raftTerm": 2, "raftAppliedIndex": 12, "dbSizeInUse": 16384}})
        return normalise(_run(("endpoint", "status", "-w", "json"), json.dumps(rows) + "\n"), ids)

    assert status(a, [1, 1, 1]) == status(b, [2, 2, 2])
    assert status(a, [1, 1, 1]) != status(b, [0, 1, 1])  # members disagree on the leader


def test_member_list_rows_keep_their_member_whatever_order_etcd_lists_them():
    a, b = A(), B()

    def listing(ids, order):
        return "".join(
            f"{m.id:x}, started, {m.name}, {m.peer_urls[0]}, {m.client_urls[0]}, false\n"
            for m in (ids.members[i] for i in order)
        )

    na = normalise(_run(("member", "list"), listing(a, [2, 0, 1])), a)
    assert na == normalise(_run(("member", "list"), listing(b, [1, 2, 0])), b)
    assert "<member:0>, started, <name:0>, <peer-url:0>, <client-url:0>, false" in na
    # a member listed with another member's client URL is a difference
    wrong = listing(b, [0, 1, 2]).replace(b.members[0].client_urls[0], b.members[1].client_urls[0])
    assert na != normalise(_run(("member", "list"), wrong), b)


def test_a_lease_keeps_one_label_in_hex_and_in_decimal():
    a, b = A(), B()
    outs = []
    for ids, lease in ((a, 0x648AA2362E9FD508), (b, 0x16C0A2362E9BE714)):
        grant = normalise(_run(("lease", "grant", "60"), f"lease {lease:016x} granted with TTL(60s)\n"), ids)
        doc = {"header": _header(ids, 0, 5, 2), "kvs": [{"key": "aw==", "create_revision": 5, "mod_revision": 5,
                                                          "version": 1, "value": "dg==", "lease": lease}], "count": 1}
        got = normalise(_run(("get", "k", "-w", "json"), json.dumps(doc) + "\n"), ids)
        ttl = normalise(_run(("lease", "timetolive", f"{lease:x}"),
                             f"lease {lease:016x} granted with TTL(60s), remaining(5{ids.members[0].index}s)\n"), ids)
        outs.append((grant, got, ttl))
    assert outs[0] == outs[1]
    assert "lease <lease:1> granted" in outs[0][0] and '"lease": "<lease:1>"' in outs[0][1]
    assert "remaining(<remaining>s)" in outs[0][2]
    over = normalise(_run(("lease", "timetolive", "1"), "lease 0000000000000001 granted with TTL(60s), "
                                                           "remaining(61s)\n"), a)
    assert "remaining(61s)" in over  # a remaining TTL above the granted one is kept as it is


def test_check_perf_keeps_pass_and_fail_and_drops_the_progress_bar_and_figures():
    def perf(ticks, rate, slowest, verdict="PASS"):
        # pb.v1's redraws as `check perf --load s` prints them: "\r 1 / 60    1.67% 00m59s" ...
        bar = "".join(f"\r {i} / 60 {100 * i / 60:8.2f}% 00m{60 - i:02d}s" for i in range(ticks)) + \
            "\r 60 / 60  100.00% 1m0s"
        body = (f"{verdict}: Throughput is {rate} writes/s\nPASS: Slowest request took {slowest:f}s\n"
                f"PASS: Stddev is 0.0{rate % 10}1234s\n{verdict}\n")
        return _run(("check", "perf"), bar + "\n" + body, code=0 if verdict == "PASS" else 1)

    a, b = A(), B()
    passed = normalise(perf(60, 151, 0.2), a)
    assert passed == normalise(perf(45, 147, 0.08), b)
    assert passed.split("--- stdout\n")[1].startswith("PASS: Throughput is <n> writes/s\n")
    assert passed != normalise(perf(60, 151, 0.2, verdict="FAIL"), b)


def test_etcdctl_logs_keep_their_message_and_error_only():
    a, b = A(), B()

    def failed(ids, ts, client):
        log = {"level": "warn", "ts": ts, "caller": "clientv3/retry_interceptor.go:62",
               "msg": "retrying of unary invoker failed",
               "target": f"endpoint://client-{client}/{ids.members[0].client_urls[0].removeprefix('http://')}",
               "attempt": 0, "error": "rpc error: code = OutOfRange desc = etcdserver: mvcc: required revision "
                                      "has been compacted"}
        return normalise(_run(("get", "k", "--rev=1"), "", json.dumps(log) + "\nError: etcdserver: mvcc: "
                              "required revision has been compacted\n", 1), ids)

    assert failed(a, "2026-12-02T09:56:02.872Z", "9b60") == failed(b, "2026-12-02T09:57:00.001Z", "1f71")


def test_unknown_fields_names_what_our_message_does_not_declare():
    raw = rpc_pb2.RangeResponse(kvs=[{"key": b"k"}]).SerializeToString()
    assert unknown_fields(_parse(rpc_pb2.RangeResponse, raw)) == []
    extra_top = raw + _varint(99 << 3) + _varint(1)  # field 99, varint 1
    assert unknown_fields(_parse(rpc_pb2.RangeResponse, extra_top)) == ["RangeResponse#99"]
    inner = b"\x0a\x01k" + _varint(42 << 3) + _varint(7)  # KeyValue{key: "k", field 42}
    nested = _varint((2 << 3) | 2) + _varint(len(inner)) + inner
    assert unknown_fields(_parse(rpc_pb2.RangeResponse, nested)) == ["kvs[0].#42"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _parse(cls, raw: bytes):
    m = cls()
    m.ParseFromString(raw)
    return m


def test_render_markdown_writes_one_row_per_step_and_escapes_pipes():
    table = render_markdown([Row("get", "--prefix", "works"), Row("txn", "-i", "differs", "a | b\nc")])
    assert table.splitlines() == [
        "| command | flags | result | note |", "|---|---|---|---|",
        "| `get` | `--prefix` | works |  |", "| `txn` | `-i` | differs | a \\| b c |"]


def test_a_command_that_never_ends_is_stopped_at_its_deadline(etcd_installed):
    # no server listens on port 1: etcdctl watch waits for one forever
    run = etcdctl(["127.0.0.1:1"], "watch", "k", timeout_s=1.0)
    assert run.timed_out and run.code is None
    assert "exit: timed out" in normalise(run, A())


@pytest.mark.parametrize("fmt", ["simple", "table", "json", "fields"])
def test_endpoint_status_formats_agree_between_clusters(fmt):
    """The same status rows in each of etcdctl's formats normalise equal."""
    a, b = A(), B()

    def render(ids, leader, size):
        if fmt == "simple":
            return _status_simple(ids, leader, f"{size // 1000} kB", 2, 10)
        rows = [(m, m.client_urls[0].removeprefix("http://")) for m in ids.members]
        if fmt == "table":
            head = "| ENDPOINT | ID | VERSION | DB SIZE | IS LEADER | IS LEARNER | RAFT TERM | RAFT INDEX | " \
                   "RAFT APPLIED INDEX | ERRORS |\n"
            body = "".join(f"| {ep} | {m.id:x} | 3.4.23 | {size // 1000} kB | {str(m.index == leader).lower()} "
                           f"| false | 2 | 10 | 10 |  |\n" for m, ep in rows)
            return "+---+\n" + head + "+---+\n" + body + "+---+\n"
        if fmt == "json":
            return json.dumps([{"Endpoint": ep, "Status": {
                "header": _header(ids, m.index, 4, 2), "version": "3.4.23", "dbSize": size,
                "leader": ids.members[leader].id, "raftIndex": 10, "raftTerm": 2, "raftAppliedIndex": 10,
                "dbSizeInUse": size - 4096}} for m, ep in rows]) + "\n"
        return "".join(
            f'"ClusterID" : {ids.cluster_id}\n"MemberID" : {m.id}\n"Revision" : 4\n"RaftTerm" : 2\n'
            f'"Version" : "3.4.23"\n"DBSize" : {size}\n"Leader" : {ids.members[leader].id}\n"IsLearner" : false\n'
            f'"RaftIndex" : 10\n"RaftTerm" : 2\n"RaftAppliedIndex" : 10\n"Errors" : []\n"Endpoint" : "{ep}"\n\n'
            for m, ep in rows)

    args = ("endpoint", "status", "-w", fmt)
    na = normalise(_run(args, render(a, 0, 20480)), a)
    assert na == normalise(_run(args, render(b, 1, 24576)), b)
    assert "<member:1>" in na and "3.4.23" not in na and "20480" not in na and "20 kB" not in na
