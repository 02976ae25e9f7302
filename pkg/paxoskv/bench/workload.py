"""What a benchmark asks for: the mix of reads and writes, the keys, the values.

Rules:

- A mix is a read share in [0, 1]; the named ones are ``write-only`` (0),
  ``read-only`` (1), ``50-50`` (0.5) and ``95-5`` (0.95: 95 % reads, the
  YCSB-B shape).
- Keys are ``bench/`` plus a zero-padded number in ``[0, keys)``, chosen
  uniformly by each slot's own ``random.Random`` (seeded from the run seed,
  the process and the slot), so a run's sequence of requests is reproducible
  even though their timing is not. The picker gives key *indices*
  (``key_name`` makes the key); the ops of one batch have distinct keys
  (etcd refuses a Txn that writes a key twice, and a batch should not be
  cheaper for repeating itself).
- A value is ``value_bytes`` random bytes made once per process (the bytes
  do not matter to either store; their length does).
- Reads are linearizable unless ``serializable`` is set, for every target.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MIXES: dict[str, float] = {
    "write-only": 0.0,
    "read-only": 1.0,
    "50-50": 0.5,
    "95-5": 0.95,
}

KEY_PREFIX = b"bench/"


def parse_mix(text: str) -> float:
    """A mix name, or a read share written as a number between 0 and 1."""
    if text in MIXES:
        return MIXES[text]
    try:
        share = float(text)
    except ValueError:
        raise ValueError(f"unknown mix {text!r}: use one of {', '.join(MIXES)} or a read share like 0.3") from None
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"read share {share} is not between 0 and 1")
    return share


def mix_name(read_share: float) -> str:
    for name, share in MIXES.items():
        if share == read_share:
            return name
    return f"{read_share:g} reads"


def key_name(index: int) -> bytes:
    return KEY_PREFIX + b"%08d" % index


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    read_share: float = 0.0
    keys: int = 10_000
    value_bytes: int = 100
    serializable: bool = False
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.read_share <= 1.0:
            raise ValueError(f"read_share {self.read_share} not in [0, 1]")
        if self.keys < 1:
            raise ValueError(f"keys must be >= 1, not {self.keys}")
        if self.value_bytes < 0:
            raise ValueError(f"value_bytes must be >= 0, not {self.value_bytes}")

    def picker(self, process_index: int, slot_index: int) -> OpPicker:
        return OpPicker(self, random.Random(hash((self.seed, process_index, slot_index))))


class OpPicker:
    """The next operation of one slot: ``(is_read, key)``."""

    __slots__ = ("_rng", "_keys", "_read_share")

    def __init__(self, workload: Workload, rng: random.Random) -> None:
        self._rng = rng
        self._keys = workload.keys
        self._read_share = workload.read_share

    def next(self) -> tuple[bool, int]:
        rng = self._rng
        is_read = self._read_share >= 1.0 or (self._read_share > 0.0 and rng.random() < self._read_share)
        return is_read, rng.randrange(self._keys)

    def batch(self, n: int) -> list[tuple[bool, int]]:
        """``n`` operations on ``n`` distinct keys (``n`` <= keys)."""
        rng = self._rng
        share = self._read_share
        keys = rng.sample(range(self._keys), n)
        if share <= 0.0:
            return [(False, k) for k in keys]
        if share >= 1.0:
            return [(True, k) for k in keys]
        return [(rng.random() < share, k) for k in keys]
