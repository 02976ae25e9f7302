"""``paxoskv lock NAME [-- CMD...]`` and ``paxoskv elect NAME [VALUE] [-l]``:
etcd's lock and election from the command line, on the keys ``etcdctl
lock`` and ``etcdctl elect`` use (so either contends with the other), and
with the **fencing token** printed (the key's create revision: what the
lock or leadership protects must refuse a token lower than the highest it
has seen, since a lease can end while its holder still believes it holds).

Rules:

- A session is a lease of ``--ttl`` seconds (etcdctl's default, 60) kept
  alive until the command ends, then revoked (its key goes with it).
- ``lock``: once held, prints the key (as etcdctl does) and ``fencing
  token: N``; with a command, runs it with ``PAXOSKV_LOCK_KEY`` and
  ``PAXOSKV_LOCK_TOKEN`` (and etcdctl's ``ETCD_LOCK_KEY``, ``ETCD_LOCK_REV``)
  set, releases and exits with its code; without, holds until interrupted.
- ``elect NAME VALUE``: once leader, prints the key and the value (as
  etcdctl) and ``fencing token: N``, leads until interrupted, then resigns.
  ``elect -l NAME``: per leadership (and per value it proclaims) the value
  and ``fencing token: N``, until interrupted.
- ``--acquire-timeout S`` (0: forever): not held within S seconds: exit 4,
  and no key left behind. Exit codes as ``paxoskv lease``: 0 ok or
  interrupted; 2 bad input; 3 no member could serve it; 4 anything else.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import click

from paxoskv.client.cli import EXIT_INVALID, EXIT_OTHER, EXIT_UNAVAILABLE, _common
from paxoskv.client.client import ClientError
from paxoskv.client.election import Election
from paxoskv.client.lease import KeepAlive, LeaseClient, LeaseError, Lock, LockTimeout
from paxoskv.client.lease_cli import _client

__all__ = ["elect_cmd", "lock_cmd"]


def _fail(cmd: str, exc: LeaseError) -> NoReturn:
    if isinstance(exc, LockTimeout):
        rc = EXIT_OTHER  # --acquire-timeout: the cluster served, another held it
    elif exc.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        rc = EXIT_UNAVAILABLE
    else:
        rc = EXIT_INVALID if exc.code == "INVALID_ARGUMENT" else EXIT_OTHER
    click.echo(f"paxoskv {cmd}: error: {exc.message}", err=True)
    sys.exit(rc)


def _session_options(f):  # noqa: ANN001, ANN202
    f = click.option("--ttl", type=click.IntRange(min=1), default=60, show_default=True,
                     help="The session lease's TTL in seconds.")(f)
    return click.option("--acquire-timeout", type=click.FloatRange(min=0), default=0.0,
                        help="Give up after this many seconds (0: wait forever).")(f)


def _interruptible() -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt, even when the parent left
    SIGINT ignored (an ignored signal is inherited, and Python then keeps
    it ignored)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@contextmanager
def _session(c: LeaseClient, cmd: str, ttl: int) -> Iterator[int]:
    """A lease kept alive while the block runs, revoked after; SIGTERM ends it as Ctrl-C does."""
    _interruptible()
    try:
        lease_id, granted = c.grant(ttl)
    except LeaseError as exc:
        _fail(cmd, exc)
    keeper: KeepAlive = c.keep_alive(lease_id, granted)
    try:
        yield lease_id
    finally:
        keeper.stop()
        try:
            c.revoke(lease_id)
        except LeaseError:
            pass  # it ends at its TTL


CLEANUP_TIMEOUT_S = 2.0  # per call while giving up a lock or a leadership after Ctrl-C


def _hold(c: LeaseClient) -> None:
    """Until interrupted; then the calls that give the lock or the
    leadership back (delete the key, revoke the lease) get a short deadline
    each, so the command ends within seconds even if an endpoint is down."""
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        c.timeout_s = min(c.timeout_s, CLEANUP_TIMEOUT_S)
        raise


def _exit_interrupted() -> NoReturn:
    """After the cleanup: exit 0 at once, not waiting on grpc's threads."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _timeout(value: float) -> float | None:
    return value or None


@click.command("lock")
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@_session_options
@_common
def lock_cmd(name: str, command: tuple[str, ...], ttl: int, acquire_timeout: float, endpoints: str,
             timeout_s: float, **tls: str | None) -> None:
    """Hold the lock NAME (etcd's, as etcdctl lock); run COMMAND while holding it, if given (after --)."""
    with _client(endpoints, timeout_s, tls) as c:
        try:
            with _session(c, "lock", ttl) as lease_id:
                lock = Lock(c, name, lease_id)
                try:
                    token = lock.acquire(timeout=_timeout(acquire_timeout))
                except LeaseError as exc:
                    _fail("lock", exc)
                click.echo(lock.key.decode(errors="replace"))
                click.echo(f"fencing token: {token}", nl=True)
                sys.stdout.flush()
                if not command:
                    _hold(c)
                env = {**os.environ, "PAXOSKV_LOCK_KEY": lock.key.decode(errors="replace"),
                       "PAXOSKV_LOCK_TOKEN": str(token), "ETCD_LOCK_KEY": lock.key.decode(errors="replace"),
                       "ETCD_LOCK_REV": str(token)}
                try:
                    rc = subprocess.call(list(command), env=env)
                except OSError as exc:
                    click.echo(f"paxoskv lock: error: cannot run {command[0]!r}: {exc.strerror}", err=True)
                    rc = EXIT_OTHER
                lock.release()
        except KeyboardInterrupt:
            _exit_interrupted()
    sys.exit(rc)


@click.command("elect")
@click.argument("name")
@click.argument("value", required=False)
@click.option("-l", "--listen", "observe", is_flag=True, help="Observe the leaders instead of campaigning.")
@_session_options
@_common
def elect_cmd(name: str, value: str | None, observe: bool, ttl: int, acquire_timeout: float, endpoints: str,
              timeout_s: float, **tls: str | None) -> None:
    """Campaign in the election NAME with VALUE (etcd's, as etcdctl elect), or observe it with -l."""
    if observe == (value is not None):
        raise click.UsageError("give a VALUE to campaign with, or -l to observe (not both)")
    _interruptible()
    with _client(endpoints, timeout_s, tls) as c:
        try:
            if observe:
                asyncio.run(_observe(Election(c, name)))
                return
            with _session(c, "elect", ttl) as lease_id:
                election = Election(c, name, lease_id)
                try:
                    token = election.campaign(value or "", timeout=_timeout(acquire_timeout))
                except LeaseError as exc:
                    _fail("elect", exc)
                click.echo(election.key.decode(errors="replace"))
                click.echo(value)
                click.echo(f"fencing token: {token}")
                sys.stdout.flush()
                try:
                    _hold(c)
                finally:
                    election.resign()
        except KeyboardInterrupt:
            _exit_interrupted()


async def _observe(election: Election) -> None:
    try:
        async for leader, token in election.observe():
            click.echo(leader.decode(errors="replace"))
            click.echo(f"fencing token: {token}")
            sys.stdout.flush()
    except LeaseError as exc:
        _fail("elect", exc)
    except ClientError as exc:
        _fail("elect", LeaseError("UNAVAILABLE", str(exc)))
