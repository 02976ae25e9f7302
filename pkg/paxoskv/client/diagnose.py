"""Why a cluster could not serve a request, from its members' Status answers.

Rules:

- ``quorum_report(nodes)`` reads the ``Maintenance.Status`` answers of the
  endpoints that answered (``NodeStatus``): the members are every node they
  name (themselves and their peers); a member is reachable if it answered or
  an answering node heard from it within the election timeout (its peer entry
  says ``connected``).
- When fewer than a majority of the members are reachable it says so, in one
  line: ``no quorum: 1 of 3 members reachable (2 down: node 2 at HOST:PORT,
  node 3 at HOST:PORT)``. Otherwise, or when no endpoint answered, it cannot
  tell and returns None: the caller keeps the error it had (which then names
  the endpoints and what each said).
- "down" is the answering nodes' view: a member cut off by the network looks
  the same as one that stopped.
"""

from __future__ import annotations

from collections.abc import Sequence

from paxoskv.client.client import NodeStatus

__all__ = ["quorum_report"]


def quorum_report(nodes: Sequence[NodeStatus]) -> str | None:
    """"no quorum: ..." when the answering nodes see no majority; None if they do
    or none answered (see the module rules)."""
    answered = [n for n in nodes if n.status is not None]
    if not answered:
        return None
    members: dict[int, str] = {}
    reachable: set[int] = set()
    for n in answered:
        st = n.status
        assert st is not None
        members.setdefault(st.node_id, n.endpoint)
        reachable.add(st.node_id)
        for p in st.peers:
            members[p.node_id] = p.address or members.get(p.node_id, "?")
            if p.connected:
                reachable.add(p.node_id)
    quorum = len(members) // 2 + 1
    if len(reachable) >= quorum:
        return None
    down = sorted(set(members) - reachable)
    names = ", ".join(f"node {i} at {members[i]}" for i in down)
    return f"no quorum: {len(reachable)} of {len(members)} members reachable ({len(down)} down: {names})"
