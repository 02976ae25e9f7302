"""Real Linux hosts on this machine for the deploy tests: systemd-nspawn containers.

Rules:

- A host is a Debian bookworm root filesystem booted by ``systemd-nspawn``
  with real systemd as PID 1 and OpenSSH, in its own network namespace
  (``ip netns``) with its own address. The hosts and this machine share one
  bridge that has no uplink, no route out and no NAT: the hosts reach each
  other and this machine, nothing else. Ansible logs in as ``deploy`` (a
  user with passwordless sudo, as ``ubuntu`` is on an EC2 image) with a key
  made for the session.
- The root filesystem is made once per machine by debootstrap and cached as
  a tarball under ``/var/cache/paxoskv-test`` (``PAXOSKV_TEST_CACHE``), named
  by a hash of everything that goes into it, so a change of the package list
  makes a new one. Each session unpacks it once and gives every host an
  overlay of its own, so hosts start clean and the cache is never written.
- Each container runs in a cgroup of its own (``paxoskv-test-<machine>`` at
  the root of each hierarchy), so the three systemds never share one tree.
- Whatever a ``HostSet`` makes it removes: containers are stopped by PID
  (SIGTERM asks systemd for an orderly halt; a second SIGTERM, nspawn's
  "terminate now", when the halt itself fails; SIGKILL after a deadline),
  overlays unmounted, namespaces, links and directories deleted.
- ``unavailable_reason()`` says why hosts cannot be had here (not root, no
  Linux, tools that cannot be installed), so a test can skip saying so. A
  host is never faked.

Theory of operation: names carry this process's PID (``pxab<pid>``,
``pxa<pid>n<i>``, ``paxoskv-ansible-<pid>-n<i>``) so concurrent sessions
never collide, and the subnet is a 10.237.X.0/24 no interface here uses yet.
Readiness is polled with deadlines: a host is up when its sshd sends its
banner.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from paxoskv.util.wait import WaitTimeout, wait_until

__all__ = [
    "APT_PACKAGES",
    "Host",
    "HostSet",
    "ensure_rootfs",
    "unavailable_reason",
]

# Debian packages this module needs on the machine running the tests.
APT_PACKAGES = ("debootstrap", "systemd-container", "openssh-client", "iproute2")

SUITE = "bookworm"
MIRROR = os.environ.get("PAXOSKV_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the hosts have: systemd as init, sshd, and what a fresh Ubuntu EC2
# image has that the role relies on (python3 with venv, sudo).
ROOTFS_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-venv",
    "sudo",
    "iproute2",
)
# Bump when the customisation below changes, so the cache is rebuilt.
ROOTFS_RECIPE = 1
# Timers and services that would only slow the hosts down or try the network.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "systemd-timesyncd.service",
)
LOGIN_USER = "deploy"
# How long a container may take to halt after SIGTERM: more than the paxoskv
# unit's TimeoutStopSec (30 s), so a node that ignored SIGTERM and had to be
# killed by systemd still shows up as a failure of its unit, not of the halt.
HALT_TIMEOUT_S = 45.0
CACHE_DIR = Path(os.environ.get("PAXOSKV_TEST_CACHE", "/var/cache/paxoskv-test"))


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def _missing_apt_packages() -> list[str]:
    missing = []
    for pkg in APT_PACKAGES:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in proc.stdout:
            missing.append(pkg)
    return missing


def unavailable_reason() -> str | None:
    """Why nspawn hosts cannot run here, or None when they can.

    Installs the Debian packages it needs (as root, with apt-get) when they
    are missing, the way bin/setup does for the rest of the suite.
    """
    if os.uname().sysname != "Linux":
        return "systemd-nspawn hosts need Linux"
    if os.geteuid() != 0:
        return "systemd-nspawn hosts need root (network namespaces, mounts, nspawn)"
    if shutil.which("dpkg-query") is None or shutil.which("apt-get") is None:
        return "systemd-nspawn hosts need a Debian-like machine (apt-get, dpkg) to install debootstrap"
    missing = _missing_apt_packages()
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        update = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, env=env)
        install = subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing], capture_output=True, text=True, env=env
        )
        if install.returncode != 0:
            return (
                f"cannot install {' '.join(missing)} with apt-get "
                f"(update: {update.stderr.strip()[-300:]}; install: {install.stderr.strip()[-300:]})"
            )
    for tool in ("systemd-nspawn", "debootstrap", "ip", "ssh", "ssh-keygen", "mount", "tar"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/proc/filesystems").read_text().count("overlay"):
        proc = subprocess.run(["modprobe", "overlay"], capture_output=True, text=True, check=False)
        if proc.returncode != 0 or "overlay" not in Path("/proc/filesystems").read_text():
            return "the kernel has no overlay filesystem"
    return None


# ---- the cached root filesystem -----------------------------------------------------------


def rootfs_key() -> str:
    recipe = {
        "suite": SUITE,
        "variant": "minbase",
        "packages": sorted(ROOTFS_PACKAGES),
        "masked": sorted(MASKED_UNITS),
        "user": LOGIN_USER,
        "recipe": ROOTFS_RECIPE,
        "arch": os.uname().machine,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _customise(root: Path) -> None:
    """Make a fresh debootstrap tree into a host image (no per-host state)."""
    sshd = root / "etc/ssh/sshd_config.d/paxoskv-test.conf"
    sshd.write_text("PasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n")
    _run(["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", LOGIN_USER])
    sudoers = root / "etc/sudoers.d" / LOGIN_USER
    sudoers.write_text(f"{LOGIN_USER} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # Per-host state, made anew for each host.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    # No package lists: the hosts have no network, and the role must not need one.
    for lists in (root / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()


def ensure_rootfs(log: Path | None = None) -> Path:
    """The cached rootfs tarball, built now (minutes) if this machine has none."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tarball = CACHE_DIR / f"rootfs-{SUITE}-{rootfs_key()}.tar"
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per machine; the others wait and reuse
        if tarball.exists():
            return tarball
        with tempfile.TemporaryDirectory(prefix="rootfs-", dir=CACHE_DIR) as tmp:
            root = Path(tmp) / "root"
            cmd = [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(ROOTFS_PACKAGES)}",
                SUITE,
                str(root),
                MIRROR,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if log is not None:
                log.write_text(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr}")
            _customise(root)
            partial = Path(tmp) / "rootfs.tar"
            _run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(partial), "."])
            partial.rename(tarball)
        for old in CACHE_DIR.glob(f"rootfs-{SUITE}-*.tar"):
            if old != tarball:
                old.unlink()
    return tarball


