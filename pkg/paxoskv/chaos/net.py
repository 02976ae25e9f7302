"""Where the campaign's nodes live on the network, and how links between them are cut.

Rules
-----
* ``NamespaceNetwork`` (needs root, ``ip``, and ``nft`` or ``iptables``): every node runs in
  its own network namespace ``pkv-<token>-n<i>`` with its own address
  ``10.213.<s>.<i>/24`` on a veth pair whose other end is a port of one
  bridge ``pkv<token>br`` in the root namespace. The bridge holds
  ``10.213.<s>.254``: the campaign's clients (in the root namespace) reach
  every node through it. ``<s>`` is a /24 that no interface uses yet and
  ``<token>`` is random, so two campaigns on one machine do not collide.
* A partition is a set of cut node pairs. Cutting is done inside each node's
  namespace by one nftables table (``inet pkvchaos``), or where ``nft`` is
  missing by one iptables chain (``PKVCHAOS``, jumped to first from INPUT
  and OUTPUT), that drops every packet to or from the addresses of the
  nodes it is cut from. Packets are lost, not
  refused, exactly like a pulled cable: connections stall and time out.
  The clients' address is never cut (the clients sit on the control node, as
  in Jepsen), so a client of an isolated node sees that node's behaviour.
  A partition replaces the previous one; ``heal`` removes every rule.
* ``teardown`` removes the namespaces (which takes their veth ends, and so
  the pairs) and the bridge, after SIGKILLing any process still inside a
  namespace (``ip netns pids``: none, normally). It is idempotent and runs
  even after a failed setup. A campaign that was itself SIGKILLed leaves its
  devices and nodes behind: ``remove_stale`` removes those of dead
  campaigns, found by the PID recorded under ``/run/paxoskv-chaos`` (the
  next campaign calls it).
* ``LoopbackNetwork`` is the fallback: every node on 127.0.0.1 with ports
  chosen free at run time; partitions are not possible there
  (``partitions_supported`` is False, and ``why_unsupported`` says why).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterable, Sequence

from paxoskv.launch import NodeAddress, local_addresses

__all__ = [
    "LoopbackNetwork",
    "NamespaceNetwork",
    "NetworkError",
    "NodeAddress",
    "make_network",
    "namespace_support",
]

STATE_DIR = pathlib.Path("/run/paxoskv-chaos")
SUBNET_PREFIX = "10.213"
NFT_TABLE = "pkvchaos"
IPT_CHAIN = "PKVCHAOS"
NODE_PORT = 7000  # gRPC port of every node inside its namespace (each has its own address)
NODE_BUS_PORT = 8000
COMMAND_TIMEOUT_S = 20.0


class NetworkError(RuntimeError):
    """Setting up or changing the network failed; the message says which command."""


def _run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    try:
        cp = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"{' '.join(argv)}: {exc}") from None
    if check and cp.returncode != 0:
        raise NetworkError(
            f"{' '.join(argv)} failed ({cp.returncode}): {cp.stderr.strip() or cp.stdout.strip()}"
        )
    return cp


FIREWALLS = ("nft", "iptables")


def _firewall_works(tool: str, ns: str) -> str | None:
    argv = ["nft", "list", "ruleset"] if tool == "nft" else ["iptables", "-w", "-S"]
    try:
        _run(["ip", "netns", "exec", ns, *argv])
    except NetworkError as exc:
        return f"{tool} does not work inside a namespace: {exc}"
    return None


def firewall_backends() -> tuple[list[str], str | None]:
    """The packet filters usable inside a namespace here (preferred first),
    and, when there is none, why."""
    if os.geteuid() != 0:
        return [], "network namespaces need root (this process is not root)"
    if shutil.which("ip") is None:
        return [], "the 'ip' command (iproute2) is not installed"
    present = [t for t in FIREWALLS if shutil.which(t) is not None]
    if not present:
        return [], "neither 'nft' (nftables) nor 'iptables' is installed"
    probe = f"pkv-probe-{secrets.token_hex(3)}"
    try:
        _run(["ip", "netns", "add", probe])
    except NetworkError as exc:
        return [], f"cannot create a network namespace: {exc}"
    try:
        reasons = {t: _firewall_works(t, probe) for t in present}
    finally:
        _run(["ip", "netns", "del", probe], check=False)
    usable = [t for t in present if reasons[t] is None]
    return usable, None if usable else "; ".join(r for r in reasons.values() if r)


def namespace_support() -> str | None:
    """None when namespaces and a packet filter can be used here, else why not."""
    return firewall_backends()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LoopbackNetwork:
    """All nodes on 127.0.0.1; no partitions."""

    kind = "loopback"
    partitions_supported = False

    def __init__(self, n: int, why_unsupported: str) -> None:
        self.why_unsupported = why_unsupported
        self.addresses = local_addresses(n)

    def setup(self) -> None:
        pass

    def wrap(self, node_id: int, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def partition(self, cut: Iterable[tuple[int, int]]) -> None:
        raise NetworkError(f"partitions are not possible on the loopback network: {self.why_unsupported}")

    def heal(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def describe(self) -> str:
        return f"loopback 127.0.0.1 (no partitions: {self.why_unsupported})"


class NamespaceNetwork:
    """One network namespace per node, bridged; partitions by nftables (or iptables)."""

    kind = "netns"
    partitions_supported = True
    why_unsupported = ""

    def __init__(self, n: int, firewall: str = "nft") -> None:
        assert firewall in FIREWALLS, firewall
        self.firewall = firewall
        self.n = n
        self.token = secrets.token_hex(3)
        self.bridge = f"pkv{self.token}br"
        self.subnet = self._free_subnet()
        base = ipaddress.ip_network(self.subnet)
        self.client_host = str(base.network_address + 254)
        self.addresses = {
            i: NodeAddress(str(base.network_address + i), NODE_PORT, NODE_BUS_PORT) for i in range(1, n + 1)
        }
        self._cut: frozenset[tuple[int, int]] = frozenset()
        self._set_up = False

    def ns(self, node_id: int) -> str:
        return f"pkv-{self.token}-n{node_id}"

    def veth(self, node_id: int) -> str:
        return f"pkv{self.token}v{node_id}"

    @staticmethod
    def _free_subnet() -> str:
        used = _run(["ip", "-o", "-4", "addr", "show"]).stdout
        for s in range(0, 250):
            if f" {SUBNET_PREFIX}.{s}." not in used:
                return f"{SUBNET_PREFIX}.{s}.0/24"
        raise NetworkError(f"no free /24 left in {SUBNET_PREFIX}.0.0/16")

    # ---- Lifecycle ---------------------------------------------------------------

    def setup(self) -> None:
        remove_stale()
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        (STATE_DIR / f"{self.token}.json").write_text(
            json.dumps(
                {"pid": os.getpid(), "bridge": self.bridge, "ns": [self.ns(i) for i in range(1, self.n + 1)]}
            )
        )
        self._set_up = True
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.client_host}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for i, addr in self.addresses.items():
            ns = self.ns(i)
            _run(["ip", "netns", "add", ns])
            _run(["ip", "link", "add", self.veth(i), "type", "veth", "peer", "name", "eth0", "netns", ns])
            _run(["ip", "link", "set", self.veth(i), "master", self.bridge, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{addr.host}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            if self.firewall == "iptables":
                # a chain of our own, consulted first on the way in and out
                for argv in (
                    ["-N", IPT_CHAIN],
                    ["-I", "INPUT", "-j", IPT_CHAIN],
                    ["-I", "OUTPUT", "-j", IPT_CHAIN],
                ):
                    _run(["ip", "netns", "exec", ns, "iptables", "-w", *argv])
        self._probe()

    def _probe(self) -> None:
        """Every node address answers from the root namespace (a refused TCP
        connection proves the path; nothing listens yet)."""
        for i, addr in self.addresses.items():
            with socket.socket() as s:
                s.settimeout(3.0)
                try:
                    s.connect((addr.host, addr.port))
                except ConnectionRefusedError:
                    continue
                except OSError as exc:
                    raise NetworkError(
                        f"node {i}'s namespace address {addr.host} is unreachable: {exc}"
                    ) from None
                raise NetworkError(f"something already listens on {addr.target} in a fresh namespace")

    def teardown(self) -> None:
        if not self._set_up:
            return
        for i in range(1, self.n + 1):
            _kill_inside(self.ns(i))
            _run(["ip", "netns", "del", self.ns(i)], check=False)
        _run(["ip", "link", "del", self.bridge], check=False)
        with contextlib.suppress(FileNotFoundError):
            (STATE_DIR / f"{self.token}.json").unlink()
        self._set_up = False

    def wrap(self, node_id: int, argv: Sequence[str]) -> list[str]:
        """The command that runs ``argv`` inside node ``node_id``'s namespace.
        ``ip netns exec`` execs the command in place, so the PID is the node's."""
        return ["ip", "netns", "exec", self.ns(node_id), *argv]

    def describe(self) -> str:
        return (
            f"network namespaces on {self.subnet} (bridge {self.bridge}, clients at {self.client_host}, "
            f"partitions by {self.firewall})"
        )

    # ---- Partitions ----------------------------------------------------------------

    def partition(self, cut: Iterable[tuple[int, int]]) -> None:
        """Make exactly the pairs in ``cut`` unable to exchange packets."""
        pairs = frozenset((min(a, b), max(a, b)) for a, b in cut if a != b)
        for i in range(1, self.n + 1):
            blocked = sorted({b if a == i else a for a, b in pairs if i in (a, b)})
            self._apply(i, [self.addresses[j].host for j in blocked])
        self._cut = pairs

    def heal(self) -> None:
        if self._cut:
            self.partition(())

    def _apply(self, node_id: int, hosts: list[str]) -> None:
        if self.firewall == "iptables":
            ns = self.ns(node_id)
            _run(["ip", "netns", "exec", ns, "iptables", "-w", "-F", IPT_CHAIN])
            for h in hosts:
                for direction in ("-s", "-d"):
                    _run(
                        [
                            "ip",
                            "netns",
                            "exec",
                            ns,
                            "iptables",
                            "-w",
                            "-A",
                            IPT_CHAIN,
                            direction,
                            h,
                            "-j",
                            "DROP",
                        ]
                    )
            return
        # Declaring the table first makes the delete valid when it does not exist
        # yet; the whole script is one atomic nftables transaction.
        lines = [f"table inet {NFT_TABLE}", f"delete table inet {NFT_TABLE}"]
        if hosts:
            elems = ", ".join(hosts)
            lines += [
                f"table inet {NFT_TABLE} {{",
                "  chain input {",
                "    type filter hook input priority 0; policy accept;",
                f"    ip saddr {{ {elems} }} drop",
                "  }",
                "  chain output {",
                "    type filter hook output priority 0; policy accept;",
                f"    ip daddr {{ {elems} }} drop",
                "  }",
                "}",
            ]
        _run(["ip", "netns", "exec", self.ns(node_id), "nft", "-f", "-"], stdin="\n".join(lines) + "\n")


