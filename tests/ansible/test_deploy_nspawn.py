"""deploy.yml against three real Linux hosts: systemd-nspawn containers on this machine.

Each host boots systemd and OpenSSH in its own network namespace with its
own address (nspawn_hosts). Ansible reaches them over SSH exactly as it
reaches EC2 instances: a static inventory with a login user, a key and each
node's private address. What is checked:

- wait_for_ssh.yml (the end of provision.yml) passes against them;
- after deploy: the unit is active and hardened on every host, runs as its
  own user, and the config names every peer at its private address;
- the deployment is secure by default: the control machine holds a CA,
  each node's certificate, the operator's client certificate and each
  node's CURVE key pair (in a directory of the test's, as an operator's
  ~/.paxoskv/<cluster>); each node holds only its own secrets (0600, the
  service user's) and the public ones; the public port refuses plaintext
  and certificate-less clients, and the bus refuses a CURVE key that is no
  member's;
- the cluster has one leader all nodes agree on; a value put through host 1
  is read through host 3 (with the operator's certificate);
- a second deploy reports changed=0, restarts nothing, and re-makes no
  certificate or key (on the control machine or the nodes);
- an upgrade (a new version of the source) restarts the nodes one at a
  time while a client keeps writing: no write fails, every acknowledged
  write is readable afterwards, every node runs the new version;
- with the leader's service stopped the other two still take writes, and
  the stopped node catches up when it is started again.

Needs root (namespaces, mounts, nspawn); skips, saying why, where hosts
cannot be had. The first run on a machine builds the Debian rootfs with
debootstrap (about a minute on an idle machine) and caches it.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth
import zmq.utils.monitor
from ansible_harness import VENV_BIN, PlaybookRun, run_playbook, snapshot_source
from nspawn_hosts import Host, HostSet, ensure_rootfs, unavailable_reason

from paxoskv.util.wait import wait_until

pytestmark = pytest.mark.root

GRPC_PORT = 50051
BUS_PORT = GRPC_PORT + 1000
CONFIG = "/etc/paxoskv"


@dataclass
class Lab:
    """The booted hosts and everything a test needs to drive them."""

    hosts: HostSet
    inventory: Path
    known_hosts: Path
    home: Path
    env: dict[str, str]
    source: Path
    runs: list[PlaybookRun] = field(default_factory=list)

    @property
    def secrets(self) -> Path:
        """The control machine's secrets of the cluster (an operator's ~/.paxoskv/paxoskv)."""
        return self.home / "secrets"

    @property
    def tls(self) -> list[str]:
        """The operator's client flags, as endpoints.yml prints them."""
        return ["--cacert", str(self.secrets / "ca.crt"), "--cert", str(self.secrets / "operator.crt"),
                "--key", str(self.secrets / "operator.key")]

    def cli(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        return paxoskv(*self.tls, *args, timeout_s=timeout_s)

    def statuses(self, endpoints: list[str]) -> list[dict[str, Any]]:
        proc = self.cli("status", "--endpoints", ",".join(endpoints), "--json", "--timeout", "5")
        return list(json.loads(proc.stdout))

    @property
    def endpoints(self) -> list[str]:
        return [f"{h.address}:{GRPC_PORT}" for h in self.hosts.hosts]

    def ssh(self, host: Host, command: str) -> str:
        proc = self.hosts.ssh(host, command, self.known_hosts)
        assert proc.returncode == 0, f"{host.name}: {command}: rc={proc.returncode}\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    def deploy(self, log: str) -> PlaybookRun:
        run = run_playbook(
            [
                "-i",
                str(self.inventory),
                "deploy.yml",
                "-e",
                f"paxoskv_node_source_dir={self.source}",
                "-e",
                f"paxoskv_node_build_dir={self.home / 'wheelhouses'}",
                "-e",
                f"paxoskv_secrets_dir={self.secrets}",
            ],
            self.env,
            self.home / "logs" / log,
            timeout_s=1200,
        )
        self.runs.append(run)
        return run

    def main_pids(self) -> dict[str, int]:
        return {h.name: int(self.ssh(h, "systemctl show -p MainPID --value paxoskv").strip()) for h in self.hosts.hosts}


def paxoskv(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "paxoskv"), *args], capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
    )


