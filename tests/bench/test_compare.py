"""``bench/compare``'s jobs and table, on the do-nothing stand-in (fast) and
on made-up figures; no figure of a real run is asserted."""

from __future__ import annotations

import argparse

import pytest

import clusters  # bench/clusters.py (setup.cfg puts bench/ on sys.path)
import compare  # bench/compare.py


def _args(**kw) -> argparse.Namespace:
    base = dict(
        rounds=1, processes=1, concurrency=2, warmup_s=0.2, duration_s=1.0, timeout_s=5.0, batch_size=100,
        keys=200, value_bytes=100, idle_s=1.0, pysyncobj_inflight=0, systems=["grpc-echo"], jobs=["idle", "put"],
    )
    return argparse.Namespace(**{**base, **kw})


def test_a_load_job_and_the_idle_job_on_the_stand_in(tmp_path):
    results = compare.run_all(_args(), tmp_path)
    put = results["put"]["grpc-echo"][0]
    assert "failed" not in put, put
    assert put["ops"] > 0
    assert put["server_us_per_op"] == pytest.approx(put["server_cpu_s"] / put["ops"] * 1e6)
    assert put["client_us_per_op"] == pytest.approx(put["client_cpu_s"] / put["ops"] * 1e6)
    assert put["server_cpu_s"] > 0 and put["client_cpu_s"] > 0
    idle = results["idle"]["grpc-echo"][0]
    assert len(idle["idle_pct_nodes"]) == 3 and all(p >= 0 for p in idle["idle_pct_nodes"])
    assert idle["idle_pct_mean"] == pytest.approx(sum(idle["idle_pct_nodes"]) / 3)
    assert idle["idle_pct_max"] == max(idle["idle_pct_nodes"])


def test_paxoskv_etcdapi_against_a_server_without_etcds_api(tmp_path, monkeypatch):
    """The system is paxoskv's port loaded through etcd's API; a server that
    has only paxoskv.v1.KV (the stand-in here, so this holds whatever
    paxoskv serves) fails every cell of the round with the known sentence,
    and no second cluster is started for it."""
    started = []

    def start(system, base):
        assert system == "paxoskv-etcdapi"
        started.append(base)
        return clusters.start_echo(base, compare.ECHO_SCRIPT)

    monkeypatch.setattr(compare, "start", start)
    results = compare.run_all(_args(systems=["paxoskv-etcdapi"], jobs=["put", "put-batch-10", "put1"]), tmp_path)
    for job in ("put", "put-batch-10", "put1"):
        assert results[job]["paxoskv-etcdapi"] == [{"failed": "UNIMPLEMENTED: paxoskv does not serve etcdserverpb.KV yet"}]
    assert len(started) == 1


def test_the_security_systems_run_secure_and_insecure_side_by_side(tmp_path):
    """paxoskv-secure: CURVE and TLS with client certificates (a plaintext client is refused);
    paxoskv-insecure: neither. Both carry a load job through the same runner."""
    from paxoskv.launch import node_status
    from paxoskv.tls import ClientTLS

    results = compare.run_all(_args(systems=["paxoskv", "paxoskv-insecure", "paxoskv-secure"], jobs=["put"]), tmp_path)
    for system in ("paxoskv-insecure", "paxoskv-secure"):
        put = results["put"][system][0]
        assert "failed" not in put and put["ops"] > 0 and put["errors"] == 0, (system, put)
    warned = [p for p in tmp_path.rglob("node*.log") if "INSECURE PEER BUS" in p.read_text()]
    assert len(warned) == 3 and all("insecure" in str(p) for p in warned), warned  # the insecure cluster only
    with clusters.start_paxoskv(tmp_path / "probe", curve=True, tls=True, name="paxoskv-secure") as c:
        c.wait_ready(timeout_s=60.0)
        assert node_status(c.endpoints[0], timeout_s=5.0) is None  # plaintext: refused
        no_cert = ClientTLS(root_certificates=c.tls.root_certificates)
        assert node_status(c.endpoints[0], timeout_s=5.0, tls=no_cert) is None  # no client certificate: refused
        assert node_status(c.endpoints[0], timeout_s=5.0, tls=c.tls) is not None


