"""paxoskv.v1's Range and Txn end to end: the Python client's ``range``,
``put_if`` and ``txn`` and the CLI's ``get --prefix``/``--json``,
``put --if-*`` and ``txn`` against a real three-node cluster; the facade's
and client's handling of a retried Txn against a scripted node."""

from __future__ import annotations

import json

import grpc
import pytest

from integration_cluster import LocalCluster
from paxoskv.client import Client, InvalidArgument, OutOfRange, StaleSequence, Txn
from paxoskv.client import txn as t
from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc
from paxoskv.replica import errors
from paxoskv.v1 import kv_pb2
from test_cli_commands import _one_line_error, cli
from test_facade_client import FakeNode, Servers, run

# ---- the client against a real cluster ---------------------------------------------------


def test_range_prefix_gives_revisions_and_put_if_swaps_only_when_the_key_is_so(shared_cluster: LocalCluster) -> None:
    with shared_cluster.client() as c:
        first = c.put("rt/a", "1")
        assert first.revision > 1
        c.put("rt/b", "2")
        c.put("rt/a", "1b")
        c.put("ru", "not in the prefix")
        found = c.range("rt/", prefix=True)
        assert [(kv.key, kv.value, kv.version) for kv in found.kvs] == [(b"rt/a", b"1b", 2), (b"rt/b", b"2", 1)]
        a = found.kvs[0]
        assert a.create_revision == first.revision < a.mod_revision <= found.revision
        assert found.count == 2 and not found.more
        limited = c.range("rt/", prefix=True, limit=1, endpoint=shared_cluster.endpoint(2))
        assert [kv.key for kv in limited.kvs] == [b"rt/a"] and limited.more and limited.count == 2
        past = c.range("rt/a", revision=first.revision)
        assert [kv.value for kv in past.kvs] == [b"1"]

        # compare-and-swap on the mod revision: the first wins, the second is told the truth
        won = c.put_if("rt/a", "2", mod_revision=a.mod_revision)
        assert won.succeeded and won.revision > a.mod_revision and not won.replayed
        lost = c.put_if("rt/a", "3", mod_revision=a.mod_revision)
        assert not lost.succeeded and lost.revision == won.revision
        (now,) = lost.responses[0]
        assert (now.value, now.mod_revision, now.version) == (b"2", won.revision, 3)
        assert c.get("rt/a") == b"2"
        # create only if absent; compare on the value
        assert c.put_if("rt/new", "x", version=0).succeeded
        assert not c.put_if("rt/new", "y", version=0).succeeded
        assert c.put_if("rt/new", "z", value="x").succeeded and c.get("rt/new") == b"z"
        with pytest.raises(ValueError, match="exactly one"):
            c.put_if("rt/new", "w", version=1, value="z")

        # a txn of several ops on both sides, all at one revision
        r = c.txn(
            Txn()
            .when(t.value("rt/new") == "z", t.version("rt/b") > 0)
            .then(t.put("rt/c", "3"), t.delete("rt/b"), t.get("rt/", prefix=True))
            .otherwise(t.get("rt/new"))
        )
        assert r.succeeded and r.responses[0] is None and r.responses[1] == 1
        assert [kv.key for kv in r.responses[2]] == [b"rt/a", b"rt/c", b"rt/new"]
        assert {kv.mod_revision for kv in c.range("rt/c").kvs} == {r.revision}


def test_bad_ranges_and_txns_are_refused_with_nothing_written(shared_cluster: LocalCluster) -> None:
    with shared_cluster.client() as c:
        with pytest.raises(InvalidArgument, match="range_end must be after key"):
            c.range("b", "a")
        with pytest.raises(InvalidArgument, match="key is empty"):
            c.range("")
        with pytest.raises(OutOfRange, match="required revision is a future revision"):
            c.range("k", revision=10**12)
        before = c.range("bad/", prefix=True).revision
        dup = Txn().then(t.put("bad/k", "1"), t.put("bad/k", "2"))
        with pytest.raises(InvalidArgument, match="etcdserver: duplicate key given in txn request"):
            c.txn(dup)
        with pytest.raises(InvalidArgument, match="etcdserver: too many operations in txn request"):
            c.txn(Txn().then(*(t.put(f"bad/{i}", "v") for i in range(129))))
        with pytest.raises(InvalidArgument, match="key is empty"):
            c.txn(Txn().then(t.delete("")))
        everything = c.txn(Txn().then(t.get("", prefix=True)))  # an empty prefix: every key
        keys = [kv.key for kv in everything.responses[0]]
        assert keys and keys == sorted(keys) and len(keys) == c.range("", prefix=True).count
        with pytest.raises(InvalidArgument, match="value is 1048577 bytes"):
            c.txn(Txn().then(t.put("bad/k", b"v" * ((1 << 20) + 1))))
        after = c.range("bad/", prefix=True)
        assert after.count == 0 and after.revision == before


