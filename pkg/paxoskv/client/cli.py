"""``paxoskv put | get | delete | status``: the command-line client.

Rules:

- Every command takes ``--endpoints HOST:PORT,...`` (env ``PAXOSKV_ENDPOINTS``,
  default ``localhost:50051``): any node or several; the client finds the
  leader and retries on its own until ``--timeout`` seconds (env
  ``PAXOSKV_TIMEOUT``, default 5) have passed.
- Keys and values on the command line are UTF-8 text; ``get`` writes the
  value's bytes as they are, then a newline.
- Output a script can rely on: ``put`` prints ``OK``; ``delete`` prints ``1``
  if the key existed and ``0`` if not (both succeed); ``get`` prints the
  value; ``status`` prints a table (``--json``: a JSON list).
- Exit codes (``EXIT_*``): 0 ok; 1 the key has no value (``get``; stderr says
  "key not found"); 2 usage error or a request the cluster refused as
  invalid (empty key, over a size limit); 3 unavailable or timed out (no
  quorum, no node reachable; ``status``: some endpoint did not answer);
  4 any other error. An expected error is one line on stderr, never a
  traceback.
- Each invocation is a new client with a random client_id, so a retry inside
  one invocation is applied once; running the same ``put`` twice is two
  writes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from paxoskv.client.client import (
    ClientError,
    DeadlineExceeded,
    InvalidArgument,
    NodeStatus,
    StaleSequence,
    Unavailable,
)
from paxoskv.cli_options import option
from paxoskv.client.sync import SyncClient
from paxoskv.wire import ConfigError, parse_endpoints

__all__ = [
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_OTHER",
    "EXIT_UNAVAILABLE",
    "delete_cmd",
    "get_cmd",
    "put_cmd",
    "status_cmd",
]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_INVALID = 2
EXIT_UNAVAILABLE = 3
EXIT_OTHER = 4

F = TypeVar("F", bound=Callable[..., Any])


def _common(f: F) -> F:
    return option("--endpoints")(option("--timeout")(f))


def _endpoints(text: str) -> list[str]:
    try:
        return parse_endpoints(text)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--endpoints") from None


def _fail(cmd: str, exc: ClientError) -> None:
    if isinstance(exc, (InvalidArgument, StaleSequence)):
        rc = EXIT_INVALID
    elif isinstance(exc, (Unavailable, DeadlineExceeded)):
        rc = EXIT_UNAVAILABLE
    else:
        rc = EXIT_OTHER
    click.echo(f"paxoskv {cmd}: error: {exc}", err=True)
    sys.exit(rc)


def _client(endpoints: str, timeout_s: float) -> SyncClient:
    return SyncClient(_endpoints(endpoints), timeout_s=timeout_s)


@click.command("put")
@click.argument("key")
@click.argument("value")
@_common
def put_cmd(key: str, value: str, endpoints: str, timeout_s: float) -> None:
    """Set KEY to VALUE (prints OK)."""
    with _client(endpoints, timeout_s) as c:
        try:
            c.put(key, value)
        except ClientError as exc:
            _fail("put", exc)
    click.echo("OK")


@click.command("get")
@click.argument("key")
@click.option(
    "--serializable",
    is_flag=True,
    help="Read the answering node's own state without a quorum check (may be stale).",
)
@_common
def get_cmd(key: str, serializable: bool, endpoints: str, timeout_s: float) -> None:
    """Print the value of KEY (exit 1 if it has none)."""
    with _client(endpoints, timeout_s) as c:
        try:
            value = c.get(key, serializable=serializable)
        except ClientError as exc:
            _fail("get", exc)
    if value is None:
        click.echo(f"paxoskv get: key not found: {key}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    sys.stdout.flush()
    sys.stdout.buffer.write(value + b"\n")  # the value's bytes as they are
    sys.stdout.buffer.flush()


@click.command("delete")
@click.argument("key")
@_common
def delete_cmd(key: str, endpoints: str, timeout_s: float) -> None:
    """Delete KEY (prints 1 if it existed, 0 if not)."""
    with _client(endpoints, timeout_s) as c:
        try:
            result = c.delete(key)
        except ClientError as exc:
            _fail("delete", exc)
    click.echo("1" if result.existed else "0")


def _status_json(ns: NodeStatus) -> dict[str, Any]:
    if ns.status is None:
        return {"endpoint": ns.endpoint, "error": str(ns.error)}
    s = ns.status
    return {
        "endpoint": ns.endpoint,
        "node_id": s.node_id,
        "cluster_id": s.cluster_id,
        "role": s.role,
        "leader_id": s.leader_id,
        "ballot": {"round": s.ballot_round, "node": s.ballot_node},
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "log_start": s.log_start,
        "snapshot_index": s.snapshot_index,
        "keys": s.keys,
        "version": s.version,
        "peers": [
            {
                "node_id": p.node_id,
                "address": p.address,
                "connected": p.connected,
                "last_heard_seconds": p.last_heard_seconds,
            }
            for p in s.peers
        ],
    }


_COLUMNS = (
    "ENDPOINT", "ID", "ROLE", "LEADER", "BALLOT", "COMMIT", "APPLIED", "LOG", "SNAPSHOT", "PEERS SEEN"
)


def _status_row(ns: NodeStatus) -> tuple[str, ...]:
    if ns.status is None:
        return (ns.endpoint, "-", f"unreachable: {ns.error}")
    s = ns.status
    seen = ",".join(str(p.node_id) for p in s.peers if p.connected) or "-"
    return (
        ns.endpoint,
        str(s.node_id),
        s.role,
        str(s.leader_id) if s.leader_id else "-",
        f"{s.ballot_round}.{s.ballot_node}",
        str(s.commit_index),
        str(s.applied_index),
        f"{s.log_start}-{s.commit_index}" if s.commit_index >= s.log_start else "-",
        str(s.snapshot_index) if s.snapshot_index else "-",
        seen,
    )


def format_status_table(nodes: list[NodeStatus]) -> str:
    rows = [_COLUMNS, *(_status_row(ns) for ns in nodes)]
    full = [r for r in rows if len(r) == len(_COLUMNS)]
    widths = [max(len(r[i]) for r in full) for i in range(len(_COLUMNS))]
    lines = []
    for r in rows:
        if len(r) == len(_COLUMNS):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        else:  # an unreachable node: endpoint, then the error
            lines.append("  ".join((r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2])))
    return "\n".join(lines)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per endpoint.")
@_common
def status_cmd(as_json: bool, endpoints: str, timeout_s: float) -> None:
    """Show each endpoint's node: role, leader, ballot, commit/applied index, peers seen.

    Exit 0 when every endpoint answered, 3 otherwise.
    """
    eps = _endpoints(endpoints)
    with SyncClient(eps, timeout_s=timeout_s) as c:
        nodes = c.status_all(eps)
    if as_json:
        click.echo(json.dumps([_status_json(ns) for ns in nodes], indent=2))
    else:
        click.echo(format_status_table(nodes))
    if any(ns.status is None for ns in nodes):
        sys.exit(EXIT_UNAVAILABLE)
