"""The generated protobuf code under pkg/ (paxoskv/v1, paxoskv/etcdpb, ...) is
what proto/ produces, file for file."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"


def _generated(directory: pathlib.Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in directory.iterdir()
        if p.is_file() and p.name.endswith((".py", ".pyi")) and p.name != "__init__.py"
    }


def test_every_proto_directory_is_covered():
    dirs = {p.parent.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto")}
    assert {"paxoskv/v1", "paxoskv/etcdpb"} <= dirs


def test_generated_code_is_current(tmp_path):
    protos = sorted(str(p) for p in PROTO_ROOT.rglob("*.proto"))
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-I", str(PROTO_ROOT),
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        check=True,
    )
    for rel in sorted({p.parent.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto")}):
        fresh = _generated(tmp_path / rel)
        committed = _generated(ROOT / "pkg" / rel)
        assert sorted(fresh) == sorted(committed), f"pkg/{rel}: run bin/gen-proto"
        stale = [name for name in fresh if fresh[name] != committed[name]]
        assert not stale, f"stale generated code in pkg/{rel} {stale}: run bin/gen-proto"