def test_a_range_below_the_compaction_is_out_of_range(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        old = c.put("k", "1").revision
        c.put("k", "2")
        latest = c.put("k", "3").revision
        with grpc.insecure_channel(cluster.endpoint(1)) as ch:
            rpc_pb2_grpc.KVStub(ch).Compact(rpc_pb2.CompactionRequest(revision=latest), timeout=10)
        with pytest.raises(OutOfRange, match="required revision has been compacted"):
            c.range("k", revision=old)
        assert [kv.value for kv in c.range("k", revision=latest).kvs] == [b"3"]


# ---- the CLI ------------------------------------------------------------------------------


def test_cli_get_prefix_json_and_conditional_puts(shared_cluster: LocalCluster) -> None:
    env = {"PAXOSKV_ENDPOINTS": ",".join(shared_cluster.endpoints)}
    assert cli("put", "cli/x", "1", env=env).returncode == 0
    assert cli("put", "cli/y", "two words", env=env).returncode == 0
    p = cli("get", "--prefix", "cli/", env=env)
    assert (p.returncode, p.stdout) == (0, "cli/x\n1\ncli/y\ntwo words\n")
    p = cli("get", "--prefix", "--keys-only", "--limit", "1", "cli/", env=env)
    assert (p.returncode, p.stdout) == (0, "cli/x\n")
    p = cli("get", "--json", "cli/x", env=env)
    doc = json.loads(p.stdout)
    (kv,) = doc["kvs"]
    assert (kv["key"], kv["value"], kv["version"]) == ("cli/x", "1", 1)
    assert kv["create_revision"] == kv["mod_revision"] <= doc["revision"] and doc["count"] == 1
    p = cli("get", "--prefix", "--base64", "Y2xpLw==", "--json", env=env)  # base64 of "cli/"
    assert [(kv["key"], kv["value"]) for kv in json.loads(p.stdout)["kvs"]] == [("Y2xpL3g=", "MQ=="), ("Y2xpL3k=", "dHdvIHdvcmRz")]
    p = cli("get", "--prefix", "--raw", "cli/", env=env)
    assert p.returncode == 2 and "--raw writes one value" in _one_line_error(p)

    mod = kv["mod_revision"]
    p = cli("put", "--if-mod-revision", str(mod), "cli/x", "swapped", env=env)
    assert (p.returncode, p.stdout, p.stderr) == (0, "OK\n", "")
    p = cli("put", "--if-mod-revision", str(mod), "cli/x", "again", env=env)
    assert (p.returncode, p.stdout) == (1, "")
    assert _one_line_error(p).startswith("paxoskv put: not written: cli/x has version 2, mod revision ")
    p = cli("put", "--if-version", "0", "cli/x", "create", env=env)
    assert p.returncode == 1 and "(wanted version 0)" in p.stderr
    p = cli("put", "--if-version", "0", "cli/z", "created", env=env)
    assert (p.returncode, p.stdout) == (0, "OK\n")
    p = cli("put", "--if-value", "created", "cli/z", "changed", env=env)
    assert (p.returncode, p.stdout) == (0, "OK\n")
    assert cli("get", "cli/z", env=env).stdout == "changed\n"
    p = cli("put", "--if-version", "1", "--if-value", "x", "cli/z", "v", env=env)
    assert p.returncode == 2 and "give one of --if-version" in _one_line_error(p)
    p = cli("put", "--if-version", "-1", "cli/z", "v", env=env)
    assert p.returncode == 2


def test_cli_txn_runs_one_branch_and_prints_each_answer(shared_cluster: LocalCluster) -> None:
    env = {"PAXOSKV_ENDPOINTS": ",".join(shared_cluster.endpoints)}
    cli("put", "tx/k", "old", env=env)
    p = cli("txn", "--if", 'value(tx/k) = "old"', "--then", 'put tx/k "new value"', "--then", "get tx/ --prefix",
            "--else", "get tx/k", env=env)
    assert (p.returncode, p.stdout, p.stderr) == (0, "SUCCESS\nOK\ntx/k\nnew value\n", "")
    p = cli("txn", "--if", "value(tx/k) = old", "--if", "version(tx/k) > 0", "--then", "del tx/k", "--else", "get tx/k", env=env)
    assert (p.returncode, p.stdout) == (0, "FAILURE\ntx/k\nnew value\n")
    p = cli("txn", "--if", "mod(tx/k) > 0", "--then", "del tx/ --prefix", env=env)
    assert (p.returncode, p.stdout) == (0, "SUCCESS\n1\n")
    # --hex: keys, values and the answers in hex ("tx/h" is 74782f68)
    p = cli("txn", "--hex", "--if", "version(74782f68) = 0", "--then", "put 74782f68 00ff", "--then", "get 74782f68", env=env)
    assert (p.returncode, p.stdout) == (0, "SUCCESS\nOK\n74782f68\n00ff\n")
    p = cli("txn", "--hex", "--if", "version(tx/h) = 0", env=env)
    assert p.returncode == 2 and _one_line_error(p) == "paxoskv txn: error: KEY is not valid hex: 'tx/h'"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--if", "size(k) = 1"), "not a compare"),
        (("--if", "version(k) = many"), "compared with a number"),
        (("--if", "version(k) = 1 2"), "must be one word"),
        (("--then", "put k"), "not an operation"),
        (("--then", "get"), "not an operation"),
        (("--then", "put '' v"), "key is empty"),
        ((), "give --if, --then and --else"),
    ],
)
def test_cli_txn_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], words: str) -> None:
    # no node is asked: the endpoint is never dialled
    p = cli("txn", *args, "--endpoints", "127.0.0.1:1")
    assert p.returncode == 2 and words in _one_line_error(p)


