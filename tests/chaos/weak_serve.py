"""TEST ONLY: ``paxoskv serve`` with a deliberately broken read path.

Linearizable reads are answered from the node's local applied state, with no
quorum round and no forwarding to the leader: a follower that lags, a paused
leader that was replaced, or a node cut off from the majority answers with
stale data. The chaos campaign must catch it. This module is reached only by
the chaos tests (``CampaignConfig.node_command``); no CLI flag exposes it.

Run as ``python weak_serve.py <paxoskv serve flags>``.
"""

from __future__ import annotations

from paxoskv.server.node import Node

_linearizable_get = Node.get


async def _local_get(self: Node, key: bytes, *, serializable: bool = False, timeout_s: float):
    return await _linearizable_get(self, key, serializable=True, timeout_s=timeout_s)


def main() -> None:
    Node.get = _local_get  # type: ignore[method-assign]
    from paxoskv.server.cli import serve_cmd

    serve_cmd(prog_name="weak-serve")


if __name__ == "__main__":
    main()
