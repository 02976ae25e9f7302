#!/usr/bin/env python3
"""Build the wheelhouse a paxoskv node installs from, on the control machine.

Rules:
- The nodes never reach a package index and never see the source tree: they
  get a directory of wheels and install with ``pip --no-index``.
- The wheels fit the node, not the control machine: dependencies are fetched
  as binary wheels for the node's CPython version, architecture and glibc
  (every manylinux tag that glibc can run), so a control machine on Python
  3.11 can deploy to Ubuntu 24.04's Python 3.12.
- The result is reproducible: the paxoskv wheel is built from a clean copy
  of the source (the files git tracks or would track, so no stale build/
  directory leaks in) with a fixed SOURCE_DATE_EPOCH, so the same source
  gives the same bytes and a second deploy copies nothing.

Theory of operation: build into a fresh temporary directory (pip's cache
makes the downloads cheap), compare the wheels' names and hashes with the
manifest of DEST, and only when they differ replace DEST: a directory holding
``wheelhouse.tar`` (the wheels, archived byte-for-byte reproducibly: sorted,
fixed times and owners, so one file goes to each node) and ``MANIFEST``
("sha256  name" lines, sorted), which the role compares with what a node
installed last to decide whether it must reinstall. Prints one JSON object:
{"changed": bool, "tarball": path, "files": [names], "manifest": text}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# Any fixed time at or after 1980 (the zip format's epoch) will do.
SOURCE_DATE_EPOCH = "315532800"
IGNORED_NAMES = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis"}


def source_files(source: Path) -> list[Path]:
    """The files a clean checkout would have: git's view when there is one."""
    if (source / ".git").exists():
        out = subprocess.run(
            ["git", "-C", str(source), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True,
            capture_output=True,
        ).stdout
        names = [n for n in out.decode().split("\0") if n]
        return [Path(n) for n in names if (source / n).is_file()]
    found: list[Path] = []
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_NAMES and not d.endswith(".egg-info"))
        found.extend((Path(root) / f).relative_to(source) for f in sorted(files) if not f.endswith(".pyc"))
    return found


def copy_source(source: Path, dest: Path) -> None:
    for rel in source_files(source):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, target)


def platform_tags(arch: str, glibc: str) -> list[str]:
    major, minor = (int(p) for p in glibc.split(".")[:2])
    assert major == 2, f"unexpected glibc version {glibc}"
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{name}_{arch}" for m, name in legacy.items() if m <= minor]
    return tags


def run(cmd: list[str], **kwargs: object) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        sys.stderr.write(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
        raise SystemExit(proc.returncode)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_of(directory: Path) -> str:
    lines = sorted(f"{sha256(p)}  {p.name}" for p in directory.glob("*.whl"))
    return "".join(line + "\n" for line in lines)


def write_tarball(wheels: Path, tarball: Path) -> None:
    with tarfile.open(tarball, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(wheels.glob("*.whl")):
            info = tarfile.TarInfo(path.name)
            info.size = path.stat().st_size
            info.mtime = int(SOURCE_DATE_EPOCH)
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(path, "rb") as f:
                tar.addfile(info, f)


def build(args: argparse.Namespace, work: Path) -> Path:
    src = work / "src"
    copy_source(Path(args.source).resolve(), src)
    out = work / "wheels"
    out.mkdir()
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, PIP_DISABLE_PIP_VERSION_CHECK="1")
    run([args.python, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "own"), str(src)], env=env)
    (own,) = (work / "own").glob("*.whl")
    shutil.copyfile(own, out / own.name)
    pyver = args.python_version.replace(".", "")
    cmd = [args.python, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(out)]
    cmd += ["--python-version", args.python_version, "--implementation", "cp", "--abi", f"cp{pyver}"]
    for tag in platform_tags(args.arch, args.glibc):
        cmd += ["--platform", tag]
    run(cmd + [str(out / own.name)], env=env)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="the paxoskv source tree (repository root)")
    parser.add_argument("--dest", required=True, help="the wheelhouse directory to create or update")
    parser.add_argument("--python-version", required=True, help="the node's CPython, e.g. 3.12")
    parser.add_argument("--arch", required=True, help="the node's machine, e.g. x86_64 or aarch64")
    parser.add_argument("--glibc", required=True, help="the node's glibc version, e.g. 2.39")
    parser.add_argument("--python", default=sys.executable, help="the control machine's Python with pip")
    args = parser.parse_args()
    dest = Path(args.dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="paxoskv-wheels-", dir=dest.parent) as tmp:
        built = build(args, Path(tmp))
        wanted = manifest_of(built)
        manifest = dest / "MANIFEST"
        have = manifest.read_text() if manifest.is_file() and (dest / "wheelhouse.tar").is_file() else None
        changed = have != wanted
        if changed:
            fresh = Path(tmp) / "dest"
            fresh.mkdir()
            write_tarball(built, fresh / "wheelhouse.tar")
            (fresh / "MANIFEST").write_text(wanted)
            if dest.exists():
                shutil.rmtree(dest)
            fresh.rename(dest)
    files = sorted(line.split("  ", 1)[1] for line in wanted.splitlines())
    result = {"changed": changed, "tarball": str(dest / "wheelhouse.tar"), "files": files, "manifest": wanted}
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
