"""What a client can make a node hold, on real ``paxoskv serve`` processes:
each abuse gets a clear status code (or backpressure), the node's resident
memory (``/proc/<pid>/status`` VmRSS) stays under ``RSS_BOUND_BYTES``, and the
node keeps serving other clients.

- A ``Session`` stream that sends 100,000 requests and never reads an answer
  is stopped by backpressure: the node stops reading it, HTTP/2 flow control
  stops the sender.
- A ``Batch``/``PackedBatch`` over ``--max-batch-ops``: INVALID_ARGUMENT.
- A request over ``--max-request-bytes``: INVALID_ARGUMENT naming the limit;
  over it + 512 KiB: gRPC's RESOURCE_EXHAUSTED.
- 2,000 connections that speak the HTTP/2 preface and nothing else, plain
  and over TLS with client certificates.
- ``--max-pending-mb``: once the node holds that much, calls are refused
  RESOURCE_EXHAUSTED until it holds less; ``--max-connections``,
  ``--max-concurrent-rpcs`` and ``--max-concurrent-streams`` as the node
  announces and enforces them.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import struct
import subprocess
import sys
import textwrap
import time

import grpc
import pytest

from integration_cluster import HOST, LocalCluster
from paxoskv.client import Client, ClientTLS
from paxoskv.util.wait import wait_until
from paxoskv.v1 import kv_pb2, kv_pb2_grpc
from paxoskv.wire import method_path
from tls_certs import make_pki

RSS_BOUND_BYTES = 300 << 20
GROWTH_BOUND_BYTES = 150 << 20  # over the node's own size before the abuse

# A client that does not read: its gRPC core keeps the HTTP/2 windows it
# grants at their start (64 KiB) instead of growing them with its estimate
# of the link's bandwidth-delay product, so what it takes without reading
# does not depend on that estimate.
NOT_READING = (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 64 << 10), ("grpc.max_receive_message_length", 8 << 20))

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type SETTINGS, no flags, stream 0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def assert_bounded(
    cluster: LocalCluster, node_id: int, before: int, what: str, growth_bound: int = GROWTH_BOUND_BYTES
) -> int:
    """The node's RSS now, asserted under the bounds; printed for the record."""
    after = rss_bytes(cluster.nodes[node_id].pid)  # type: ignore[arg-type]
    print(f"{what}: node {node_id} RSS {before >> 20} MiB -> {after >> 20} MiB")
    assert after < RSS_BOUND_BYTES, (what, after >> 20)
    assert after - before < growth_bound, (what, before >> 20, after >> 20)
    return after


def assert_serving(cluster: LocalCluster, key: str) -> None:
    with cluster.client(timeout_s=15) as c:
        c.put(key, "still serving")
        assert c.get(key) == b"still serving"
    assert all(n.running for n in cluster.nodes.values())


# ---- an unread Session stream ---------------------------------------------------------------------


def test_a_session_stream_that_never_reads_is_stopped_by_backpressure(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    ep, pid = c.endpoint(1), c.nodes[1].pid
    assert pid is not None
    # Requests and answers of 4 KiB each (a 4000-byte key, a 4 KiB value):
    # 100,000 of them are 400 MB each way, more than any HTTP/2 window.
    key = b"k" * 4000
    with c.client() as client:
        client.put(key, os.urandom(4096))
    before = rss_bytes(pid)
    sent = 100_000
    written = 0

    async def abuse() -> None:
        nonlocal written
        async with grpc.aio.insecure_channel(ep, options=NOT_READING) as ch:
            call = kv_pb2_grpc.KVStub(ch).Session()
            get = kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=key))

            async def writer() -> None:
                nonlocal written
                for i in range(sent):
                    await call.write(kv_pb2.SessionRequest(id=i + 1, op=get))
                    written += 1

            task = asyncio.create_task(writer())
            # Until the writer is stopped: no write for 3 polls in a row.
            last, quiet, deadline = -1, 0, time.monotonic() + 120
            while quiet < 3 and not task.done() and time.monotonic() < deadline:
                await asyncio.sleep(1.0)  # a polling interval, not a synchronisation
                quiet = quiet + 1 if written == last else 0
                last = written
            assert not task.done(), f"all {sent} requests were taken: nothing stopped the stream"
            assert quiet >= 3, f"the stream was still being read after 120 s ({written} requests)"
            assert_bounded(c, 1, before, f"unread Session stream, {written} of {sent} requests taken")
            # Other clients are served meanwhile, by the same node.
            async with Client([ep], timeout_s=15) as other:
                await other.put("beside the stream", "ok")
                assert await other.get("beside the stream") == b"ok"
            call.cancel()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(abuse())
    print(f"the unread stream took {written} requests of {sent}")
    assert written < sent
    assert_serving(c, "after-the-stream")
    assert_bounded(c, 1, before, "after the stream was cancelled")


