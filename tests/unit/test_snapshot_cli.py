"""``paxoskv snapshot save | status | restore`` and the ``Maintenance.Snapshot``
stream behind ``save``.

``status`` and ``restore`` run on files (CliRunner). The stream function runs
against a storage directly, and ``save`` end to end against a real gRPC
server on 127.0.0.1 (a free port picked at run time) that serves the stream
function from a LevelDB storage, in a thread of this test.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pathlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from paxoskv.cli import main
from paxoskv.kv import Session
from paxoskv.paxos.types import Ballot, Entry
from paxoskv.server.snapshot_cli import restore_snapshot
from paxoskv.replica.errors import Unavailable
from paxoskv.server.grpc_api import snapshot_stream
from paxoskv.storage import MemoryStorage, SnapshotReader, Storage
from paxoskv.storage.leveldb import LevelDBStorage
from paxoskv.storage.snapshot import etcd_envelope
from paxoskv.util.ports import free_port
from paxoskv.v1 import kv_pb2

from kv_rows import kv_changes as Changes, kv_of, snapshot_of

KV = {b"key%04d" % i: b"value %d" % i for i in range(500)}
SESSIONS = {"client-a": Session(4, kv_pb2.CommandResult(index=30, existed=True), 30)}


@pytest.fixture
def snapshot_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "backup.snap"
    path.write_bytes(snapshot_of("prod", 42, KV, SESSIONS))
    return path


def run(*args: str) -> Any:
    return CliRunner().invoke(main, ["snapshot", *args])


# ---- status -----------------------------------------------------------------------------


def test_status_prints_what_the_file_holds(snapshot_file: pathlib.Path) -> None:
    result = run("status", str(snapshot_file))
    assert result.exit_code == 0, result.stderr
    digest = hashlib.sha256(snapshot_file.read_bytes()).hexdigest()
    rows = dict(line.split("  ", 1) for line in result.stdout.splitlines())
    assert {name: value.strip() for name, value in rows.items()} == {
        "file": str(snapshot_file),
        "cluster id": "prod",
        "applied index": "42",
        "revision": "2",
        "compact revision": "-1",
        "history rows": "500",
        "sessions": "1",
        "total bytes": str(snapshot_file.stat().st_size),
        "sha256": digest,
        "format version": "4",
        "leases": "0",
        "checksum": "ok",
    }
    result = run("status", "--json", str(snapshot_file))
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "file": str(snapshot_file),
        "ok": True,
        "cluster_id": "prod",
        "applied_index": 42,
        "revision": 2,
        "compact_revision": -1,
        "rows": 500,
        "sessions": 1,
        "leases": 0,
        "total_bytes": snapshot_file.stat().st_size,
        "sha256": digest,
        "format_version": 4,
    }


def test_status_of_a_damaged_file_fails(snapshot_file: pathlib.Path) -> None:
    data = bytearray(snapshot_file.read_bytes())
    data[len(data) // 2] ^= 1
    snapshot_file.write_bytes(bytes(data))
    result = run("status", str(snapshot_file))
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "corrupt" in result.stderr
    snapshot_file.write_bytes(bytes(data[:100]))
    result = run("status", str(snapshot_file))
    assert result.exit_code == 1 and "ends" in result.stderr


def test_status_of_a_missing_file_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    assert run("status", str(tmp_path / "nope")).exit_code == 2


# ---- restore ----------------------------------------------------------------------------


def test_restore_seeds_a_new_data_dir(snapshot_file: pathlib.Path, tmp_path: pathlib.Path) -> None:
    for node_id in (1, 2, 3):
        data_dir = tmp_path / f"node{node_id}"
        result = run(
            "restore", str(snapshot_file), "--data-dir", str(data_dir), "--id", str(node_id)
        )
        assert result.exit_code == 0, result.stderr
        assert "applied index 42" in result.stdout and "'prod'" in result.stdout
        with LevelDBStorage.open(data_dir, node_id, "prod", create=False) as storage:
            state = storage.load()
        assert kv_of(state.history) == KV and state.sessions == SESSIONS
        assert state.applied_index == 42 and state.log_start == 43
        assert state.chosen == {} and state.accepted == {} and state.promised.round == 0


def test_restore_into_a_new_cluster_id_and_an_empty_dir(
    snapshot_file: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    data_dir = tmp_path / "empty"
    data_dir.mkdir()
    result = run(
        "restore",
        str(snapshot_file),
        "--data-dir",
        str(data_dir),
        "--id",
        "7",
        "--cluster-id",
        "prod-2",
    )
    assert result.exit_code == 0, result.stderr
    with LevelDBStorage.open(data_dir, 7, "prod-2", create=False) as storage:
        assert kv_of(storage.load().history) == KV


def test_restore_refuses_a_dir_that_holds_anything(
    snapshot_file: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    data_dir = tmp_path / "busy"
    data_dir.mkdir()
    (data_dir / "something").write_text("precious")
    result = run("restore", str(snapshot_file), "--data-dir", str(data_dir), "--id", "1")
    assert result.exit_code == 2 and "is not empty" in result.stderr
    assert os.listdir(data_dir) == ["something"]
    (tmp_path / "a-file").write_text("x")
    result = run("restore", str(snapshot_file), "--data-dir", str(tmp_path / "a-file"), "--id", "1")
    assert result.exit_code == 2 and "not a directory" in result.stderr


def test_restore_of_a_damaged_file_creates_nothing(
    snapshot_file: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    snapshot_file.write_bytes(snapshot_file.read_bytes()[:-1])
    data_dir = tmp_path / "new"
    result = run("restore", str(snapshot_file), "--data-dir", str(data_dir), "--id", "1")
    assert result.exit_code == 1 and "corrupt" in result.stderr
    assert not data_dir.exists()


def test_restore_removes_what_it_created_when_it_fails(
    snapshot_file: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the directory was created (here: the file changes
    between the check and the install) leaves no half-made directory."""
    import paxoskv.server.snapshot_cli as cli

    good = snapshot_file.read_bytes()
    real_verify = cli.verify_file

    def verify_then_damage(path: Any, *args: Any, **kwargs: Any) -> Any:
        info = real_verify(path, *args, **kwargs)
        snapshot_file.write_bytes(good[:-3])
        return info

    monkeypatch.setattr(cli, "verify_file", verify_then_damage)
    for data_dir in (tmp_path / "new", tmp_path / "empty"):
        if data_dir.name == "empty":
            data_dir.mkdir()
        snapshot_file.write_bytes(good)
        result = run("restore", str(snapshot_file), "--data-dir", str(data_dir), "--id", "1")
        assert result.exit_code == 1, result.stderr
        assert not data_dir.exists() if data_dir.name == "new" else os.listdir(data_dir) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--id", "0"], "--id"), (["--id", "1", "--cluster-id", ""], "--cluster-id")],
)
def test_restore_usage_errors(
    snapshot_file: pathlib.Path, tmp_path: pathlib.Path, args: list[str], message: str
) -> None:
    result = run("restore", str(snapshot_file), "--data-dir", str(tmp_path / "d"), *args)
    assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "d").exists()