def _kill_inside(ns: str) -> list[int]:
    """SIGKILL every process still inside namespace ``ns`` (normally none: the
    campaign stops its nodes first; this catches the orphans of a campaign
    that was itself killed)."""
    cp = _run(["ip", "netns", "pids", ns], check=False)
    pids = [int(p) for p in cp.stdout.split() if p.isdigit()] if cp.returncode == 0 else []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def remove_stale() -> list[str]:
    """Delete the namespaces and bridges of campaigns whose process is gone."""
    removed: list[str] = []
    if not STATE_DIR.is_dir():
        return removed
    for f in STATE_DIR.glob("*.json"):
        try:
            state = json.loads(f.read_text())
            pid = int(state["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _pid_alive(pid):
            continue
        for ns in state.get("ns", []):
            _kill_inside(ns)
            if _run(["ip", "netns", "del", ns], check=False).returncode == 0:
                removed.append(ns)
        if _run(["ip", "link", "del", state.get("bridge", "")], check=False).returncode == 0:
            removed.append(state["bridge"])
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
    return removed


def make_network(n: int, *, want_partitions: bool) -> NamespaceNetwork | LoopbackNetwork:
    """Namespaces when partitions are wanted and possible, else loopback."""
    if not want_partitions:
        return LoopbackNetwork(n, "partition faults were not asked for")
    usable, why = firewall_backends()
    if not usable:
        return LoopbackNetwork(n, why or "no packet filter")
    return NamespaceNetwork(n, usable[0])
