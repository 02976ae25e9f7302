"""The workload's recording rules, against a scripted fake KV server on
127.0.0.1: what counts as ok, fail and unknown, and that a retry reuses the
request's (client_id, sequence)."""

from __future__ import annotations

import asyncio
from collections import deque

import grpc
import pytest

from paxoskv.chaos.workload import Workload, WorkloadConfig
from paxoskv.v1 import kv_pb2, kv_pb2_grpc
from paxoskv.wire import leader_hint


class ScriptedKV(kv_pb2_grpc.KVServicer):
    """Answers each call with the next scripted step: a gRPC code to fail
    with (and an optional leader hint), or None for success."""

    def __init__(self) -> None:
        self.script: deque = deque()
        self.seen: list[tuple[str, object]] = []

    async def _step(self, name: str, req, ctx, ok):
        self.seen.append((name, req))
        step = self.script.popleft() if self.script else None
        if step is None:
            return ok
        code, leader = step
        if leader is not None:
            ctx.set_trailing_metadata(leader_hint(leader, "127.0.0.1:1"))
        await ctx.abort(code, f"scripted {code.name}")

    async def Get(self, req, ctx):
        return await self._step("get", req, ctx, kv_pb2.GetResponse(found=True, value=b"v"))

    async def Put(self, req, ctx):
        return await self._step("put", req, ctx, kv_pb2.PutResponse(existed=True))

    async def Delete(self, req, ctx):
        return await self._step("delete", req, ctx, kv_pb2.DeleteResponse(deleted=False))

    async def PackedBatch(self, req, ctx):
        step = self.script[0] if self.script else None
        if isinstance(step, tuple) and step[0] == "results":  # per-op codes in one answer
            self.seen.append(("batch", req))
            self.script.popleft()
            return kv_pb2.BatchResponse(results=[kv_pb2.ResponseOp(code=c.value[0], error="scripted") for c in step[1]])
        ok = kv_pb2.BatchResponse(
            results=[
                kv_pb2.ResponseOp(put=kv_pb2.PutResponse(existed=True))
                if op.HasField("put")
                else kv_pb2.ResponseOp(delete=kv_pb2.DeleteResponse(deleted=True))
                for op in req.ops
            ]
        )
        return await self._step("batch", req, ctx, ok)


def run_ops(
    script, *, p_get: float, p_delete: float, count: int = 1, op_timeout_s: float = 1.0, p_batch: float = 0.0
):
    async def main():
        servicer = ScriptedKV()
        servicer.script.extend(script)
        server = grpc.aio.server()
        kv_pb2_grpc.add_KVServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            cfg = WorkloadConfig(
                clients=1,
                keys=1,
                p_get=p_get,
                p_delete=p_delete,
                op_timeout_s=op_timeout_s,
                attempt_timeout_s=min(0.5, op_timeout_s),
                backoff_s=0.001,
                p_batch=p_batch,
            )
            wl = Workload(cfg, {1: f"127.0.0.1:{port}"}, seed=1)
            client = wl.clients[0]
            ops = [await client.batch() if p_batch else await client.one() for _ in range(count)]
            await wl.stop()
            return ops, servicer.seen, wl
        finally:
            await server.stop(None)

    return asyncio.run(main())


UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, None)
DEADLINE = (grpc.StatusCode.DEADLINE_EXCEEDED, None)
INVALID = (grpc.StatusCode.INVALID_ARGUMENT, None)


def test_a_put_retried_after_unavailable_is_ok_and_reuses_its_sequence():
    ops, seen, wl = run_ops([UNAVAILABLE, DEADLINE, None], p_get=0, p_delete=0)
    (op,) = ops
    assert op.op == "put" and op.outcome == "ok" and op.output_existed is True
    assert op.value == "c0-1"
    headers = {(r.request.client_id, r.request.sequence) for _, r in seen}
    assert len(seen) == 3 and len(headers) == 1 and next(iter(headers))[1] == 1
    assert wl.stats.retries == 2 and wl.stats.errors == {"UNAVAILABLE": 1, "DEADLINE_EXCEEDED": 1}


def test_each_new_write_takes_the_next_sequence():
    ops, seen, _ = run_ops([], p_get=0, p_delete=0, count=3)
    assert [r.request.sequence for _, r in seen] == [1, 2, 3]
    assert len({r.request.client_id for _, r in seen}) == 1
    assert [o.value for o in ops] == ["c0-1", "c0-2", "c0-3"]


def test_invalid_argument_on_the_first_attempt_is_a_failure():
    ops, _, _ = run_ops([INVALID], p_get=0, p_delete=1)
    assert ops[0].op == "delete" and ops[0].outcome == "fail"