def fingerprints(lab: Lab) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every secret and certificate, on the control machine and on every node."""
    out = {
        f"control:{p.relative_to(lab.secrets)}": (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(lab.secrets.rglob("*"))
        if p.is_file()
    }
    paths = f"{CONFIG}/tls {CONFIG}/bus {CONFIG}/node.key_secret"
    for h in lab.hosts.hosts:
        stats = lab.ssh(h, f"find {paths} -type f -printf '%p %T@ %m %u\\n'").splitlines()
        sums = dict(
            line.split()[::-1] for line in lab.ssh(h, f"find {paths} -type f -exec sha256sum {{}} +").splitlines()
        )
        for line in stats:
            path, mtime, mode, owner = line.split()
            out[f"{h.name}:{path}"] = (f"{sums[path]} {mode} {owner}", int(float(mtime) * 1e9))
    return out


def bus_handshake(address: str, server_public: bytes, timeout_s: float = 30.0) -> str:
    """Connect to a node's bus with a valid CURVE key pair that is no member's;
    return how the handshake ended: "ok", "refused" (ZAP said no) or "failed"."""
    ends = {
        zmq.EVENT_HANDSHAKE_SUCCEEDED: "ok",
        zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused",
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "failed",
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed",
    }
    public, secret = zmq.curve_keypair()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server_public
    monitor = sock.get_monitor_socket()
    try:
        sock.connect(f"tcp://{address}:{BUS_PORT}")

        def ended() -> str | None:
            if not monitor.poll(0):
                return None
            return ends.get(zmq.utils.monitor.recv_monitor_message(monitor)["event"])

        return wait_until("the bus handshake to end", ended, timeout_s, interval_s=0.05)
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        ctx.term()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, ansible_env: dict[str, str], ansible_home: Path) -> Iterator[Lab]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no systemd-nspawn hosts here: {reason}")
    ensure_rootfs()  # minutes on a machine's first run, then cached
    home = tmp_path_factory.mktemp("nspawn")
    key = home / "login_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    workdir = home / "hosts"
    workdir.mkdir()
    with HostSet(count=3, workdir=workdir, login_key=key) as hosts:
        known_hosts = home / "known_hosts"
        inventory = hosts.inventory(home / "inventory.yml", known_hosts)
        source = snapshot_source(home / "source")
        lab = Lab(hosts, inventory, known_hosts, home, ansible_env, source)
        try:
            waited = run_playbook(["-i", str(inventory), "wait_for_ssh.yml"], ansible_env, home / "logs" / "wait.log")
            waited.assert_ok()
            yield lab
        finally:
            if any(r.returncode != 0 for r in lab.runs):
                for h in hosts.hosts:
                    proc = hosts.ssh(h, "journalctl -u paxoskv --no-pager -n 40", known_hosts)
                    print(f"--- {h.name} journal ---\n{proc.stdout}{proc.stderr}")


@pytest.fixture(scope="module")
def deployed(lab: Lab) -> PlaybookRun:
    run = lab.deploy("deploy-1.log")
    print(f"first deploy {run.duration_s:.0f} s")
    run.assert_ok()
    return run


def test_every_host_has_a_cgroup_tree_of_its_own(lab: Lab) -> None:
    """Three systemds sharing one cgroup tree failed units at random
    (status=219/CGROUP): each container's init is in a tree of its own."""
    trees = set()
    for h in lab.hosts.hosts:
        assert h.process is not None
        init = subprocess.run(["pgrep", "-P", str(h.process.pid)], capture_output=True, text=True).stdout.split()
        assert init, f"{h.name}: no container init under nspawn {h.process.pid}"
        lines = Path(f"/proc/{init[0]}/cgroup").read_text().splitlines()
        systemd_path = next(ln.split(":", 2)[2] for ln in lines if ln.split(":")[1] in ("name=systemd", ""))
        assert f"paxoskv-test-{h.machine}/" in systemd_path, (h.name, lines)
        trees.add(systemd_path)
    assert len(trees) == 3, trees


