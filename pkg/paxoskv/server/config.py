"""Parsing of a node's command-line configuration: addresses, peer specs, ports.

Rules:

- Every parser here takes a string a person typed (a flag or an environment
  variable) and returns a value object, or raises ``ConfigError`` whose
  message is one line naming the offending text and what is expected. The
  CLI turns a ``ConfigError`` into a usage error (exit code 2).
- A peer spec is ``ID=HOST:PORT`` or ``ID=HOST:PORT:BUSPORT``, several joined
  by commas. ``PORT`` is the peer's public gRPC port. Its peer-bus port is
  ``BUSPORT`` when written, else ``PORT + BUS_PORT_OFFSET`` (1000) -- the rule
  every node of a cluster must agree on, since the bus port is how nodes find
  each other. An IPv6 host is written in brackets: ``2=[::1]:50051``.
- An endpoint (what clients dial) is ``HOST:PORT`` or ``[V6HOST]:PORT``; a bare
  ``HOST`` means port ``DEFAULT_PORT``. That syntax, ``ConfigError`` and the
  host and port parsers are the wire contract's (``paxoskv.wire``), shared
  with the client; they are imported here for the server's flags.
- The peers of a node are the OTHER nodes: a spec naming the node's own id,
  the same id twice, or an id < 1 is refused.
- The peer bus runs CURVE with the keys of ``--peer-public-keys`` (and
  ``--peer-secret-key``), loaded and checked here, or without authentication
  only when ``--insecure-peer-bus`` says so. Neither given, or a bad key
  file, is ``StartRefused``: one line on stderr and exit code 2.

Theory of operation: plain string splitting, no regular-expression magic, so
each error can say precisely which part is wrong.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from paxoskv.server.public import PublicOptions

from paxoskv.wire import (
    DEFAULT_PORT,
    ConfigError,
    format_hostport,
    parse_endpoint,
    parse_endpoints,
    parse_hostport,
    parse_port,
    split_host,
)

if TYPE_CHECKING:  # the node module is heavy (zmq, plyvel): clients never import it
    from paxoskv.server.node import NodeConfig, PeerAddr
    from paxoskv.transport.keys import BusKeys

__all__ = [
    "BUS_PORT_OFFSET",
    "parse_auto_compaction",
    "parse_duration_ms",
    "parse_watch_progress_interval",
    "DEFAULT_PORT",
    "ConfigError",
    "ServeOptions",
    "StartRefused",
    "default_bus_port",
    "format_hostport",
    "parse_endpoint",
    "parse_endpoints",
    "build_serve_options",
    "parse_hostport",
    "parse_node_id",
    "parse_peers",
    "parse_port",
]

BUS_PORT_OFFSET = 1000
NODE_ID_MAX = (1 << 32) - 1


class StartRefused(ConfigError):
    """The flags are well-formed but the node must not start (no bus keys, a
    bad key file): the CLI prints ``str(err)``, one line, and exits 2."""


NO_KEYS_HINT = (
    "make keys with `paxoskv keys --dir DIR --nodes N` and pass --peer-public-keys DIR "
    "(PAXOSKV_PEER_PUBLIC_KEYS)"
)


def default_bus_port(port: int) -> int:
    """The peer-bus port of a node whose public port is ``port``."""
    bus = port + BUS_PORT_OFFSET
    if bus > 65535:
        raise ConfigError(
            f"port {port} leaves no room for the bus port {bus} (port + {BUS_PORT_OFFSET}): "
            f"choose a lower port or give the bus port explicitly"
        )
    return bus


def parse_node_id(text: str | int, what: str = "node id") -> int:
    try:
        node_id = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {text!r} is not a number") from None
    if not 1 <= node_id <= NODE_ID_MAX:
        raise ConfigError(f"{what} {node_id} is not in 1..{NODE_ID_MAX}")
    return node_id


def parse_peers(text: str, own_id: int | None = None) -> dict[int, PeerAddr]:
    """``"2=h:50051,3=h:50051:51051"`` -> {2: PeerAddr(...), 3: PeerAddr(...)}."""
    from paxoskv.server.node import PeerAddr

    peers: dict[int, PeerAddr] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        id_text, sep, addr = item.partition("=")
        if not sep:
            raise ConfigError(f"peer {item!r}: expected ID=HOST:PORT[:BUSPORT]")
        node_id = parse_node_id(id_text.strip(), f"peer id in {item!r}")
        host, parts = split_host(addr.strip())
        if len(parts) not in (1, 2):
            raise ConfigError(f"peer {item!r}: expected ID=HOST:PORT[:BUSPORT]")
        port = parse_port(parts[0], f"port in {item!r}")
        bus_port = (
            parse_port(parts[1], f"bus port in {item!r}")
            if len(parts) == 2
            else default_bus_port(port)
        )
        if node_id == own_id:
            raise ConfigError(
                f"peer {item!r} has this node's own id {own_id}: list only the other nodes"
            )
        if node_id in peers:
            raise ConfigError(f"peer id {node_id} is given twice in {text!r}")
        peers[node_id] = PeerAddr(host=host, port=port, bus_port=bus_port)
    return peers


_DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def parse_duration_ms(text: str, bare_unit: str = "h") -> int:
    """A duration as etcd takes it (Go's ``1h30m``, ``10s``, ``500ms``; a bare
    number is in ``bare_unit``): milliseconds."""
    text = text.strip()
    try:
        return round(float(text) * _DURATION_UNITS_MS[bare_unit])
    except ValueError:
        pass
    total = 0.0
    rest = text
    while rest:
        i = 0
        while i < len(rest) and (rest[i].isdigit() or rest[i] == "."):
            i += 1
        j = i
        while j < len(rest) and rest[j].isalpha():
            j += 1
        number, unit, rest = rest[:i], rest[i:j], rest[j:]
        if not number or unit not in _DURATION_UNITS_MS:
            bare = {"ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours"}[bare_unit]
            raise ConfigError(f"duration {text!r}: expected e.g. 1h, 30m, 10s, 1h30m, 500ms (or a number of {bare})")
        total += float(number) * _DURATION_UNITS_MS[unit]
    if not text:
        raise ConfigError("duration is empty")
    return round(total)


def parse_auto_compaction(mode: str, retention: str, interval: str = "5m"):  # noqa: ANN201 - an AutoCompaction
    """``--auto-compaction-mode``/``-retention``/``-interval`` (etcd's first
    two: periodic with a duration, or revision with a count; 0: off)."""
    from paxoskv.replica.etcd import AutoCompaction

    if mode not in ("periodic", "revision"):
        raise ConfigError(f"--auto-compaction-mode must be periodic or revision, not {mode!r}")
    interval_ms = parse_duration_ms(interval, "h")
    if interval_ms < 1:
        raise ConfigError(f"--auto-compaction-interval must be > 0, not {interval!r}")
    if mode == "periodic":
        retention_ms = parse_duration_ms(retention, "h")
        if retention_ms < 0:
            raise ConfigError(f"--auto-compaction-retention must be >= 0, not {retention!r}")
        return AutoCompaction(mode=mode, retention_ms=retention_ms, interval_ms=interval_ms)
    try:
        revs = int(retention)
    except ValueError:
        raise ConfigError(f"--auto-compaction-retention {retention!r}: revision mode takes a number of revisions") from None
    if revs < 0:
        raise ConfigError(f"--auto-compaction-retention must be >= 0, not {revs}")
    return AutoCompaction(mode=mode, retention_revs=revs, interval_ms=interval_ms)


WATCH_PROGRESS_DEFAULT_MS = 600_000  # etcd's: 10 minutes


def parse_watch_progress_interval(text: str, tick_ms: int) -> int:
    """``--experimental-watch-progress-notify-interval`` (etcd's flag, a Go
    duration; 0: etcd's default, 10 minutes): milliseconds, at least one tick."""
    flag = "--experimental-watch-progress-notify-interval"
    try:
        ms = parse_duration_ms(text, "s")
    except ConfigError as exc:
        raise ConfigError(f"{flag}: {exc}") from None
    if ms < 0:
        raise ConfigError(f"{flag} must be >= 0, not {text!r}")
    if ms == 0:
        return WATCH_PROGRESS_DEFAULT_MS
    if ms < tick_ms:
        raise ConfigError(f"{flag} {text!r} is shorter than the tick of {tick_ms} ms")
    return ms


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeOptions:
    """What ``paxoskv serve`` was asked for, validated."""

    node: NodeConfig
    request_timeout_s: float
    public: PublicOptions = field(default_factory=PublicOptions)  # TLS, admin CNs, limits of the public port

    @property
    def grpc_address(self) -> str:
        return format_hostport(self.node.listen_host, self.node.port)


def default_tick_ms(heartbeat_ms: int) -> int:
    """The core's tick when ``--tick-ms`` is not given: two per heartbeat.
    Each tick wakes the event loop, idle or not, so its rate is what an idle
    node costs (docs/benchmarks.md, 2026-12-02 14:00 UTC); every timer of the
    core is a whole number of ticks, the heartbeat two."""
    return max(1, heartbeat_ms // 2)


def build_serve_options(
    *,
    node_id: int,
    cluster_id: str,
    listen: str,
    port: int,
    bus_port: int | None,
    peers: str,
    data_dir: str | None,
    heartbeat_ms: int,
    election_ms: int,
    tick_ms: int | None = None,
    request_timeout_s: float = 10.0,
    retain_entries: int = 10_000,
    retain_mb: int = 64,
    leveldb_compression: str = "none",
    max_txn_ops: int = 128,
    quota_backend_bytes: int = 0,
    auto_compaction_mode: str = "periodic",
    auto_compaction_retention: str = "0",
    auto_compaction_interval: str = "5m",
    advertise_host: str = "",
    watch_progress_notify_interval: str = "10m",
    peer_public_keys: str | None = None,
    peer_secret_key: str | None = None,
    insecure_peer_bus: bool = False,
    public: PublicOptions | None = None,
) -> ServeOptions:
    """Validate the flags of ``serve`` together; raise ``ConfigError``.
    ``public``: the public port's (``server.public.build_public_options``)."""
    from paxoskv.kv.etcd import EtcdLimits
    from paxoskv.replica.etcd import DEFAULT_QUOTA_BYTES
    from paxoskv.server.node import NodeConfig

    node_id = parse_node_id(node_id)
    if not cluster_id:
        raise ConfigError("--cluster-id must not be empty")
    listen = listen.strip()
    if listen.startswith("[") and listen.endswith("]"):
        listen = listen[1:-1]
    if not listen:
        raise ConfigError("--listen must not be empty")
    port = parse_port(port, "--port")
    bus = default_bus_port(port) if bus_port is None else parse_port(bus_port, "--bus-port")
    if bus == port:
        raise ConfigError(f"--bus-port {bus} is the same as --port")
    peer_map = parse_peers(peers, node_id)
    if tick_ms is None:
        tick_ms = default_tick_ms(heartbeat_ms)
    if tick_ms < 1:
        raise ConfigError(f"--tick-ms must be >= 1, not {tick_ms}")
    if heartbeat_ms < tick_ms:
        raise ConfigError(f"--heartbeat-ms {heartbeat_ms} must be >= the tick of {tick_ms} ms")
    if election_ms < 2 * heartbeat_ms:
        raise ConfigError(
            f"--election-ms {election_ms} must be at least twice --heartbeat-ms {heartbeat_ms}"
        )
    if request_timeout_s <= 0:
        raise ConfigError(f"--request-timeout must be > 0, not {request_timeout_s}")
    if retain_entries < 1:
        raise ConfigError(f"--retain-entries must be >= 1, not {retain_entries}")
    if retain_mb < 1:
        raise ConfigError(f"--retain-mb must be >= 1, not {retain_mb}")
    if leveldb_compression not in ("none", "snappy"):
        raise ConfigError(f"--leveldb-compression must be none or snappy, not {leveldb_compression!r}")
    if max_txn_ops < 1:
        raise ConfigError(f"--max-txn-ops must be >= 1, not {max_txn_ops}")
    auto_compaction = parse_auto_compaction(auto_compaction_mode, auto_compaction_retention, auto_compaction_interval)
    watch_progress_ms = parse_watch_progress_interval(watch_progress_notify_interval, tick_ms)
    advertise = advertise_host.strip().strip("[]")
    if not advertise and listen not in ("0.0.0.0", "::"):
        advertise = listen
    if not advertise:
        import socket

        advertise = socket.gethostname()
    public = public or PublicOptions()
    path = pathlib.Path(data_dir) if data_dir else pathlib.Path("data") / f"node{node_id}"
    bus_keys = _bus_keys(node_id, peer_map, peer_public_keys, peer_secret_key, insecure_peer_bus)
    cfg = NodeConfig(
        node_id=node_id,
        cluster_id=cluster_id,
        listen_host=listen,
        port=port,
        bus_port=bus,
        peers=peer_map,
        data_dir=path,
        tick_ms=tick_ms,
        heartbeat_ms=heartbeat_ms,
        election_ms=election_ms,
        retain_entries=retain_entries,
        retain_bytes_max=retain_mb << 20,
        compact_step_entries=max(1, min(1_000, retain_entries // 10)),
        leveldb_compression=None if leveldb_compression == "none" else leveldb_compression,
        etcd_limits=EtcdLimits(txn_ops_max=max_txn_ops, request_bytes_max=public.call_limits.request_bytes_max),
        quota_bytes=None if quota_backend_bytes < 0 else (quota_backend_bytes or DEFAULT_QUOTA_BYTES),
        auto_compaction=auto_compaction if auto_compaction.enabled else None,
        advertise_host=advertise,
        bus_keys=bus_keys,
        call_limits=public.call_limits,
        watch_progress_interval_ms=watch_progress_ms,
    )
    return ServeOptions(node=cfg, request_timeout_s=request_timeout_s, public=public)


def _bus_keys(
    node_id: int,
    peers: dict[int, PeerAddr],
    public_dir: str | None,
    secret_file: str | None,
    insecure: bool,
) -> BusKeys | None:
    """The CURVE keys of the bus, loaded and checked; None with --insecure-peer-bus."""
    from paxoskv.transport.keys import KeyFileError, load_bus_keys

    if insecure:
        if public_dir or secret_file:
            raise ConfigError("--insecure-peer-bus excludes --peer-public-keys and --peer-secret-key")
        return None
    if not public_dir:
        if secret_file:
            raise ConfigError("--peer-secret-key needs --peer-public-keys (the members' public keys)")
        raise StartRefused(
            f"the peer bus needs CURVE keys: {NO_KEYS_HINT}; "
            f"or run it unauthenticated with --insecure-peer-bus"
        )
    try:
        return load_bus_keys(node_id, peers, public_dir, secret_file)
    except KeyFileError as exc:
        raise StartRefused(str(exc)) from None
