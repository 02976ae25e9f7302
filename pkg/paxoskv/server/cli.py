"""``paxoskv serve``: run one node (the Multi-Paxos node plus its gRPC facade).

Rules:

- Every flag can also be set by the environment variable shown in ``--help``
  (``PAXOSKV_ID``, ``PAXOSKV_PEERS``, ...); a flag on the command line wins.
- Exit codes: 0 after a clean stop (SIGTERM or SIGINT), 2 when the node
  cannot start (a bad flag, a wrong/locked/unwritable data directory, a port
  in use, no or bad peer-bus keys, another live node answering with this id)
  with ONE line on stderr saying what to do, 1 when a running node
  fails (its storage stopped accepting writes) -- the log says why.
- Start-up order keeps a refused start harmless: the public port is bound
  first (a port in use costs nothing), then the node opens its storage (it
  refuses a wrong or locked directory before writing anything) and binds its
  bus, and only then does the gRPC server start answering.
- One log line at INFO says where the node listens, whether its public port
  speaks TLS and its bus CURVE; stopping says so too.
  A node on the insecure peer bus says so at WARNING right after.
- The public port's flags (TLS, client certificates, ``--admin-cn``, the
  limits) are ``PUBLIC_PORT_OPTIONS``, read by
  ``paxoskv.server.public.build_public_options``.

Theory of operation: ``asyncio.run`` of ``_serve``, which waits for the
first of a stop signal and the node's ``fatal`` future, then shuts the gRPC
server down (health NOT_SERVING first, one second of grace for calls in
flight) and stops the node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import zmq

from paxoskv import __version__
from paxoskv.cli_options import option
from paxoskv.replica.node import CallLimits
from paxoskv.server.config import NO_KEYS_HINT, ConfigError, ServeOptions, StartRefused, build_serve_options
from paxoskv.server.public import FacadeLimits, build_public_options, connections_cap
from paxoskv.storage.base import StorageError

__all__ = ["serve_cmd", "main"]

log = logging.getLogger("paxoskv.serve")

EXIT_START_FAILED = 2
EXIT_NODE_FAILED = 1

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class StartError(Exception):
    """The node could not start; ``str(err)`` is the one line for stderr."""


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr, force=True)
    # grpc's own loggers are chatty at DEBUG; keep them at WARNING unless asked.
    if level.upper() != "DEBUG":
        logging.getLogger("grpc").setLevel(logging.WARNING)


async def _serve(opts: ServeOptions) -> int:
    from paxoskv.server.etcd_api import EtcdFacade
    from paxoskv.server.grpc_api import BindError, Facade
    from paxoskv.server.node import Node
    from paxoskv.transport.bus import DuplicateNode

    cfg = opts.node
    public = opts.public
    connections, lowered = connections_cap(public.limits.connections_max)
    if lowered is not None:
        log.warning("%s", lowered)
    node = Node(cfg)
    facade = Facade(
        node,
        cfg.node_id,
        request_timeout_s=opts.request_timeout_s,
        limits=dataclasses.replace(public.limits, connections_max=connections),
        tls=public.tls,
        admin_cns=public.admin_cns,
    )
    for name, handlers in EtcdFacade(node, cfg, request_timeout_s=opts.request_timeout_s).services(facade.held).items():
        facade.add_service(name, handlers)
    try:
        facade.bind(opts.grpc_address)
    except BindError as exc:
        raise StartError(str(exc)) from None
    try:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartError(
            f"cannot create data directory {cfg.data_dir} ({exc.strerror or exc}): fix the path "
            f"or its permissions, or pass another --data-dir"
        ) from None
    try:
        await node.start()
    except (StorageError, DuplicateNode) as exc:
        raise StartError(str(exc)) from None
    except zmq.ZMQError as exc:
        raise StartError(
            f"cannot bind the peer bus on {cfg.listen_host}:{cfg.bus_port} ({exc}): is another "
            f"process using the port? pick another --bus-port"
        ) from None
    except PermissionError as exc:
        raise StartError(f"cannot use data directory {cfg.data_dir}: {exc}") from None

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    rc = 0
    try:
        await facade.start()
        await facade.mark_serving()
        peers = ", ".join(f"{pid}={p.host}:{p.port}" for pid, p in sorted(cfg.peers.items()))
        log.info(
            "paxoskv %s node %d of cluster %r serving gRPC on %s (%s; bus port %d, %s, data %s, peers: %s)",
            __version__,
            cfg.node_id,
            cfg.cluster_id,
            opts.grpc_address,
            public.describe(),
            cfg.bus_port,
            "CURVE" if cfg.bus_keys is not None else "INSECURE",
            cfg.data_dir,
            peers or "none",
        )
        if cfg.bus_keys is None:
            log.warning(
                "*** INSECURE PEER BUS (--insecure-peer-bus): anyone who can reach bus port %d can act as "
                "any node of this cluster and read its traffic; to turn CURVE on, %s ***",
                cfg.bus_port, NO_KEYS_HINT,
            )
        stopper = asyncio.create_task(stop.wait())
        assert node.fatal is not None
        done, _ = await asyncio.wait({stopper, node.fatal}, return_when=asyncio.FIRST_COMPLETED)
        if node.fatal in done:
            log.critical("node %d failed: %s", cfg.node_id, node.fatal.result())
            rc = EXIT_NODE_FAILED
        else:
            log.info("node %d stopping (signal)", cfg.node_id)
        stopper.cancel()
    finally:
        # Calls waiting on the node are failed UNAVAILABLE first (their
        # clients retry elsewhere at once, with the same identity), rather
        # than cancelled when the grace period ends.
        node.refuse_calls("node is shutting down")
        await facade.shutdown(grace_s=1.0)
        await node.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("node %d stopped", cfg.node_id)
    return rc


def run_serve(opts: ServeOptions, log_level: str = "info") -> int:
    """Run a node until stopped; the exit code. Errors starting: one line, 2."""
    configure_logging(log_level)
    try:
        return asyncio.run(_serve(opts))
    except StartError as exc:
        click.echo(f"paxoskv serve: error: {exc}", err=True)
        return EXIT_START_FAILED


class _Help:
    """Help texts of the options only ``serve`` takes (the shared ones are
    ``paxoskv.cli_options``')."""

    listen = "Address to bind the gRPC and bus ports on."
    port = "Public gRPC port."
    bus_port = "Peer-bus (ZeroMQ) port. Default: --port + 1000."
    peers = (
        "The OTHER nodes as ID=HOST:PORT[:BUSPORT],... (PORT: their gRPC port; "
        "BUSPORT: their bus port, default PORT+1000)."
    )
    data_dir = "Data directory (LevelDB). Default: ./data/node<ID>."
    peer_public_keys = (
        "Directory holding node<ID>.key, the CURVE public key of every member (this node's too): "
        "the peer bus admits exactly these keys. Turns CURVE on (`paxoskv keys` makes keys)."
    )
    peer_secret_key = "This node's CURVE secret key file. Default: node<ID>.key_secret in --peer-public-keys."
    insecure_peer_bus = (
        "Run the peer bus without authentication or encryption: only where nobody but the members "
        "can reach the bus port."
    )


F = TypeVar("F", bound=Callable[..., Any])

_CALL = CallLimits()
_FACADE = FacadeLimits()

# The public port's flags: (flag, parameter, click.option keywords). etcd's
# names and meanings where etcd has the flag.
PUBLIC_PORT_OPTIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("--cert-file", "cert_file", {"help": "TLS certificate of the public port (PEM; its chain may follow). Turns TLS on."}),
    ("--key-file", "key_file", {"help": "The private key of --cert-file (PEM, not encrypted)."}),
    ("--trusted-ca-file", "trusted_ca_file", {"help": "CA certificate(s) (PEM) that sign client certificates; used with --client-cert-auth."}),
    ("--client-cert-auth", "client_cert_auth", {
        "is_flag": True, "default": False,
        "help": "Refuse, at the TLS handshake, every client without a certificate signed by --trusted-ca-file "
                "(health checks and reflection included).",
    }),
    ("--admin-cn", "admin_cn", {
        "multiple": True,
        "help": "Common Name of a client certificate allowed whole-database and cluster calls (Maintenance.Snapshot); "
                "repeatable; needs --client-cert-auth. Without it every client may make them.",
    }),
    *(
        (flag, flag[2:].replace("-", "_"), {"type": int, "default": default, "help": text})
        for flag, default, text in (
            ("--max-request-bytes", _CALL.request_bytes_max,
             "Largest request the node takes; larger: INVALID_ARGUMENT (and over this + 512 KiB gRPC refuses it: "
             "RESOURCE_EXHAUSTED)."),
            ("--max-batch-ops", _CALL.batch_ops_max, "Most operations in one Batch/PackedBatch call; more: INVALID_ARGUMENT."),
            ("--max-stream-requests", _FACADE.stream_requests_max,
             "Session stream: most requests read and not yet answered; while full the stream is not read."),
            ("--max-stream-bytes", _FACADE.stream_bytes_max, "Session stream: most bytes of those requests and their answers."),
            ("--max-pending-mb", _FACADE.pending_bytes_max >> 20,
             "MiB of requests and answers the node holds, all calls together; past it: RESOURCE_EXHAUSTED."),
            ("--max-concurrent-streams", _FACADE.concurrent_streams_max,
             "Most calls at once on one client connection (HTTP/2 streams)."),
            ("--max-concurrent-rpcs", _FACADE.concurrent_rpcs_max, "Most calls at once on the node; more: RESOURCE_EXHAUSTED."),
            ("--max-connections", _FACADE.connections_max,
             "Most client connections at once; more are closed (lowered to fit the open-files limit)."),
        )
    ),
)  # fmt: skip


