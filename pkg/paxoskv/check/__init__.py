"""Linearizability checker for recorded key-value histories.

Build a history in memory (``Operation`` values, or a ``Recorder``), or load one
(``load_history``), then ``check_history(ops, time_budget_s=..., step_budget=...)``.
The verdict is ``"ok"``, ``"violation"`` (with an explanation naming the key and
the operation that cannot be linearized) or ``"unknown"`` (budget exhausted).
See :mod:`paxoskv.check.history` for the history rules and
:mod:`paxoskv.check.linearize` for the algorithm. etcd-API histories (Txn
with compares, multi-key writes, Range at a revision: ``TxnOp``) are checked
as one whole by ``check_txn_history`` (:mod:`paxoskv.check.txn`).
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
from paxoskv.check.txn import TxnCheckResult, TxnModel, TxnOp, check_txn_history

__all__ = [
    "OPS",
    "OUTCOMES",
    "VERDICTS",
    "CheckResult",
    "HistoryError",
    "KeyResult",
    "Operation",
    "Recorder",
    "TxnCheckResult",
    "TxnModel",
    "TxnOp",
    "check_history",
    "check_key",
    "check_txn_history",
    "dump_history",
    "dumps_history",
    "load_history",
    "parse_history",
]
