"""Storage format 3 -> 4 (MVCC), on the data directories of a real 3-node
cluster written by paxoskv before revisions (tests/unit/data, made by
make_format3.py at commit b1beff3)."""

from __future__ import annotations

import json
import pathlib
import tarfile

import plyvel
import pytest

from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv import KVStateMachine
from paxoskv.kv.mvcc import decode_row, split_row_key
from paxoskv.storage.base import FORMAT_VERSION, WrongNode
from paxoskv.storage.leveldb import LevelDBStorage
from paxoskv.v1 import storage_pb2

DATA = pathlib.Path(__file__).resolve().parent / "data"
EXPECTED = json.loads((DATA / "format3-cluster.json").read_text())
KV = {bytes.fromhex(k): bytes.fromhex(v) for k, v in EXPECTED["keys_hex"].items()}


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> pathlib.Path:
    with tarfile.open(DATA / "format3-cluster.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path


def raw(path: pathlib.Path) -> dict[bytes, bytes]:
    db = plyvel.DB(str(path))
    try:
        return dict(db.iterator())
    finally:
        db.close()


def test_the_fixture_is_a_format_3_store_with_plain_values(cluster: pathlib.Path) -> None:
    records = raw(cluster / "node1")
    assert storage_pb2.NodeMeta.FromString(records[b"meta"]).format_version == 3
    assert {k[3:]: v for k, v in records.items() if k.startswith(b"kv/")} == KV
    assert not any(k.startswith(b"rev/") for k in records)


def test_each_member_migrates_to_the_same_revision_2_history(cluster: pathlib.Path) -> None:
    histories = []
    for node in (1, 2, 3):
        path = cluster / f"node{node}"
        before = raw(path)
        with LevelDBStorage.open(path, node, EXPECTED["cluster_id"]) as storage:
            state = storage.load()
        after = raw(path)
        assert storage_pb2.NodeMeta.FromString(after[b"meta"]).format_version == FORMAT_VERSION == 4
        assert not any(k.startswith(b"kv/") for k in after)
        # the log, the promise and the sessions are untouched
        kept = {k: v for k, v in before.items() if not k.startswith((b"kv/", b"meta", b"applied"))}
        assert {k: v for k, v in after.items() if k in kept} == kept
        assert state.applied_index == EXPECTED["applied_index"]
        assert (state.revision, state.compact_revision, state.alarms) == (2, -1, ())
        rows = sorted(state.history.items())
        assert [split_row_key(k) for k, _ in rows] == [(2, sub) for sub in range(len(KV))]
        records = [decode_row(v) for _, v in rows]
        assert [r.kv.key for r in records] == sorted(KV)  # sub-revisions in key order
        assert all((r.kv.create_revision, r.kv.mod_revision, r.kv.version, r.tombstone) == (2, 2, 1, False)
                   for r in records)
        assert {r.kv.key: r.kv.value for r in records} == KV
        assert any(cid.startswith("anon-") for cid in state.sessions)  # an anonymous write's session
        assert any(not cid.startswith("anon-") for cid in state.sessions)
        histories.append(state.history)
    assert histories[0] == histories[1] == histories[2]


def test_a_migrated_store_serves_revisions_and_opens_again_unchanged(cluster: pathlib.Path) -> None:
    path = cluster / "node2"
    with LevelDBStorage.open(path, 2, EXPECTED["cluster_id"]) as storage:
        state = storage.load()
        sm = KVStateMachine(state.history, state.sessions, state.applied_index, revision=state.revision,
                            compact_revision=state.compact_revision, reader=storage)
        r = sm.range(rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00", revision=2))
        assert {kv.key: kv.value for kv in r.kvs} == KV and r.header.revision == 2
        assert sm.range(rpc_pb2.RangeRequest(key=b"key01", revision=1)).count == 0
    once = raw(path)
    with LevelDBStorage.open(path, 2, EXPECTED["cluster_id"]) as storage:
        assert storage.load() == state
    assert raw(path) == once  # a format 4 store is not migrated again


def test_a_refused_open_migrates_nothing(cluster: pathlib.Path) -> None:
    before = raw(cluster / "node3")
    with pytest.raises(WrongNode):
        LevelDBStorage.open(cluster / "node3", 1, EXPECTED["cluster_id"])
    assert raw(cluster / "node3") == before