# ---- hosts ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Host:
    """One booted container."""

    name: str  # inventory name and hostname
    address: str
    netns: str
    veth: str
    machine: str
    upper: Path
    merged: Path
    console_log: Path
    process: subprocess.Popen[bytes] | None = None
    mounted: bool = False
    cgroups: list[Path] = field(default_factory=list)  # its own, one per hierarchy


@dataclass
class HostSet:
    """``count`` hosts on one private bridge; a context manager."""

    count: int
    workdir: Path
    login_key: Path  # private key; its .pub is authorised for LOGIN_USER
    hosts: list[Host] = field(default_factory=list)
    bridge: str = ""
    gateway: str = ""
    halt_timeout_s: float = HALT_TIMEOUT_S
    terminate_timeout_s: float = 10.0  # after the second SIGTERM, before SIGKILL
    _lower: Path | None = None
    _bridge_made: bool = False

    def __enter__(self) -> HostSet:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- start --

    def _start(self) -> None:
        tarball = ensure_rootfs(self.workdir / "debootstrap.log")
        self._lower = self.workdir / "lower"
        self._lower.mkdir()
        _run(["tar", "--numeric-owner", "--xattrs", "-C", str(self._lower), "-xpf", str(tarball)])
        pid = os.getpid()
        subnet = _free_subnet()
        self.bridge = f"pxab{pid}"
        self.gateway = f"{subnet}.1"
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._bridge_made = True
        _run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for i in range(1, self.count + 1):
            host = Host(
                name=f"node{i}",
                address=f"{subnet}.{10 + i}",
                netns=f"paxoskv-ansible-{pid}-n{i}",
                veth=f"pxa{pid}n{i}",
                machine=f"paxoskv-ansible-{pid}-n{i}",
                upper=self.workdir / f"node{i}",
                merged=self.workdir / f"node{i}" / "root",
                console_log=self.workdir / f"node{i}.console.log",
            )
            self.hosts.append(host)
            self._make_network(host)
            self._make_root(host)
        for host in self.hosts:
            self._boot(host)
        deadline = time.monotonic() + 90.0
        for host in self.hosts:
            _wait_for_sshd(host, deadline)

    def _make_network(self, host: Host) -> None:
        _run(["ip", "netns", "add", host.netns])
        _run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns])
        _run(["ip", "link", "set", host.veth, "master", self.bridge, "up"])
        _run(["ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0"])
        _run(["ip", "-n", host.netns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", host.netns, "link", "set", "lo", "up"])

    def _make_root(self, host: Host) -> None:
        assert self._lower is not None
        upper, work = host.upper / "upper", host.upper / "work"
        for d in (upper, work, host.merged):
            d.mkdir(parents=True)
        opts = f"lowerdir={self._lower},upperdir={upper},workdir={work}"
        _run(["mount", "-t", "overlay", "overlay", "-o", opts, str(host.merged)])
        host.mounted = True
        root = host.merged
        (root / "etc/hostname").write_text(f"{host.name}\n")
        (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n{host.address} {host.name}\n")
        (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
        for kind in ("ed25519",):
            key = root / f"etc/ssh/ssh_host_{kind}_key"
            _run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{host.name}", "-f", str(key)])
        uid, gid = _passwd_ids(root, LOGIN_USER)
        ssh_dir = root / "home" / LOGIN_USER / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        auth = ssh_dir / "authorized_keys"
        auth.write_text(Path(f"{self.login_key}.pub").read_text())
        auth.chmod(0o600)
        for p in (ssh_dir, auth):
            os.chown(p, uid, gid)

    def _boot(self, host: Host) -> None:
        # A cgroup of its own in every hierarchy, entered by nspawn before it
        # execs: with --keep-unit and no host systemd, the three containers
        # otherwise shared one cgroup tree (<ours>/payload), their systemds
        # creating and removing the same unit cgroups, and a unit could fail
        # at random with status=219/CGROUP (seen: systemd-user-sessions, so
        # sshd refused logins; systemd-halt, so a container never halted).
        host.cgroups = []
        for root in _cgroup_roots():
            path = root / f"paxoskv-test-{host.machine}"
            path.mkdir(exist_ok=True)
            host.cgroups.append(path)
        procs = [str(p / "cgroup.procs") for p in host.cgroups]

        def enter_cgroups() -> None:  # in the child, before exec
            for f in procs:
                with open(f, "w") as out:
                    out.write("0")

        cmd = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            f"--directory={host.merged}",
            f"--machine={host.machine}",
            f"--hostname={host.name}",
            f"--network-namespace-path=/run/netns/{host.netns}",
            "--register=no",
            "--keep-unit",
            "--console=read-only",
            "--link-journal=no",
            "--resolv-conf=off",
            "--timezone=off",
        ]
        with open(host.console_log, "wb") as out:
            host.process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, preexec_fn=enter_cgroups
            )

    # -- use --

    def inventory(self, path: Path, known_hosts: Path, extra_vars: dict[str, object] | None = None) -> Path:
        """Write a static YAML inventory of group ``paxoskv`` (what an operator would write)."""
        hosts = {
            h.name: {
                "ansible_host": h.address,
                "ansible_user": LOGIN_USER,
                "ansible_ssh_private_key_file": str(self.login_key),
                "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts}",
                "paxoskv_node_id": i,
                "paxoskv_node_advertise_address": h.address,
            }
            for i, h in enumerate(self.hosts, start=1)
        }
        doc = {"paxoskv": {"hosts": hosts, "vars": dict(extra_vars or {})}}
        path.write_text(json.dumps(doc, indent=2))  # JSON is YAML
        return path

    def ssh(
        self, host: Host, command: str, known_hosts: Path, timeout_s: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on ``host`` as root (through sudo), the way Ansible does."""
        cmd = [
            "ssh",
            "-i",
            str(self.login_key),
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "ConnectTimeout=10",
            f"{LOGIN_USER}@{host.address}",
            "sudo",
            "sh",
            "-c",
            _shell_quote(command),
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)

    # -- stop --

    def close(self) -> None:
        errors: list[str] = []
        for host in self.hosts:
            if host.process is not None and host.process.poll() is None:
                host.process.send_signal(signal.SIGTERM)  # nspawn: orderly poweroff of the container
        deadline = time.monotonic() + self.halt_timeout_s
        for host in self.hosts:
            if host.process is None:
                continue
            try:
                host.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # nspawn's documented escalation: a second SIGTERM terminates the
                # container at once. Seen once in CI: the container's own
                # ``systemctl --force halt`` (systemd-halt.service) failed after
                # every unit, paxoskv included, had stopped; nothing is lost then.
                host.process.send_signal(signal.SIGTERM)
                try:
                    host.process.wait(timeout=self.terminate_timeout_s)
                except subprocess.TimeoutExpired:
                    host.process.kill()
                    host.process.wait(timeout=30)
                    errors.append(f"{host.name} did not stop within {self.halt_timeout_s:.0f} s, nor after a second SIGTERM; killed")
                    continue
                failures = _halt_failures(host.console_log)
                message = (
                    f"{host.name} did not halt within {self.halt_timeout_s:.0f} s; stopped by a second SIGTERM. "
                    f"Its console: {failures}"
                )
                if "paxoskv" in failures:
                    errors.append(message)  # the product's unit failed to stop: a real failure
                else:
                    warnings.warn(message, stacklevel=2)
        for host in self.hosts:
            if host.mounted:
                # a just-exited container can hold the mount for a moment
                tried: list[subprocess.CompletedProcess[str]] = []

                def unmounted(merged: Path = host.merged) -> bool:
                    tried.append(subprocess.run(["umount", str(merged)], capture_output=True, text=True))
                    return tried[-1].returncode == 0

                try:
                    wait_until(f"{host.merged} to unmount", unmounted, 10.0, interval_s=0.1)
                    host.mounted = False
                except WaitTimeout:
                    errors.append(f"cannot unmount {host.merged}: {tried[-1].stderr.strip()}")
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
            subprocess.run(["ip", "link", "del", host.veth], capture_output=True)
            for cg in host.cgroups:
                if not _remove_cgroup(cg):
                    errors.append(f"cannot remove the cgroup {cg} of {host.name}: processes left in it")
            host.cgroups = []
        if self._bridge_made:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
            self._bridge_made = False
        if not any(h.mounted for h in self.hosts):
            shutil.rmtree(self.workdir / "lower", ignore_errors=True)
            for host in self.hosts:
                shutil.rmtree(host.upper, ignore_errors=True)
        if errors:
            raise RuntimeError("; ".join(errors))


def _cgroup_roots() -> list[Path]:
    """The root of every cgroup hierarchy systemd uses here: the named
    ``systemd`` one (cgroup v1/hybrid) and the unified one (v2)."""
    base = Path("/sys/fs/cgroup")
    roots = [p for p in (base / "systemd", base / "unified") if (p / "cgroup.procs").exists()]
    if not roots and (base / "cgroup.controllers").exists():  # a pure cgroup v2 host
        roots = [base]
    return roots


def _remove_cgroup(path: Path) -> bool:
    """Remove ``path`` and the cgroups the container's systemd made below it
    (children first); False if a process is still in one."""
    if not path.exists():
        return True
    for dirpath, _dirs, _files in os.walk(path, topdown=False):
        try:
            os.rmdir(dirpath)
        except OSError:
            return False
    return True


def _halt_failures(console_log: Path) -> str:
    """The lines of a container's console that say what went wrong in its shutdown."""
    try:
        text = console_log.read_text(errors="replace")
    except OSError as exc:
        return f"(unreadable: {exc})"
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    bad = [
        ln.strip()
        for ln in text.splitlines()
        if re.search(r"FAILED|DEPEND|Failed|timed out|Timed out", ln)
        and "Failed to create symlink /sys/fs/cgroup/" not in ln  # boot noise of every container here
    ]
    return " | ".join(bad[-8:]) or "(no failure reported)"


def _free_subnet() -> str:
    used = _run(["ip", "-o", "-4", "addr", "show"]).stdout
    start = os.getpid() % 200
    for k in range(200):
        candidate = f"10.237.{(start + k) % 200 + 20}"
        if f" {candidate}." not in used:
            return candidate
    raise RuntimeError("no free 10.237.X.0/24 subnet for the test hosts")


def _passwd_ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == user:
            return int(parts[2]), int(parts[3])
    raise RuntimeError(f"no user {user} in {root}/etc/passwd")


def _wait_for_sshd(host: Host, deadline: float) -> None:
    last = ""

    def answers() -> bool:
        nonlocal last
        if host.process is not None and host.process.poll() is not None:
            raise RuntimeError(
                f"{host.name}: systemd-nspawn exited ({host.process.returncode}):\n"
                + host.console_log.read_text(errors="replace")[-3000:]
            )
        try:
            with socket.create_connection((host.address, 22), timeout=1.0) as sock:
                sock.settimeout(2.0)
                banner = sock.recv(64)
                if banner.startswith(b"SSH-"):
                    return True
                last = f"banner {banner!r}"
        except OSError as exc:
            last = str(exc)
        return False

    wait_until(
        lambda: f"sshd of {host.name} ({host.address}) ({last}):\n"
        + host.console_log.read_text(errors="replace")[-3000:],
        answers,
        max(0.0, deadline - time.monotonic()),
        interval_s=0.2,
    )


def _shell_quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"