def _load(tput: float, us: float) -> dict:
    return {"throughput_ops_s": tput, "p50_ms": 2.0, "p99_ms": 9.0, "errors": 0, "server_us_per_op": us,
            "client_us_per_op": us / 4, "server_cores": 1.0, "client_cores": 0.3}


def test_the_table_shows_cpu_per_op_idle_and_batches_against_txn():
    results = {
        "idle": {"paxoskv": [{"idle_pct_mean": 3.0, "idle_pct_max": 4.0}],
                 "etcd": [{"idle_pct_mean": 1.5, "idle_pct_max": 2.0}]},
        "put": {"paxoskv": [_load(1000, 2000)], "etcd": [_load(2000, 400)]},
        "put-batch-100": {"paxoskv": [_load(22000, 60)], "etcd": [_load(25000, 50)]},
        "put-batch-per-op": {"paxoskv": [_load(11000, 120)]},
        "put-batch-1000": {"paxoskv": [_load(80000, 20)]},
    }
    out = compare.table(results, _args(systems=["paxoskv", "etcd"]))
    rows = [line.split() for line in out.splitlines()]
    text = "\n".join(out.splitlines())
    assert "idle, no load" in text and "% core per node" in text and "% core, busiest node" in text
    assert ["3.0%", "1.5%", "2.00x"] == [c for c in rows[1] if "%" in c or c.endswith("x")][-3:]
    server = [r for r in rows if r[:2] == ["server", "us/op"]]
    # put: 2000 vs 400 -> 5.00x; the batch of 100 vs the Txn of 100 -> 1.20x;
    # the per-op Batch against the Txn of 100 (*) -> 2.40x; 1000 has no peer
    assert [r[2:] for r in server] == [["2,000", "400", "5.00x"], ["60", "50", "1.20x"], ["120", "50*", "2.40x"], ["20", "-", "-"]]
    client = [r for r in rows if r[:2] == ["client", "us/op"]]
    assert client[0][2:] == ["500", "100"]  # shown, no ratio
    assert "put, 100 per call: PackedBatch / Txn" in text
    assert "beyond etcd's default --max-txn-ops 128" in text
    tput = [r for r in rows if r[-3:] and r[-1].endswith("x") and "ops/s" in r]
    assert any("22,000" in r and "25,000" in r and "0.88x" in r for r in tput)


def test_a_figure_no_round_has_is_a_dash_and_a_failed_round_says_so():
    """watch0 has no watcher, so no event latency: its cells are "-", not
    "failed"; a job whose rounds all failed still reads "failed"."""
    nan = float("nan")
    alone = {"p50_ms": nan, "p99_ms": nan, "events_s": 0.0, "missing": 0, "puts_s": 10.0, "put_p50_ms": 4.0,
             "put_p99_ms": 20.0, "errors": 0, "server_us_per_op": nan, "client_us_per_op": nan,
             "server_cores": 0.1, "client_cores": 0.02}
    results = {
        "watch0": {"paxoskv": [alone], "etcd": [{**alone, "put_p50_ms": 2.0}]},
        "watch1000": {"paxoskv": [{"failed": "a node died"}], "etcd": [{**alone, "p50_ms": 9.0, "p99_ms": 30.0}]},
    }
    rows = [line.split() for line in compare.table(results, _args(systems=["paxoskv", "etcd"])).splitlines()]
    event_p50 = [r for r in rows if "event" in r and "p50" in r]
    assert event_p50[0][-3:] == ["-", "-", "-"]  # watch0: nobody has it
    assert event_p50[1][-3:] == ["failed", "9.00", "-"]  # watch1000: paxoskv's round failed
    put_p50 = [r for r in rows if r[:3] == ["put", "p50", "ms"]]
    assert put_p50[0][-3:] == ["4.00", "2.00", "2.00x"]
