"""``bench/floor.py``: three replicas in one process, the floor of a put.

It prints figures that depend on the machine, so no figure is asserted
here; what is checked is that it does the work it reports (every put
applied on all three replicas, the same state on each) and that it refuses
to report when they disagree.
"""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "bench" / "floor.py"


def _load():
    spec = importlib.util.spec_from_file_location("paxoskv_bench_floor", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "extra", [["--reads"], ["--codec", "--storage", "leveldb"]], ids=["memory-reads", "codec-leveldb"]
)
def test_floor_prints_a_row_per_slot_size_and_checks_the_replicas(extra):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--puts", "140", "--slot", "1", "--slot", "7", *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    rows = [line.split() for line in lines if line.strip() and line.split()[0].isdigit()]
    puts, reads = rows[:2], rows[2:]
    assert [r[0] for r in puts] == ["1", "7"]
    assert [int(r[1]) for r in puts] == [140, 140]
    assert all(1.0 <= float(r[2]) <= int(r[0]) for r in puts)  # puts per slot
    assert all(float(r[3]) > 0 for r in puts)
    if "--reads" in extra:  # every read was served (the run fails otherwise)
        assert [(r[0], int(r[1])) for r in reads] == [("1", 140), ("7", 140)]
        assert all(float(r[2]) > 0 for r in reads)
    else:
        assert reads == []
    # 140 rounds of one put (a slot each), then 20 rounds of 7 entering at
    # three nodes (one to three slots each), plus the new leader's no-op.
    applied = int(lines[-1].split("applied ")[1].split()[0])
    assert 161 <= applied <= 205, lines[-1]
    assert lines[-1].endswith("hold the same state")


def test_floor_refuses_replicas_that_disagree_or_missed_a_put():
    floor = _load()
    f = floor.Floor(storage="memory", wire=False, base_dir=None)
    try:
        f.elect()
        f.round(7, b"v")
        f.check()  # they agree
        leader = next(r for r in f.replicas.values() if r.core.leader_id == r.core.id)
        follower = next(r for r in f.replicas.values() if r is not leader)
        values = follower.sm.store._values  # the MVCC store's current values (its hot read)
        kept = values[b"key00003"]
        values[b"key00003"] = b"tampered"
        with pytest.raises(SystemExit, match="state differs"):
            f.check()
        values[b"key00003"] = kept
        f.check()
        f.sequences[5] += 1  # a put that was never proposed, so never applied
        with pytest.raises(SystemExit, match="has not applied put 2 of session 5"):
            f.check()
        f.read_round(3)  # one read at each node, all served
        follower.read = lambda read_id: None  # a read that is never asked for
        with pytest.raises(SystemExit, match="2 of 3 reads served"):
            f.read_round(3)
    finally:
        f.close()


def test_floor_rejects_bad_options():
    run = subprocess.run([sys.executable, str(SCRIPT), "--slot", "0"], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2
    assert "--slot and --puts must be at least 1" in run.stderr
