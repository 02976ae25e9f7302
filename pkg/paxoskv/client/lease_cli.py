"""``paxoskv lease grant|keep-alive|revoke``: etcd leases from the command
line, worded as etcdctl words them (lease ids in hex).

Exit codes: those of ``paxoskv.client.cli`` (0 ok; 2 bad input; 3 no member
could serve it; 4 anything else, e.g. ``requested lease not found``).
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

import click

from paxoskv.client.cli import EXIT_INVALID, EXIT_OTHER, EXIT_UNAVAILABLE, _common, _endpoints, _tls
from paxoskv.client.lease import LeaseClient, LeaseError

__all__ = ["lease_cmd"]


def _client(endpoints: str, timeout_s: float, tls: dict[str, str | None]) -> LeaseClient:
    return LeaseClient(_endpoints(endpoints), timeout_s=timeout_s, tls=_tls(**tls))


def _fail(cmd: str, exc: LeaseError) -> NoReturn:
    rc = EXIT_UNAVAILABLE if exc.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") else (
        EXIT_INVALID if exc.code == "INVALID_ARGUMENT" else EXIT_OTHER)
    click.echo(f"paxoskv lease {cmd}: error: {exc.message}", err=True)
    sys.exit(rc)


def _lease_id(text: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a lease id in hex", param_hint="LEASE_ID") from None
    if not 0 < value < 1 << 63:
        raise click.BadParameter(f"{text!r} is not a lease id (1 .. 7fffffffffffffff)", param_hint="LEASE_ID")
    return value


@click.group("lease")
def lease_cmd() -> None:
    """etcd leases: a TTL that keys die with unless kept alive."""


@lease_cmd.command("grant")
@click.argument("ttl", type=int)
@click.option("--id", "lease_hex", default="", help="The lease id in hex (default: the member chooses).")
@_common
def grant_cmd(ttl: int, lease_hex: str, endpoints: str, timeout_s: float, **tls: str | None) -> None:
    """Grant a lease of TTL seconds (raised to the cluster's minimum)."""
    with _client(endpoints, timeout_s, tls) as c:
        try:
            lease_id, granted = c.grant(ttl, _lease_id(lease_hex) if lease_hex else 0)
        except LeaseError as exc:
            _fail("grant", exc)
    click.echo(f"lease {lease_id:016x} granted with TTL({granted}s)")


@lease_cmd.command("keep-alive")
@click.argument("lease_hex", metavar="LEASE_ID")
@click.option("--once", is_flag=True, help="Renew once and exit.")
@_common
def keep_alive_cmd(lease_hex: str, once: bool, endpoints: str, timeout_s: float, **tls: str | None) -> None:
    """Keep a lease alive (every TTL/3 until it is gone or interrupted)."""
    lease_id = _lease_id(lease_hex)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent left it ignored
    with _client(endpoints, timeout_s, tls) as c:
        try:
            ttl = c.keep_alive_once(lease_id)
            while ttl > 0:
                click.echo(f"lease {lease_id:016x} keepalived with TTL({ttl})")
                if once:
                    return
                ka = c.keep_alive(lease_id, ttl)
                try:
                    ka.lost.wait()
                finally:
                    ka.stop()
                ttl = 0
        except LeaseError as exc:
            _fail("keep-alive", exc)
        except KeyboardInterrupt:
            return
    click.echo(f"lease {lease_id:016x} expired or revoked.")
    sys.exit(EXIT_OTHER)


@lease_cmd.command("revoke")
@click.argument("lease_hex", metavar="LEASE_ID")
@_common
def revoke_cmd(lease_hex: str, endpoints: str, timeout_s: float, **tls: str | None) -> None:
    """Revoke a lease: its keys are deleted, at one revision."""
    lease_id = _lease_id(lease_hex)
    with _client(endpoints, timeout_s, tls) as c:
        try:
            c.revoke(lease_id)
        except LeaseError as exc:
            _fail("revoke", exc)
    click.echo(f"lease {lease_id:016x} revoked")
