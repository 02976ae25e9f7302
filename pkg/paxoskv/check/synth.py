"""Synthetic key-value histories that are linearizable by construction.

Rules
-----
Sequential clients issue random operations with random, overlapping timing.
Each operation that takes effect gets a linearization point: inside its
interval if ``ok``; anywhere after its call (possibly long after the client
gave up) if ``unknown`` and the coin says it happened. ``fail`` operations and
unhappened ``unknown`` ones take no effect. Applying the effective operations
to a plain dict in linearization-point order yields every ``ok`` output, so the
history is linearizable by construction. Put values are unique
(``"<client>-<n>"``). Used by the checker's tests and its throughput figure;
it is also a ready-made input for anyone testing code that consumes
histories. Deterministic for a given ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from paxoskv.check.history import Operation

__all__ = ["SynthConfig", "random_history"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SynthConfig:
    clients: int = 10
    keys: int = 5
    ops: int = 1000
    p_get: float = 0.5
    p_delete: float = 0.1  # the rest are puts
    p_unknown: float = 0.0
    p_unknown_happened: float = 0.5
    p_fail: float = 0.0
    p_existed_reported: float = 0.5  # an ok put/delete reports output.existed
    think_s: float = 1.0  # mean pause between a client's operations
    latency_s: float = 3.0  # mean duration of an operation
    unknown_delay_s: float = 30.0  # how late an unknown op may take effect


def random_history(rng: random.Random, config: SynthConfig = SynthConfig()) -> list[Operation]:
    """A linearizable history of ``config.ops`` operations, sorted by call time."""
    clock = [rng.uniform(0.0, config.think_s) for _ in range(config.clients)]
    counters = [0] * config.clients
    plan: list[tuple[float, int, dict]] = []  # (linearization point, op index, fields)
    fields_list: list[dict] = []
    for i in range(config.ops):
        c = min(range(config.clients), key=lambda j: clock[j])
        call = clock[c]
        ret = call + rng.expovariate(1.0 / config.latency_s)
        clock[c] = ret + rng.expovariate(1.0 / config.think_s)
        roll = rng.random()
        op = "get" if roll < config.p_get else "delete" if roll < config.p_get + config.p_delete else "put"
        counters[c] += 1
        fields = {
            "id": i, "client": f"c{c}", "op": op, "key": f"k{rng.randrange(config.keys)}",
            "value": f"c{c}-{counters[c]}" if op == "put" else None,
            "call": round(call, 6), "ret": round(ret, 6), "outcome": "ok",
        }
        fields_list.append(fields)
        roll = rng.random()
        if roll < config.p_fail:
            fields["outcome"] = "fail"
            continue
        if roll < config.p_fail + config.p_unknown:
            fields["outcome"] = "unknown"
            if rng.random() < 0.5:
                fields["ret"] = None
            if rng.random() >= config.p_unknown_happened:
                continue
            point = call + rng.uniform(0.0, config.unknown_delay_s)
        else:
            point = rng.uniform(fields["call"], fields["ret"])
        plan.append((point, i, fields))
    plan.sort(key=lambda item: (item[0], item[1]))
    state: dict[str, str] = {}
    for _point, _i, fields in plan:
        key = fields["key"]
        existed = key in state
        if fields["op"] == "get":
            fields["output_value"] = state.get(key)
        else:
            if fields["op"] == "put":
                state[key] = fields["value"]
            else:
                state.pop(key, None)
            if rng.random() < config.p_existed_reported:
                fields["output_existed"] = existed
    ops = [Operation(**fields) for fields in fields_list]
    ops.sort(key=lambda o: (o.call, o.id))
    return ops
