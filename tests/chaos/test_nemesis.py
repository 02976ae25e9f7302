"""The nemesis's schedule and partition plans, without processes."""

from __future__ import annotations

import pathlib

import click
import pytest

from paxoskv.chaos.cli import parse_duration, parse_faults
from paxoskv.chaos.cluster import Cluster
from paxoskv.chaos.nemesis import EPISODES, Nemesis, NemesisConfig, _Draw, majority_connected
from paxoskv.chaos.net import LoopbackNetwork


class NoMonitor:
    status: dict = {}

    def leader(self):
        return None


class Net(LoopbackNetwork):
    partitions_supported = True  # the plans only; nothing is applied here


def nemesis(n: int, faults: set[str], seed: int, tmp: pathlib.Path, net=None) -> Nemesis:
    net = net or Net(n, "")
    cluster = Cluster(n, net, tmp)
    return Nemesis(NemesisConfig(faults=frozenset(faults)), cluster, net, NoMonitor(), seed=seed)


def test_a_seed_gives_the_same_schedule_of_choices(tmp_path):
    a = [nemesis(3, {"kill", "pause", "partition"}, 7, tmp_path).draw() for _ in range(1)]
    n1 = nemesis(3, {"kill", "pause", "partition"}, 7, tmp_path)
    n2 = nemesis(3, {"kill", "pause", "partition"}, 7, tmp_path)
    n3 = nemesis(3, {"kill", "pause", "partition"}, 8, tmp_path)
    s1 = [n1.draw() for _ in range(50)]
    s2 = [n2.draw() for _ in range(50)]
    s3 = [n3.draw() for _ in range(50)]
    assert s1 == s2 and s1[0] == a[0]
    assert s1 != s3
    everything = {"kill", "kill-fsync", "kill-election", "pause", "isolate-leader", "split", "bridge"}
    deck = sum(copies for fam in EPISODES.values() for _, copies in fam)
    for start in range(0, 45, deck):  # every deck deals every kind
        assert {d.kind for d in s1[start : start + deck]} == everything


def test_only_the_asked_families_are_drawn(tmp_path):
    n = nemesis(3, {"pause"}, 1, tmp_path)
    assert {n.draw().kind for _ in range(20)} == {"pause"}


def test_partitions_are_skipped_with_a_message_where_impossible(tmp_path):
    net = LoopbackNetwork(3, "no namespaces here")
    n = nemesis(3, {"kill", "partition"}, 1, tmp_path, net)
    assert n.notes == ["partition faults skipped: no namespaces here"]
    assert {n.draw().kind for _ in range(50)} <= {"kill", "kill-fsync", "kill-election"}


def draw(kind: str, seed: int) -> _Draw:
    return _Draw(kind, False, 0.0, seed, 1.0, 1.0, 1.0)


@pytest.mark.parametrize("n", [3, 5])
def test_partition_plans(tmp_path, n):
    nem = nemesis(n, {"partition"}, 1, tmp_path)
    for seed in range(20):
        cut, _, targets = nem._partition_plan(draw("isolate-leader", seed))
        (t,) = targets
        assert set(cut) == {(t, j) for j in range(1, n + 1) if j != t}

        cut, _, minority = nem._partition_plan(draw("split", seed))
        assert len(minority) == n // 2
        majority = [i for i in range(1, n + 1) if i not in minority]
        assert {tuple(sorted(p)) for p in cut} == {tuple(sorted((a, b))) for a in minority for b in majority}
        assert majority_connected(range(1, n + 1), range(1, n + 1), cut)  # the majority side is a quorum
        assert not majority_connected(range(1, n + 1), majority[1:], cut)  # ... and needs all its members

        cut, _, (bridge,) = nem._partition_plan(draw("bridge", seed))
        pairs = {tuple(sorted(p)) for p in cut}
        assert all(bridge not in p for p in pairs)  # the bridge talks to everyone
        others = [i for i in range(1, n + 1) if i != bridge]
        left = {a for a, _ in cut}
        right = {b for _, b in cut}
        assert left | right == set(others) and not left & right
        assert len(pairs) == len(left) * len(right)


def test_majority_is_lost_when_no_group_of_up_nodes_is_a_quorum():
    everyone = [1, 2, 3]
    assert majority_connected(everyone, everyone, ())
    assert not majority_connected(everyone, everyone, [(1, 2), (1, 3), (2, 3)])
    assert majority_connected(everyone, everyone, [(1, 2)])  # 3 bridges 1 and 2
    assert not majority_connected(everyone, [1, 2], [(1, 2)])  # ... but not when it is down
    assert majority_connected(everyone, [1, 2], ())
    assert not majority_connected(everyone, [2], ())
    five = [1, 2, 3, 4, 5]
    assert majority_connected(five, five, [(a, b) for a in (1, 2) for b in (3, 4, 5)] + [(3, 4)])  # via 5
    assert not majority_connected(five, five, [(a, b) for a in (1, 2) for b in (3, 4, 5)] + [(3, 4), (3, 5)])
    assert majority_connected(five, [3, 4, 5], [(a, b) for a in (1, 2) for b in (3, 4, 5)])


def test_durations_and_fault_lists_parse():
    assert parse_duration("90") == 90 and parse_duration("90s") == 90
    assert parse_duration("10m") == 600 and parse_duration("1h") == 3600 and parse_duration("1.5m") == 90
    with pytest.raises(click.BadParameter):
        parse_duration("ten minutes")
    assert parse_faults("kill, pause") == {"kill", "pause"}
    assert parse_faults("none") == frozenset()
    with pytest.raises(click.BadParameter, match="unknown fault"):
        parse_faults("kill,meteor")
