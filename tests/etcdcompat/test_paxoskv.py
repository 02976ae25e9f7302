"""etcdctl 3.4 against a real 3-node paxoskv cluster, compared with a real
etcd 3.4 cluster started by the same test; docs/etcd-compat.md is this
run's table.

- Every step of ``etcdctl_cases.KV``, ``MAINTENANCE`` and ``WATCH`` and of ``EXTRA``
  below (every other etcdctl command) runs on both clusters; after
  normalisation (``etcdctl_compat.normalise``) the outputs must be equal,
  or the step must be listed in ``DIFFERENCES`` with why, and a listed step
  must really differ: a stale entry fails the test too.
- The table (``docs/etcd-compat.md``) is made from the run: a step is
  "works" when the outputs matched, else the listed verdict and reason.
  The test fails when the committed file is not what this run made;
  ``PAXOSKV_WRITE_COMPAT=1`` writes it instead. ``check perf --load s``
  takes two minutes: it runs with ``PAXOSKV_LONG=1`` (its rows are kept
  from the committed file otherwise, and say so).
- A snapshot saved with ``etcdctl snapshot save`` from a paxoskv member is
  restored with ``paxoskv snapshot restore`` into a fresh 3-node cluster,
  which then holds every key at every revision the old one did.
- Bad input, through gRPC on both clusters: the same status code and
  message from paxoskv as from etcd, and nothing written.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import grpc
import pytest

import etcdctl_cases
from etcdctl_compat import Case, Row, Step, Target, compare, etcdctl, render_markdown
from integration_cluster import PAXOSKV, run_cli
from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "etcd-compat.md"
LONG = os.environ.get("PAXOSKV_LONG") == "1"
WRITE = os.environ.get("PAXOSKV_WRITE_COMPAT") == "1"
R = rpc_pb2

_FOLLOWER = r"(?m)^[^,\n]+, ([0-9a-f]+), [^,]+, [^,]+, false, false,"
_ENDPOINT = r"(?m)^([^,\n]+), [0-9a-f]+, "

# Every etcdctl 3.4 command the KV and MAINTENANCE cases do not run.
EXTRA = Case("other commands", (
    Step(("put", "/leased", "v", "--lease=1234"), flags="--lease", note="an unknown lease (none exist yet)"),
    Step(("put", "/app/a", "--ignore-lease"), flags="--ignore-lease"),
    Step(("get", "/app/a", "-w", "json")),
    Step(("alarm", "disarm")),
    Step(("version",), note="local: etcdctl's own version"),
    Step(("completion", "bash"), command="completion", flags="bash|fish|zsh|powershell", note="local"),
    Step(("endpoint", "status"), capture={"follower": _FOLLOWER, "endpoint": _ENDPOINT},
         note="again, to name a follower and an endpoint"),
    Step(("move-leader", "{follower}"), command="move-leader"),
    Step(("watch", "/app/", "--prefix", "--rev=1"), until_lines=2, timeout_s=8.0, command="watch"),
    Step(("lease", "grant", "60")),
    Step(("lease", "list")),
    Step(("lease", "timetolive", "1234")),
    Step(("lease", "revoke", "1234")),
    Step(("lease", "keep-alive", "--once", "1234"), flags="--once"),
    Step(("lock", "mylock"), until_lines=2, timeout_s=8.0,
         note="uncontended: a lease, a Txn on CREATE, a Range; a second contender waits with a Watch"),
    Step(("elect", "myelection", "p1"), until_lines=2, timeout_s=8.0, note="uncontended, as lock"),
    Step(("auth", "enable")),
    Step(("user", "add", "root", "--new-user-password=secret"), flags="(any user command)"),
    Step(("user", "list")),
    Step(("role", "add", "r1"), flags="(any role command)"),
    Step(("role", "list")),
    Step(("snapshot", "save", "{tmp}/extra.db"), one_endpoint=True),
    Step(("snapshot", "restore", "{tmp}/extra.db", "--data-dir={tmp}/restored"), flags="--data-dir",
         note="offline"),
    Step(("migrate", "--data-dir={tmp}/no-v2-store"), flags="--data-dir",
         note="offline: it reads an etcd v2 data directory, never a server"),
    Step(("make-mirror", "--prefix=/app/", "--dest-prefix=/mirror/", "{endpoint}"), timeout_s=8.0,
         flags="--prefix --dest-prefix"),
    Step(("check", "datascale", "--load=s"), timeout_s=60.0),
    Step(("member", "add", "newbie", "--learner", "--peer-urls=http://127.0.0.1:9"), flags="--learner"),
    Step(("member", "promote", "{follower}"), note="a voting member: etcd's `can only promote a learner member`"),
    Step(("member", "update", "1", "--peer-urls=http://127.0.0.1:9"), note="an unknown member"),
    Step(("member", "remove", "{follower}")),
))

_NO_AUTH = "Auth is not served: UNIMPLEMENTED"
_BBOLT = (
    "etcdctl opens the file as etcd's bbolt database; a paxoskv member's snapshot holds paxoskv's "
    "format: `paxoskv snapshot status` reads it"
)
_STATIC = "membership is static (each node's --peers): FAILED_PRECONDITION, `membership is static`"

# Steps whose outputs differ: (verdict, how or why). Keyed by the step's arguments.
DIFFERENCES: dict[tuple[str, ...], tuple[str, str]] = {
    ("snapshot", "status", "{tmp}/snap.db"): ("refused", _BBOLT),
    ("snapshot", "status", "{tmp}/snap.db", "-w", "json"): ("refused", _BBOLT),
    ("move-leader", "{follower}"): (
        "refused",
        "a paxoskv leader changes only by election (FAILED_PRECONDITION); as etcd: `not leader` on a "
        "follower, `bad leader transferee` for a non-member",
    ),
    ("auth", "enable"): ("refused", _NO_AUTH),
    ("user", "add", "root", "--new-user-password=secret"): ("refused", _NO_AUTH),
    ("user", "list"): ("refused", _NO_AUTH),
    ("role", "add", "r1"): ("refused", _NO_AUTH),
    ("role", "list"): ("refused", _NO_AUTH),
    ("snapshot", "restore", "{tmp}/extra.db", "--data-dir={tmp}/restored"): (
        "refused",
        "it writes an etcd (bbolt) data directory from the file: `paxoskv snapshot restore` restores "
        "a paxoskv member's snapshot, saved by etcdctl or by paxoskv",
    ),
    ("check", "datascale", "--load=s"): (
        "refused",
        "it reads etcd's Prometheus /metrics over HTTP on the client port, where paxoskv serves gRPC only",
    ),
    ("member", "add", "newbie", "--learner", "--peer-urls=http://127.0.0.1:9"): ("refused", _STATIC),
    ("member", "remove", "{follower}"): ("refused", _STATIC),
}


def _without_retry_logs(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("log {"))


def _rows(report, problems: list[str], *, retries_are_noise: bool = False) -> list[Row]:  # noqa: ANN001
    """The table rows of a case (a CaseReport); what contradicts
    ``DIFFERENCES`` goes to ``problems``. ``retries_are_noise``: the
    client's retry warnings on stderr do not count (a minute of load on a
    busy machine: either cluster may change leaders once)."""
    rows = []
    for s in report.steps:
        listed = DIFFERENCES.get(s.step.args)
        cmd = "etcdctl " + " ".join(s.step.args)
        same = s.same or (
            retries_are_noise and _without_retry_logs(s.normalised[0]) == _without_retry_logs(s.normalised[1])
        )
        if same:
            if listed is not None:
                problems.append(f"{cmd}: listed as differing, but the outputs are equal")
            verdict, note = "works", s.step.note
        elif listed is None:
            problems.append(f"{cmd}: differs and is not listed")
            verdict, note = "differs (not listed)", ""
        else:
            verdict, note = listed
        command, flags = s.step.describe()
        rows.append(Row(command, flags, verdict, note))
    return rows


def _render(sections: list[tuple[str, list[Row]]]) -> str:
    counts = {v: sum(r.result == v for _, rows in sections for r in rows) for v in ("works", "works differently", "refused")}
    head = [
        "# etcdctl 3.4 against paxoskv",
        "",
        "Made by `tests/etcdcompat/test_paxoskv.py` (`PAXOSKV_WRITE_COMPAT=1` rewrites it; the test fails when it",
        "is stale): each row is one etcdctl 3.4.23 command run against a 3-node paxoskv cluster and against a",
        "3-member etcd 3.4.23 cluster started by the same test, the two outputs compared after normalising what",
        "differs between any two clusters (ids, ports, sizes, terms; `tests/etcdcompat/etcdctl_compat.py`).",
        "**works**: the same output; **works differently**: both do it, the output differs as the note says;",
        "**refused**: paxoskv does not do it (why in the note).",
        "",
        f"{counts['works']} works, {counts['works differently']} works differently, {counts['refused']} refused.",
        "",
    ]
    body = []
    for title, rows in sections:
        body += [f"## {title}", "", render_markdown(rows)]
    return "\n".join(head + body)


CHECK_PERF_TITLE = "check perf (a minute of load: run with PAXOSKV_LONG=1, PASS on both)"


def _check_perf_rows() -> list[Row]:
    """The committed check perf rows, when this run does not run it."""
    text = DOC.read_text() if DOC.exists() else ""
    part = text.split("## check perf", 1)[1] if "## check perf" in text else ""
    rows = []
    for line in part.splitlines()[4:]:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 4:
            rows.append(Row(cells[0].strip("`"), cells[1].strip("`"), cells[2], cells[3]))
    return rows


def test_etcdctl_on_paxoskv_matches_etcd(etcd_clusters, paxoskv_clusters, tmp_path) -> None:
    (etcd,) = etcd_clusters(1)
    paxos = paxoskv_clusters("compat")
    for name in ("etcd", "paxoskv"):
        (tmp_path / name).mkdir()
    a = Target("etcd", etcd.endpoints, tmp_path / "etcd")
    b = Target("paxoskv", paxos.endpoints, tmp_path / "paxoskv")
    reports = [
        compare(case, a, b)
        for case in (etcdctl_cases.KV, etcdctl_cases.MAINTENANCE, etcdctl_cases.WATCH, etcdctl_cases.LEASE, EXTRA)
    ]
    problems: list[str] = []
    sections = [(r.case.name, _rows(r, problems)) for r in reports]
    if LONG:
        perf = compare(etcdctl_cases.CHECK_PERF, a, b)
        reports.append(perf)
        assert perf.steps[0].runs[1].code == 0, perf.render()
        sections.append((CHECK_PERF_TITLE, _rows(perf, problems, retries_are_noise=True)))
    else:
        sections.append((CHECK_PERF_TITLE, _check_perf_rows()))
    rendered = "".join(r.render() for r in reports)
    print(rendered)
    for s in reports[2].steps:  # the watches printed their events (not two empty timeouts)
        if s.step.until_lines:
            for run in s.runs:
                assert run.stdout.count(b"\n") >= s.step.until_lines and not run.timed_out, (s.step.args, run)
    assert not problems, "\n".join(problems)
    text = _render(sections)
    if WRITE:
        DOC.write_text(text)
    else:
        assert DOC.read_text() == text, "docs/etcd-compat.md is stale: PAXOSKV_WRITE_COMPAT=1 rewrites it\n" + rendered


# ---- snapshot save with etcdctl, restore with paxoskv ------------------------------------


def _kv_stub(endpoint: str) -> rpc_pb2_grpc.KVStub:
    return rpc_pb2_grpc.KVStub(grpc.insecure_channel(endpoint, options=[("grpc.max_send_message_length", 8 << 20)]))


def _every_revision(kv: rpc_pb2_grpc.KVStub, first: int, last: int) -> dict[int, list[tuple]]:
    out = {}
    for rev in range(first, last + 1):
        r = kv.Range(R.RangeRequest(key=b"\x00", range_end=b"\x00", revision=rev), timeout=10)
        out[rev] = [(x.key, x.value, x.create_revision, x.mod_revision, x.version) for x in r.kvs]
    return out


def test_a_snapshot_saved_by_etcdctl_restores_into_a_fresh_cluster(paxoskv_clusters, tmp_path) -> None:
    old = paxoskv_clusters("backup")
    kv = _kv_stub(old.endpoint(2))
    for i in range(30):
        kv.Put(R.PutRequest(key=b"/k/%02d" % (i % 12), value=b"v%d" % i), timeout=10)
        if i % 7 == 6:
            kv.DeleteRange(R.DeleteRangeRequest(key=b"/k/%02d" % (i % 5)), timeout=10)
    kv.Txn(R.TxnRequest(success=[R.RequestOp(request_put=R.PutRequest(key=b"/t/%d" % i, value=b"t")) for i in range(20)]),
           timeout=10)
    kv.Compact(R.CompactionRequest(revision=10), timeout=10)
    kv.Put(R.PutRequest(key=b"/after", value=b"compaction"), timeout=10)
    current = kv.Range(R.RangeRequest(key=b"/after"), timeout=10).header.revision
    before = _every_revision(kv, 10, current)
    file = tmp_path / "backup.db"
    saved = etcdctl([old.endpoint(3)], "snapshot", "save", str(file))
    assert saved.code == 0 and f"Snapshot saved at {file}" in saved.stdout.decode(), saved
    assert file.stat().st_size % 512 == 32  # what etcdctl demands: padded, then a sha256
    status = run_cli("snapshot", "status", "--json", str(file))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["revision"] == current
    root = tmp_path / "restored"
    for node in (1, 2, 3):
        r = run_cli("snapshot", "restore", str(file), "--data-dir", str(root / f"node{node}"), "--id", str(node),
                    "--cluster-id", "restored")
        assert r.returncode == 0, r.stderr
    new = paxoskv_clusters("restored", root=root)
    for node in (1, 2, 3):
        restored = _kv_stub(new.endpoint(node))
        assert _every_revision(restored, 10, current) == before
        with pytest.raises(grpc.RpcError) as below:
            restored.Range(R.RangeRequest(key=b"/k/01", revision=9), timeout=10)
        assert below.value.details() == "etcdserver: mvcc: required revision has been compacted"
    hashes = {rpc_pb2_grpc.MaintenanceStub(grpc.insecure_channel(ep)).HashKV(R.HashKVRequest(), timeout=10).hash
              for ep in (*new.endpoints, old.endpoint(1))}
    assert len(hashes) == 1  # the same history, row for row
    w = _kv_stub(new.endpoint(1)).Put(R.PutRequest(key=b"/new", value=b"x"), timeout=10)
    assert w.header.revision == current + 1


# ---- bad input: etcd's errors, nothing written -------------------------------------------


def _outcome(call, request) -> tuple[str, str]:  # noqa: ANN001
    try:
        call(request, timeout=10)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()
    return "OK", ""


def _seed(kv: rpc_pb2_grpc.KVStub) -> None:
    """The same history on both clusters: revisions 2..6, compacted at 4."""
    for i in range(5):
        kv.Put(R.PutRequest(key=b"/b/%d" % i, value=b"v"), timeout=10)
    kv.Compact(R.CompactionRequest(revision=4), timeout=10)


def _op_put(key: bytes) -> R.RequestOp:
    return R.RequestOp(request_put=R.PutRequest(key=key, value=b"v"))


def _op_del(key: bytes, end: bytes = b"") -> R.RequestOp:
    return R.RequestOp(request_delete_range=R.DeleteRangeRequest(key=key, range_end=end))


def _op_txn(then: list, other: list | None = None) -> R.RequestOp:  # noqa: ANN001
    return R.RequestOp(request_txn=R.TxnRequest(success=then, failure=other or []))


BAD_KV = [
    ("Put", R.PutRequest(key=b"", value=b"v")),
    ("Put", R.PutRequest(key=b"k", value=b"v", ignore_value=True)),
    ("Put", R.PutRequest(key=b"k", lease=7, ignore_lease=True)),
    ("Put", R.PutRequest(key=b"/missing", ignore_value=True)),
    ("Put", R.PutRequest(key=b"/leased", value=b"v", lease=0x1234)),
    ("Range", R.RangeRequest(key=b"")),
    ("Range", R.RangeRequest(key=b"/b/0", revision=99)),
    ("Range", R.RangeRequest(key=b"/b/0", revision=3)),
    ("Range", R.RangeRequest(key=b"/b/3", range_end=b"/b/1")),  # range_end below key: no error, nothing
    ("DeleteRange", R.DeleteRangeRequest(key=b"/b/3", range_end=b"/b/1")),
    ("DeleteRange", R.DeleteRangeRequest(key=b"")),
    ("Txn", R.TxnRequest(success=[_op_put(b"/t/%d" % i) for i in range(129)])),
    ("Txn", R.TxnRequest(compare=[R.Compare(key=b"/b/%d" % i) for i in range(129)])),
    ("Txn", R.TxnRequest(success=[_op_txn([_op_put(b"/x"), _op_put(b"/x")])])),
    ("Txn", R.TxnRequest(success=[_op_put(b"/x"), _op_txn([_op_put(b"/x")])])),
    ("Txn", R.TxnRequest(success=[R.RequestOp()])),
    ("Txn", R.TxnRequest(compare=[R.Compare(key=b"")])),
    ("Txn", R.TxnRequest(success=[R.RequestOp(request_range=R.RangeRequest(key=b"/b/0", revision=99)),
                                  _op_put(b"/y")])),
    ("Txn", R.TxnRequest(success=[R.RequestOp(request_range=R.RangeRequest(key=b"/b/0", revision=2)),
                                  _op_put(b"/y")])),
    ("Compact", R.CompactionRequest(revision=3)),
    ("Compact", R.CompactionRequest(revision=4)),
    ("Compact", R.CompactionRequest(revision=99)),
]
BAD_MAINTENANCE = [
    ("HashKV", R.HashKVRequest(revision=4)),  # at the compaction: refused, as etcd
    ("HashKV", R.HashKVRequest(revision=99)),
]


def _largest_value(request_bytes_max: int, endpoint: str) -> int:
    """The largest value a put of /big may hold, by etcd's rule, at the
    member behind ``endpoint`` (its id sets the request id's length)."""
    from paxoskv.kv.etcd import request_bytes

    with grpc.insecure_channel(endpoint) as ch:
        member = rpc_pb2_grpc.MaintenanceStub(ch).Status(R.StatusRequest(), timeout=10).header.member_id
    return max(
        n for n in range(request_bytes_max - 64, request_bytes_max)
        if request_bytes(R.PutRequest(key=b"/big", value=b"x" * n).ByteSize(), member) <= request_bytes_max
    )


def test_bad_input_gets_etcds_error_and_nothing_is_written(etcd_clusters, paxoskv_clusters) -> None:
    (etcd,) = etcd_clusters(1)
    paxos = paxoskv_clusters("bad")
    targets = {"etcd": etcd.endpoints[0], "paxoskv": paxos.endpoints[1]}
    stubs = {name: (_kv_stub(ep), rpc_pb2_grpc.MaintenanceStub(grpc.insecure_channel(ep))) for name, ep in targets.items()}
    for kv, _ in stubs.values():
        _seed(kv)
    mismatches = []

    def revision(name: str) -> int:
        return stubs[name][0].Range(R.RangeRequest(key=b"/b/0"), timeout=10).header.revision

    for method, request in [*BAD_KV, *BAD_MAINTENANCE]:
        outcomes = {}
        for name, (kv, maint) in stubs.items():
            before = revision(name)
            service = kv if (method, request) in BAD_KV else maint
            outcomes[name] = _outcome(getattr(service, method), request)
            assert revision(name) == before, (name, method, request)  # nothing written
        if outcomes["etcd"] != outcomes["paxoskv"]:
            mismatches.append(f"{method}({str(request)[:80]!r}): etcd {outcomes['etcd']} paxoskv {outcomes['paxoskv']}")
        assert outcomes["etcd"][0] != "UNKNOWN", (method, request)
    # at and over the request limit (the largest value the answering member takes by etcd's
    # rule, one byte more), and over gRPC's own limit (--max-request-bytes + 512 KiB)
    for name, (kv, _) in stubs.items():
        at = _largest_value(1536 * 1024, targets[name])
        assert _outcome(kv.Put, R.PutRequest(key=b"/big", value=b"x" * at)) == ("OK", ""), name
        before = revision(name)
        over = _outcome(kv.Put, R.PutRequest(key=b"/big", value=b"y" * (at + 1)))
        assert over == ("INVALID_ARGUMENT", "etcdserver: request is too large"), name
        request = R.PutRequest(key=b"/big", value=b"z" * 2_200_000)
        huge = _outcome(kv.Put, request)
        # gRPC refuses it before any handler: grpc-go words it "grpc: received message larger than
        # max (N vs. M)", grpc's C core (paxoskv's server) "SERVER: Received message larger than max
        # (N vs. M)": the same code and figures (README, the etcd API's differences)
        code, details = huge
        message = f"received message larger than max ({request.ByteSize()} vs. 2097152)"
        assert code == "RESOURCE_EXHAUSTED" and details.split(": ", 1)[1].lower() == message, (name, huge)
        assert revision(name) == before
    assert not mismatches, "\n".join(mismatches)


DUPLICATES = [
    [_op_put(b"a"), _op_put(b"a")],
    [_op_del(b"a"), _op_del(b"a")],
    [_op_put(b"a"), _op_del(b"a")],
    [_op_del(b"a", b"c"), _op_put(b"b")],
    [_op_del(b"a", b"c"), _op_put(b"c")],
    [_op_del(b"a", b"\x00"), _op_put(b"z")],
    [_op_put(b"a"), _op_txn([_op_put(b"a")])],
    [_op_txn([_op_put(b"a")], [_op_put(b"a")])],
    [_op_txn([_op_put(b"a")]), _op_txn([_op_put(b"a")])],
    [_op_del(b"a"), _op_txn([_op_put(b"a")])],
    [_op_txn([_op_del(b"a")]), _op_put(b"a")],
    [R.RequestOp(request_range=R.RangeRequest(key=b"a")), _op_put(b"a")],
]


def test_the_duplicate_key_rule_is_etcds(etcd_clusters, paxoskv_clusters) -> None:
    (etcd,) = etcd_clusters(1)
    paxos = paxoskv_clusters("dup")
    stubs = {"etcd": _kv_stub(etcd.endpoints[0]), "paxoskv": _kv_stub(paxos.endpoints[0])}
    for ops in DUPLICATES:
        for branch in ("success", "failure"):
            request = R.TxnRequest(**{branch: ops})
            outcomes = {name: _outcome(kv.Txn, request) for name, kv in stubs.items()}
            assert outcomes["etcd"] == outcomes["paxoskv"], (branch, ops, outcomes)