def test_deploy_installs_a_hardened_running_unit_on_every_host(lab: Lab, deployed: PlaybookRun) -> None:
    assert deployed.changed() > 0, deployed.tail()
    addresses = {h.name: h.address for h in lab.hosts.hosts}
    for i, host in enumerate(lab.hosts.hosts, start=1):
        assert lab.ssh(host, "systemctl is-active paxoskv").strip() == "active"
        assert lab.ssh(host, "systemctl is-enabled paxoskv").strip() == "enabled"
        props = dict(
            line.split("=", 1)
            for line in lab.ssh(
                host,
                "systemctl show paxoskv -p User -p Restart -p RestartPreventExitStatus -p NoNewPrivileges"
                " -p ProtectSystem -p ProtectHome"
                " -p PrivateTmp -p PrivateDevices -p ReadWritePaths -p CapabilityBoundingSet",
            ).splitlines()
        )
        assert props["User"] == "paxoskv"
        assert props["Restart"] == "on-failure"
        assert props["RestartPreventExitStatus"] == "2"  # a refused start is not retried forever
        assert props["NoNewPrivileges"] == "yes"
        assert props["ProtectSystem"] == "strict"
        assert props["ProtectHome"] == "yes"
        assert props["PrivateTmp"] == "yes"
        assert props["PrivateDevices"] == "yes"
        assert props["ReadWritePaths"] == "/var/lib/paxoskv"
        assert props["CapabilityBoundingSet"] == ""
        lab.ssh(host, "systemd-analyze verify /etc/systemd/system/paxoskv.service")
        pid = lab.ssh(host, "systemctl show -p MainPID --value paxoskv").strip()
        assert lab.ssh(host, f"ps -o user= -p {pid}").strip() == "paxoskv"
        assert lab.ssh(host, "stat -c '%U %a' /var/lib/paxoskv").strip() == "paxoskv 700"
        env = dict(
            line.split("=", 1)
            for line in lab.ssh(host, "cat /etc/paxoskv/paxoskv.env").splitlines()
            if line and not line.startswith("#")
        )
        assert env["PAXOSKV_ID"] == str(i)
        peers = sorted(
            f"{j}={addresses[h.name]}:{GRPC_PORT}:{GRPC_PORT + 1000}"
            for j, h in enumerate(lab.hosts.hosts, start=1)
            if h is not host
        )
        assert sorted(env["PAXOSKV_PEERS"].split(",")) == peers
    # The playbook's own end-to-end check ran and passed.
    assert "Check that the other node returned the value just written" in deployed.output