def test_invalid_argument_after_an_ambiguous_attempt_stays_unknown():
    # the first attempt may have been applied; a later refusal cannot undo it
    ops, _, _ = run_ops([UNAVAILABLE, INVALID], p_get=0, p_delete=0)
    assert ops[0].outcome == "unknown"


def test_a_write_never_answered_before_its_deadline_is_unknown_not_dropped():
    ops, seen, _ = run_ops([UNAVAILABLE] * 1000, p_get=0, p_delete=0, op_timeout_s=0.3)
    assert ops[0].outcome == "unknown" and len(seen) > 2


def test_gets_record_what_they_read():
    ops, _, _ = run_ops([UNAVAILABLE, None], p_get=1, p_delete=0)
    assert ops[0].op == "get" and ops[0].outcome == "ok" and ops[0].output_value == "v"


@pytest.mark.parametrize("hint", [3, None])
def test_a_retry_follows_the_leader_hint(hint):
    async def main():
        servers, servicers, targets = [], {}, {}
        for i in (1, 2, 3):
            s = ScriptedKV()
            srv = grpc.aio.server()
            kv_pb2_grpc.add_KVServicer_to_server(s, srv)
            targets[i] = f"127.0.0.1:{srv.add_insecure_port('127.0.0.1:0')}"
            await srv.start()
            servers.append(srv)
            servicers[i] = s
        try:
            servicers[1].script.append((grpc.StatusCode.UNAVAILABLE, hint))
            wl = Workload(WorkloadConfig(clients=1, keys=1, p_get=1, p_delete=0), targets, seed=1)
            op = await wl.clients[0].one()
            await wl.stop()
            return op, {i: len(s.seen) for i, s in servicers.items()}
        finally:
            for srv in servers:
                await srv.stop(None)

    op, calls = asyncio.run(main())
    assert op.outcome == "ok"
    # client c0's home is node 1; the hint sends the retry to node 3, else the next node (2)
    assert calls == ({1: 1, 2: 0, 3: 1} if hint else {1: 1, 2: 1, 3: 0})


def test_a_packed_batch_retried_resends_the_same_call_and_records_each_write():
    batches, seen, wl = run_ops([UNAVAILABLE, DEADLINE, None], p_get=0, p_delete=0.3, p_batch=1)
    (ops,) = batches
    assert len(ops) == 3 and all(o.outcome == "ok" and o.output_existed is True for o in ops)
    assert len(seen) == 3 and len({r.SerializeToString() for _, r in seen}) == 1  # the same call each time
    req = seen[0][1]
    assert (req.request.client_id, req.request.sequence) == ("chaos-c0", 1)
    assert all(not op.put.HasField("request") and not op.delete.HasField("request") for op in req.ops)
    puts = [o for o in ops if o.op == "put"]
    assert puts and all(o.value.startswith("c0-") for o in puts)
    assert wl.stats.retries == 2


def test_the_next_packed_batch_starts_after_the_last_sequence():
    _, seen, _ = run_ops([], p_get=0, p_delete=0, p_batch=1, count=2)
    assert [r.request.sequence for _, r in seen] == [1, 4]


def test_a_packed_batch_refused_on_its_first_attempt_fails_and_after_a_retry_is_unknown():
    (ops,), _, _ = run_ops([INVALID], p_get=0, p_delete=0, p_batch=1)
    assert [o.outcome for o in ops] == ["fail"] * 3
    (ops,), _, _ = run_ops([UNAVAILABLE, INVALID], p_get=0, p_delete=0, p_batch=1)
    assert [o.outcome for o in ops] == ["unknown"] * 3


def test_per_op_answers_of_a_packed_batch():
    ok, invalid, unavailable, stale = (
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    # The node refused the writes together (UNAVAILABLE in every result): retried, then ok.
    (ops,), seen, _ = run_ops([("results", [unavailable] * 3), None], p_get=0, p_delete=0, p_batch=1)
    assert [o.outcome for o in ops] == ["ok"] * 3 and len(seen) == 2
    # A bad op fails alone.
    (ops,), _, _ = run_ops([("results", [ok, invalid, ok])], p_get=0, p_delete=0, p_batch=1)
    assert [o.outcome for o in ops] == ["ok", "fail", "ok"]
    # STALE after a retry cannot say whether the write was applied, and is noted.
    (ops,), _, wl = run_ops([UNAVAILABLE, ("results", [stale] * 3)], p_get=0, p_delete=0, p_batch=1)
    assert [o.outcome for o in ops] == ["unknown"] * 3
    assert wl.notes["batch STALE_SEQUENCE after a retry (should never happen)"] == 3
