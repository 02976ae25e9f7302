"""``paxoskv bench`` against a fake in-process KV server: every mode, every mix.

The fake answers at once and records what it was sent, so these tests check
the client side alone: operations flow in each mode, reads and writes follow
the mix, each slot's writes carry its own exactly-once session with
sequences 1, 2, 3 ... in order, and failures are counted by code.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import defaultdict
from concurrent import futures

import grpc
import pytest

from paxoskv.bench.runner import BenchConfig, run
from paxoskv.bench.workload import Workload
from paxoskv.v1 import kv_pb2, kv_pb2_grpc


class FakeKV(kv_pb2_grpc.KVServicer):
    def __init__(self, *, fail_puts: bool = False) -> None:
        self.lock = threading.Lock()
        self.sequences: dict[str, list[int]] = defaultdict(list)
        self.gets = 0
        self.packed_calls = 0
        self.fail_puts = fail_puts

    def _put(self, req: kv_pb2.PutRequest, identity: tuple[str, int] | None = None) -> kv_pb2.ResponseOp:
        client_id, sequence = identity or (req.request.client_id, req.request.sequence)
        if identity is not None:
            assert not req.HasField("request"), "a put of a packed batch has no header of its own"
        with self.lock:
            self.sequences[client_id].append(sequence)
        if self.fail_puts:
            return kv_pb2.ResponseOp(code=grpc.StatusCode.UNAVAILABLE.value[0], error="no leader (fake)")
        return kv_pb2.ResponseOp(put=kv_pb2.PutResponse())

    def _get(self, req: kv_pb2.GetRequest) -> kv_pb2.ResponseOp:
        with self.lock:
            self.gets += 1
        return kv_pb2.ResponseOp(get=kv_pb2.GetResponse(found=True, value=b"v"))

    def _op(self, op: kv_pb2.RequestOp) -> kv_pb2.ResponseOp:
        return self._get(op.get) if op.HasField("get") else self._put(op.put)

    def Get(self, request, context):
        return self._get(request).get

    def Put(self, request, context):
        result = self._put(request)
        if result.code:
            context.abort(grpc.StatusCode.UNAVAILABLE, result.error)
        return result.put

    def Batch(self, request, context):
        assert not request.HasField("request"), "a packed batch sent to KV.Batch"
        return kv_pb2.BatchResponse(results=[self._op(op) for op in request.ops])

    def PackedBatch(self, request, context):
        assert request.HasField("request"), "KV.PackedBatch without its header"
        self.packed_calls += 1  # packed: the k-th put has sequence request.sequence + k
        results, k = [], 0
        for op in request.ops:
            if op.HasField("get"):
                results.append(self._get(op.get))
            else:
                results.append(self._put(op.put, (request.request.client_id, request.request.sequence + k)))
                k += 1
        return kv_pb2.BatchResponse(results=results)

    def Session(self, request_iterator, context):
        for req in request_iterator:
            yield kv_pb2.SessionResponse(id=req.id, result=self._op(req.op))


@pytest.fixture
def fake_server():
    servers = []

    def start(**kw) -> tuple[FakeKV, str]:
        fake = FakeKV(**kw)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        kv_pb2_grpc.add_KVServicer_to_server(fake, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return fake, f"127.0.0.1:{port}"

    yield start
    for s in servers:
        s.stop(grace=None).wait()


def _cfg(endpoint: str, **kw) -> BenchConfig:
    defaults = dict(
        target="paxoskv",
        endpoints=(endpoint,),
        processes=2,
        concurrency=4,
        batch_size=10,
        warmup_s=0.2,
        duration_s=1.0,
        timeout_s=5.0,
        connect_timeout_s=10.0,
    )
    return BenchConfig(**{**defaults, **kw})


def _assert_sessions_in_order(fake: FakeKV) -> None:
    assert fake.sequences
    for client_id, seqs in fake.sequences.items():
        assert seqs == list(range(1, len(seqs) + 1)), client_id


@pytest.mark.parametrize("mode", ["unary", "batch", "batch-per-op", "stream"])
def test_each_mode_runs_a_mixed_workload(fake_server, mode):
    fake, ep = fake_server()
    result = run(_cfg(ep, mode=mode, workload=Workload(read_share=0.5, keys=100)))
    assert result.errors == {}
    assert set(result.by_op) == {"get", "put"}
    assert result.by_op["get"].count > 0 and result.by_op["put"].count > 0
    assert result.total.count == result.by_op["get"].count + result.by_op["put"].count
    assert 0 < result.total.p50_ms <= result.total.p99_ms <= result.total.max_ms
    _assert_sessions_in_order(fake)
    assert (fake.packed_calls > 0) == (mode == "batch")
    # one session per slot (2 processes x 4) and per endpoint for the pre-fill
    assert len([c for c in fake.sequences if re.search(r"-p\d+-s\d+$", c)]) == 8


def test_write_only_sends_no_reads_after_setup_and_read_only_no_writes(fake_server):
    fake, ep = fake_server()
    result = run(_cfg(ep, workload=Workload(read_share=0.0), processes=1))
    assert set(result.by_op) == {"put"}
    gets_before = fake.gets
    result = run(_cfg(ep, workload=Workload(read_share=1.0, keys=10), processes=1, prefill=False))
    assert set(result.by_op) == {"get"}
    assert fake.gets > gets_before


@pytest.mark.parametrize("mode", ["unary", "batch", "batch-per-op", "stream"])
def test_failed_operations_are_counted_by_code(fake_server, mode):
    _fake, ep = fake_server(fail_puts=True)
    result = run(_cfg(ep, mode=mode, processes=1, workload=Workload(read_share=0.0)))
    assert result.total.count == 0
    assert set(result.errors) == {"UNAVAILABLE"} and result.errors["UNAVAILABLE"] > 0
    assert "no leader (fake)" in result.error_samples["UNAVAILABLE"] or mode.startswith("batch")


def test_the_runner_samples_cpu_at_the_measured_windows_bounds(fake_server, monkeypatch):
    from paxoskv.bench import runner

    _fake, ep = fake_server()
    seen = []

    class Recording(runner.CpuWindow):
        def __init__(self, groups, start_s, end_s, **kw):
            seen.append((set(groups), start_s, end_s))
            super().__init__(groups, start_s, end_s, **kw)

    monkeypatch.setattr(runner, "CpuWindow", Recording)
    called = time.monotonic()
    # the fake serves from this process: its CPU is the "server" here
    result = run(_cfg(ep, warmup_s=0.5, duration_s=1.0, processes=1, server_pids=(os.getpid(),)))
    [(names, start, end)] = seen
    assert names == {"client", "server"}
    assert start >= called + 0.5 + runner.START_MARGIN_S  # after the warmup
    assert end - start == pytest.approx(1.0)  # the window, not the drain
    assert result.total.count > 0 and result.server_cpu_s > 0 and result.client_cpu_s > 0
    assert result.server_cpu_us_per_op == pytest.approx(result.server_cpu_s / result.total.count * 1e6)