def test_deploy_is_secure_by_default(lab: Lab, deployed: PlaybookRun) -> None:
    """TLS with client certificates on the public port, CURVE on the bus, each node only its own secrets."""
    control = {str(p.relative_to(lab.secrets)): p.stat().st_mode & 0o777 for p in lab.secrets.rglob("*") if p.is_file()}
    secret = {
        n: m for n, m in control.items() if n.endswith(".key_secret") or n.endswith(".key") and not n.startswith("bus/")
    }
    assert secret == {
        **{n: 0o600 for n in ("ca.key", "operator.key")},
        **{f"nodes/{h.name}.key": 0o600 for h in lab.hosts.hosts},
        **{f"bus/node{i}.key_secret": 0o600 for i in (1, 2, 3)},
    }
    assert lab.secrets.stat().st_mode & 0o777 == 0o700
    for i, host in enumerate(lab.hosts.hosts, start=1):
        env = dict(
            line.split("=", 1)
            for line in lab.ssh(host, f"cat {CONFIG}/paxoskv.env").splitlines()
            if line and not line.startswith("#")
        )
        assert "PAXOSKV_INSECURE_PEER_BUS" not in env
        assert env["PAXOSKV_CERT_FILE"] == f"{CONFIG}/tls/node.crt"
        assert env["PAXOSKV_KEY_FILE"] == f"{CONFIG}/tls/node.key"
        assert env["PAXOSKV_TRUSTED_CA_FILE"] == f"{CONFIG}/tls/ca.crt"
        assert env["PAXOSKV_CLIENT_CERT_AUTH"] == "1"
        assert env["PAXOSKV_ADMIN_CN"] == "paxoskv-operator"
        assert env["PAXOSKV_PEER_PUBLIC_KEYS"] == f"{CONFIG}/bus"
        assert env["PAXOSKV_PEER_SECRET_KEY"] == f"{CONFIG}/node.key_secret"
        # Exactly these files: its own two secrets (the service user's, 0600) and public ones.
        files = sorted(lab.ssh(host, f"find {CONFIG} -type f -printf '%P %m %u\\n'").splitlines())
        assert files == sorted([
            "bus/node1.key 644 root", "bus/node2.key 644 root", "bus/node3.key 644 root",
            "node.key_secret 600 paxoskv", "paxoskv.env 640 root",
            "tls/ca.crt 644 root", "tls/node.crt 644 root", "tls/node.key 600 paxoskv",
        ]), files
        assert lab.ssh(host, f"cat {CONFIG}/tls/node.key") == (lab.secrets / "nodes" / f"{host.name}.key").read_text()
        own_secret = (lab.secrets / "bus" / f"node{i}.key_secret").read_text()
        assert lab.ssh(host, f"cat {CONFIG}/node.key_secret") == own_secret
        assert "secret-key" not in lab.ssh(host, f"cat {CONFIG}/bus/*.key")
        sans = lab.ssh(host, f"openssl x509 -in {CONFIG}/tls/node.crt -noout -ext subjectAltName")
        assert f"IP Address:{host.address}" in sans and f"DNS:{host.name}" in sans, sans
        assert "INSECURE PEER BUS" not in lab.ssh(host, "journalctl -u paxoskv --no-pager")
    endpoint = lab.endpoints[0]
    # The operator's certificate works; no TLS, or TLS without a client certificate, is refused.
    assert lab.cli("status", "--endpoints", endpoint, "--timeout", "10").returncode == 0
    plain = paxoskv("get", "--endpoints", endpoint, "--timeout", "5", "k")
    no_cert = paxoskv("--cacert", str(lab.secrets / "ca.crt"), "get", "--endpoints", endpoint, "--timeout", "5",
                      "k")
    assert plain.returncode != 0 and no_cert.returncode != 0, (plain, no_cert)
    assert "does it need TLS" in no_cert.stderr + no_cert.stdout, no_cert
    # The bus: a valid CURVE key that is no member's is refused in its handshake.
    server_public, _ = zmq.auth.load_certificate(lab.secrets / "bus" / "node1.key")
    assert bus_handshake(lab.hosts.hosts[0].address, server_public) == "refused"


def test_cluster_has_one_leader_and_any_node_serves(lab: Lab, deployed: PlaybookRun) -> None:
    views = wait_until(
        "all three nodes to agree on a leader",
        lambda: (v := lab.statuses(lab.endpoints))
        and all("error" not in s for s in v)
        and len({s["leader_id"] for s in v}) == 1
        and v,
        120,
        interval_s=0.5,
    )
    assert sorted(s["role"] for s in views) == ["follower", "follower", "leader"]
    assert {s["cluster_id"] for s in views} == {"paxoskv"}
    host1, host3 = lab.endpoints[0], lab.endpoints[2]
    value = f"written-through-host1-{time.time_ns()}"
    put = lab.cli("put", "--endpoints", host1, "--timeout", "15", "e2e/key", value)
    assert put.returncode == 0, put.stderr
    got = lab.cli("get", "--endpoints", host3, "--timeout", "15", "e2e/key")
    assert got.returncode == 0, got.stderr
    assert got.stdout.rstrip("\n") == value


def test_second_deploy_changes_nothing(lab: Lab, deployed: PlaybookRun) -> None:
    before = lab.main_pids()
    secrets = fingerprints(lab)
    assert len(secrets) > 20, secrets
    again = lab.deploy("deploy-2.log")
    print(f"second deploy {again.duration_s:.0f} s")
    again.assert_ok()
    assert again.changed() == 0, again.tail()
    assert lab.main_pids() == before
    assert fingerprints(lab) == secrets  # no certificate or key re-made, nor copied again


