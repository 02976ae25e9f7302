"""``paxoskv sim``: run the deterministic simulator from the command line.

Rules:

- ``--seed S`` runs one seed (a random one, printed, when omitted);
  ``--seeds N`` runs ``S, S+1, ..., S+N-1``. Each seed is a whole run
  (safety phase, liveness phase, every checker).
- Every failing seed prints its violations and the exact command that replays
  it; the replay is identical (same seed, same options, same run).
- The summary at the end says how many seeds ran, how many failed, how many
  client operations were simulated, and simulated operations per second of
  real time, so growth (or loss) of speed is visible.
- ``--minimize`` shrinks a failing seed: the same seed with a smaller
  operation budget is the same run up to the moment the budget runs out, so a
  bisection on ``--ops`` finds a shorter run that fails the same way, and
  prints its replay command.
- A campaign (``--seeds`` above 1) prints a progress line on stderr after
  each tenth of its seeds: how many ran, the failures so far, the elapsed
  time, so a long one is never silent (stdout keeps the summary alone).
- Exit status: 0 when every seed passed, 1 when any seed found a violation.
"""

from __future__ import annotations

import dataclasses
import os
import time

import click

from paxoskv.cli_options import option
from paxoskv.sim.nemesis import FAULT_PROFILES
from paxoskv.sim.simulation import FAULTS_DEFAULT, OPS_DEFAULT, WATCH_SHARE_DEFAULT, SimConfig, SimResult, Simulation

PROGRESS_STEPS = 10  # a campaign reports after each tenth of its seeds


def _print_failure(result: SimResult, violations_max: int = 10) -> None:
    click.echo(f"FAIL {result.summary()}")
    click.echo(f"  params: {result.params}")
    for v in result.violations[:violations_max]:
        text = str(v)
        click.echo("  " + text.replace("\n", "\n    "))
    if len(result.violations) > violations_max:
        click.echo(f"  ... and {len(result.violations) - violations_max} more")
    click.echo(f"  replay: {result.config.replay_command()}")


def minimize_ops(result: SimResult) -> SimResult:
    """The smallest ``ops`` (by bisection) at which the seed still fails with the
    same kind of violation as ``result``; ``result`` itself if none is smaller."""
    kind = result.violations[0].kind
    best = result
    lo, hi = 0, result.config.ops  # lo passes (no operations: nothing to break), hi fails
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        r = Simulation(dataclasses.replace(result.config, ops=mid, trace=False)).run()
        if any(v.kind == kind for v in r.violations):
            hi, best = mid, r
        else:
            lo = mid
    return best