# ---- the facade and the client, a Txn retried --------------------------------------------


class TxnNode(FakeNode):
    """A scripted node whose Txn answers come from ``txn_answers``."""

    def __init__(self, answers: list[object]) -> None:
        super().__init__(node_id=1)
        self.answers = answers
        self.txns: list[tuple[str, int]] = []

    async def txn(self, req: kv_pb2.TxnRequest, *, timeout_s: float):  # noqa: ANN201
        self.txns.append((req.request.client_id, req.request.sequence))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def scan(self, req: kv_pb2.RangeRequest, *, timeout_s: float):  # noqa: ANN201
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_txn_retried_after_unavailable_keeps_its_identity_and_a_replay_says_so() -> None:
    async def body(s: Servers) -> None:
        replayed = kv_pb2.CommandResult(index=9, revision=41, succeeded=True)
        node = TxnNode([errors.Unavailable("leader changed"), (replayed, 9), errors.FailedPrecondition("stale")])
        ep = await s.add(node)
        async with Client([ep], backoff_s=0.001) as c:
            r = await c.put_if("k", "v", version=0)
            assert (r.succeeded, r.revision, r.replayed, r.responses, r.index) == (True, 41, True, [], 9)
            with pytest.raises(StaleSequence):
                await c.txn(Txn().then(t.put("k", "w")))
        (first, retry, second) = node.txns
        assert first == retry and second == (first[0], first[1] + 1)

    run(body)


def test_etcd_failures_keep_their_code_and_words_through_the_v1_facade() -> None:
    async def body(s: Servers) -> None:
        node = TxnNode([
            errors.EtcdFailure("OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted"),
            errors.EtcdFailure("INVALID_ARGUMENT", "etcdserver: duplicate key given in txn request"),
        ])
        ep = await s.add(node)
        async with Client([ep]) as c:
            with pytest.raises(OutOfRange, match="^etcdserver: mvcc: required revision has been compacted$"):
                await c.range("k", revision=3)
            with pytest.raises(InvalidArgument, match="duplicate key"):
                await c.txn(Txn())

    run(body)
