"""The simulated network and the scheduler, on their own."""

from __future__ import annotations

import random

from paxoskv.paxos.types import Ballot, Heartbeat, Message
from paxoskv.sim.network import DelayProfile, Network
from paxoskv.sim.scheduler import Scheduler

FIXED = DelayProfile("fixed", min_us=1_000, mean_us=1)


def hb(frm: int, to: int, commit: int = 0) -> Heartbeat:
    return Heartbeat(frm=frm, to=to, ballot=Ballot(1, frm), commit=commit, read_seq=0)


def make(
    loss: float = 0.0,
    duplicate: float = 0.0,
    profile: DelayProfile = FIXED,
    wire: bool = False,
    seed: int = 1,
):
    sched = Scheduler()
    got: list[tuple[int, Message]] = []
    errors: list[str] = []
    net = Network(
        sched,
        random.Random(seed),
        profile,
        loss=loss,
        duplicate=duplicate,
        deliver=lambda m: got.append((sched.now_us, m)),
        wire=wire,
        on_wire_error=errors.append,
    )
    return sched, net, got, errors


def test_scheduler_runs_events_in_time_order_and_fifo_within_a_time() -> None:
    sched = Scheduler()
    seen: list[str] = []
    sched.at(20, seen.append, "c")
    sched.at(10, seen.append, "a")
    sched.at(10, seen.append, "b")
    sched.after(5, seen.append, "first")
    sched.run()
    assert seen == ["first", "a", "b", "c"]
    assert sched.now_us == 20 and sched.events_run == 4


def test_scheduler_stops_when_an_event_says_so() -> None:
    sched = Scheduler()

    def stop(_: object) -> None:
        sched.stopped = True

    sched.at(1, stop)
    sched.at(2, lambda _: None)
    sched.run()
    assert sched.now_us == 1 and sched.pending() == 1 and not sched.stopped


def test_delivery_after_the_delay() -> None:
    sched, net, got, _ = make()
    net.send(hb(1, 2))
    sched.run()
    assert len(got) == 1 and got[0][0] >= 1_000


def test_asymmetric_cut_drops_one_direction_only() -> None:
    sched, net, got, _ = make()
    net.set_cuts([(1, 2)])  # 2 does not hear 1; 1 still hears 2
    net.send(hb(1, 2))
    net.send(hb(2, 1))
    sched.run()
    assert [(m.frm, m.to) for _, m in got] == [(2, 1)]
    assert net.stats.cut == 1


def test_a_cut_made_while_a_message_is_in_flight_loses_it() -> None:
    sched, net, got, _ = make()
    net.send(hb(1, 2))
    net.set_cuts([(1, 2)])
    sched.run()
    assert got == [] and net.stats.cut == 1


def test_flap_cuts_add_to_partition_cuts_and_heal_clears_both() -> None:
    sched, net, got, _ = make()
    net.set_cuts([(1, 2)])
    net.set_flap_cuts([(2, 1)])
    assert net.is_cut(1, 2) and net.is_cut(2, 1)
    net.set_cuts([])
    assert not net.is_cut(1, 2) and net.is_cut(2, 1)
    net.heal()
    assert not net.is_cut(2, 1)


def test_loss_rate_is_about_what_was_asked() -> None:
    sched, net, got, _ = make(loss=0.3)
    for i in range(2_000):
        net.send(hb(1, 2, i))
    sched.run()
    assert 500 < net.stats.lost < 700
    assert len(got) + net.stats.lost == 2_000


def test_duplicates_arrive_twice_and_calm_stops_loss_and_duplication() -> None:
    sched, net, got, _ = make(duplicate=0.5, loss=0.2)
    for i in range(200):
        net.send(hb(1, 2, i))
    sched.run()
    assert net.stats.duplicated > 50
    assert len(got) == 200 - net.stats.lost + net.stats.duplicated
    net.calm()
    got.clear()
    for i in range(200):
        net.send(hb(1, 2, i))
    sched.run()
    assert len(got) == 200


def test_independent_delays_reorder_messages() -> None:
    sched, net, got, _ = make(profile=DelayProfile("spread", min_us=0, mean_us=5_000))
    for i in range(100):
        net.send(hb(1, 2, i))
    sched.run()
    order = [m.commit for _, m in got]
    assert sorted(order) == list(range(100)) and order != sorted(order)


def test_spikes_delay_some_messages_a_lot() -> None:
    spiky = DelayProfile(
        "spiky",
        min_us=100,
        mean_us=100,
        spike_probability=0.2,
        spike_min_us=50_000,
        spike_max_us=60_000,
    )
    sched, net, got, _ = make(profile=spiky)
    for i in range(200):
        net.send(hb(1, 2, i))
    sched.run()
    late = [t for t, _ in got if t >= 50_000]
    assert 10 < len(late) < 80


def test_wire_mode_carries_a_decoded_copy() -> None:
    sched, net, got, errors = make(wire=True)
    sent = hb(1, 2, 7)
    net.send(sent)
    sched.run()
    assert errors == []
    ((_, received),) = got
    assert received == sent and received is not sent


def test_wire_mode_reports_a_message_the_codec_cannot_carry() -> None:
    sched, net, got, errors = make(wire=True)
    net.send(hb(1, 2**33))  # no uint32 node id on the wire
    sched.run()
    assert got == [] and len(errors) == 1 and "does not survive the wire" in errors[0]


def test_same_seed_same_delays() -> None:
    runs = []
    for _ in range(2):
        sched, net, got, _ = make(
            loss=0.1, duplicate=0.1, seed=9, profile=DelayProfile("x", min_us=10, mean_us=3_000)
        )
        for i in range(300):
            net.send(hb(1, 2, i))
        sched.run()
        runs.append([(t, m.commit) for t, m in got])
    assert runs[0] == runs[1]
