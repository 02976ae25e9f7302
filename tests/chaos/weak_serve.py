"""TEST ONLY: ``paxoskv serve`` with a deliberately broken read path.

Linearizable reads are answered from the node's local applied state, with no
quorum round and no forwarding to the leader: a follower that lags, a paused
leader that was replaced, or a node cut off from the majority answers with
stale data. The chaos campaign must catch it. This module is reached only by
the chaos tests (``CampaignConfig.node_command``); no CLI flag exposes it.

Run as ``python weak_serve.py <paxoskv serve flags>``.
"""

from __future__ import annotations

from paxoskv.replica.node import ReplicaNode

_read = ReplicaNode._read


def _local_read(self: ReplicaNode, call, keys, serializable: bool) -> None:  # noqa: ANN001
    _read(self, call, keys, True)


def main() -> None:
    ReplicaNode._read = _local_read  # type: ignore[method-assign]
    from paxoskv.server.cli import serve_cmd

    serve_cmd(prog_name="weak-serve")


if __name__ == "__main__":
    main()
