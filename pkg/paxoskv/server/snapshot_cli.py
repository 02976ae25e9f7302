"""``paxoskv snapshot save | restore | status``: back up one node's applied
state to a file, check a file, and seed a new cluster from one (as
``etcdctl snapshot`` does).

Rules:

- ``save FILE --endpoints HOST:PORT`` streams ``Maintenance.Snapshot`` from
  exactly ONE node (a snapshot is one node's state) into ``FILE.tmp``,
  verifies it (the file format's checks, plus the stream's total size and
  SHA-256 from its last message), fsyncs it and renames it over ``FILE``:
  ``FILE`` is either the old file or a whole, verified snapshot. A node keeps
  serving while it is saved. ``--cacert --cert --key`` speak TLS (a node
  with ``--admin-cn`` lets only those certificates take a snapshot: any
  other is refused, PERMISSION_DENIED, exit 4).
- ``status FILE`` verifies the whole file and prints what it holds (``--json``
  for a script).
- ``restore FILE --data-dir DIR --id N [--cluster-id C]`` is offline: it
  verifies the file, then creates a NEW data directory for node ``N`` of
  cluster ``C`` (default: the snapshot's cluster) holding the snapshot's
  history, revisions, sessions and applied index, with an empty log after
  it. FILE may also be what ``etcdctl snapshot save`` wrote from a paxoskv
  node (the snapshot in etcd's envelope), or a snapshot of format 1 (from a
  paxoskv before revisions: its keys become revision 2). It refuses a
  directory that holds anything. Restore every node of the new cluster from
  the same file, then start them. On failure, what it created is removed.
- Exit codes: 0 ok; 1 the snapshot is damaged or cut (one line on stderr);
  2 usage error or refused (non-empty directory, bad flag); 3 the node is
  unreachable or timed out (``save``); 4 any other error. An expected error
  is one line on stderr, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

import click

from paxoskv.cli_options import option, tls_options
from paxoskv.storage.base import StorageError
from paxoskv.storage.snapshot import (
    CHUNK_BYTES,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotInfo,
)
from paxoskv.storage.snapshot_files import verify_file, write_file
from paxoskv.tls import ClientTLS, client_tls
from paxoskv.tls import channel as channel_to
from paxoskv.wire import MESSAGE_BYTES_MAX, ConfigError, parse_endpoints

__all__ = [
    "EXIT_CORRUPT",
    "EXIT_OK",
    "EXIT_OTHER",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "restore_snapshot",
    "snapshot_cmd",
]

EXIT_OK = 0
EXIT_CORRUPT = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_OTHER = 4

def _fail(cmd: str, message: str, rc: int) -> NoReturn:
    click.echo(f"paxoskv snapshot {cmd}: error: {message}", err=True)
    sys.exit(rc)


def _describe(info: SnapshotInfo) -> dict[str, Any]:
    return {
        "cluster_id": info.cluster_id,
        "applied_index": info.applied_index,
        "revision": info.revision,
        "compact_revision": info.compact_revision,
        "rows": info.rows,
        "sessions": info.sessions,
        "leases": len(info.leases),
        "total_bytes": info.total_bytes,
        "sha256": info.stream_sha256.hex(),
        "format_version": info.format_version,
    }


def _summary(info: SnapshotInfo) -> str:
    return (
        f"cluster {info.cluster_id!r}, applied index {info.applied_index}, revision {info.revision}, "
        f"{info.rows} history rows, {info.sessions} sessions, {info.total_bytes} bytes, "
        f"sha256 {info.stream_sha256.hex()}"
    )


@click.group("snapshot", context_settings={"help_option_names": ["-h", "--help"]})
def snapshot_cmd() -> None:
    """Back up a node's state to a file; check one; seed a new cluster from one."""


# ---- save ---------------------------------------------------------------------------


def _stream(endpoint: str, timeout_s: float, tls: ClientTLS | None = None) -> Iterator[bytes]:
    """The snapshot's bytes from ``endpoint``, checked against the stream's
    own index, size and checksum."""
    from paxoskv.v1 import kv_pb2, kv_pb2_grpc

    options = [("grpc.max_receive_message_length", MESSAGE_BYTES_MAX)]
    with channel_to(endpoint, tls, options) as channel:
        stub = kv_pb2_grpc.MaintenanceStub(channel)
        digest = hashlib.sha256()
        total = 0
        index: int | None = None
        last: kv_pb2.SnapshotResponse | None = None
        for response in stub.Snapshot(kv_pb2.SnapshotRequest(), timeout=timeout_s):
            if last is not None:
                raise SnapshotCorrupt("the stream went on after its last message")
            if index is None:
                index = response.applied_index
            elif response.applied_index != index:
                raise SnapshotCorrupt(
                    f"the stream changed index from {index} to {response.applied_index}"
                )
            digest.update(response.data)
            total += len(response.data)
            if response.sha256:
                last = response
            yield response.data
        if last is None:
            raise SnapshotCorrupt("the stream ended before its last message")
        if last.total_bytes != total or last.sha256 != digest.digest():
            raise SnapshotCorrupt(
                f"the stream's size or checksum does not match its data ({total} bytes received, "
                f"{last.total_bytes} announced)"
            )


