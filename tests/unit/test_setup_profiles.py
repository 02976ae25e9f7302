"""``bin/setup``'s two profiles: the run command installs only what running
needs, the test command what the tests need.

The run profile's install set is ``paxoskv`` and the closure of its
``install_requires`` (read from the installed distributions' metadata, with
markers evaluated for no extra): none of it may be a package of the test,
dev or Ansible extras, nor pytest or ansible-core themselves, and it asks
for no Debian package.
"""

from __future__ import annotations

import configparser
import pathlib
import re
import subprocess
from importlib import metadata

from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _plan(profile: str) -> dict[str, str]:
    p = subprocess.run(
        [str(ROOT / "bin" / "setup"), "--plan", profile], capture_output=True, text=True, timeout=60, check=True
    )
    return dict(line.split(": ", 1) if ": " in line else (line.rstrip(":"), "") for line in p.stdout.splitlines())


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _extras() -> dict[str, set[str]]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    out = {}
    for extra, text in cfg["options.extras_require"].items():
        out[extra] = {_name(Requirement(line).name) for line in text.strip().splitlines() if line.strip()}
    return out


def _runtime_closure() -> set[str]:
    seen: set[str] = set()
    todo = ["paxoskv"]
    while todo:
        name = _name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.distribution(name).requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_the_run_profile_installs_the_package_and_asks_for_no_debian_package() -> None:
    plan = _plan("run")
    assert plan == {"pip": "install -e .", "apt": ""}


def test_the_run_install_set_has_no_test_dev_or_ansible_package() -> None:
    extras = _extras()
    assert {"test", "ansible", "dev"} <= set(extras)
    closure = _runtime_closure()
    assert {"click", "grpcio", "protobuf", "pyzmq", "plyvel"} <= closure
    unwanted = set().union(*extras.values()) | {"pytest", "ansible-core", "hypothesis", "moto", "boto3"}
    assert not closure & unwanted, sorted(closure & unwanted)


def test_the_test_profile_installs_the_extras_and_the_debian_packages_of_the_tests() -> None:
    plan = _plan("test")
    assert plan["pip"] == "install -e .[test,ansible]"
    assert {"etcd-server", "etcd-client", "debootstrap", "systemd-container", "iproute2", "nftables"} <= set(
        plan["apt"].split()
    )
