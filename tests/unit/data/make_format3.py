"""Writes tests/unit/data/format3-cluster.tar.gz: the data directories of a
3-node cluster written by paxoskv with storage format 3 (commit b1beff3,
before MVCC), for the migration test. Run with that commit checked out:

    .venv/bin/python tests/unit/data/make_format3.py

It starts three ``paxoskv serve`` processes, writes through the Python
client (puts, overwrites, deletes, a packed batch, anonymous writes), waits
until every node has applied the same index, stops them and archives the
three directories. What it wrote is in ``format3-cluster.json`` (keys and values in hex).
"""

from __future__ import annotations

import json
import pathlib
import sys
import tarfile
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "integration"))

from integration_cluster import LocalCluster, wait_until  # noqa: E402

from paxoskv.v1 import kv_pb2, kv_pb2_grpc  # noqa: E402
import grpc  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        cluster = LocalCluster(root / "c", cluster_id="fmt3")
        try:
            cluster.start_all()
            expected: dict[bytes, bytes] = {}
            with cluster.client() as c:
                for i in range(20):
                    c.put(b"key%02d" % i, b"v%d" % i)
                    expected[b"key%02d" % i] = b"v%d" % i
                for i in range(5):
                    c.put(b"key%02d" % i, b"again%d" % i)
                    expected[b"key%02d" % i] = b"again%d" % i
                for i in range(15, 20):
                    c.delete(b"key%02d" % i)
                    del expected[b"key%02d" % i]
                c.put(b"\x00\xffbinary", b"\x01\x02")
                expected[b"\x00\xffbinary"] = b"\x01\x02"
                c.batch([("put", b"batch/a", b"1"), ("put", b"batch/b", b"2"), ("delete", b"key00")])
                expected[b"batch/a"] = b"1"
                expected[b"batch/b"] = b"2"
                del expected[b"key00"]
            with grpc.insecure_channel(cluster.endpoint(1)) as ch:  # an anonymous write (no header)
                kv_pb2_grpc.KVStub(ch).Put(kv_pb2.PutRequest(key=b"anon", value=b"x"), timeout=5)
                expected[b"anon"] = b"x"
            index = cluster.status(1).commit_index
            for i in (1, 2, 3):
                cluster.wait_applied(i, index)
            wait_until("equal applied indexes", lambda: len({cluster.status(i).applied_index for i in (1, 2, 3)}) == 1, 10)
            applied = cluster.status(1).applied_index
        finally:
            cluster.close()
        with tarfile.open(HERE / "format3-cluster.tar.gz", "w:gz") as tar:
            for i in (1, 2, 3):
                tar.add(root / "c" / f"node{i}", arcname=f"node{i}")
        (HERE / "format3-cluster.json").write_text(
            json.dumps({"cluster_id": "fmt3", "applied_index": applied, "keys_hex": {k.hex(): v.hex() for k, v in sorted(expected.items())}}, indent=1, sort_keys=True) + "\n"
        )


if __name__ == "__main__":
    main()