def test_a_new_bus_key_restarts_every_node_at_once_and_the_cluster_recovers(lab: Lab, deployed: PlaybookRun) -> None:
    """Rotating node 1's CURVE key the way docs/security.md says: remove its pair on the
    control machine and deploy. Every node gets the new public key, node 1 its new
    secret, all restart together, and the cluster serves again; nothing else is re-made."""
    before_pids = lab.main_pids()
    before = fingerprints(lab)
    bus = lab.secrets / "bus"
    old_public = (bus / "node1.key").read_text()
    (bus / "node1.key").unlink()
    (bus / "node1.key_secret").unlink()
    run = lab.deploy("deploy-rekey.log")
    print(f"re-key deploy {run.duration_s:.0f} s")
    run.assert_ok()
    new_public = (bus / "node1.key").read_text()
    assert new_public != old_public
    task = re.search(r"TASK \[paxoskv_node : Restart the node with the new bus keys\].*?\n((?:changed: \[\S+\]\n)+)",
                     run.output, re.S)
    assert task, run.tail()
    assert sorted(re.findall(r"\[(\S+)\]", task[1])) == sorted(h.name for h in lab.hosts.hosts), task[0]
    assert "TASK [paxoskv_node : Restart the node]" not in run.output  # no rolling restart on top
    after_pids = lab.main_pids()
    assert all(after_pids[h] != before_pids[h] for h in before_pids), (before_pids, after_pids)
    for host in lab.hosts.hosts:
        assert lab.ssh(host, f"cat {CONFIG}/bus/node1.key") == new_public
    assert lab.ssh(lab.hosts.hosts[0], f"cat {CONFIG}/node.key_secret") == (bus / "node1.key_secret").read_text()
    # Only node 1's pair changed: its two files on the control machine, its public key on every node, its secret.
    after = fingerprints(lab)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == {"control:bus/node1.key", "control:bus/node1.key_secret",
                       f"{lab.hosts.hosts[0].name}:{CONFIG}/node.key_secret",
                       *(f"{h.name}:{CONFIG}/bus/node1.key" for h in lab.hosts.hosts)}, changed
    value = f"after-rekey-{time.time_ns()}"
    put = lab.cli("put", "--endpoints", lab.endpoints[0], "--timeout", "20", "rekey/key", value)
    assert put.returncode == 0, put.stderr
    for endpoint in lab.endpoints:  # every node has it, in its own state: each is connected again
        wait_until(
            f"{endpoint} to apply the write",
            lambda e=endpoint: lab.cli("get", "--endpoints", e, "--timeout", "5", "--serializable", "rekey/key")
            .stdout.rstrip("\n") == value,
            60,
            interval_s=0.5,
        )
    views = wait_until(
        "every node to follow one leader",
        lambda: (v := lab.statuses(lab.endpoints)) and all("error" not in x for x in v)
        and len({x["leader_id"] for x in v}) == 1 and v,
        60,
        interval_s=0.5,
    )
    assert sorted(x["role"] for x in views) == ["follower", "follower", "leader"]


@dataclass
class Writer:
    """A client writing key after key (bounded in count and time) until stopped."""

    endpoints: list[str]
    tls: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    acknowledged: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    interval_s: float = 0.05
    count_max: int = 20_000
    duration_max_s: float = 900.0

    def run(self) -> None:
        from paxoskv.client.sync import SyncClient
        from paxoskv.tls import ClientTLS

        deadline = time.monotonic() + self.duration_max_s
        tls = ClientTLS.from_files(self.tls[1], self.tls[3], self.tls[5])
        with SyncClient(self.endpoints, timeout_s=10.0, tls=tls) as client:
            for i in range(self.count_max):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                key, value = f"upgrade/{i:06d}", f"v{i}"
                try:
                    client.put(key, value)
                    self.acknowledged[key] = value
                except Exception as exc:  # every failure is a finding, whatever its type
                    self.failures.append(f"{key}: {type(exc).__name__}: {exc}")
                self.stop.wait(self.interval_s)  # pacing, so the writer does not starve the hosts


