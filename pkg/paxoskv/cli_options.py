"""Command-line options that several ``paxoskv`` commands take, defined once.

Rules:

- ``option(flag)`` is the click option ``flag`` with its one help text, its
  one environment variable (shown in ``--help``) and its default, as in
  ``OPTIONS``. A command passes keyword overrides only where the option means
  something else there (``snapshot save --timeout`` bounds a whole transfer;
  ``chaos --heartbeat-ms`` is range-checked and read from no environment
  variable), and the override is visible where the command is defined.
- The environment variable names are part of the CLI: they never change.

Who takes what: ``--endpoints`` and ``--timeout`` the client commands
(``put``, ``get``, ``delete``, ``status``, ``watch``: there ``--timeout``
is how long no member may serve the watch; ``grpc`` calls the first endpoint
only and says so in its help) and ``snapshot save``; the TLS flags
``--cacert``, ``--cert`` and ``--key`` (etcdctl's names) those and ``bench``
(``tls_options`` adds the three; ``paxoskv.tls.client_tls`` reads them);
``--cluster-id`` ``serve``, ``cluster`` and ``snapshot restore``; ``--id``
``serve`` and ``snapshot restore``; ``--heartbeat-ms``, ``--election-ms``
and ``--log-level`` ``serve`` and ``cluster`` (and the first two ``chaos``);
``--nodes`` ``cluster``, ``chaos`` and ``sim``. ``bench --endpoints`` is its
own option (any server, etcd too; env ``PAXOSKV_BENCH_ENDPOINTS``, and
against paxoskv ``PAXOSKV_ENDPOINTS`` when that is unset), as are
``bench --timeout-s`` (one RPC's deadline) and the three ``--data-dir``
(a node's directory, a new one to restore into, the parent of a local
cluster's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["OPTIONS", "TLS_FLAGS", "option", "tls_options"]

F = TypeVar("F", bound=Callable[..., Any])

LOG_LEVELS = ("debug", "info", "warning", "error")

# flag -> (parameter declarations after the flag, click.option keyword arguments)
OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "--endpoints": (
        (),
        {
            "default": "localhost:50051",
            "envvar": "PAXOSKV_ENDPOINTS",
            "help": "Comma-separated HOST:PORT of cluster nodes (any of them).",
        },
    ),
    "--timeout": (
        ("timeout_s",),
        {
            "type": click.FloatRange(min=0.001),
            "default": 5.0,
            "envvar": "PAXOSKV_TIMEOUT",
            "help": "Overall deadline in seconds, retries included.",
        },
    ),
    "--id": (
        ("node_id",),
        {
            "type": int,
            "required": True,
            "envvar": "PAXOSKV_ID",
            "help": "This node's id (1, 2, ...): unique in the cluster.",
        },
    ),
    "--cluster-id": (
        (),
        {
            "default": "paxoskv",
            "envvar": "PAXOSKV_CLUSTER_ID",
            "help": "Cluster name; every node of a cluster must use the same.",
        },
    ),
    "--heartbeat-ms": (
        (),
        {
            "type": int,
            "default": 100,
            "envvar": "PAXOSKV_HEARTBEAT_MS",
            "help": "Leader heartbeat interval (etcd's default).",
        },
    ),
    "--election-ms": (
        (),
        {
            "type": int,
            "default": 1000,
            "envvar": "PAXOSKV_ELECTION_MS",
            "help": "Election timeout: a follower that hears no leader this long (plus jitter) runs for it.",
        },
    ),
    "--log-level": (
        (),
        {
            "type": click.Choice(LOG_LEVELS, case_sensitive=False),
            "default": "info",
            "envvar": "PAXOSKV_LOG_LEVEL",
            "help": "Log verbosity.",
        },
    ),
    "--cacert": (
        ("tls_cacert",),
        {
            "default": None,
            "envvar": "PAXOSKV_CACERT",
            "help": "Speak TLS, trusting the servers' certificates this CA (PEM) signed.",
        },
    ),
    "--cert": (
        ("tls_cert",),
        {
            "default": None,
            "envvar": "PAXOSKV_CERT",
            "help": "Client certificate (PEM) for servers with --client-cert-auth; needs --key. Turns TLS on.",
        },
    ),
    "--key": (
        ("tls_key",),
        {
            "default": None,
            "envvar": "PAXOSKV_KEY",
            "help": "The private key (PEM) of --cert.",
        },
    ),
    "--nodes": (
        (),
        {
            "type": int,
            "default": 3,
            "envvar": "PAXOSKV_NODES",
            "help": "How many nodes.",
        },
    ),
}


def option(flag: str, **overrides: Any) -> Callable[[F], F]:
    """The click option ``flag`` of ``OPTIONS``, with ``overrides`` applied."""
    decls, kwargs = OPTIONS[flag]
    kw = {"show_default": True, **kwargs, **overrides}
    kw.setdefault("show_envvar", kw.get("envvar") is not None)
    return click.option(flag, *decls, **kw)


TLS_FLAGS = ("--cacert", "--cert", "--key")


def tls_options(f: F) -> F:
    """``--cacert``, ``--cert`` and ``--key`` (parameters ``tls_cacert``,
    ``tls_cert``, ``tls_key``: a command's KEY argument keeps its name)."""
    for flag in reversed(TLS_FLAGS):
        f = option(flag)(f)
    return f
