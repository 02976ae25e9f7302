"""The nemesis's actions and the clients' retry rules, against stand-ins."""

from __future__ import annotations

import random
from typing import Any

from paxoskv.replica.calls import Call
from paxoskv.replica.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, Unavailable, Unimplemented
from paxoskv.sim.clients import Client, ClientParams, Request
from paxoskv.sim.history import FAIL, GET, OK, PUT, UNKNOWN, Operation
from paxoskv.sim.nemesis import FAULT_PROFILES, Nemesis
from paxoskv.sim.network import DelayProfile, Network
from paxoskv.sim.scheduler import Scheduler
from paxoskv.v1 import kv_pb2


class FakeCluster:
    def __init__(self, n: int, leader: int | None = 1) -> None:
        self.scheduler = Scheduler()
        self.node_ids = tuple(range(1, n + 1))
        self.network = Network(
            self.scheduler,
            random.Random(1),
            DelayProfile("d", 1, 1),
            loss=0.0,
            duplicate=0.0,
            deliver=lambda m: None,
        )
        self.up = set(self.node_ids)
        self.leader = leader
        self.events: list[tuple[str, int]] = []

    def is_up(self, node_id: int) -> bool:
        return node_id in self.up

    def leader_id(self) -> int | None:
        return self.leader

    def crash(self, node_id: int, power_loss: bool) -> None:
        self.up.discard(node_id)
        self.events.append(("crash", node_id))

    def restart(self, node_id: int) -> None:
        self.up.add(node_id)
        self.events.append(("restart", node_id))

    def pause(self, node_id: int, duration_us: int) -> None:
        self.events.append(("pause", node_id))

    def disk_full(self, node_id: int, duration_us: int) -> None:
        self.events.append(("disk_full", node_id))

    def note(self, text: str) -> None:
        pass


def groups_of(cuts: frozenset[tuple[int, int]], ids: tuple[int, ...]) -> list[set[int]]:
    """Connected components of the links that are not cut (both directions)."""
    left = set(ids)
    comps = []
    while left:
        todo = [left.pop()]
        comp = set(todo)
        while todo:
            a = todo.pop()
            for b in list(left):
                if (a, b) not in cuts and (b, a) not in cuts:
                    left.discard(b)
                    comp.add(b)
                    todo.append(b)
        comps.append(comp)
    return comps


def test_minority_partition_leaves_a_connected_majority() -> None:
    for seed in range(20):
        c = FakeCluster(5)
        Nemesis(c, random.Random(seed), FAULT_PROFILES["full"])._minority()
        sizes = sorted(len(g) for g in groups_of(c.network.cuts, c.node_ids))
        assert len(sizes) == 2 and sizes[-1] >= 3, sizes


def test_isolate_leader_cuts_the_leader_both_ways() -> None:
    c = FakeCluster(3, leader=2)
    Nemesis(c, random.Random(1), FAULT_PROFILES["full"])._isolate_leader()
    assert c.network.cuts == {(2, 1), (2, 3), (1, 2), (3, 2)}


def test_one_way_partitions_are_asymmetric() -> None:
    for seed in range(20):
        c = FakeCluster(3)
        Nemesis(c, random.Random(seed), FAULT_PROFILES["full"])._one_way()
        cuts = c.network.cuts
        assert cuts and all((b, a) not in cuts for a, b in cuts), cuts


def test_flapping_toggles_and_stop_ends_it() -> None:
    c = FakeCluster(3)
    nem = Nemesis(c, random.Random(3), FAULT_PROFILES["full"])
    nem.active = True
    nem._flap()
    node = nem._flapping
    assert node is not None and c.network.flap_cuts
    states = []
    for _ in range(6):
        c.scheduler.step()
        states.append(bool(c.network.flap_cuts))
    assert True in states and False in states
    nem.stop()
    assert not c.network.flap_cuts
    while c.scheduler.step():
        pass
    assert not c.network.flap_cuts and nem._flapping is None


def test_crashes_respect_down_max_and_restart_after_downtime() -> None:
    c = FakeCluster(5)
    nem = Nemesis(c, random.Random(5), FAULT_PROFILES["full"])
    nem.down_max = 2
    nem.restart_probability = 1.0
    nem.active = True
    for _ in range(10):
        nem._crash()
    assert len(c.up) == 3
    while c.scheduler.step():
        pass
    assert c.up == set(c.node_ids)
    assert [e for e, _ in c.events].count("restart") == 2


def test_profiles_limit_the_actions() -> None:
    c = FakeCluster(3)
    assert Nemesis(c, random.Random(1), FAULT_PROFILES["none"])._actions == []
    names = {n for n, _ in Nemesis(c, random.Random(1), FAULT_PROFILES["crash"])._actions}
    assert names == {"crash", "crash_leader", "restart", "disk_full", "pause", "pause_leader"}
    names = {n for n, _ in Nemesis(c, random.Random(1), FAULT_PROFILES["partition"])._actions}
    assert "crash" not in names and "isolate_leader" in names


