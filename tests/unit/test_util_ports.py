"""``paxoskv.util.ports``: free ports below the ephemeral range, bindable now,
with their offset partners, consecutive on request, never handed out twice."""

from __future__ import annotations

import socket

import pytest

from paxoskv.util import ports
from paxoskv.util.ports import PORT_LOW, free_port, free_ports, port_high


def bind(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    return s


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_first = int(f.read().split()[0])
    got = free_ports(8)
    assert len(set(got)) == 8
    assert all(PORT_LOW <= p < ephemeral_first for p in got) and port_high() < ephemeral_first
    socks = [bind(p) for p in got]  # all of them at once
    for s in socks:
        s.close()


def test_offset_partners_are_free_too_and_consecutive_ports_follow_each_other():
    got = free_ports(3, offset=1000, consecutive=True)
    assert got == [got[0], got[0] + 1, got[0] + 2]
    socks = [bind(p) for p in got + [p + 1000 for p in got]]
    for s in socks:
        s.close()
    assert max(got) + 1000 <= port_high()


def test_a_port_in_use_is_never_returned_and_none_is_returned_twice(monkeypatch):
    busy = bind(free_port())
    busy.listen(1)
    taken = busy.getsockname()[1]

    class Rigged:
        """Offers the busy port first, then the next one."""

        def __init__(self) -> None:
            self.offers = [[taken], [taken + 1], [taken + 1], [taken + 2]]

        def sample(self, _population, n):
            assert n == 1
            return self.offers.pop(0)

    monkeypatch.setattr(ports, "_rng", Rigged())
    monkeypatch.setattr(ports, "_given", set())
    try:
        assert free_ports(1) == [taken + 1]  # not the busy one
        assert free_ports(1) == [taken + 2]  # not the one already given
    finally:
        busy.close()


def test_a_free_port_is_closed():
    port = free_port()
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))


def test_bad_requests_are_refused():
    with pytest.raises(ValueError):
        free_ports(0)
    with pytest.raises(ValueError):
        free_ports(3, offset=60_000)
