"""``paxoskv check HISTORY.jsonl``: decide whether a recorded history is linearizable.

Exit codes: 0 linearizable, 1 violation, 2 unknown (budget exhausted),
3 unreadable or invalid file (one line on stderr naming the bad line).
"""

from __future__ import annotations

import json

import click

from paxoskv.check.history import HistoryError, load_history
from paxoskv.check.linearize import MEMORY_BUDGET_BYTES_DEFAULT, check_history

EXIT_OK, EXIT_VIOLATION, EXIT_UNKNOWN, EXIT_INVALID = 0, 1, 2, 3
_EXIT = {"ok": EXIT_OK, "violation": EXIT_VIOLATION, "unknown": EXIT_UNKNOWN}


@click.command("check")
@click.argument("history", metavar="HISTORY.jsonl")
@click.option("--time-budget", "time_budget_s", type=click.FloatRange(min=0), default=60.0,
              show_default=True, help="Seconds the whole check may take.")
@click.option("--step-budget", type=click.IntRange(min=0), default=None,
              help="Search steps the whole check may take (default: unbounded).")
@click.option("--memory-budget-mb", type=click.IntRange(min=1),
              default=MEMORY_BUDGET_BYTES_DEFAULT >> 20, show_default=True,
              help="Rough memory bound of one search's cache.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def check_cmd(
    history: str, time_budget_s: float, step_budget: int | None, memory_budget_mb: int, as_json: bool
) -> None:
    """Check HISTORY.jsonl (one operation per line) for linearizability.

    Exits 0 if linearizable, 1 on a violation, 2 if the budget ran out first,
    3 if the file cannot be read or is invalid.
    """
    try:
        ops = load_history(history)
    except HistoryError as exc:
        click.echo(f"paxoskv check: {exc}", err=True)
        raise SystemExit(EXIT_INVALID) from None
    result = check_history(ops, time_budget_s=time_budget_s, step_budget=step_budget,
                           memory_budget_bytes=memory_budget_mb << 20)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(f"history: {history}")
        click.echo(result.summary())
    raise SystemExit(_EXIT[result.verdict])
