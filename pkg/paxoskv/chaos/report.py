"""The campaign's report: a summary for a person and files for later.

Files written into ``out_dir``:

* ``history.jsonl``: every operation (workload and final reads), in the
  format of :mod:`paxoskv.check.history`; ``paxoskv check history.jsonl``
  re-checks it.
* ``verdict.json``: the verdict and every figure of the summary.
* ``faults.jsonl``: one fault per line, with start and end times.
* ``summary.txt``: the text ``summary()`` returns.

Figures
-------
* *availability*: the share of workload operations invoked while a majority
  of nodes was up (running, not paused) and connected that ended ``ok``.
  Elections after a fault count against it, as they would for a user.
* *latency*: percentiles of ``ok`` operations (return minus call), by type.
* *leader changes*: every change of the leader the monitor saw, the first
  election excluded.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from paxoskv.check import dump_history

if TYPE_CHECKING:
    from paxoskv.chaos.campaign import CampaignResult

__all__ = ["availability", "latency_ms", "summary", "verdict_json", "write_outputs"]

PERCENTILES = (50, 90, 99)


def _workload_ops(res: CampaignResult):
    return [o for o in res.history if not o.client.startswith("final-")]


def availability(res: CampaignResult) -> tuple[float | None, int, float]:
    """(ok share of ops invoked while a majority was up, how many such ops,
    share of the safety phase with a majority up)."""
    points = res.health
    if not points:
        return None, 0, 0.0
    times = [p.at_s for p in points]

    def majority_at(t: float) -> bool:
        k = bisect.bisect_right(times, t) - 1
        return points[k].majority_ok if k >= 0 else True

    ops = [o for o in _workload_ops(res) if majority_at(o.call)]
    ok = sum(1 for o in ops if o.outcome == "ok")
    end = res.safety_end_s or (times[-1] if times else 0.0)
    up_time = 0.0
    start = times[0]
    for k, p in enumerate(points):
        nxt = points[k + 1].at_s if k + 1 < len(points) else end
        if p.majority_ok:
            up_time += max(0.0, min(nxt, end) - p.at_s)
    span = max(end - start, 1e-9)
    return (ok / len(ops) if ops else None), len(ops), up_time / span


def latency_ms(res: CampaignResult) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    ops = [o for o in _workload_ops(res) if o.outcome == "ok" and o.ret is not None]
    for kind in ("get", "put", "delete", "all"):
        lat = sorted((o.ret - o.call) * 1000 for o in ops if kind == "all" or o.op == kind)
        if not lat:
            continue
        row = {f"p{p}": lat[min(len(lat) - 1, int(len(lat) * p / 100))] for p in PERCENTILES}
        row["max"] = lat[-1]
        out[kind] = {k: round(v, 2) for k, v in row.items()}
    return out


def _outcomes(res: CampaignResult) -> dict[str, dict[str, int]]:
    table: dict[str, Counter] = {k: Counter() for k in ("get", "put", "delete", "all")}
    for o in _workload_ops(res):
        table[o.op][o.outcome] += 1
        table["all"][o.outcome] += 1
    return {
        k: {oc: c[oc] for oc in ("ok", "fail", "unknown")} | {"total": sum(c.values())}
        for k, c in table.items()
    }


def verdict_json(res: CampaignResult) -> dict[str, Any]:
    cfg = res.config
    avail, avail_ops, up_share = availability(res)
    check = res.check
    changes = max(0, len(res.leaders) - 1)
    return {
        "verdict": res.verdict,
        "config": {
            "nodes": cfg.nodes,
            "duration_s": cfg.duration_s,
            "faults": sorted(cfg.faults),
            "seed": cfg.seed,
            "clients": cfg.workload.clients,
            "keys": cfg.workload.keys,
            "heartbeat_ms": cfg.heartbeat_ms,
            "election_ms": cfg.election_ms,
            "retain_entries": cfg.retain_entries,
            "node_command": list(cfg.node_command) if cfg.node_command else None,
            "peer_bus": "curve",
            "tls": cfg.tls,
        },
        "network": res.network,
        "problems": res.problems,
        "notes": res.notes,
        "checks": {
            "linearizable": check.verdict if check else None,
            "lost_acked_writes": len(res.lost),
            "nodes_identical": not res.node_diffs,
            "converged": bool(res.convergence and res.convergence.ok),
            "log_findings": len(res.logs.findings) if res.logs else None,
            "unexpected_exits": sum(1 for p in res.problems if "exited by itself" in p),
        },
        "operations": _outcomes(res),
        "final_reads": len(res.history) - len(_workload_ops(res)),
        "client_attempts": res.client_stats.attempts if res.client_stats else 0,
        "client_retries": res.client_stats.retries if res.client_stats else 0,
        "client_batches": res.client_stats.batches if res.client_stats else 0,
        "client_batch_retries": res.client_stats.batch_retries if res.client_stats else 0,
        "client_errors": dict(res.client_stats.errors) if res.client_stats else {},
        "client_notes": res.client_notes,
        "availability": None if avail is None else round(avail, 4),
        "availability_ops": avail_ops,
        "majority_up_share": round(up_share, 4),
        "latency_ms": latency_ms(res),
        "faults": [e.to_json() for e in res.events],
        "fault_counts": dict(Counter(e.kind for e in res.events)),
        "leader_changes": changes,
        "snapshots": {str(i): {"seen": n, "max_index": m} for i, (n, m) in res.snapshots.items()},
        "leaders": [
            {"at_s": round(c.at_s, 3), "leader": c.leader, "ballot": list(c.ballot)} for c in res.leaders
        ],
        "convergence": (
            None
            if res.convergence is None
            else {
                "ok": res.convergence.ok,
                "elapsed_s": round(res.convergence.elapsed_s, 3),
                "leader": res.convergence.leader,
                "applied_index": res.convergence.applied_index,
                "detail": res.convergence.detail,
            }
        ),
        "lost_writes": [lw.to_json() for lw in res.lost],
        "node_diffs": res.node_diffs,
        "checker": (
            None
            if check is None
            else {
                "verdict": check.verdict,
                "ops_total": check.ops_total,
                "ops_checked": check.ops_checked,
                "steps": check.steps,
                "elapsed_s": round(check.elapsed_s, 3),
                "budget_exhausted": check.budget_exhausted,
                "keys": [k.to_json() for k in check.keys],
            }
        ),
        "watch": None if res.watch is None else res.watch.to_json(),
        "timings_s": {k: round(v, 3) for k, v in res.timings.items()},
        "exit_codes": {str(k): v for k, v in res.exit_codes.items()},
        "log_findings": [
            {"node": f.node_id, "line_no": f.line_no, "line": f.line}
            for f in (res.logs.findings if res.logs else [])
        ],
    }


def summary(res: CampaignResult) -> str:
    cfg = res.config
    v = verdict_json(res)
    lines: list[str] = []
    add = lines.append
    add(
        f"paxoskv chaos: {cfg.nodes} nodes, {cfg.duration_s:g}s, faults {','.join(sorted(cfg.faults)) or 'none'}, "
        f"seed {cfg.seed}, {cfg.workload.clients} clients on {cfg.workload.keys} keys"
    )
    add(f"network: {res.network}")
    c = v["checks"]
    add(
        f"VERDICT: {res.verdict.upper()}  (linearizable: {c['linearizable']}, lost acked writes: "
        f"{c['lost_acked_writes']}, nodes identical: {'yes' if c['nodes_identical'] else 'NO'}, converged: "
        f"{'yes' if c['converged'] else 'NO'}, suspicious log lines: {c['log_findings']})"
    )
    add("")
    outc = v["operations"]
    total = outc["all"]["total"]
    span = res.timings.get("safety_s", 0.0)
    add(
        f"operations: {total} by the workload in {span:.1f}s ({total / span if span else 0:.0f}/s), "
        f"plus {v['final_reads']} final reads"
    )
    add(f"  {'':8}{'ok':>8}{'fail':>8}{'unknown':>9}{'total':>8}")
    for kind in ("get", "put", "delete", "all"):
        row = outc[kind]
        add(f"  {kind:8}{row['ok']:>8}{row['fail']:>8}{row['unknown']:>9}{row['total']:>8}")
    errs = (
        ", ".join(f"{k} {n}" for k, n in sorted(v["client_errors"].items(), key=lambda kv: -kv[1])) or "none"
    )
    add(f"  attempts {v['client_attempts']} (retries {v['client_retries']}); errors by code: {errs}")
    if v["client_batches"]:
        add(f"  PackedBatch calls {v['client_batches']} (of the writes above), {v['client_batch_retries']} sent more than once")
    add("latency of ok operations (ms):")
    add(f"  {'':8}" + "".join(f"{h:>9}" for h in ("p50", "p90", "p99", "max")))
    for kind, row in v["latency_ms"].items():
        add(f"  {kind:8}" + "".join(f"{row[h]:>9.1f}" for h in ("p50", "p90", "p99", "max")))
    if v["availability"] is None:
        add("availability: no operation was invoked while a majority was up")
    else:
        add(
            f"availability: {100 * v['availability']:.1f}% of the {v['availability_ops']} operations invoked while a "
            f"majority was up and connected succeeded (a majority was up {100 * v['majority_up_share']:.0f}% of "
            f"the time)"
        )
    counts = ", ".join(f"{k} {n}" for k, n in sorted(v["fault_counts"].items())) or "none"
    add(f"faults: {len(res.events)} ({counts})")
    for e in res.events:
        end = f"{e.end_s:7.2f}" if e.end_s is not None else "    ..."
        tg = ",".join(f"n{t}" for t in e.targets)
        add(f"  {e.start_s:7.2f}s -{end}s  {e.kind:15} {tg:8} {e.detail}")
    add(f"leader changes: {v['leader_changes']}")
    if res.leaders:
        add(
            "  "
            + "  ".join(f"{ch.at_s:.2f}s:n{ch.leader}" for ch in res.leaders[:40])
            + ("  ..." if len(res.leaders) > 40 else "")
        )
    if res.snapshots:
        add(
            "snapshots (installed or served, as Status showed them): "
            + ", ".join(f"n{i} {n}x up to index {m}" for i, (n, m) in res.snapshots.items())
        )
    conv = res.convergence
    if conv is not None:
        if conv.ok:
            idx = sorted(set(conv.applied_index.values()))
            add(
                f"convergence: {conv.elapsed_s:.1f}s after the run, leader n{conv.leader}, applied index {idx} on "
                f"every node"
            )
        else:
            add(f"convergence: FAILED after {conv.elapsed_s:.1f}s: {conv.detail}")
    if res.check is not None:
        ch = res.check
        add(
            f"checker: {ch.verdict}, {ch.ops_checked} of {ch.ops_total} operations in {ch.elapsed_s:.1f}s "
            f"({ch.steps} steps{', budget exhausted' if ch.budget_exhausted else ''})"
        )
        for k in ch.keys:
            if k.verdict != "ok":
                add(f"  key {k.key}: {k.verdict}")
                for line in (k.explanation or "").splitlines()[:25]:
                    add(f"    {line}")
    if res.etcd is not None:
        from paxoskv.chaos.etcd_workload import summary_lines

        lines.extend(summary_lines(res.etcd))
    if res.watch is not None:
        from paxoskv.chaos.watch_workload import summary_lines as watch_lines

        lines.extend(watch_lines(res.watch))
    t = res.timings
    add("timings: " + ", ".join(f"{k.removesuffix('_s')} {t[k]:.1f}s" for k in t))
    if res.problems:
        add("problems:")
        for p in res.problems:
            add(f"  - {p}")
    if res.notes:
        add("notes:")
        for n in res.notes:
            add(f"  - {n}")
    add(f"files: {cfg.out_dir}/history.jsonl, verdict.json, faults.jsonl, summary.txt, n<i>/node.log")
    if res.verdict != "pass":
        add(
            f"reproduce: paxoskv chaos --nodes {cfg.nodes} --duration {cfg.duration_s:g}s --faults "
            f"{','.join(sorted(cfg.faults))} --seed {cfg.seed}"
        )
    return "\n".join(lines) + "\n"


def write_outputs(res: CampaignResult) -> None:
    out = res.config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    dump_history(res.history, out / "history.jsonl")
    (out / "verdict.json").write_text(json.dumps(verdict_json(res), indent=2) + "\n")
    with open(out / "faults.jsonl", "w", encoding="utf-8") as f:
        for e in res.events:
            f.write(json.dumps(e.to_json()) + "\n")
    if res.etcd is not None:
        from paxoskv.chaos.etcd_workload import write_history

        write_history(res.etcd, out / "etcd-history.jsonl")
    (out / "summary.txt").write_text(summary(res))
