"""The generated protobuf code in pkg/paxoskv/v1 is what proto/ produces."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path):
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "proto"),
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            *sorted(str(p) for p in (ROOT / "proto/paxoskv/v1").glob("*.proto")),
        ],
        check=True,
    )
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "paxoskv/v1").iterdir() if p.is_file()}
    committed = {
        p.name: p.read_bytes()
        for p in (ROOT / "pkg/paxoskv/v1").iterdir()
        if p.is_file() and p.name != "__init__.py"
    }
    assert sorted(fresh) == sorted(committed), "run bin/gen-proto"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated code {stale}: run bin/gen-proto"