@click.command("sim")
@click.option("--seed", type=int, default=None, help="First (or only) seed; random if omitted.")
@click.option(
    "--seeds",
    "count",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run this many consecutive seeds.",
)
@option("--nodes", type=click.IntRange(min=1), envvar=None)  # simulated: no environment
@click.option(
    "--ops",
    type=click.IntRange(min=0),
    default=OPS_DEFAULT,
    show_default=True,
    help="Client operations per seed (at most).",
)
@click.option(
    "--faults",
    type=click.Choice(sorted(FAULT_PROFILES)),
    default=FAULTS_DEFAULT,
    show_default=True,
    help="Which faults the nemesis and the network inject.",
)
@click.option(
    "--scale",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Let the safety phase last up to this many times longer (use with more --ops).",
)
@click.option(
    "--hostile",
    "hostile_rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Hostile members: before this share of deliveries a member also sends a message breaking a rule (nothing forged may apply).",
)
@click.option(
    "--etcd/--no-etcd",
    default=True,
    show_default=True,
    help="Run etcd-API clients (Txn, Range at a revision, Compaction) beside the v1 ones, in three seeds of four.",
)
@click.option(
    "--watch/--no-watch",
    default=True,
    show_default=True,
    help="Run simulated watchers on the members' watch hubs, checked for etcd's watch guarantees (in --watch-share of the seeds).",
)
@click.option(
    "--watch-share",
    type=click.FloatRange(0.0, 1.0),
    default=WATCH_SHARE_DEFAULT,
    show_default="1/3",
    help="The share of seeds that run watchers (with --watch).",
)
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Print every seed's summary and parameters, and the full event trace.",
)
@click.option(
    "--history-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the (last) seed's client history as JSON Lines for `paxoskv check`.",
)
@click.option(
    "--stop-on-failure/--no-stop-on-failure",
    default=True,
    show_default=True,
    help="Stop at the first failing seed.",
)
@click.option(
    "--minimize",
    is_flag=True,
    help="Shrink each failing seed's operation budget to the smallest that still fails.",
)
def sim_cmd(
    seed: int | None,
    count: int,
    nodes: int,
    ops: int,
    faults: str,
    scale: int,
    hostile_rate: float,
    etcd: bool,
    watch: bool,
    watch_share: float,
    verbose: bool,
    history_out: str | None,
    stop_on_failure: bool,
    minimize: bool,
) -> None:
    """Run the deterministic cluster simulator; print a replay command on failure."""
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "big")
        click.echo(f"seed {seed} (random)")
    started = time.perf_counter()
    cpu_started = time.process_time()
    ops_total = 0
    failed: list[SimResult] = []
    undecided = 0
    watched = watch_events = 0
    last: SimResult | None = None
    progress_every = max(1, count // PROGRESS_STEPS) if count > 1 else 0
    for s in range(seed, seed + count):
        config = SimConfig(
            seed=s, nodes=nodes, ops=ops, faults=faults, scale=scale, trace=verbose, hostile_rate=hostile_rate,
            etcd=etcd, watch_share=watch_share if watch else 0.0,
        )
        result = Simulation(config).run()
        done = s - seed + 1
        if progress_every and (done % progress_every == 0 or done == count):
            click.echo(
                f"progress: {done} of {count} seeds ({100 * done // count}%), "
                f"{len(failed) + (not result.ok)} failed, {time.perf_counter() - started:.1f}s",
                err=True,
            )
        last = result
        ops_total += result.ops
        undecided += result.linearizability == "unknown"
        watched += bool(result.watch)
        watch_events += result.watch.get("events", 0)
        if verbose:
            click.echo(f"params: {result.params}")
            for line in result.trace or ():
                click.echo(line)
            click.echo(result.summary())
        if not result.ok:
            _print_failure(result)
            if minimize:
                small = minimize_ops(result)
                if small.ops < result.ops:
                    click.echo(f"  minimized to {small.ops} operations:")
                    _print_failure(small)
                result = small
            failed.append(result)
            if stop_on_failure:
                break
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    if history_out is not None and last is not None:
        from paxoskv.check import dump_history  # noqa: PLC0415
        from paxoskv.sim.simulation import to_check_operations  # noqa: PLC0415

        dump_history(to_check_operations(last.history), history_out)
        click.echo(f"history of seed {last.config.seed} written to {history_out}")
    seeds_run = (last.config.seed - seed + 1) if last is not None else 0
    rate = ops_total / elapsed if elapsed > 0 else 0.0
    cpu_rate = ops_total / cpu if cpu > 0 else 0.0
    click.echo(
        f"seeds: {seeds_run}  violations: {len(failed)}  simulated ops: {ops_total}  "
        f"real time: {elapsed:.2f}s  simulated ops/s: {rate:.0f} "
        f"(per CPU second: {cpu_rate:.0f})"
        + (f"  linearizability undecided (budget): {undecided}" if undecided else "")
        + (f"  seeds with watchers: {watched} (watch events checked: {watch_events})" if watched else "")
    )
    if failed:
        click.echo("replay:")
        for result in failed:
            click.echo(f"  {result.config.replay_command()}")
        raise SystemExit(1)
