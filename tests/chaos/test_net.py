"""Real network namespaces and partitions (root): packets between cut nodes
are lost, everything else flows, and nothing is left behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from paxoskv.chaos import net
from paxoskv.chaos.net import FIREWALLS, NamespaceNetwork, firewall_backends, namespace_support
from paxoskv.util.wait import wait_until

pytestmark = pytest.mark.root

WHY_NOT = namespace_support()
if WHY_NOT is not None:
    pytest.skip(f"partition tests need network namespaces: {WHY_NOT}", allow_module_level=True)

LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
while True:
    c, _ = s.accept(); c.sendall(b"hello"); c.close()
"""

DIALER = """
import socket, sys
s = socket.socket(); s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print(s.recv(5).decode())
except socket.timeout:
    print("timeout")
except OSError as e:
    print("error", e.errno)
"""


def dial(network: NamespaceNetwork, from_node: int, to_node: int, timeout_s: float = 1.0) -> str:
    a = network.addresses[to_node]
    argv = network.wrap(from_node, [sys.executable, "-c", DIALER, a.host, str(a.port), str(timeout_s)])
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout.strip()


def links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


USABLE, _ = firewall_backends()


@pytest.mark.parametrize("firewall", [f for f in FIREWALLS if f in USABLE])
def test_partitions_cut_exactly_the_pairs_asked_and_heal_restores_them(firewall):
    network = NamespaceNetwork(3, firewall)
    listeners: list[subprocess.Popen] = []
    try:
        network.setup()
        for i in (2, 3):
            a = network.addresses[i]
            listeners.append(
                subprocess.Popen(network.wrap(i, [sys.executable, "-c", LISTENER, a.host, str(a.port)]))
            )
        wait_until(
            "the listeners to come up",
            lambda: dial(network, 1, 2) == "hello" and dial(network, 1, 3) == "hello",
            20,
            interval_s=0.05,
        )

        network.partition([(1, 2)])
        assert dial(network, 1, 2) == "timeout"  # lost, not refused: a pulled cable
        assert dial(network, 2, 1, 0.5) == "timeout"  # both ways
        assert dial(network, 1, 3) == "hello"
        assert dial(network, 2, 3) == "hello"

        network.partition([(1, 3)])  # replaces the previous partition
        assert dial(network, 1, 2) == "hello"
        assert dial(network, 1, 3) == "timeout"

        network.heal()
        assert dial(network, 1, 2) == "hello" and dial(network, 1, 3) == "hello"
    finally:
        for p in listeners:
            p.kill()
            p.wait()
        network.teardown()
    assert network.bridge not in links()
    assert f"pkv-{network.token}-" not in namespaces()
    network.teardown()  # idempotent


def test_leftovers_of_a_dead_campaign_are_removed_by_the_next():
    network = NamespaceNetwork(2)
    orphan: subprocess.Popen | None = None
    try:
        network.setup()
        orphan = subprocess.Popen(network.wrap(1, ["sleep", "600"]))  # a node the dead campaign left
        dead = subprocess.Popen(["true"])
        dead.wait()
        state = net.STATE_DIR / f"{network.token}.json"
        record = json.loads(state.read_text())
        state.write_text(json.dumps({**record, "pid": dead.pid}))
        removed = net.remove_stale()
        assert set(removed) == {network.bridge, network.ns(1), network.ns(2)}
        assert not state.exists()
        assert network.bridge not in links()
        assert orphan.wait(timeout=10) == -signal.SIGKILL
    finally:
        if orphan is not None and orphan.poll() is None:
            orphan.kill()
            orphan.wait()
        network.teardown()