def test_restore_takes_an_etcd_envelope_and_a_format_1_file(
    snapshot_file: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    wrapped = tmp_path / "etcd.db"
    wrapped.write_bytes(b"".join(etcd_envelope([snapshot_file.read_bytes()])))
    status = run("status", "--json", str(wrapped))
    assert status.exit_code == 0, status.stderr
    assert json.loads(status.stdout)["total_bytes"] == snapshot_file.stat().st_size
    result = run("restore", str(wrapped), "--data-dir", str(tmp_path / "from-etcd"), "--id", "2")
    assert result.exit_code == 0, result.stderr
    with LevelDBStorage.open(tmp_path / "from-etcd", 2, "prod", create=False) as storage:
        state = storage.load()
    assert kv_of(state.history) == KV and state.sessions == SESSIONS and state.revision == 2
    old = pathlib.Path(__file__).resolve().parent / "data" / "snapshot-format1.snap"
    result = run("restore", str(old), "--data-dir", str(tmp_path / "old"), "--id", "1")
    assert result.exit_code == 0, result.stderr
    assert "revision 2, 4 history rows" in result.stdout
    with LevelDBStorage.open(tmp_path / "old", 1, "old", create=False) as storage:
        assert kv_of(storage.load().history)[b"big"] == b"x" * 5000


def test_restore_function_returns_the_info(
    snapshot_file: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    info = restore_snapshot(snapshot_file, tmp_path / "d", 1)
    assert (info.cluster_id, info.applied_index, info.rows, info.revision) == ("prod", 42, 500, 2)


# ---- the stream behind save -----------------------------------------------------------------


@dataclass
class FakeNode:
    """What the stream needs of a node: ``open_snapshot`` of its storage
    (a node not started refuses, as the server's does)."""

    storage: Storage | None

    def open_snapshot(self):  # noqa: ANN201
        if self.storage is None:
            raise Unavailable("node is not running")
        return self.storage.open_snapshot()


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)


def filled(storage: Storage) -> Storage:
    storage.persist(Ballot(1, 1), [Entry(1, Ballot(1, 1), (b"x",))], [(1, (b"x",))], sync=True)
    storage.apply(Changes(dict(KV), dict(SESSIONS), 42), drop_accepted_through=0)
    return storage


async def collect(stream: AsyncIterator[kv_pb2.SnapshotResponse]) -> list[kv_pb2.SnapshotResponse]:
    return [response async for response in stream]


@pytest.mark.parametrize("backend", ["leveldb", "memory"])
def test_snapshot_stream_serves_the_applied_state(tmp_path: pathlib.Path, backend: str) -> None:
    if backend == "leveldb":
        storage = filled(LevelDBStorage.open(tmp_path / "db", 1, "prod"))
    else:
        storage = filled(MemoryStorage(node_id=1, cluster_id="prod"))
    big = {b"big%04d" % i: os.urandom(1000) for i in range(1500)}  # > one 512 KiB message
    storage.apply(Changes(dict(big), {}, 43), drop_accepted_through=0)
    try:
        node = FakeNode(storage)
        responses = asyncio.run(
            collect(snapshot_stream(node, kv_pb2.SnapshotRequest(), FakeContext()))
        )
    finally:
        storage.close()
    assert len(responses) >= 3
    data = b"".join(r.data for r in responses)
    assert all(r.applied_index == 43 for r in responses)
    assert all(r.total_bytes == 0 and r.sha256 == b"" for r in responses[:-1])
    assert responses[-1].total_bytes == len(data)
    assert responses[-1].sha256 == hashlib.sha256(data).digest()
    reader = SnapshotReader("prod")
    rows, sessions = reader.feed(data)
    assert reader.finish().applied_index == 43
    assert kv_of(rows) == {**KV, **big} and dict(sessions) == SESSIONS


def test_snapshot_stream_of_a_node_not_started_is_unavailable() -> None:
    context = FakeContext()
    with pytest.raises(Aborted):
        asyncio.run(collect(snapshot_stream(FakeNode(None), kv_pb2.SnapshotRequest(), context)))
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.UNAVAILABLE


# ---- save, against a real gRPC server -------------------------------------------------------

Handler = Callable[[kv_pb2.SnapshotRequest, Any], AsyncIterator[kv_pb2.SnapshotResponse]]


class SnapshotServer:
    """A gRPC server on 127.0.0.1 serving only Maintenance.Snapshot, run on an
    event loop in a thread of its own."""

    def __init__(self, handler: Handler) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: grpc.aio.Server | None = None
        self.port = asyncio.run_coroutine_threadsafe(self._start(handler), self.loop).result(30)

    async def _start(self, handler: Handler) -> int:
        async def snapshot(request: kv_pb2.SnapshotRequest, context: Any) -> AsyncIterator[Any]:
            async for response in handler(request, context):
                yield response

        self.server = grpc.aio.server()
        method = grpc.unary_stream_rpc_method_handler(
            snapshot,
            request_deserializer=kv_pb2.SnapshotRequest.FromString,
            response_serializer=kv_pb2.SnapshotResponse.SerializeToString,
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("paxoskv.v1.Maintenance", {"Snapshot": method}),)
        )
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return port

    def stop(self) -> None:
        assert self.server is not None
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], SnapshotServer]]:
    servers: list[SnapshotServer] = []

    def start(handler: Handler) -> SnapshotServer:
        servers.append(SnapshotServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_save_streams_a_node_snapshot_into_a_file(
    tmp_path: pathlib.Path, serve: Callable[[Handler], SnapshotServer]
) -> None:
    storage = filled(LevelDBStorage.open(tmp_path / "db", 1, "prod"))
    try:
        node = FakeNode(storage)
        server = serve(lambda request, context: snapshot_stream(node, request, context))
        target = tmp_path / "out.snap"
        target.write_bytes(b"an older backup")
        result = run("save", str(target), "--endpoints", f"127.0.0.1:{server.port}")
        assert result.exit_code == 0, result.stderr
        assert "applied index 42" in result.stdout and "500 history rows" in result.stdout
        with storage.open_snapshot() as source:
            assert target.read_bytes() == b"".join(source.chunks())
        assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "out.snap"]
        assert run("status", str(target)).exit_code == 0
    finally:
        storage.close()