@snapshot_cmd.command("save")
@click.argument("file", type=click.Path(dir_okay=False))
@option("--endpoints", help="HOST:PORT of the ONE node to back up.")
@option("--timeout", default=300.0, help="Deadline in seconds for the whole transfer.")
@tls_options
def save_cmd(
    file: str, endpoints: str, timeout_s: float, tls_cacert: str | None, tls_cert: str | None, tls_key: str | None
) -> None:
    """Stream a consistent snapshot of a running node into FILE."""
    import grpc

    try:
        eps = parse_endpoints(endpoints)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--endpoints") from None
    try:
        tls = client_tls(tls_cacert, tls_cert, tls_key)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if len(eps) != 1:
        raise click.BadParameter(
            f"give exactly one endpoint (a snapshot is one node's state), not {len(eps)}",
            param_hint="--endpoints",
        )
    try:
        info = write_file(file, _stream(eps[0], timeout_s, tls))
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        message = f"{eps[0]}: {code.name if code else 'error'}: {details}"
        unavailable = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        _fail("save", message, EXIT_UNAVAILABLE if code in unavailable else EXIT_OTHER)
    except SnapshotError as exc:
        _fail("save", f"{eps[0]} sent a bad snapshot: {exc}", EXIT_CORRUPT)
    except OSError as exc:
        _fail("save", f"cannot write {file}: {exc.strerror or exc}", EXIT_OTHER)
    click.echo(f"saved {file}: {_summary(info)}")


# ---- status -------------------------------------------------------------------------


@snapshot_cmd.command("status")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status_cmd(file: str, as_json: bool) -> None:
    """Verify FILE (framing, order, counts, checksum) and print what it holds."""
    try:
        info = verify_file(file)
    except SnapshotError as exc:
        _fail("status", f"{file}: {exc}", EXIT_CORRUPT)
    except OSError as exc:
        _fail("status", f"cannot read {file}: {exc.strerror or exc}", EXIT_OTHER)
    if as_json:
        click.echo(json.dumps({"file": file, "ok": True, **_describe(info)}, sort_keys=True))
        return
    rows = [
        ("file", file),
        ("cluster id", info.cluster_id),
        ("applied index", str(info.applied_index)),
        ("revision", str(info.revision)),
        ("compact revision", str(info.compact_revision)),
        ("history rows", str(info.rows)),
        ("sessions", str(info.sessions)),
        ("leases", str(len(info.leases))),
        ("total bytes", str(info.total_bytes)),
        ("sha256", info.stream_sha256.hex()),
        ("format version", str(info.format_version)),
        ("checksum", "ok"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")


# ---- restore ------------------------------------------------------------------------


class RestoreRefused(Exception):
    """The target cannot be restored into; ``str(err)`` says why, in one line."""


def restore_snapshot(
    file: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    node_id: int,
    cluster_id: str | None = None,
) -> SnapshotInfo:
    """Create the data directory of node ``node_id`` of ``cluster_id``
    (default: the snapshot's) from the snapshot ``file``. Refuses a directory
    that holds anything; removes what it created if it fails."""
    from paxoskv.storage.leveldb import LevelDBStorage

    info = verify_file(file)  # a bad file costs no directory
    data_dir = os.fspath(data_dir)
    existed = os.path.lexists(data_dir)
    if existed:
        if not os.path.isdir(data_dir):
            raise RestoreRefused(f"{data_dir} exists and is not a directory")
        if os.listdir(data_dir):
            raise RestoreRefused(
                f"{data_dir} is not empty: restore into a new directory (this one may hold a "
                f"node's data)"
            )
    try:
        with LevelDBStorage.open(data_dir, node_id, cluster_id or info.cluster_id) as storage:
            with storage.begin_install(foreign_cluster_ok=True) as installer:
                with open(file, "rb") as snapshot:
                    left = info.total_bytes  # an etcd envelope's padding and digest stay out
                    while left and (chunk := snapshot.read(min(CHUNK_BYTES, left))):
                        installer.write(chunk)
                        left -= len(chunk)
                index = installer.finish()
            assert index == info.applied_index, (index, info.applied_index)
            storage.reclaim()
    except BaseException:
        if existed:
            for name in os.listdir(data_dir):
                target = os.path.join(data_dir, name)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    os.unlink(target)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    return info


@snapshot_cmd.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--data-dir",
    required=True,
    envvar="PAXOSKV_DATA_DIR",
    show_envvar=True,
    help="The NEW data directory to create (must not exist, or be empty).",
)
@option("--id")
@option("--cluster-id", default=None, help="The new cluster's id (default: the snapshot's).")
def restore_cmd(file: str, data_dir: str, node_id: int, cluster_id: str | None) -> None:
    """Seed a new node's data directory from FILE (offline)."""
    if cluster_id == "":
        raise click.BadParameter("must not be empty", param_hint="--cluster-id")
    from paxoskv.storage.base import NODE_ID_MAX

    if not 1 <= node_id <= NODE_ID_MAX:
        raise click.BadParameter(f"{node_id} is not in 1..{NODE_ID_MAX}", param_hint="--id")
    try:
        info = restore_snapshot(file, data_dir, node_id, cluster_id)
    except RestoreRefused as exc:
        _fail("restore", str(exc), EXIT_USAGE)
    except SnapshotError as exc:
        _fail("restore", f"{file}: {exc}", EXIT_CORRUPT)
    except StorageError as exc:
        _fail("restore", str(exc), EXIT_OTHER)
    except OSError as exc:
        _fail("restore", f"{exc.filename or data_dir}: {exc.strerror or exc}", EXIT_OTHER)
    cluster = cluster_id or info.cluster_id
    click.echo(
        f"restored {file} into {data_dir} for node {node_id} of cluster {cluster!r}: "
        f"applied index {info.applied_index}, revision {info.revision}, {info.rows} history rows, "
        f"{info.sessions} sessions; "
        f"restore every node of the new cluster from this file, then start them with "
        f"--cluster-id {cluster}"
    )
