"""TLS and client certificates on the public port, on real ``paxoskv serve``
processes (127.0.0.1, free ports, stopped by PID).

- A TLS node refuses a plaintext client, one that does not trust its CA,
  and a TLS 1.1 handshake; TLS 1.2 and 1.3 work.
- With ``--client-cert-auth`` a client with no certificate, one from
  another CA, or an expired one is refused at the handshake (health checks
  too); the right one works through the CLI, the Python client, ``paxoskv
  bench`` and grpcurl (when a grpcurl binary is installed).
- ``--admin-cn``: ``Maintenance.Snapshot`` is PERMISSION_DENIED for another
  CN and works for the named one; ``Status`` stays open to every client.
- Certificates rotate without a restart: new files are used by the next
  handshake; files that do not load are ignored (the old ones stay).
- ``serve`` refuses TLS flags that do not go together or files that do not
  load, one line, exit 2; ``bin/server`` passes the flags through.

The certificates are made by the test (``tls_certs``).
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import Iterator

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2

from integration_cluster import HOST, REPO, LocalCluster, health_status, run_cli
from paxoskv.launch import spawn, stop_procs
from paxoskv import wire
from paxoskv.client import ClientTLS, SyncClient, Unavailable
from paxoskv.server.cli import serve_cmd
from paxoskv.tls import aio_channel, channel
from paxoskv.util.ports import free_ports
from paxoskv.util.wait import wait_until
from paxoskv.v1 import kv_pb2, kv_pb2_grpc
from tls_certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls(pki: Pki, name: str | None = "client", ca: str = "ca.pem") -> ClientTLS:
    if name is None:
        return ClientTLS(root_certificates=pki.read(ca))
    return ClientTLS.from_files(pki.path(ca), *pki.pair(name))


@pytest.fixture(scope="module")
def mtls_cluster(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three nodes with TLS, client-cert auth and --admin-cn admin."""
    c = LocalCluster(
        tmp_path_factory.mktemp("mtls"),
        extra_args=tuple(pki.server_args(client_cert_auth=True, admin_cns=("admin",))),
        tls=_tls(pki, "client"),
    )
    try:
        c.start_all()
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def tls_node(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One node with TLS and no client certificates (server authentication only)."""
    c = LocalCluster(tmp_path_factory.mktemp("tls1"), size=1, extra_args=tuple(pki.server_args()), tls=_tls(pki, None))
    try:
        c.start_all()
        yield c
    finally:
        c.close()


def _refused(endpoints: list[str], tls: ClientTLS | None) -> str:
    """The error of a put that must not get through; asserts it did not."""
    with SyncClient(endpoints, timeout_s=1.5, tls=tls) as c:
        with pytest.raises(Unavailable) as ei:
            c.put("refused", "x")
    return str(ei.value)


# ---- server authentication --------------------------------------------------------------


def test_a_tls_node_refuses_plaintext_and_clients_that_do_not_trust_its_ca(tls_node: LocalCluster, pki: Pki) -> None:
    eps = tls_node.endpoints
    _refused(eps, None)  # plaintext
    _refused(eps, ClientTLS(root_certificates=pki.read("other-ca.pem")))  # the node's cert is not from this CA
    assert health_status(eps[0], 1.0, None) is None
    with SyncClient(eps, timeout_s=10, tls=_tls(pki, None)) as c:
        c.put("k", "over tls")
        assert c.get("k") == b"over tls"
    # No client certificate is asked for: one given anyway is fine.
    with SyncClient(eps, timeout_s=10, tls=_tls(pki, "stranger")) as c:
        assert c.get("k") == b"over tls"
    p = run_cli("get", "--endpoints", eps[0], "--timeout", "1", "k")
    assert p.returncode == 3, p.stderr
    p = run_cli("get", "--endpoints", eps[0], "--timeout", "15", "--cacert", pki.ca, "k")
    assert (p.returncode, p.stdout) == (0, "over tls\n"), p.stderr
    p = run_cli("get", "--endpoints", eps[0], "--timeout", "15", "k", env={"PAXOSKV_CACERT": pki.ca})
    assert (p.returncode, p.stdout) == (0, "over tls\n"), p.stderr


def _handshake(port: int, version: ssl.TLSVersion, pki: Pki) -> str:
    """The TLS version agreed with a client offering only ``version``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this OpenSSL offer TLS 1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    ctx.load_verify_locations(pki.ca)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((HOST, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.version() or ""


def test_tls_1_1_is_refused_at_the_handshake_1_2_and_1_3_work(tls_node: LocalCluster, pki: Pki) -> None:
    port = tls_node.nodes[1].port
    assert _handshake(port, ssl.TLSVersion.TLSv1_2, pki) == "TLSv1.2"
    assert _handshake(port, ssl.TLSVersion.TLSv1_3, pki) == "TLSv1.3"
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises((ssl.SSLError, ConnectionError)) as ei:
            _handshake(port, old, pki)
        # The node ended the handshake; this side did offer the old version
        # (it did not fail for lack of a protocol to offer).
        assert "NO_PROTOCOLS_AVAILABLE" not in str(ei.value).upper(), ei.value
    assert tls_node.nodes[1].running


# ---- client certificates --------------------------------------------------------------------


def test_client_cert_auth_refuses_no_certificate_another_ca_and_an_expired_one(mtls_cluster: LocalCluster, pki: Pki) -> None:
    eps = mtls_cluster.endpoints
    for tls in (None, _tls(pki, None), _tls(pki, "stranger"), _tls(pki, "expired")):
        _refused(eps, tls)
        assert health_status(eps[0], 1.0, tls) is None  # health checks need a certificate too
    for args in ([], ["--cacert", pki.ca], pki.client_args("stranger"), pki.client_args("expired")):
        p = run_cli("put", "--endpoints", eps[0], "--timeout", "1", *args, "k", "v")
        assert p.returncode == 3 and "Traceback" not in p.stderr, (args, p.returncode, p.stderr)
        assert wire.TLS_CLOSED in p.stderr, p.stderr  # says what to look at
    p = run_cli("get", "--endpoints", eps[0], "--timeout", "1", "--cacert", pki.path("other-ca.pem"), "k")
    assert p.returncode == 3 and wire.TLS_FAILED in p.stderr, p.stderr
    assert all(n.running for n in mtls_cluster.nodes.values())


def test_the_right_certificate_works_through_the_cli_and_the_python_client(mtls_cluster: LocalCluster, pki: Pki) -> None:
    eps = ",".join(mtls_cluster.endpoints)
    p = run_cli("put", "--endpoints", eps, *pki.client_args(), "greeting", "hello, tls")
    assert (p.returncode, p.stdout) == (0, "OK\n"), p.stderr
    env = {"PAXOSKV_CACERT": pki.ca, "PAXOSKV_CERT": pki.path("client.pem"), "PAXOSKV_KEY": pki.path("client.key")}
    p = run_cli("get", "--endpoints", eps, "greeting", env=env)
    assert (p.returncode, p.stdout) == (0, "hello, tls\n"), p.stderr
    p = run_cli(*pki.client_args(), "get", "--endpoints", eps, "greeting")  # etcdctl's order
    assert (p.returncode, p.stdout) == (0, "hello, tls\n"), p.stderr
    p = run_cli(*pki.client_args("stranger"), "get", "--endpoints", eps, "--timeout", "1", *pki.client_args(), "greeting")
    assert (p.returncode, p.stdout) == (0, "hello, tls\n"), p.stderr  # the flags after the command win
    p = run_cli("status", "--json", "--endpoints", eps, "--timeout", "15", *pki.client_args())
    assert p.returncode == 0, [n for n in json.loads(p.stdout) if "error" in n]
    assert sorted(n["node_id"] for n in json.loads(p.stdout)) == [1, 2, 3]
    with SyncClient(mtls_cluster.endpoints, timeout_s=10, tls=_tls(pki, "client")) as c:
        assert c.get("greeting") == b"hello, tls"
        results = c.batch([("put", "a", "1"), ("put", "b", "2"), ("get", "a")])
        assert [getattr(r, "value", None) for r in results][2] == b"1"
        assert c.delete("greeting").existed


def test_bench_runs_over_tls_with_a_client_certificate(mtls_cluster: LocalCluster, pki: Pki) -> None:
    eps = ",".join(mtls_cluster.endpoints)
    common = ["bench", "--endpoints", eps, "--mix", "50-50", "--keys", "50", "--processes", "1", "--concurrency", "4",
              "--warmup-s", "0", "--duration-s", "1", "--connect-timeout-s", "10", "--json"]  # fmt: skip
    p = run_cli(*common, *pki.client_args(), timeout_s=120)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert out["total"]["count"] > 0 and out["errors"] == {}, out
    p = run_cli(*common[:-3], "--connect-timeout-s", "1", "--cacert", pki.ca, timeout_s=120)
    assert p.returncode == 1, p.stderr[-2000:]  # no client certificate: no endpoint answers


def _grpcurl() -> str | None:
    beside = pathlib.Path(sys.executable).parent / "grpcurl"
    return str(beside) if beside.exists() else shutil.which("grpcurl")


def test_grpcurl_with_cacert_cert_and_key(mtls_cluster: LocalCluster, pki: Pki) -> None:
    grpcurl = _grpcurl()
    if grpcurl is None:
        pytest.skip("no grpcurl binary in the virtualenv or on PATH (the test extras' grpcurl wrapper installs one)")
    ep = mtls_cluster.endpoints[0]
    with SyncClient([ep], timeout_s=10, tls=_tls(pki)) as c:
        c.put("curl", "ok")
    flags = ["-cacert", pki.ca, "-cert", pki.path("client.pem"), "-key", pki.path("client.key")]
    p = subprocess.run([grpcurl, *flags, "-d", '{"key": "Y3VybA=="}', ep, "paxoskv.v1.KV/Get"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["value"] == "b2s="  # base64 of b"ok"
    p = subprocess.run([grpcurl, "-cacert", pki.ca, ep, "grpc.health.v1.Health/Check"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode != 0  # no client certificate


# ---- the admin gate ---------------------------------------------------------------------------------


def test_admin_cn_limits_snapshot_to_the_named_certificate(mtls_cluster: LocalCluster, pki: Pki, tmp_path: pathlib.Path) -> None:
    ep = mtls_cluster.endpoints[0]
    with SyncClient([ep], timeout_s=10, tls=_tls(pki)) as c:
        c.put("in-the-snapshot", "yes")
    out = tmp_path / "backup.snap"
    p = run_cli("snapshot", "save", str(out), "--endpoints", ep, *pki.client_args("client"))
    assert p.returncode == 4, p.stderr
    assert "PERMISSION_DENIED" in p.stderr and "CN='client'" in p.stderr and "--admin-cn" in p.stderr, p.stderr
    assert not out.exists()
    with channel(ep, _tls(pki, "client")) as ch:  # Status is not an admin call
        assert kv_pb2_grpc.MaintenanceStub(ch).Status(kv_pb2.StatusRequest(), timeout=5).node_id == 1
        with pytest.raises(grpc.RpcError) as ei:
            list(kv_pb2_grpc.MaintenanceStub(ch).Snapshot(kv_pb2.SnapshotRequest(), timeout=5))
        assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
    p = run_cli("snapshot", "save", str(out), "--endpoints", ep, *pki.client_args("admin"))
    assert p.returncode == 0, p.stderr
    p = run_cli("snapshot", "status", str(out), "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["rows"] >= 1, p.stdout + p.stderr


# ---- rotation ------------------------------------------------------------------------------------------


def _presented(port: int) -> bytes:
    """The certificate the node presents to a new connection (not verified here)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((HOST, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.getpeercert(binary_form=True) or b""


def _der(pem_path: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pathlib.Path(pem_path).read_text())


def test_certificates_rotate_without_a_restart(pki: Pki, tmp_path: pathlib.Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    for name in ("server.pem", "server.key", "ca.pem"):
        shutil.copy(pki.path(name), live / name)
    args = ("--cert-file", str(live / "server.pem"), "--key-file", str(live / "server.key"))
    c = LocalCluster(tmp_path / "node", size=1, extra_args=args, tls=_tls(pki, None))
    try:
        c.start_all()
        port = c.nodes[1].port
        assert _presented(port) == _der(pki.path("server.pem"))
        # A half-written file does not load: the node keeps the old pair.
        (live / "server.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
        assert _presented(port) == _der(pki.path("server.pem"))
        assert "do not load" in c.log_text(1)
        # The new pair, written beside and renamed over the old one.
        fresh = make_pki(tmp_path / "fresh")
        for name in ("server.key", "server.pem"):
            shutil.copy(fresh.path(name), live / (name + ".new"))
            os.replace(live / (name + ".new"), live / name)
        wait_until(
            "the node to present the new certificate",
            lambda: _presented(port) == _der(fresh.path("server.pem")),
            15,
        )
        with SyncClient(c.endpoints, timeout_s=10, tls=_tls(fresh, None)) as client:
            client.put("after", "rotation")
        assert c.nodes[1].running
    finally:
        c.close()


# ---- flags ---------------------------------------------------------------------------------------------------


def test_serve_refuses_tls_flags_that_do_not_go_together_and_files_that_do_not_load(pki: Pki, tmp_path: pathlib.Path) -> None:
    cert, key = pki.pair("server")
    _, other_key = pki.pair("client")
    base = ["--id", "1", "--listen", HOST, "--port", "1", "--data-dir", str(tmp_path / "never")]
    cases = [
        (["--cert-file", cert], "--key-file"),
        (["--client-cert-auth"], "needs TLS"),
        (["--cert-file", cert, "--key-file", key, "--client-cert-auth"], "--trusted-ca-file"),
        (["--cert-file", cert, "--key-file", key, "--trusted-ca-file", pki.ca, "--admin-cn", "admin"], "--client-cert-auth"),
        (["--cert-file", cert, "--key-file", other_key], "do not load together"),
        (["--cert-file", str(tmp_path / "missing.pem"), "--key-file", key], "missing.pem"),
        (["--cert-file", key, "--key-file", key], "no PEM CERTIFICATE"),
        (["--cert-file", cert, "--key-file", key, "--trusted-ca-file", key, "--client-cert-auth"], "--trusted-ca-file"),
    ]
    for extra, says in cases:
        r = CliRunner().invoke(serve_cmd, [*base, *extra])
        assert r.exit_code == 2, (extra, r.output)
        assert says in r.output, (extra, r.output)
    assert not (tmp_path / "never").exists()


def test_bin_server_passes_the_tls_flags_through(pki: Pki, tmp_path: pathlib.Path) -> None:
    (port,) = free_ports(1, offset=1000)
    cert, key = pki.pair("server")
    argv = [str(REPO / "bin" / "server"), "-id", "1", "-port", str(port), f"--listen={HOST}",
            f"--cert-file={cert}", f"--key-file={key}", f"--trusted-ca-file={pki.ca}", "--client-cert-auth"]  # fmt: skip
    proc = spawn(argv, tmp_path / "server.log", env={**os.environ, "PAXOSKV_HEARTBEAT_MS": "20", "PAXOSKV_ELECTION_MS": "200"})
    ep = f"{HOST}:{port}"

    def serving() -> bool:
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        return health_status(ep, 0.5, _tls(pki)) == health_pb2.HealthCheckResponse.SERVING

    try:
        wait_until("bin/server to serve over TLS", serving, 30)
        assert health_status(ep, 0.5, _tls(pki, None)) is None  # no client certificate: refused
        with SyncClient([ep], timeout_s=10, tls=_tls(pki)) as c:
            c.put("via", "bin/server")
            assert c.get("via") == b"bin/server"
    finally:
        assert stop_procs([proc]) == [0]


def test_the_admin_gate_covers_every_kind_of_call(pki: Pki) -> None:
    """In one process: an AdminGate on a TLS server with client-cert auth, for
    gated methods of each kind (unary or stream, each way) and one not gated."""
    from paxoskv.server.public import AdminGate, ServerTLS

    async def uu(req, ctx):  # noqa: ANN001, ANN202
        return b"uu"

    async def us(req, ctx):  # noqa: ANN001, ANN202
        yield b"us"

    async def su(reqs, ctx):  # noqa: ANN001, ANN202
        return b"su" + b"".join([r async for r in reqs])

    async def ss(reqs, ctx):  # noqa: ANN001, ANN202
        async for r in reqs:
            yield b"ss" + r

    handlers = {
        "UU": grpc.unary_unary_rpc_method_handler(uu),
        "US": grpc.unary_stream_rpc_method_handler(us),
        "SU": grpc.stream_unary_rpc_method_handler(su),
        "SS": grpc.stream_stream_rpc_method_handler(ss),
        "Open": grpc.unary_unary_rpc_method_handler(uu),
    }
    gated = frozenset(f"/t.S/{m}" for m in ("UU", "US", "SU", "SS"))
    tls = ServerTLS.from_flags(*pki.pair("server"), pki.ca, True)
    assert tls is not None

    async def calls(ch: grpc.aio.Channel, send: bool) -> dict[str, object]:
        """Each method's answer or status code; the client streams send two
        requests when ``send`` (a denied call is not written to: gRPC's aio
        client may report a write racing the server's refusal as INTERNAL)."""
        out: dict[str, object] = {}

        async def one(name: str, make) -> None:  # noqa: ANN001
            try:
                out[name] = await make()
            except grpc.aio.AioRpcError as exc:
                out[name] = exc.code()

        async def streamed(call, answers_stream: bool):  # noqa: ANN001, ANN202
            if send:
                await call.write(b"1")
                await call.write(b"2")
            await call.done_writing()
            return await _collect(call) if answers_stream else await call

        await one("UU", lambda: ch.unary_unary("/t.S/UU")(b"", timeout=5))
        await one("US", lambda: _collect(ch.unary_stream("/t.S/US")(b"", timeout=5)))
        await one("SU", lambda: streamed(ch.stream_unary("/t.S/SU")(timeout=5), False))
        await one("SS", lambda: streamed(ch.stream_stream("/t.S/SS")(timeout=5), True))
        await one("Open", lambda: ch.unary_unary("/t.S/Open")(b"", timeout=5))
        return out

    async def main() -> None:
        server = grpc.aio.server(interceptors=[AdminGate({"admin"}, gated)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", handlers),))
        port = server.add_secure_port(f"{HOST}:0", tls.credentials())
        await server.start()
        try:
            async with aio_channel(f"{HOST}:{port}", _tls(pki, "client")) as ch:
                denied = grpc.StatusCode.PERMISSION_DENIED
                assert await calls(ch, False) == {"UU": denied, "US": denied, "SU": denied, "SS": denied, "Open": b"uu"}
            async with aio_channel(f"{HOST}:{port}", _tls(pki, "admin")) as ch:
                assert await calls(ch, True) == {"UU": b"uu", "US": [b"us"], "SU": b"su12", "SS": [b"ss1", b"ss2"], "Open": b"uu"}
        finally:
            await server.stop(0)

    asyncio.run(main())


async def _collect(call) -> list:  # noqa: ANN001
    return [item async for item in call]