# ---- Clients -------------------------------------------------------------------


class FakeEnv:
    def __init__(self, ops: int, give_up_allowed: bool = True) -> None:
        self.scheduler = Scheduler()
        self.node_ids = (1, 2, 3)
        self.keys = (b"k",)
        self.history: list[Operation] = []
        self.trace = None
        self.ops_left = ops
        self.requests: list[Request] = []
        self.give_up_allowed = give_up_allowed
        self.violations: list[str] = []

    def take_op(self) -> bool:
        if self.ops_left <= 0:
            return False
        self.ops_left -= 1
        return True

    def may_give_up(self) -> bool:
        return self.give_up_allowed

    def send_request(self, req: Request) -> None:
        self.requests.append(req)

    def client_idle(self, client: Client) -> None:
        pass

    def violation(self, kind: str, detail: str) -> None:
        self.violations.append(kind)

    def note(self, text: str) -> None:
        pass


def params(give_up: int = 0, puts_only: bool = True, **more: Any) -> ClientParams:
    fields: dict[str, Any] = dict(
        think_min_us=0,
        think_max_us=0,
        timeout_us=100_000,
        backoff_base_us=1_000,
        backoff_max_us=10_000,
        give_up_attempts=give_up,
        put_weight=1,
        get_weight=0 if puts_only else 1,
        delete_weight=0,
    )
    fields.update(more)
    return ClientParams(**fields)


def answer(*results: object) -> Call:
    """The node layer's finished call with these answers."""
    call = Call(len(results), lambda _: None, DeadlineExceeded("late"))
    for i, r in enumerate(results):
        call.set(i, r)
    return call


def failed(error: Exception) -> Call:
    call = Call(1, lambda _: None, DeadlineExceeded("late"))
    call.fail(error)  # type: ignore[arg-type]
    return call


OK_RESULT = kv_pb2.CommandResult(code=kv_pb2.CommandResult.OK, index=3, existed=True)
REFUSED = Unavailable("no leader is known; no leader known", proposed=False)


def run_until(env: FakeEnv, cond: Any) -> None:
    while not cond():
        assert env.scheduler.step(), "ran out of events"


def test_retries_keep_the_sequence_and_go_elsewhere_after_a_refusal() -> None:
    env = FakeEnv(ops=1)
    c = Client(env, "c1", random.Random(1), params())
    c.start()
    run_until(env, lambda: len(env.requests) == 1)
    first = env.requests[0]
    c.on_answer((first.call_id, first.token, answer(REFUSED)))
    run_until(env, lambda: len(env.requests) == 2)
    second = env.requests[1]
    assert second.call_id == first.call_id and second.payload is first.payload
    assert second.payload.request.sequence == 1 and env.history[0].sequence == 1
    assert second.node_id != first.node_id and second.token == 2
    assert not env.history[0].maybe_applied  # a refusal means it never entered a log


def test_a_timeout_marks_the_write_maybe_applied_and_an_old_answer_completes_it() -> None:
    env = FakeEnv(ops=1)
    c = Client(env, "c1", random.Random(1), params())
    c.start()
    run_until(env, lambda: len(env.requests) == 2)  # the first attempt timed out
    op = env.history[0]
    assert op.maybe_applied
    c.on_answer((env.requests[0].call_id, 1, answer(OK_RESULT)))  # the answer to attempt 1, late
    assert op.outcome == OK and op.existed is True and op.return_us is not None


def test_refusals_from_stale_attempts_are_ignored() -> None:
    env = FakeEnv(ops=1)
    c = Client(env, "c1", random.Random(1), params())
    c.start()
    run_until(env, lambda: len(env.requests) == 2)
    op = env.history[0]
    c.on_answer((env.requests[0].call_id, 1, answer(REFUSED)))  # attempt 1 is over already
    pending = env.scheduler.pending()
    assert op.attempts == 2 and env.scheduler.pending() == pending


def test_giving_up_gives_unknown_or_fail_and_a_new_sequence() -> None:
    env = FakeEnv(ops=2)
    c = Client(env, "c1", random.Random(1), params(give_up=2))
    c.start()
    run_until(env, lambda: len(env.history) == 2)
    first, second = env.history
    assert first.outcome == UNKNOWN and first.return_us is None  # attempts timed out
    assert second.sequence == 2
    env2 = FakeEnv(ops=1)
    c2 = Client(env2, "c2", random.Random(1), params(give_up=2))
    c2.start()
    for _ in range(2):
        run_until(env2, lambda n=len(env2.requests): len(env2.requests) > n)
        r = env2.requests[-1]
        c2.on_answer((r.call_id, r.token, answer(REFUSED)))
    assert env2.history[0].outcome == FAIL  # refused everywhere: certainly no effect


