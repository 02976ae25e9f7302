"""The options several commands share are defined once (``paxoskv.cli_options``):
every command that takes one has its help text and environment variable,
except the overrides listed here, each for a reason its command states."""

from __future__ import annotations

import click

from paxoskv.cli import SUBCOMMANDS, main
from paxoskv.cli_options import OPTIONS

# (command, flag) -> what differs, and why
OVERRIDES = {
    ("snapshot save", "--endpoints"): "help",  # exactly one node
    ("grpc", "--endpoints"): "help",  # the first node only
    ("snapshot save", "--timeout"): "help",  # the whole transfer, default 300 s
    ("snapshot restore", "--cluster-id"): "help",  # default: the snapshot's
    ("chaos", "--nodes"): "envvar",  # a campaign reads its flags only
    ("chaos", "--heartbeat-ms"): "envvar",
    ("chaos", "--election-ms"): "envvar",
    ("sim", "--nodes"): "envvar",
    ("keys", "--nodes"): "help,envvar",  # whose key pairs to make, on purpose only
    ("keys", "--id"): "help,envvar",
    ("watch", "--timeout"): "help",  # how long no member may serve the watch
    ("lease grant", "--id"): "help,envvar",  # a lease id (hex), not a node id
}


def commands() -> dict[str, click.Command]:
    out: dict[str, click.Command] = {}
    ctx = click.Context(main)
    for name in SUBCOMMANDS:
        cmd = main.get_command(ctx, name)
        assert cmd is not None, name
        if isinstance(cmd, click.Group):
            for sub_name, sub in cmd.commands.items():
                out[f"{name} {sub_name}"] = sub
        else:
            out[name] = cmd
    return out


def test_shared_options_have_one_help_text_and_one_environment_variable():
    seen: dict[str, list[str]] = {}
    for name, cmd in sorted(commands().items()):
        for param in cmd.params:
            flag = next((o for o in getattr(param, "opts", ()) if o in OPTIONS), None)
            if flag is None or (name, flag) == ("bench", "--endpoints"):  # its own (see cli_options)
                continue
            seen.setdefault(flag, []).append(name)
            _, want = OPTIONS[flag]
            differs = set(OVERRIDES.get((name, flag), "").split(","))
            if "help" not in differs:
                assert param.help == want["help"], (name, flag)
            if "envvar" in differs:
                assert param.envvar is None, (name, flag)
            else:
                assert param.envvar == want["envvar"] and param.show_envvar, (name, flag)
    tls_takers = ["bench", "delete", "elect", "get", "grpc", "lease grant", "lease keep-alive", "lease revoke", "lock", "put", "snapshot save", "status", "txn", "watch"]
    assert seen == {
        "--cacert": tls_takers,
        "--cert": tls_takers,
        "--key": tls_takers,
        "--cluster-id": ["cluster", "serve", "snapshot restore"],
        "--election-ms": ["chaos", "cluster", "serve"],
        "--endpoints": ["delete", "elect", "get", "grpc", "lease grant", "lease keep-alive", "lease revoke", "lock", "put", "snapshot save", "status", "txn", "watch"],
        "--heartbeat-ms": ["chaos", "cluster", "serve"],
        "--id": ["keys", "lease grant", "serve", "snapshot restore"],
        "--log-level": ["cluster", "serve"],
        "--nodes": ["chaos", "cluster", "keys", "sim"],
        "--timeout": ["delete", "elect", "get", "grpc", "lease grant", "lease keep-alive", "lease revoke", "lock", "put", "snapshot save", "status", "txn", "watch"],
    }