# ---- batches and requests over the limits ---------------------------------------------------------


def _batch(n: int, value: bytes = b"v", packed: bool = True) -> bytes:
    ops = [kv_pb2.RequestOp(put=kv_pb2.PutRequest(key=b"op%d" % i, value=value)) for i in range(n)]
    req = kv_pb2.BatchRequest(ops=ops)
    if packed:
        req.request.client_id = f"limits-{n}-{len(value)}-{os.getpid()}-{time.monotonic_ns()}"
        req.request.sequence = 1
    return req.SerializeToString()


def _call(ep: str, method: str, body: bytes) -> grpc.RpcError | bytes:
    with grpc.insecure_channel(ep, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        try:
            return ch.unary_unary(method_path("KV", method))(body, timeout=30)
        except grpc.RpcError as exc:
            return exc


def test_a_batch_over_the_op_limit_is_invalid_argument(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    ep, pid = c.endpoint(2), c.nodes[2].pid
    assert pid is not None
    before = rss_bytes(pid)
    for method, body in (
        ("PackedBatch", _batch(10_001)),
        ("Batch", _batch(100_000, packed=False)),
        ("Batch", kv_pb2.BatchRequest(ops=[kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=b"k"))] * 100_000).SerializeToString()),
    ):
        err = _call(ep, method, body)
        assert isinstance(err, grpc.RpcError), method
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.code(), err.details())
        assert "--max-batch-ops" in err.details() and "10000" in err.details(), err.details()
    with c.client() as client:
        assert client.get("op0") is None  # nothing of them was written
    ok = _call(ep, "PackedBatch", _batch(10_000))  # the limit itself is allowed
    assert isinstance(ok, bytes), ok
    resp = kv_pb2.BatchResponse.FromString(ok)
    assert len(resp.results) == 10_000 and all(r.code == 0 for r in resp.results)
    assert_bounded(c, 2, before, "batches over the op limit")
    assert_serving(c, "after-big-batches")


