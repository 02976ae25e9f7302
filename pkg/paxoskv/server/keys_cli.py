"""``paxoskv keys``: make the CURVE key pairs of the peer bus.

Rules:

- ``paxoskv keys --dir DIR --nodes N`` makes the pairs of nodes 1..N in DIR,
  ``--id ID`` (repeatable) those of the nodes named; a pair that exists is
  checked and kept, never replaced, so running it twice is harmless.
- Files (:mod:`paxoskv.transport.keys`): ``node<ID>.key`` (public, 0644) and
  ``node<ID>.key_secret`` (secret, 0600). Each node needs its own secret and
  every member's public key; ``paxoskv serve --peer-public-keys DIR`` reads
  them (the secret from the same directory unless ``--peer-secret-key``).
- Exit codes: 0 done, 2 with one line on stderr when a pair is broken or the
  directory cannot be written.
"""

from __future__ import annotations

import sys

import click

from paxoskv.cli_options import option

__all__ = ["keys_cmd"]


@click.command("keys")
@click.option("--dir", "directory", required=True, help="Where the key files go (made 0700 if missing).")
# --nodes and --id mean what they mean everywhere, but name whose keys to
# make (and no environment variable: a key directory is made on purpose).
@option("--nodes", default=None, envvar=None, help="Make the key pairs of nodes 1..N.")
@option("--id", required=False, multiple=True, envvar=None, help="Make the key pair of this node (repeatable).")
def keys_cmd(directory: str, nodes: int | None, node_id: tuple[int, ...]) -> None:
    """Make CURVE key pairs for the peer bus (existing ones are kept)."""
    from paxoskv.transport.keys import KeyFileError, public_key_path, secret_key_path, create_key_pair

    wanted = sorted({*node_id, *(range(1, nodes + 1) if nodes else ())})
    if nodes is not None and nodes < 1:
        raise click.UsageError(f"--nodes must be >= 1, not {nodes}")
    if not wanted or min(wanted) < 1:
        raise click.UsageError("say which nodes: --nodes N, or --id ID (ids >= 1)")
    for node_id in wanted:
        try:
            _, _, made = create_key_pair(directory, node_id)
        except (KeyFileError, OSError) as exc:
            click.echo(f"paxoskv keys: error: {exc}", err=True)
            sys.exit(2)
        pub, sec = public_key_path(directory, node_id), secret_key_path(directory, node_id)
        click.echo(f"node{node_id}: {'made' if made else 'kept'} {pub} and {sec} (secret)")
    click.echo(
        "Give each node its own node<ID>.key_secret and every node<ID>.key, and start it with "
        "--peer-public-keys DIR (or PAXOSKV_PEER_PUBLIC_KEYS)."
    )
