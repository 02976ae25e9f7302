"""deploy.yml against three real Linux hosts: systemd-nspawn containers on this machine.

Each host boots systemd and OpenSSH in its own network namespace with its
own address (nspawn_hosts). Ansible reaches them over SSH exactly as it
reaches EC2 instances: a static inventory with a login user, a key and each
node's private address. What is checked:

- wait_for_ssh.yml (the end of provision.yml) passes against them;
- after deploy: the unit is active and hardened on every host, runs as its
  own user, and the config names every peer at its private address;
- the cluster has one leader all nodes agree on; a value put through host 1
  is read through host 3;
- a second deploy reports changed=0 and restarts nothing;
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
from ansible_harness import VENV_BIN, PlaybookRun, run_playbook, snapshot_source
from nspawn_hosts import Host, HostSet, ensure_rootfs, unavailable_reason

from paxoskv.util.wait import wait_until

pytestmark = pytest.mark.root

GRPC_PORT = 50051


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


def statuses(endpoints: list[str]) -> list[dict[str, Any]]:
    proc = paxoskv("status", "--endpoints", ",".join(endpoints), "--json", "--timeout", "5")
    return list(json.loads(proc.stdout))


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


def test_cluster_has_one_leader_and_any_node_serves(lab: Lab, deployed: PlaybookRun) -> None:
    views = wait_until(
        "all three nodes to agree on a leader",
        lambda: (v := statuses(lab.endpoints))
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
    put = paxoskv("put", "--endpoints", host1, "--timeout", "15", "e2e/key", value)
    assert put.returncode == 0, put.stderr
    got = paxoskv("get", "--endpoints", host3, "--timeout", "15", "e2e/key")
    assert got.returncode == 0, got.stderr
    assert got.stdout.rstrip("\n") == value


def test_second_deploy_changes_nothing(lab: Lab, deployed: PlaybookRun) -> None:
    before = lab.main_pids()
    again = lab.deploy("deploy-2.log")
    print(f"second deploy {again.duration_s:.0f} s")
    again.assert_ok()
    assert again.changed() == 0, again.tail()
    assert lab.main_pids() == before


@dataclass
class Writer:
    """A client writing key after key (bounded in count and time) until stopped."""

    endpoints: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    acknowledged: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    interval_s: float = 0.05
    count_max: int = 20_000
    duration_max_s: float = 900.0

    def run(self) -> None:
        from paxoskv.client.sync import SyncClient

        deadline = time.monotonic() + self.duration_max_s
        with SyncClient(self.endpoints, timeout_s=10.0) as client:
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
    writer = Writer(lab.endpoints)
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
    views = statuses(lab.endpoints)
    assert [s.get("version") for s in views] == [version] * 3, views
    # Every acknowledged write survived the restarts, read through the last node.
    assert len(writer.acknowledged) >= 20, len(writer.acknowledged)
    for key in sorted(writer.acknowledged)[:: max(1, len(writer.acknowledged) // 50)] + [max(writer.acknowledged)]:
        got = paxoskv("get", "--endpoints", lab.endpoints[2], "--timeout", "15", key)
        assert got.returncode == 0 and got.stdout.rstrip("\n") == writer.acknowledged[key], (key, got)


def test_cluster_stays_writable_with_the_leaders_service_stopped(lab: Lab, deployed: PlaybookRun) -> None:
    views = wait_until(
        "every node to answer",
        lambda: (v := statuses(lab.endpoints)) and all("error" not in s for s in v) and v,
        120,
        interval_s=0.5,
    )
    leader_id = next(s["node_id"] for s in views if s["role"] == "leader")
    leader = lab.hosts.hosts[leader_id - 1]
    others = [ep for ep in lab.endpoints if not ep.startswith(f"{leader.address}:")]
    lab.ssh(leader, "systemctl stop paxoskv")
    try:
        assert lab.ssh(leader, "systemctl is-active paxoskv || true").strip() == "inactive"
        put = paxoskv("put", "--endpoints", ",".join(others), "--timeout", "20", "one-down/key", "still-writable")
        assert put.returncode == 0, put.stderr
        got = paxoskv("get", "--endpoints", others[-1], "--timeout", "15", "one-down/key")
        assert got.returncode == 0 and got.stdout.rstrip("\n") == "still-writable", got
    finally:
        lab.ssh(leader, "systemctl start paxoskv")
    # Back in, the node catches up with what it missed.
    wait_until(
        "the restarted node to rejoin",
        lambda: (v := statuses([f"{leader.address}:{GRPC_PORT}"]))
        and "error" not in v[0]
        and v[0]["role"] in ("leader", "follower")
        and v[0]["leader_id"] != 0,
        120,
        interval_s=0.5,
    )
    got = paxoskv("get", "--endpoints", f"{leader.address}:{GRPC_PORT}", "--timeout", "15", "one-down/key")
    assert got.returncode == 0 and got.stdout.rstrip("\n") == "still-writable", got
