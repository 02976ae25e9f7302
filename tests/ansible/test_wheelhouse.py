"""The role's wheelhouse builder (ansible/roles/paxoskv_node/files/build_wheelhouse.py).

The deploy tests install on Debian bookworm (CPython 3.11, glibc 2.36); EC2
runs Ubuntu 24.04 (CPython 3.12, glibc 2.39). This builds for the latter
from this machine and checks the wheels fit it, and that a rebuild of the
same source is byte-identical (so a second deploy copies nothing).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from ansible_harness import ANSIBLE_DIR, snapshot_source

SCRIPT = ANSIBLE_DIR / "roles/paxoskv_node/files/build_wheelhouse.py"


def _build(source: Path, dest: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--source", str(source), "--dest", str(dest),
         "--python-version", "3.12", "--arch", "x86_64", "--glibc", "2.39"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_wheelhouse_for_ubuntu_noble_is_complete_and_reproducible(tmp_path: Path) -> None:
    source = snapshot_source(tmp_path / "source")
    dest = tmp_path / "wheelhouses" / "3.12-x86_64-2.39"
    first = _build(source, dest)
    assert first["changed"] is True
    files = list(first["files"])  # type: ignore[call-overload]
    names = {re.split(r"-\d", f, maxsplit=1)[0].lower().replace("_", "-") for f in files}
    assert {"paxoskv", "grpcio", "grpcio-health-checking", "grpcio-reflection", "protobuf", "pyzmq",
            "plyvel", "click"} <= names, files
    for f in files:
        tags = f[:-4].split("-")[-3:]  # python tag, abi tag, platform tag
        assert tags[0] in ("py3", "py2.py3", "cp312") or tags[1] == "abi3", f  # py2.py3: a universal wheel
        assert tags[2] == "any" or re.fullmatch(r"(manylinux[_0-9a-z]*x86_64\.?)+", tags[2]), f
        if tags[2] != "any":
            glibc = [int(m) for m in re.findall(r"manylinux_2_(\d+)", tags[2])]
            assert not glibc or min(glibc) <= 39, f
    tarball = Path(str(first["tarball"]))
    with tarfile.open(tarball) as tar:
        assert sorted(tar.getnames()) == sorted(files)
    before = tarball.read_bytes()
    again = _build(source, dest)
    assert again["changed"] is False
    assert again["manifest"] == first["manifest"]
    assert tarball.read_bytes() == before
