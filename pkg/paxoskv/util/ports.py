"""Ports free on this machine right now, for nodes, test servers and dead endpoints.

Rules:

- Candidates are drawn at random below Linux's ephemeral range (from 20000 to
  the range's first port, read from ``/proc``), so the kernel never hands one
  of them to another process's port-0 socket between our check and our bind.
- A candidate is returned only if a TCP socket can bind it on ``host`` right
  now, without SO_REUSEADDR (stricter than the servers that will bind it).
- ``offset``: each returned ``p`` also has ``p + offset`` free (a node's gRPC
  port and its default bus port, ``port + 1000``); ``consecutive``: the ports
  are ``p, p + 1, ...`` (``paxoskv cluster --base-port``).
- This process never hands out the same port twice (until most of the range
  has been given), so two clusters set up before either binds do not collide.
- A free port is also a closed one: nothing listens there, and a connection
  to it is refused.
- ``bindable(host, port, reuse_addr=True)`` asks about one given port as a
  server about to bind it would (SO_REUSEADDR, as gRPC and ZeroMQ set it: a
  port held only by connections closing after a stop counts as free).
"""

from __future__ import annotations

import random
import socket

__all__ = ["PORT_LOW", "bindable", "free_port", "free_ports", "port_high"]

PORT_LOW = 20000
_PORT_HIGH_MAX = 31999  # without /proc: Linux's default ephemeral range starts at 32768
_ATTEMPTS = 1000

_rng = random.Random()
_given: set[int] = set()


def port_high() -> int:
    """The highest candidate port: just below the ephemeral range."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            first = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _PORT_HIGH_MAX
    return first - 1 if first - 1 > PORT_LOW + 2000 else _PORT_HIGH_MAX


def bindable(host: str, port: int, *, reuse_addr: bool = True) -> bool:
    """Whether a TCP socket can bind ``host:port`` now (see the module rules)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        if reuse_addr:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(
    n: int, *, offset: int | None = None, consecutive: bool = False, host: str = "127.0.0.1"
) -> list[int]:
    """``n`` distinct ports free on ``host`` now (see the module rules)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    high = port_high() - (offset or 0)
    if high - PORT_LOW < 2 * n:
        raise ValueError(f"no room for {n} ports with offset {offset} below {port_high()}")
    if len(_given) > (high - PORT_LOW) // 2:
        _given.clear()
    for _ in range(_ATTEMPTS):
        if consecutive:
            base = _rng.randint(PORT_LOW, high - n)
            cand = list(range(base, base + n))
        else:
            cand = _rng.sample(range(PORT_LOW, high), n)
        need = cand + ([p + offset for p in cand] if offset else [])
        if len(set(need)) < len(need) or _given.intersection(need):
            continue
        if all(bindable(host, p, reuse_addr=False) for p in need):
            _given.update(need)
            return cand
    raise RuntimeError(f"no {n} free ports found on {host} in {_ATTEMPTS} attempts")


def free_port(host: str = "127.0.0.1") -> int:
    """One free (and so closed) port on ``host``."""
    return free_ports(1, host=host)[0]
