"""Jepsen-style fault campaigns against real paxoskv processes.

A campaign starts ``paxoskv serve`` processes (each in its own network
namespace when partitions are wanted and the machine allows it), runs
concurrent clients that record every operation, breaks things on a seeded
schedule (SIGKILL, SIGSTOP, partitions), then heals, waits for convergence,
reads every key from every node and checks the whole outcome: the history is
linearizable (:mod:`paxoskv.check`), no acknowledged write is lost, every
node holds the same state, and no node logged an assertion or a traceback.

Modules: :mod:`~paxoskv.chaos.net` (namespaces, partitions),
:mod:`~paxoskv.chaos.cluster` (processes, by PID),
:mod:`~paxoskv.chaos.workload` (clients, history),
:mod:`~paxoskv.chaos.monitor` (leader watch), :mod:`~paxoskv.chaos.nemesis`
(faults), :mod:`~paxoskv.chaos.verify` (post-run checks),
:mod:`~paxoskv.chaos.report` (summary, files),
:mod:`~paxoskv.chaos.campaign` (the whole run), :mod:`~paxoskv.chaos.cli`
(``paxoskv chaos``). See docs/chaos.md.
"""

from __future__ import annotations

from paxoskv.chaos.campaign import CampaignConfig, CampaignResult, run_campaign
from paxoskv.chaos.nemesis import FAULT_FAMILIES, NemesisConfig
from paxoskv.chaos.workload import WorkloadConfig

__all__ = [
    "FAULT_FAMILIES",
    "CampaignConfig",
    "CampaignResult",
    "NemesisConfig",
    "WorkloadConfig",
    "run_campaign",
]
