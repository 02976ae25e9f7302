"""Run by test_aetcd_client.py in a process of its own: aetcd, a Python etcd v3
client from PyPI, drives put/get/range/txn/delete/compact against the
endpoints given (one aetcd Client per endpoint) and prints what it saw as
one JSON object. It never imports paxoskv: aetcd's generated etcdserverpb
and paxoskv's cannot share one protobuf descriptor pool.

Usage: python aetcd_session.py HOST:PORT [HOST:PORT ...]
"""

from __future__ import annotations

import asyncio
import json
import sys

import aetcd
import aetcd.rpc as rpc


def kv(item) -> list:  # noqa: ANN001 - an aetcd KeyValue
    return [item.key.decode(), item.value.decode(), item.create_revision, item.mod_revision, item.version]


async def main(endpoints: list[str]) -> dict:
    clients = []
    for ep in endpoints:
        host, _, port = ep.rpartition(":")
        clients.append(aetcd.Client(host=host, port=int(port), timeout=10))
    a, b, c = (clients * 3)[:3]
    seen: dict = {}
    try:
        first = await a.put(b"ae/k1", b"v1")
        seen["put_revision"] = first.header.revision
        got = await b.get(b"ae/k1")
        seen["get"] = kv(got)
        seen["get_member"] = got.header.member_id
        await a.put(b"ae/k2", b"v2")
        await a.put(b"ae/k3", b"v3")
        seen["prefix"] = [kv(x) for x in await c.get_prefix(b"ae/")]
        seen["range"] = [kv(x) for x in await b.get_range(b"ae/k1", b"ae/k3")]
        seen["missing"] = await c.get(b"ae/none") is None

        t = a.transactions
        ok, answers = await a.transaction(
            compare=[t.mod(b"ae/k1") == got.mod_revision, t.value(b"ae/k2") == b"v2"],
            success=[t.put(b"ae/k1", b"swapped"), t.get(b"ae/k2")],
            failure=[t.get(b"ae/k1")],
        )
        seen["txn1"] = [ok, [[v.decode() for v, _ in r] if isinstance(r, list) else None for r in answers]]
        ok, answers = await b.transaction(
            compare=[t.mod(b"ae/k1") == got.mod_revision],
            success=[t.put(b"ae/k1", b"lost")],
            failure=[t.get(b"ae/k1")],
        )
        seen["txn2"] = [ok, [[v.decode() for v, _ in r] if isinstance(r, list) else None for r in answers]]
        ok, _ = await c.transaction(compare=[t.version(b"ae/new") == 0], success=[t.put(b"ae/new", b"n")], failure=[])
        seen["txn_create"] = ok

        deleted = await c.delete(b"ae/k3")
        seen["delete"] = deleted.deleted if deleted is not None else None
        seen["delete_missing"] = await c.delete(b"ae/k3") is None

        latest = (await a.put(b"ae/k1", b"last")).header.revision
        await b.compact(latest)
        try:
            await b.kvstub.Range(rpc.RangeRequest(key=b"ae/k1", revision=first.header.revision), timeout=10)
            seen["below_compaction"] = None
        except rpc.AioRpcError as err:
            seen["below_compaction"] = [err.code().name, err.details()]
        try:
            await c.compact(latest - 1)
            seen["compact_again"] = None
        except aetcd.ClientError as err:
            seen["compact_again"] = [type(err).__name__, str(err)]
        seen["at_latest"] = [kv(x) for x in await a.get_prefix(b"ae/k1")]

        swept = await a.delete_prefix(b"ae/")
        seen["delete_prefix"] = swept.deleted
        seen["left"] = len(await b.get_prefix(b"ae/"))
        status = await c.status()
        seen["status"] = [status.version, status.leader is not None]
    finally:
        for client in clients:
            await client.close()
    return seen


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:]))))
