"""The deterministic cluster simulator (see :mod:`paxoskv.sim.simulation`).

``run_seed(seed, nodes=3)`` runs one seed and returns a ``SimResult``; the
``paxoskv sim`` command (:mod:`paxoskv.sim.cli`) runs ranges of seeds and
prints the command that replays a failing one.
"""

from __future__ import annotations

from paxoskv.sim.checks import Violation
from paxoskv.sim.nemesis import FAULT_PROFILES
from paxoskv.sim.simulation import (
    FAULTS_DEFAULT,
    LIVENESS_BOUND_US,
    OPS_DEFAULT,
    SimConfig,
    SimResult,
    Simulation,
    run_seed,
)

__all__ = [
    "FAULTS_DEFAULT",
    "FAULT_PROFILES",
    "LIVENESS_BOUND_US",
    "OPS_DEFAULT",
    "SimConfig",
    "SimResult",
    "Simulation",
    "Violation",
    "run_seed",
]
