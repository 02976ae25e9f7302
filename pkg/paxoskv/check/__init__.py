"""Linearizability checker for recorded key-value histories.

Build a history in memory (``Operation`` values, or a ``Recorder``), or load one
(``load_history``), then ``check_history(ops, time_budget_s=..., step_budget=...)``.
The verdict is ``"ok"``, ``"violation"`` (with an explanation naming the key and
the operation that cannot be linearized) or ``"unknown"`` (budget exhausted).
See :mod:`paxoskv.check.history` for the history rules and
:mod:`paxoskv.check.linearize` for the algorithm.
"""

from __future__ import annotations

from paxoskv.check.history import (
    OPS,
    OUTCOMES,
    HistoryError,
    Operation,
    Recorder,
    dump_history,
    dumps_history,
    load_history,
    parse_history,
)
from paxoskv.check.linearize import VERDICTS, CheckResult, KeyResult, check_history, check_key

__all__ = [
    "OPS",
    "OUTCOMES",
    "VERDICTS",
    "CheckResult",
    "HistoryError",
    "KeyResult",
    "Operation",
    "Recorder",
    "check_history",
    "check_key",
    "dump_history",
    "dumps_history",
    "load_history",
    "parse_history",
]
