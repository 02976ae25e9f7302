"""Snapshot transfer between two replicas over the peer bus, stop-and-wait.

Rules (the protocol is drawn in docs/snapshots.md):

- One transfer in at a time, any number out (one per asking peer).
- Receiver -> sender ``SnapshotAck(snapshot_index=0, offset=0)`` asks for
  one; the sender answers with the chunk at the offset each ack names (the
  same one again when an ack repeats it), the last one marked ``last``.
- The receiver stages chunks in storage (``begin_install``) and installs the
  snapshot only through ``install`` (the replica's hook, which may defer it
  until the batch in flight is applied), then acks ``done``.
- Either side gives up after ``timeout_ticks`` without progress; the
  receiver's core asks again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from paxoskv.paxos.types import Message, SnapshotAck, SnapshotChunk
from paxoskv.storage.base import Storage

log = logging.getLogger("paxoskv.replica")

__all__ = ["SnapshotTransfer"]


@dataclass(slots=True)
class _Sending:
    """A snapshot this node is streaming to one peer."""

    source: object  # storage SnapshotSource
    chunks: Iterator[bytes]
    index: int
    offset: int  # offset of ``last``
    last: bytes  # the chunk in flight
    ahead: bytes | None  # the chunk after it (prefetched); None: ``last`` is the end
    activity_tick: int

    def advance(self) -> None:
        assert self.ahead is not None
        self.offset += len(self.last)
        self.last = self.ahead
        self.ahead = next(self.chunks, None)


@dataclass(slots=True)
class _Receiving:
    """A snapshot this node is receiving from one peer."""

    peer: int
    installer: object | None  # storage SnapshotInstaller, once the first chunk came
    index: int
    offset: int  # next offset wanted
    activity_tick: int


class SnapshotTransfer:
    """Both ends of snapshot transfers for one replica. ``send`` queues a
    message; ``install(finish)`` is called with a function that finishes the
    staged install and returns its index (or raises a snapshot error)."""

    def __init__(
        self,
        node_id: int,
        storage: Storage,
        send: Callable[[Message], None],
        install: Callable[[Callable[[], int]], None],
        *,
        chunk_bytes: int,
        timeout_ticks: int,
    ) -> None:
        self._id = node_id
        self._storage = storage
        self._send = send
        self._install = install
        self.chunk_bytes = chunk_bytes
        self.timeout_ticks = timeout_ticks
        self._ticks = 0
        self._sending: dict[int, _Sending] = {}
        self._receiving: _Receiving | None = None
        self.sent = 0
        self.last_sent_index = 0

    # ---- receiving ---------------------------------------------------------------

    def want(self, peer: int) -> None:
        """Ask ``peer`` for a snapshot (unless one is on its way already)."""
        if self._receiving is not None:
            return  # one transfer at a time; its timeout restarts it
        self._receiving = _Receiving(peer, None, 0, 0, self._ticks)
        self._send(SnapshotAck(frm=self._id, to=peer, snapshot_index=0, offset=0, done=False))

    def on_chunk(self, msg: SnapshotChunk) -> None:
        rx = self._receiving
        if rx is None or rx.peer != msg.frm:
            return  # not asked for (or from a transfer we gave up): ignore
        if msg.offset == 0 and (rx.installer is None or msg.snapshot_index != rx.index):
            self._drop_installer(rx)
            rx.installer = self._storage.begin_install()
            rx.index = msg.snapshot_index
            rx.offset = 0
        if rx.installer is None or msg.snapshot_index != rx.index or msg.offset != rx.offset:
            self._ack(rx, done=False)  # a duplicate or a stray: ask again for what we want
            return
        rx.activity_tick = self._ticks
        try:
            rx.installer.write(msg.data)
            rx.offset += len(msg.data)
        except Exception as exc:  # a corrupt or refused snapshot: start over later
            log.warning("node %d: snapshot from node %d refused: %s", self._id, msg.frm, exc)
            self.abort_receiving()
            return
        if not msg.last:
            self._ack(rx, done=False)
            return
        self._install(lambda: self._finish(rx))

    def _finish(self, rx: _Receiving) -> int:
        """Finish ``rx``'s install; its index, or -1 if it is no longer current
        or the snapshot was refused (nothing changed then)."""
        if self._receiving is not rx or rx.installer is None:
            return -1  # aborted meanwhile (a timeout or a newer snapshot)
        try:
            index = rx.installer.finish()
        except Exception as exc:  # a corrupt or refused snapshot: start over later
            log.warning("node %d: snapshot from node %d refused: %s", self._id, rx.peer, exc)
            self.abort_receiving()
            return -1
        rx.installer = None
        self._receiving = None
        self._send(SnapshotAck(frm=self._id, to=rx.peer, snapshot_index=index, offset=rx.offset, done=True))
        return index

    def _ack(self, rx: _Receiving, *, done: bool) -> None:
        self._send(SnapshotAck(frm=self._id, to=rx.peer, snapshot_index=rx.index, offset=rx.offset, done=done))

    def _drop_installer(self, rx: _Receiving) -> None:
        if rx.installer is not None:
            try:
                rx.installer.abort()
            except Exception as exc:  # noqa: BLE001 - aborting is best effort
                log.warning("node %d: aborting a snapshot install: %s", self._id, exc)
            rx.installer = None

    def abort_receiving(self) -> None:
        rx = self._receiving
        if rx is not None:
            self._drop_installer(rx)
            self._receiving = None

    # ---- sending -----------------------------------------------------------------

    def on_ack(self, msg: SnapshotAck) -> None:
        peer = msg.frm
        if msg.snapshot_index == 0 and msg.offset == 0 and not msg.done:
            self._close_sending(peer)
            self._start_sending(peer)
            return
        tx = self._sending.get(peer)
        if tx is None or msg.snapshot_index != tx.index:
            return
        tx.activity_tick = self._ticks
        if msg.done:
            self.sent += 1
            self.last_sent_index = max(self.last_sent_index, tx.index)
            self._close_sending(peer)
        elif msg.offset == tx.offset:
            self._send_chunk(peer, tx)  # the last one was lost: again
        elif msg.offset == tx.offset + len(tx.last) and tx.ahead is not None:
            tx.advance()
            self._send_chunk(peer, tx)

    def _start_sending(self, peer: int) -> None:
        source = self._storage.open_snapshot()
        chunks = iter(source.chunks(self.chunk_bytes))
        first = next(chunks, b"")
        tx = _Sending(source, chunks, source.applied_index, 0, first, next(chunks, None), self._ticks)
        self._sending[peer] = tx
        self._send_chunk(peer, tx)

    def _send_chunk(self, peer: int, tx: _Sending) -> None:
        self._send(
            SnapshotChunk(
                frm=self._id, to=peer, snapshot_index=tx.index, offset=tx.offset,
                data=tx.last, last=tx.ahead is None, total_size=0, sha256=b"",
            )
        )

    def _close_sending(self, peer: int) -> None:
        tx = self._sending.pop(peer, None)
        if tx is not None:
            tx.source.close()

    # ---- time and shutdown -------------------------------------------------------

    def tick(self) -> None:
        self._ticks += 1
        limit = self._ticks - self.timeout_ticks
        for peer in [p for p, tx in self._sending.items() if tx.activity_tick <= limit]:
            self._close_sending(peer)
        rx = self._receiving
        if rx is not None and rx.activity_tick <= limit:
            self.abort_receiving()  # the core asks again (its catch-up meets the compacted log)

    def close(self) -> None:
        """Abort the transfer in and release those out (before the storage closes)."""
        self.abort_receiving()
        for peer in list(self._sending):
            self._close_sending(peer)
