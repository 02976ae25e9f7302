"""``paxoskv.client.diagnose.quorum_report``: what the members' Status answers tell."""

from __future__ import annotations

from paxoskv.client import ClientError, NodeStatus
from paxoskv.client.diagnose import quorum_report
from paxoskv.v1 import kv_pb2


def _status(node_id: int, connected: dict[int, bool]) -> kv_pb2.StatusResponse:
    st = kv_pb2.StatusResponse(node_id=node_id)
    for peer, up in sorted(connected.items()):
        st.peers.add(node_id=peer, address=f"h{peer}:1", connected=up)
    return st


def _answer(ep: str, st: kv_pb2.StatusResponse) -> NodeStatus:
    return NodeStatus(ep, st, None)


def _silent(ep: str) -> NodeStatus:
    return NodeStatus(ep, None, ClientError(f"{ep}: connection refused"))


def test_one_of_three_reachable_is_no_quorum() -> None:
    nodes = [_answer("h1:1", _status(1, {2: False, 3: False})), _silent("h2:1")]
    assert quorum_report(nodes) == "no quorum: 1 of 3 members reachable (2 down: node 2 at h2:1, node 3 at h3:1)"


def test_two_of_five_reachable_is_no_quorum_and_three_is_one() -> None:
    two = _status(1, {2: True, 3: False, 4: False, 5: False})
    assert quorum_report([_answer("h1:1", two)]) == (
        "no quorum: 2 of 5 members reachable (3 down: node 3 at h3:1, node 4 at h4:1, node 5 at h5:1)"
    )
    three = _status(1, {2: True, 3: True, 4: False, 5: False})
    assert quorum_report([_answer("h1:1", three)]) is None


def test_answers_of_several_nodes_add_up() -> None:
    # Followers do not hear each other: each alone sees no majority, together they are one.
    nodes = [_answer("h2:1", _status(2, {1: False, 3: False})), _answer("h3:1", _status(3, {1: False, 2: False}))]
    assert quorum_report(nodes) is None


def test_without_any_answer_it_cannot_tell() -> None:
    assert quorum_report([_silent("h1:1"), _silent("h2:1")]) is None
    assert quorum_report([]) is None