def _bump_version(source: Path) -> str:
    init = source / "pkg/paxoskv/__init__.py"
    m = re.search(r'__version__ = "([^"]+)"', init.read_text())
    assert m is not None
    new = f"{m[1]}.post1"
    init.write_text(init.read_text().replace(m[0], f'__version__ = "{new}"'))
    cfg = source / "setup.cfg"
    cfg.write_text(re.sub(r"(?m)^version = .*$", f"version = {new}", cfg.read_text()))
    return new


def test_upgrade_restarts_one_node_at_a_time_and_no_write_fails(lab: Lab, deployed: PlaybookRun) -> None:
    before = lab.main_pids()
    version = _bump_version(lab.source)
    writer = Writer(lab.endpoints, lab.tls)
    thread = threading.Thread(target=writer.run, name="writer")
    thread.start()
    try:
        wait_until("the writer to get going", lambda: len(writer.acknowledged) >= 5 or writer.failures, 60, interval_s=0.5)
        run = lab.deploy("deploy-upgrade.log")
    finally:
        writer.stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    print(f"upgrade deploy {run.duration_s:.0f} s; writer: {len(writer.acknowledged)} acknowledged, "
          f"{len(writer.failures)} failed")
    run.assert_ok()
    assert writer.failures == [], writer.failures[:10]
    after = lab.main_pids()
    assert all(after[h] != before[h] for h in before), (before, after)
    # serial: 1 -- one "Restart the node" per batch, each followed by a health wait.
    restarts = re.findall(r"TASK \[paxoskv_node : Restart the node\].*?\n(changed: \[(\S+)\])", run.output, re.S)
    assert [host for _, host in restarts] == [h.name for h in lab.hosts.hosts], run.tail()
    views = lab.statuses(lab.endpoints)
    assert [s.get("version") for s in views] == [version] * 3, views
    # Every acknowledged write survived the restarts, read through the last node.
    assert len(writer.acknowledged) >= 20, len(writer.acknowledged)
    for key in sorted(writer.acknowledged)[:: max(1, len(writer.acknowledged) // 50)] + [max(writer.acknowledged)]:
        got = lab.cli("get", "--endpoints", lab.endpoints[2], "--timeout", "15", key)
        assert got.returncode == 0 and got.stdout.rstrip("\n") == writer.acknowledged[key], (key, got)


def test_cluster_stays_writable_with_the_leaders_service_stopped(lab: Lab, deployed: PlaybookRun) -> None:
    views = wait_until(
        "every node to answer",
        lambda: (v := lab.statuses(lab.endpoints)) and all("error" not in s for s in v) and v,
        120,
        interval_s=0.5,
    )
    leader_id = next(s["node_id"] for s in views if s["role"] == "leader")
    leader = lab.hosts.hosts[leader_id - 1]
    others = [ep for ep in lab.endpoints if not ep.startswith(f"{leader.address}:")]
    lab.ssh(leader, "systemctl stop paxoskv")
    try:
        assert lab.ssh(leader, "systemctl is-active paxoskv || true").strip() == "inactive"
        put = lab.cli("put", "--endpoints", ",".join(others), "--timeout", "20", "one-down/key", "still-writable")
        assert put.returncode == 0, put.stderr
        got = lab.cli("get", "--endpoints", others[-1], "--timeout", "15", "one-down/key")
        assert got.returncode == 0 and got.stdout.rstrip("\n") == "still-writable", got
    finally:
        lab.ssh(leader, "systemctl start paxoskv")
    # Back in, the node catches up with what it missed.
    wait_until(
        "the restarted node to rejoin",
        lambda: (v := lab.statuses([f"{leader.address}:{GRPC_PORT}"]))
        and "error" not in v[0]
        and v[0]["role"] in ("leader", "follower")
        and v[0]["leader_id"] != 0,
        120,
        interval_s=0.5,
    )
    got = lab.cli("get", "--endpoints", f"{leader.address}:{GRPC_PORT}", "--timeout", "15", "one-down/key")
    assert got.returncode == 0 and got.stdout.rstrip("\n") == "still-writable", got