def _public_port_options(f: F) -> F:
    for flag, param, kw in reversed(PUBLIC_PORT_OPTIONS):
        envvar = "PAXOSKV_" + flag[2:].upper().replace("-", "_")
        f = click.option(flag, param, envvar=envvar, show_envvar=True, **kw)(f)
    return f


@click.command("serve", context_settings={"show_default": True})
@option("--id")
@option("--cluster-id")
@click.option(
    "--listen", default="0.0.0.0", envvar="PAXOSKV_LISTEN", show_envvar=True, help=_Help.listen
)
@click.option(
    "--port", type=int, default=50051, envvar="PAXOSKV_PORT", show_envvar=True, help=_Help.port
)
@click.option(
    "--bus-port",
    type=int,
    default=None,
    envvar="PAXOSKV_BUS_PORT",
    show_envvar=True,
    help=_Help.bus_port,
)
@click.option("--peers", default="", envvar="PAXOSKV_PEERS", show_envvar=True, help=_Help.peers)
@click.option(
    "--data-dir", default=None, envvar="PAXOSKV_DATA_DIR", show_envvar=True, help=_Help.data_dir
)
@click.option(
    "--peer-public-keys",
    default=None,
    envvar="PAXOSKV_PEER_PUBLIC_KEYS",
    show_envvar=True,
    help=_Help.peer_public_keys,
)
@click.option(
    "--peer-secret-key",
    default=None,
    envvar="PAXOSKV_PEER_SECRET_KEY",
    show_envvar=True,
    help=_Help.peer_secret_key,
)
@click.option(
    "--insecure-peer-bus",
    is_flag=True,
    default=False,
    envvar="PAXOSKV_INSECURE_PEER_BUS",
    show_envvar=True,
    help=_Help.insecure_peer_bus,
)
@option("--heartbeat-ms")
@option("--election-ms")
@click.option(
    "--tick-ms",
    type=int,
    default=None,
    envvar="PAXOSKV_TICK_MS",
    show_envvar=True,
    help="Logical clock tick of the consensus core [default: half of --heartbeat-ms].",
)
@click.option(
    "--request-timeout",
    "request_timeout_s",
    type=float,
    default=10.0,
    envvar="PAXOSKV_REQUEST_TIMEOUT",
    show_envvar=True,
    help="Longest a client call may take, in seconds (a shorter client deadline wins).",
)
@click.option(
    "--retain-entries",
    type=int,
    default=10_000,
    envvar="PAXOSKV_RETAIN_ENTRIES",
    show_envvar=True,
    help="Log entries kept after compaction; a peer further behind catches up by snapshot.",
)
@click.option(
    "--retain-mb",
    type=int,
    default=64,
    envvar="PAXOSKV_RETAIN_MB",
    show_envvar=True,
    help="At most this many MiB of commands in the kept log entries (a slot holds a batch).",
)
@click.option(
    "--leveldb-compression",
    type=click.Choice(["none", "snappy"]),
    default="none",
    envvar="PAXOSKV_LEVELDB_COMPRESSION",
    show_envvar=True,
    show_default=True,
    help="How LevelDB compresses what it writes from now on (a store may switch: old blocks stay readable).",
)
@click.option(
    "--max-txn-ops",
    type=int,
    default=128,
    envvar="PAXOSKV_MAX_TXN_OPS",
    show_envvar=True,
    help="etcd API: most operations in one Txn (etcd's --max-txn-ops).",
)
@click.option(
    "--quota-backend-bytes",
    type=int,
    default=0,
    envvar="PAXOSKV_QUOTA_BACKEND_BYTES",
    show_envvar=True,
    help="Space quota of the data directory; over it the NOSPACE alarm refuses puts (0: 2 GiB; negative: none).",
)
@click.option(
    "--auto-compaction-mode",
    type=click.Choice(["periodic", "revision"]),
    default="periodic",
    envvar="PAXOSKV_AUTO_COMPACTION_MODE",
    show_envvar=True,
    help="How --auto-compaction-retention is read: a duration (periodic) or a number of revisions.",
)
@click.option(
    "--auto-compaction-retention",
    default="0",
    envvar="PAXOSKV_AUTO_COMPACTION_RETENTION",
    show_envvar=True,
    help="MVCC history to keep: e.g. 1h or 30m (a bare number: hours), or revisions; 0: no auto-compaction.",
)
@click.option(
    "--auto-compaction-interval",
    default="5m",
    envvar="PAXOSKV_AUTO_COMPACTION_INTERVAL",
    show_envvar=True,
    help="Revision mode: how often the leader compacts (etcd: always 5m).",
)
@click.option(
    "--advertise-host",
    default="",
    envvar="PAXOSKV_ADVERTISE_HOST",
    show_envvar=True,
    help="This node's host in etcd member lists (default: --listen, or the host name if that is a wildcard).",
)
@click.option(
    "--experimental-watch-progress-notify-interval",
    "watch_progress_notify_interval",
    default="10m",
    envvar="PAXOSKV_WATCH_PROGRESS_NOTIFY_INTERVAL",
    show_envvar=True,
    help="How often a watch created with progress_notify and sent no events since is told the revision "
    "(etcd's flag; a duration: 10m, 5s, 500ms; 0: the default 10m).",
)
@_public_port_options
@option("--log-level")
def serve_cmd(
    node_id: int,
    cluster_id: str,
    listen: str,
    port: int,
    bus_port: int | None,
    peers: str,
    data_dir: str | None,
    peer_public_keys: str | None,
    peer_secret_key: str | None,
    insecure_peer_bus: bool,
    heartbeat_ms: int,
    election_ms: int,
    tick_ms: int | None,
    request_timeout_s: float,
    retain_entries: int,
    retain_mb: int,
    leveldb_compression: str,
    max_txn_ops: int,
    quota_backend_bytes: int,
    auto_compaction_mode: str,
    auto_compaction_retention: str,
    auto_compaction_interval: str,
    advertise_host: str,
    watch_progress_notify_interval: str,
    log_level: str,
    **public_port: Any,
) -> None:
    """Run one paxoskv node in the foreground (stop it with Ctrl-C or SIGTERM)."""
    try:
        public = build_public_options(**public_port)
        opts = build_serve_options(
            node_id=node_id,
            cluster_id=cluster_id,
            listen=listen,
            port=port,
            bus_port=bus_port,
            peers=peers,
            data_dir=data_dir,
            heartbeat_ms=heartbeat_ms,
            election_ms=election_ms,
            tick_ms=tick_ms,
            request_timeout_s=request_timeout_s,
            retain_entries=retain_entries,
            retain_mb=retain_mb,
            leveldb_compression=leveldb_compression,
            max_txn_ops=max_txn_ops,
            quota_backend_bytes=quota_backend_bytes,
            auto_compaction_mode=auto_compaction_mode,
            auto_compaction_retention=auto_compaction_retention,
            auto_compaction_interval=auto_compaction_interval,
            advertise_host=advertise_host,
            watch_progress_notify_interval=watch_progress_notify_interval,
            peer_public_keys=peer_public_keys,
            peer_secret_key=peer_secret_key,
            insecure_peer_bus=insecure_peer_bus,
            public=public,
        )
    except StartRefused as exc:
        click.echo(f"paxoskv serve: error: {exc}", err=True)
        sys.exit(EXIT_START_FAILED)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(run_serve(opts, log_level))


def main() -> None:
    serve_cmd(prog_name="paxoskv serve")


if __name__ == "__main__":
    main()
