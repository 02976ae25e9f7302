"""Running the real playbooks from tests: ansible-playbook as a subprocess, moto as a server.

Rules:

- Playbooks run exactly as an operator runs them: ``ansible-playbook`` from
  ``ansible/`` (so ``ansible/ansible.cfg`` applies), with nothing but the
  environment and, for static hosts, an inventory file. AWS is replaced by a
  moto server through the standard ``AWS_ENDPOINT_URL`` with dummy
  credentials; the playbooks have no test-only setting.
- Nothing here can reach a real cloud: every run gets dummy credentials, the
  instance metadata service is off, and when no moto server is in use
  ``AWS_ENDPOINT_URL`` points at a closed port on 127.0.0.1.
- Every run's full output goes to a log file; a failed expectation quotes
  the tail of it.
- The moto server binds 127.0.0.1 on a port chosen free at run time and is
  stopped by its PID.

Theory of operation: ``run_playbook`` parses the PLAY RECAP into per-host
counters (ok, changed, unreachable, failed, ...), which is what the tests
assert on (``changed=0`` on a second run, no failures).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from paxoskv.util.ports import free_port
from paxoskv.util.wait import WaitTimeout, wait_until

__all__ = [
    "ANSIBLE_DIR",
    "PLAYBOOKS",
    "REPO",
    "MotoServer",
    "PlaybookRun",
    "VENV_BIN",
    "base_env",
    "run_playbook",
    "snapshot_source",
]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
PLAYBOOKS = ("provision.yml", "deploy.yml", "destroy.yml", "wait_for_ssh.yml", "endpoints.yml")
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
if not (VENV_BIN / "ansible-playbook").exists():
    VENV_BIN = REPO / ".venv" / "bin"

# What a moto server never checks but boto3 insists on.
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}

_RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)",
    re.MULTILINE,
)


def base_env(home: Path, aws_endpoint: str | None = None) -> dict[str, str]:
    """The environment every ansible process of the tests gets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ANSIBLE_", "PAXOSKV_"))}
    env.update(DUMMY_AWS)
    # A closed local port unless a moto server is in use: nothing leaves the machine.
    env["AWS_ENDPOINT_URL"] = aws_endpoint or f"http://127.0.0.1:{free_port()}"  # nothing listens: refused
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["ANSIBLE_LOCAL_TEMP"] = str(home / "ansible-local")
    env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(home / "ansible-cp")
    env["ANSIBLE_DEPRECATION_WARNINGS"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True, slots=True)
class PlaybookRun:
    """One ansible-playbook run: exit code, output, and the PLAY RECAP counters."""

    args: tuple[str, ...]
    returncode: int
    output: str
    recap: dict[str, dict[str, int]]
    log: Path
    duration_s: float

    def tail(self, chars: int = 6000) -> str:
        return f"$ {' '.join(self.args)}\n(rc={self.returncode}, log {self.log})\n{self.output[-chars:]}"

    def changed(self) -> int:
        return sum(c["changed"] for c in self.recap.values())

    def assert_ok(self) -> None:
        bad = {h: c for h, c in self.recap.items() if c["failed"] or c["unreachable"]}
        assert self.returncode == 0 and self.recap and not bad, self.tail()


def run_playbook(
    args: list[str], env: dict[str, str], log: Path, timeout_s: float = 900.0, cmd: str = "ansible-playbook"
) -> PlaybookRun:
    full = [str(VENV_BIN / cmd), *args]
    start = time.monotonic()
    proc = subprocess.run(
        full, cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
    )
    duration_s = time.monotonic() - start
    output = proc.stdout + ("\n--- stderr ---\n" + proc.stderr if proc.stderr else "")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(output)
    recap = {
        m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"} for m in _RECAP.finditer(proc.stdout)
    }
    return PlaybookRun(tuple(full), proc.returncode, output, recap, log, duration_s)


def snapshot_source(dest: Path) -> Path:
    """Copy the repository's source (what git tracks or would track) to ``dest``.

    Deploys build from the snapshot, so files edited in the work tree while
    the tests run cannot change what a "second, unchanged" deploy sees.
    """
    names = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, names.split("\0")):
        src = REPO / name
        if not src.is_file():
            continue  # deleted in the work tree but still in the index
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    return dest


# ---- moto ------------------------------------------------------------------------------------

# Moto's own AMI catalog has no Ubuntu 24.04 image; this is the one image the
# stand-in AWS knows, named and owned as Canonical's are.
UBUNTU_NOBLE_AMI = {
    "ami_id": "ami-0a1b2c3d4e5f60718",
    "name": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20250115",
    "description": "Canonical, Ubuntu, 24.04, amd64 noble image",
    "owner_id": "099720109477",
    "architecture": "x86_64",
    "creation_date": "2025-01-15T00:00:00.000Z",
    "hypervisor": "xen",
    "image_type": "machine",
    "platform": None,
    "public": True,
    "root_device_name": "/dev/sda1",
    "root_device_type": "ebs",
    "sriov": "simple",
    "state": "available",
    "tags": {},
    "virtualization_type": "hvm",
}
# An older image of the same series: the lookup must choose the newest.
UBUNTU_NOBLE_OLDER_AMI = dict(
    UBUNTU_NOBLE_AMI,
    ami_id="ami-00000000000000001",
    name="ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20240423",
    creation_date="2024-04-23T00:00:00.000Z",
)


class MotoServer:
    """A moto_server subprocess on 127.0.0.1; a context manager."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> MotoServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        amis = self.workdir / "amis.json"
        amis.write_text(json.dumps([UBUNTU_NOBLE_OLDER_AMI, UBUNTU_NOBLE_AMI]))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["MOTO_AMIS_PATH"] = str(amis)
        log = open(self.workdir / "moto.log", "wb")
        for _ in range(5):
            self.port = free_port()
            self.process = subprocess.Popen(
                [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            if self._wait_ready(timeout_s=30.0):
                log.close()
                return self
            self._stop()
        log.close()
        raise RuntimeError(f"moto_server did not start: {(self.workdir / 'moto.log').read_text()[-2000:]}")

    def _wait_ready(self, timeout_s: float) -> bool:
        """True once moto answers; False if it exited (say, the port was taken
        in between: try another) or did not answer in time."""
        assert self.process is not None
        process = self.process

        def probe() -> str | None:
            if process.poll() is not None:
                return "exited"
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1.0):
                    return "answers"
            except urllib.error.HTTPError:
                return "answers"
            except OSError:
                return None

        try:
            return wait_until("moto_server to answer", probe, timeout_s, interval_s=0.1) == "answers"
        except WaitTimeout:
            return False

    def _stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def __exit__(self, *exc: object) -> None:
        self._stop()

