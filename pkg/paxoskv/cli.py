"""The ``paxoskv`` command line.

Each subcommand lives beside the code it drives and is registered here, so
this file stays a table of contents.
"""

from __future__ import annotations

import importlib
import os

# gRPC's C core logs every failed TLS handshake at INFO, one line each: a
# client that keeps failing (or an attacker) would flood a node's log. Set
# before gRPC is first imported; GRPC_VERBOSITY=INFO brings them back.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import click

from paxoskv import __version__
from paxoskv.cli_options import OPTIONS, TLS_FLAGS, tls_options

# name -> "module:attribute" of a click command; imported on first use.
SUBCOMMANDS: dict[str, str] = {
    "check": "paxoskv.check.cli:check_cmd",
    "sim": "paxoskv.sim.cli:sim_cmd",
    "serve": "paxoskv.server.cli:serve_cmd",
    "put": "paxoskv.client.cli:put_cmd",
    "get": "paxoskv.client.cli:get_cmd",
    "delete": "paxoskv.client.cli:delete_cmd",
    "txn": "paxoskv.client.cli:txn_cmd",
    "status": "paxoskv.client.cli:status_cmd",
    "watch": "paxoskv.client.watch_cli:watch_cmd",
    "grpc": "paxoskv.client.grpc_cli:grpc_cmd",
    "cluster": "paxoskv.server.cluster:cluster_cmd",
    "chaos": "paxoskv.chaos.cli:chaos_cmd",
    "bench": "paxoskv.bench.cli:bench_cmd",
    "snapshot": "paxoskv.server.snapshot_cli:snapshot_cmd",
    "keys": "paxoskv.server.keys_cli:keys_cmd",
    "lease": "paxoskv.client.lease_cli:lease_cmd",
    "lock": "paxoskv.client.lock_cli:lock_cmd",
    "elect": "paxoskv.client.lock_cli:elect_cmd",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in SUBCOMMANDS if self._load(name) is not None)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return None  # not built yet
            raise
        return getattr(module, attr, None)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="paxoskv")
@tls_options
def main(tls_cacert: str | None, tls_cert: str | None, tls_key: str | None) -> None:
    """paxoskv: a replicated, linearizable key-value store on Multi-Paxos."""
    # `paxoskv --cacert CA get k`, as etcdctl is written: the TLS flags given
    # before the command reach it through their environment variables (a
    # flag after the command still wins).
    for flag, value in zip(TLS_FLAGS, (tls_cacert, tls_cert, tls_key)):
        if value is not None:
            os.environ[OPTIONS[flag][1]["envvar"]] = value


if __name__ == "__main__":
    main()
