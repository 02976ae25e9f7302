"""The generated etcd client code in pkg/paxoskv/bench/etcdpb is what bench/proto produces."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "bench/proto/paxoskv/bench/etcdpb"
CODE_DIR = ROOT / "pkg/paxoskv/bench/etcdpb"


def test_generated_etcd_code_is_current(tmp_path):
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "bench/proto"),
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            *sorted(str(p) for p in PROTO_DIR.glob("*.proto")),
        ],
        check=True,
    )
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "paxoskv/bench/etcdpb").iterdir() if p.is_file()}
    committed = {p.name: p.read_bytes() for p in CODE_DIR.iterdir() if p.is_file() and p.name != "__init__.py"}
    assert sorted(fresh) == sorted(committed), "run bench/gen-proto"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated code {stale}: run bench/gen-proto"


def test_vendored_service_keeps_etcds_wire_names():
    from paxoskv.bench.etcdpb import etcd_rpc_pb2

    svc = etcd_rpc_pb2.DESCRIPTOR.services_by_name["KV"]
    assert svc.full_name == "etcdserverpb.KV"
    assert [m.name for m in svc.methods] == ["Range", "Put"]
    rng = etcd_rpc_pb2.RangeRequest.DESCRIPTOR.fields_by_name
    assert (rng["key"].number, rng["serializable"].number) == (1, 7)
    put = etcd_rpc_pb2.PutRequest.DESCRIPTOR.fields_by_name
    assert (put["key"].number, put["value"].number) == (1, 2)