def test_no_giving_up_in_the_liveness_phase() -> None:
    env = FakeEnv(ops=1, give_up_allowed=False)
    c = Client(env, "c1", random.Random(1), params(give_up=1))
    c.start()
    run_until(env, lambda: len(env.requests) == 5)
    assert env.history[0].outcome == "pending"


def test_reads_answer_with_the_value() -> None:
    env = FakeEnv(ops=20)
    c = Client(env, "c1", random.Random(4), params(puts_only=False, put_weight=0))
    c.start()
    run_until(env, lambda: len(env.requests) == 1)
    r = env.requests[0]
    assert r.form == "get" and r.payload.key == b"k"
    c.on_answer((r.call_id, r.token, answer((b"v", 7))))
    op = env.history[0]
    assert op.kind == GET and op.outcome == OK and op.value == b"v"


def test_stale_sequence_for_the_current_write_is_a_violation() -> None:
    env = FakeEnv(ops=1)
    c = Client(env, "c1", random.Random(1), params())
    c.start()
    run_until(env, lambda: len(env.requests) == 1)
    r = env.requests[0]
    c.on_answer((r.call_id, r.token, answer(FailedPrecondition("sequence 1 of client 'c1' is older"))))
    assert env.violations == ["exactly-once"]


def test_a_packed_batch_is_one_identity_and_a_retry_resends_every_write() -> None:
    for seed in range(100):  # a first call that packs writes and gets
        env = FakeEnv(ops=1)
        c = Client(env, "c1", random.Random(seed), params(puts_only=False, packed_weight=1000, ops_max=4))
        c.start()
        run_until(env, lambda: len(env.requests) == 1)
        first = env.requests[0]
        kinds = {o.kind for o in env.history}
        if first.form == "packed" and kinds == {PUT, GET}:
            break
    else:
        raise AssertionError("no packed call of puts and gets in 100 seeds")
    ops, header = first.payload
    writes = [o for o in env.history if o.kind != GET]
    assert first.form == "packed" and header.client_id == "c1" and header.sequence == 1
    assert [o.sequence for o in writes] == list(range(1, len(writes) + 1))
    assert all(not op.put.HasField("request") for op in ops if op.WhichOneof("op") == "put")
    # Only the gets are answered; every write waits: the retry carries all of them.
    results = [(b"x", 1) if op.WhichOneof("op") == "get" else REFUSED for op in ops]
    c.on_answer((first.call_id, first.token, answer(*results)))
    run_until(env, lambda: len(env.requests) == 2)
    again_ops, again_header = env.requests[1].payload
    assert again_header == header and len(again_ops) == len(writes)


def test_a_packed_batch_refused_unimplemented_at_first_goes_per_op_with_a_session_each() -> None:
    env = FakeEnv(ops=1)
    c = Client(env, "c1", random.Random(3), params(put_weight=1, packed_weight=1000, ops_max=3))
    c.start()
    run_until(env, lambda: len(env.requests) == 1)
    first = env.requests[0]
    assert first.form == "packed"
    c.on_answer((first.call_id, first.token, failed(Unimplemented("not every node takes packed batches"))))
    run_until(env, lambda: len(env.requests) == 2)
    second = env.requests[1]
    ops, header = second.payload
    assert second.form == "ops" and header is None
    ids = [op.put.request.client_id for op in ops]
    assert len(set(ids)) == len(ids) and all(op.put.request.sequence == 1 for op in ops)


def test_an_invalid_request_drawn_on_purpose_must_be_refused() -> None:
    env = FakeEnv(ops=1)
    c = Client(env, "c1", random.Random(1), params(invalid_share=1.0))
    c.start()
    run_until(env, lambda: len(env.requests) == 1)
    r = env.requests[0]
    c.on_answer((r.call_id, r.token, answer(OK_RESULT)))
    assert env.violations == ["invalid"]
    env2 = FakeEnv(ops=1)
    c2 = Client(env2, "c1", random.Random(1), params(invalid_share=1.0))
    c2.start()
    run_until(env2, lambda: len(env2.requests) == 1)
    r = env2.requests[0]
    c2.on_answer((r.call_id, r.token, answer(InvalidArgument("key is empty"))))
    assert env2.violations == [] and env2.history[0].outcome == FAIL


def test_an_anonymous_write_is_never_retried_once_it_may_have_been_proposed() -> None:
    env = FakeEnv(ops=1)
    c = Client(env, "c1", random.Random(1), params(anonymous_share=1.0))
    assert c.anonymous
    c.start()
    run_until(env, lambda: len(env.requests) == 1)
    r = env.requests[0]
    assert not r.payload.HasField("request")
    c.on_answer((r.call_id, r.token, answer(Unavailable("leader changed; no leader known"))))
    assert env.history[0].outcome == UNKNOWN and not c.busy
