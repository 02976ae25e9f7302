"""Helpers shared by the simulator tests (imported by module name: setup.cfg's
``[tool:pytest] pythonpath`` puts this directory on ``sys.path``)."""

from __future__ import annotations

import os

LONG = os.environ.get("PAXOSKV_LONG") == "1"


def seed_base(default: int) -> int:
    """The first seed of a campaign: fixed in CI (a failure is a replayable
    fact, not a flake), random and printed in long runs."""
    if LONG:
        base = int.from_bytes(os.urandom(3), "big") * 1000
        print(f"PAXOSKV_LONG: campaign seeds start at {base}")
        return base
    return default
