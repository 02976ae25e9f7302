"""``paxoskv watch KEY [--prefix] [--rev N] [--prev-kv]``: print the events
of a key (or of every key with a prefix) as they are applied, etcdctl's way.

Rules:

- Per event, lines as ``etcdctl watch`` prints them: ``PUT`` or ``DELETE``,
  then with ``--prev-kv`` the previous key and value (when there was one),
  then the key and the value (empty for a DELETE). ``--revisions`` prefixes
  each event with a ``# revision N`` line.
- ``--rev N`` starts at revision N (the history since the compaction
  replays first); without it, from now. The client moves to another
  endpoint when one fails, from the revision after the last one printed.
- Exit codes: runs until interrupted (0 on Ctrl-C or SIGTERM, at once:
  what was printed is flushed, nothing waits for the channel's shutdown);
  2 usage error; 3 no
  endpoint served the watch within ``--timeout`` seconds; 5 the server
  canceled the watch (below the compaction: stderr names it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import click

from paxoskv.cli_options import option, tls_options
from paxoskv.client.client import ClientError, Unavailable
from paxoskv.client.etcd_watch import WatchCanceled, watch
from paxoskv.tls import client_tls
from paxoskv.wire import ConfigError, parse_endpoints

__all__ = ["watch_cmd"]

EXIT_UNAVAILABLE = 3
EXIT_OTHER = 4
EXIT_CANCELED = 5


def _exit_now(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM: flush what was printed and exit 0 at once (a grpc
    channel's shutdown after an interrupted stream could hold the process
    for seconds)."""
    try:
        sys.stdout.flush()
    finally:
        os._exit(0)


def _line(data: bytes) -> bytes:
    return data + b"\n"


async def _run(endpoints: list[str], key: str, prefix: bool, rev: int, prev_kv: bool, revisions: bool,
               timeout_s: float, tls: object) -> None:
    out = sys.stdout.buffer
    async for batch in watch(endpoints, key, prefix=prefix, start_revision=rev, prev_kv=prev_kv,
                             reconnect_s=timeout_s, tls=tls):  # type: ignore[arg-type]
        for ev in batch.events:
            if revisions:
                out.write(b"# revision %d\n" % ev.mod_revision)
            out.write(_line(ev.type.encode()))
            if ev.prev_value is not None:
                out.write(_line(ev.key) + _line(ev.prev_value))
            out.write(_line(ev.key) + _line(ev.value if ev.type == "PUT" else b""))
        out.flush()


@click.command("watch")
@click.argument("key")
@click.option("--prefix", is_flag=True, help="Watch every key that starts with KEY.")
@click.option("--rev", "rev", type=click.IntRange(min=0), default=0, help="Start at this revision (0: now).")
@click.option("--prev-kv", is_flag=True, help="Print each key's previous value too.")
@click.option("--revisions", is_flag=True, help="Print '# revision N' before each event.")
@option("--endpoints")
@option("--timeout", help="Give up after this many seconds without a member serving the watch.")
@tls_options
def watch_cmd(key: str, prefix: bool, rev: int, prev_kv: bool, revisions: bool, endpoints: str,
              timeout_s: float, tls_cacert: str | None, tls_cert: str | None, tls_key: str | None) -> None:
    """Print the events of KEY (or of a prefix) as they are applied."""
    try:
        eps = parse_endpoints(endpoints)
        tls = client_tls(tls_cacert, tls_cert, tls_key)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    signal.signal(signal.SIGINT, _exit_now)  # before asyncio.run, which then leaves SIGINT to it
    signal.signal(signal.SIGTERM, _exit_now)
    try:
        asyncio.run(_run(eps, key, prefix, rev, prev_kv, revisions, timeout_s, tls))
    except WatchCanceled as exc:
        click.echo(f"watch: canceled by the server: {exc}", err=True)
        sys.exit(EXIT_CANCELED)
    except Unavailable as exc:
        click.echo(f"watch: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except ClientError as exc:
        click.echo(f"watch: {exc}", err=True)
        sys.exit(EXIT_OTHER)