def test_a_request_over_the_byte_limit_is_invalid_argument_and_far_over_it_resource_exhausted(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    ep, pid = c.endpoint(3), c.nodes[3].pid
    assert pid is not None
    before = rss_bytes(pid)
    mib = b"x" * (1 << 20)
    half = b"x" * (512 << 10)
    over = _batch(3, half)  # three 512 KiB values and their framing: just over 1.5 MiB, the node's own check
    assert 1536 << 10 < len(over) < (1536 << 10) + (512 << 10)
    err = _call(ep, "PackedBatch", over)
    assert isinstance(err, grpc.RpcError)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert "request is too large" in err.details() and "--max-request-bytes" in err.details(), err.details()
    far = _batch(2, mib)  # over 2 MiB: gRPC refuses the message before any handler
    err = _call(ep, "PackedBatch", far)
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    ok = _call(ep, "PackedBatch", _batch(2, half))  # two 512 KiB values: under the limit
    assert isinstance(ok, bytes), ok
    assert_bounded(c, 3, before, "requests over the byte limit")
    assert_serving(c, "after-big-requests")


# ---- many connections ---------------------------------------------------------------------------------

_OPENER = textwrap.dedent(
    """
    import resource, socket, ssl, sys
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tls = None
    if len(sys.argv) > 5:  # CA, client certificate, key: TLS connections
        tls = ssl.create_default_context(cafile=sys.argv[5])
        tls.load_cert_chain(sys.argv[6], sys.argv[7])
        tls.set_alpn_protocols(["h2"])
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=10)
        try:
            if tls is not None:
                s = tls.wrap_socket(s, server_hostname="localhost")
            s.sendall(bytes.fromhex(sys.argv[4]))
        except OSError:  # the node closed it already (over --max-connections)
            pass
        socks.append(s)
    print("open", len(socks), flush=True)
    sys.stdin.read()  # until the test closes our stdin
    import os, time
    at_most = int(os.environ.get("ALIVE_AT_MOST", n))  # poll until this few are open (a node closes late)
    deadline = time.monotonic() + 15
    open_ = list(socks)
    while True:
        still = []
        for s in open_:  # read what the node sent (its SETTINGS, maybe then its close) to the end
            s.setblocking(False)
            try:
                while s.recv(65536):
                    pass
            except (BlockingIOError, ssl.SSLWantReadError):
                still.append(s)  # nothing more to read and not closed: open
            except OSError:
                pass  # reset: closed
        open_ = still
        if len(open_) <= at_most or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    print("alive", len(open_), flush=True)
    """
)


def _open_connections(
    ep_port: int, n: int, tls_files: tuple[str, str, str] | None = None, at_most: int | None = None
) -> subprocess.Popen:
    """A helper process holding ``n`` connections that sent the HTTP/2 preface
    (over TLS with ``tls_files``: CA, client certificate, key); when closed it
    counts those still open, polling up to 15 s for ``at_most`` of them."""
    env = {**os.environ, "ALIVE_AT_MOST": str(n if at_most is None else at_most)}
    p = subprocess.Popen(
        [sys.executable, "-c", _OPENER, HOST, str(ep_port), str(n), (PREFACE + EMPTY_SETTINGS).hex(), *(tls_files or ())],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.startswith("open "), line
    return p


def _close(p: subprocess.Popen) -> int:
    """Close the helper's connections (it exits); how many were still open."""
    out, _ = p.communicate(timeout=60)
    return int(out.split()[-1])


def _two_thousand(
    c: LocalCluster, what: str, tls_files: tuple[str, str, str] | None = None, growth_bound: int = GROWTH_BOUND_BYTES
) -> None:
    n = 2_000
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < n + 100:
        pytest.skip(f"the open-files hard limit is under {n + 100}: cannot open {n} connections")
    pid = c.nodes[1].pid
    assert pid is not None
    before = rss_bytes(pid)
    opener = _open_connections(c.nodes[1].port, n, tls_files)
    try:
        assert_bounded(c, 1, before, f"{n} idle {what} connections", growth_bound)
        with c.client(timeout_s=15) as client:
            client.put("beside-2000", "ok", endpoint=c.endpoint(1))
            assert client.read("beside-2000", endpoint=c.endpoint(1)).value == b"ok"
    finally:
        alive = _close(opener)
    print(f"{alive} of {n} connections were still open when closed")
    assert alive == n  # under --max-connections (3000): all taken
    assert_serving(c, "after-2000")


def test_two_thousand_connections_leave_the_node_serving_and_bounded(shared_cluster: LocalCluster) -> None:
    _two_thousand(shared_cluster, "HTTP/2")


def test_two_thousand_tls_connections_leave_the_node_serving_and_bounded(tmp_path) -> None:  # noqa: ANN001
    pki = make_pki(tmp_path / "pki")
    tls = ClientTLS.from_files(pki.ca, *pki.pair("client"))
    c = LocalCluster(tmp_path / "tls", size=1, extra_args=tuple(pki.server_args(client_cert_auth=True)), tls=tls)
    try:
        c.start_all()
        # An idle TLS connection holds about 64 KiB (BoringSSL's and gRPC's buffers).
        _two_thousand(c, "TLS (client-certificate)", (pki.ca, *pki.pair("client")), growth_bound=200 << 20)
    finally:
        c.close()


# ---- the node-wide limits, small ------------------------------------------------------------------------


def _settings_of(port: int) -> dict[int, int]:
    """The SETTINGS the node's HTTP/2 server announces first."""
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(PREFACE + EMPTY_SETTINGS)
        head = b""
        while len(head) < 9:
            head += s.recv(9 - len(head))
        length, kind = int.from_bytes(head[:3], "big"), head[3]
        assert kind == 4, f"the server's first frame is of type {kind}, not SETTINGS"
        body = b""
        while len(body) < length:
            body += s.recv(length - len(body))
    return {ident: value for ident, value in struct.iter_unpack(">HI", body)}


def test_small_node_limits_are_announced_and_enforced(tmp_path) -> None:  # noqa: ANN001
    c = LocalCluster(
        tmp_path / "small",
        size=1,
        extra_args=(
            "--max-concurrent-streams", "7", "--max-concurrent-rpcs", "4", "--max-connections", "40",
            "--max-pending-mb", "10",
        ),
    )  # fmt: skip
    try:
        c.start_all()
        ep, port, pid = c.endpoint(1), c.nodes[1].port, c.nodes[1].pid
        assert pid is not None
        before = rss_bytes(pid)
        assert _settings_of(port)[3] == 7  # SETTINGS_MAX_CONCURRENT_STREAMS

        # --max-connections 40: of 100 connections, the node keeps at most 40.
        opener = _open_connections(port, 100, at_most=40)
        alive = _close(opener)
        assert 0 < alive <= 40, alive

        with c.client() as client:
            client.put("big", b"v" * (1 << 20))

        async def abuse() -> None:
            async with grpc.aio.insecure_channel(ep, options=NOT_READING) as ch, grpc.aio.insecure_channel(ep) as ch2:
                stub = kv_pb2_grpc.KVStub(ch)
                big_get = kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=b"big"))
                # Three streams asking for a 1 MiB value, never reading: each
                # holds about --max-stream-bytes (4 MiB) of answers, together
                # more than --max-pending-mb 10.
                streams = [stub.Session() for _ in range(3)]
                for call in streams:
                    for i in range(8):
                        await call.write(kv_pb2.SessionRequest(id=i + 1, op=big_get))
                put = kv_pb2_grpc.KVStub(ch2).Put
                last: list[grpc.aio.AioRpcError] = []

                async def refused() -> bool:
                    try:
                        await put(kv_pb2.PutRequest(key=b"p", value=b"x"), timeout=5)
                    except grpc.aio.AioRpcError as exc:
                        last.append(exc)
                        return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-pending-mb" in exc.details()
                    return False

                deadline = time.monotonic() + 60
                while not await refused():
                    assert time.monotonic() < deadline, f"never refused: {last[-1:] or 'every put went through'}"
                    await asyncio.sleep(0.2)
                assert_bounded(c, 1, before, "three unread streams of 1 MiB answers")
                # --max-concurrent-rpcs 4: the three streams and one more call at most.
                # (the last refused put may still hold its slot for a moment: then the
                # fourth stream is refused at once, and tried again)
                deadline = time.monotonic() + 30
                while True:
                    fourth = stub.Session()
                    try:
                        await fourth.write(kv_pb2.SessionRequest(id=1, op=kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=b"p"))))
                        answer = await fourth.read()  # the node runs it: refused inside, the node holds too much
                        break
                    except grpc.aio.AioRpcError as exc:
                        assert "Concurrent RPC limit" in exc.details() and time.monotonic() < deadline, exc
                        await asyncio.sleep(0.1)
                assert answer.id == 1 and answer.result.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], answer
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await put(kv_pb2.PutRequest(key=b"p", value=b"x"), timeout=5)
                assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, ei.value
                assert "Concurrent RPC limit" in ei.value.details(), ei.value.details()
                for call in (*streams, fourth):
                    call.cancel()
                # Once the streams are gone, the node holds nothing and serves again.
                for _ in range(300):
                    try:
                        await put(kv_pb2.PutRequest(key=b"p", value=b"x"), timeout=5)
                        break
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                        await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the node kept refusing after the streams ended")

        asyncio.run(abuse())
        assert_bounded(c, 1, before, "after the streams ended")
        assert_serving(c, "after-small-limits")
    finally:
        c.close()