def test_save_refuses_a_bad_stream_and_keeps_the_old_file(
    tmp_path: pathlib.Path, serve: Callable[[Handler], SnapshotServer]
) -> None:
    data = snapshot_of("prod", 42, KV, SESSIONS)

    def bad(kind: str) -> Handler:
        async def handler(request: Any, context: Any) -> AsyncIterator[kv_pb2.SnapshotResponse]:
            body = data[:-1] if kind == "cut" else data
            sha = hashlib.sha256(body).digest() if kind != "sha" else b"\0" * 32
            yield kv_pb2.SnapshotResponse(data=body[:1000], applied_index=42)
            yield kv_pb2.SnapshotResponse(
                data=body[1000:], applied_index=42, total_bytes=len(body), sha256=sha
            )

        return handler

    target = tmp_path / "out.snap"
    target.write_bytes(b"an older backup")
    for kind in ("cut", "sha"):
        server = serve(bad(kind))
        result = run("save", str(target), "--endpoints", f"127.0.0.1:{server.port}")
        assert result.exit_code == 1, (kind, result.stderr)
        assert "bad snapshot" in result.stderr and result.stderr.count("\n") == 1
        assert target.read_bytes() == b"an older backup"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.snap"]


def test_save_from_nowhere_is_unavailable(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "out.snap"
    result = run("save", str(target), "--endpoints", f"127.0.0.1:{free_port()}", "--timeout", "5")
    assert result.exit_code == 3 and "UNAVAILABLE" in result.stderr
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_save_needs_exactly_one_endpoint(tmp_path: pathlib.Path) -> None:
    result = run("save", str(tmp_path / "x"), "--endpoints", "127.0.0.1:1,127.0.0.1:2")
    assert result.exit_code == 2 and "exactly one endpoint" in result.stderr


def test_a_stream_dropped_by_its_client_releases_the_storage_view(tmp_path: pathlib.Path) -> None:
    storage = filled(LevelDBStorage.open(tmp_path / "db", 1, "prod"))
    storage.apply(Changes({b"big%04d" % i: os.urandom(1000) for i in range(1500)}, {}, 43), 0)

    async def first_then_drop() -> kv_pb2.SnapshotResponse:
        stream = snapshot_stream(FakeNode(storage), kv_pb2.SnapshotRequest(), None)
        first = await stream.__anext__()
        await stream.aclose()  # what grpc does when the client goes away
        return first

    try:
        first = asyncio.run(first_then_drop())
        assert first.applied_index == 43 and not first.sha256
        assert storage._sources == set()  # the LevelDB snapshot was released
    finally:
        storage.close()
