"""The replicated state machine: chosen log slots -> key-value map, exactly once.

Rules:

- ``apply(index, value)`` is called once per slot, in slot order, without
  gaps: ``index == applied_index + 1`` is asserted. ``value`` is the slot's
  chosen batch of encoded ``Command`` bytes; the empty tuple is a no-op that
  only advances ``applied_index``.
- Deterministic: the outputs and the new state depend only on the previous
  state, ``index``, ``value``, ``limits`` and ``sessions_max``. No clock, no
  randomness, no iteration over unordered containers decides anything. Every
  replica of a cluster must use the same ``limits`` and ``sessions_max``.
- Never raises on bad data from the log. An undecodable command or one that
  ``validate`` rejects is answered ``INVALID`` with the reason, and changes
  nothing (no key, no session).
- Exactly-once. A command with a non-empty ``client_id`` belongs to that
  client's session, which remembers the client's last ``sequence``, its
  result and the slot it was applied at (``last_index``):

  ============================  ==============================================
  sequence vs. session          what happens
  ============================  ==============================================
  no session, or greater        applied; the session now remembers it
  equal                         not applied again; the first result is returned
  lower                         not applied; ``STALE_SEQUENCE``
  ============================  ==============================================

  A command with an empty ``client_id`` is applied with no session and no
  deduplication. A packed batch (``BatchOp.request``) is one command of its
  client for this table, with the sequences ``request.sequence`` ..
  ``request.sequence + len(ops) - 1``: applied when the session is below the
  first; the same batch again (the session ends at its last sequence and
  holds one outcome per op) gets its first results back; anything else is
  ``STALE_SEQUENCE`` for every op.
- Bounded sessions. When a new session makes the table larger than
  ``sessions_max``, the session with the smallest ``last_index`` is evicted
  (ties: the smallest ``client_id``). A client whose session was evicted and
  who retries an old command gets it applied again: ``sessions_max`` must be
  large enough for the number of clients active at once.
- Every command of a slot yields one ``Applied`` entry, in order, so the node
  can answer every waiting client, duplicates included.

Theory of operation: the map is a plain dict. Sessions live in an
``OrderedDict`` kept in ``last_index`` order (a session moves to the end when
it is touched, and slots are applied in increasing order), so the eviction
candidates are at the front; only the leading run of sessions sharing the
smallest ``last_index`` (at most one slot's worth) is scanned for the
smallest ``client_id``. Every change is also recorded in a change set that
``take_changes()`` hands to storage as one atomic apply batch.

Snapshots: ``snapshot_items()`` copies the whole state in a canonical order;
``restore()`` replaces the state by a snapshot's, and the next change set says
``reset`` so storage replaces its copy in the same single batch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from paxoskv.kv.commands import DecodeError, Limits, decode, validate, validate_op, validate_packed_op
from paxoskv.protowire import len_field, varint
from paxoskv.v1 import kv_pb2, storage_pb2

__all__ = ["Applied", "Changes", "KVStateMachine", "Session"]

_OK = kv_pb2.CommandResult.OK
_INVALID = kv_pb2.CommandResult.INVALID
_STALE = kv_pb2.CommandResult.STALE_SEQUENCE
# Session.batch: 0 and 1 are an applied op's ``existed``; this one is INVALID.
_PACKED_INVALID = 2


def _stale(index: int, client_id: str, sequence: int, session: Session) -> kv_pb2.CommandResult:
    return kv_pb2.CommandResult(
        code=_STALE,
        index=index,
        error=f"sequence {sequence} of client {client_id!r} is older than its last applied sequence {session.sequence}",
    )


_NOT_IN_LOG = "only put and delete ops can be in the log"


def _ok_pair(index: int) -> tuple[kv_pb2.CommandResult, kv_pb2.CommandResult]:
    """The successful results of slot ``index``, key absent / present before:
    shared by all the ops of a batch and their sessions (never mutated)."""
    Result = kv_pb2.CommandResult
    return Result(code=_OK, index=index, existed=False), Result(code=_OK, index=index, existed=True)


def _copy_result(result: kv_pb2.CommandResult) -> kv_pb2.CommandResult:
    out = kv_pb2.CommandResult()
    out.CopyFrom(result)
    return out


@dataclass(frozen=True, slots=True)
class Session:
    """The last applied command of one client: its sequence, result and slot."""

    sequence: int
    result: kv_pb2.CommandResult
    last_index: int
    # A packed batch's outcome per op (storage.proto Session.batch): b"" otherwise.
    batch: bytes = b""

    def to_proto(self) -> storage_pb2.Session:
        return storage_pb2.Session(
            sequence=self.sequence, result=self.result, last_index=self.last_index, batch=self.batch
        )

    def encode(self, results: dict[int, bytes] | None = None) -> bytes:
        """``to_proto().SerializeToString()``, byte for byte, built by hand:
        this runs once per applied write. ``results``: a cache of encoded
        results by ``id`` (the ops of one batch share their result objects),
        valid while those objects live."""
        result = self.result
        if results is None:
            body = result.SerializeToString()
        else:
            body = results.get(id(result))
            if body is None:
                body = results[id(result)] = result.SerializeToString()
        parts = [b"\x08" + varint(self.sequence)] if self.sequence else []
        parts.append(len_field(b"\x12", body))
        if self.last_index:
            parts.append(b"\x18" + varint(self.last_index))
        if self.batch:
            parts.append(len_field(b"\x22", self.batch))
        return b"".join(parts)

    @classmethod
    def from_proto(cls, pb: storage_pb2.Session) -> Session:
        return cls(
            sequence=pb.sequence, result=_copy_result(pb.result), last_index=pb.last_index, batch=pb.batch
        )


@dataclass(frozen=True, slots=True)
class Applied:
    """The answer to one command of a slot, for the client waiting on it.

    ``client_id`` and ``sequence`` are empty/0 for a command without a session
    and for an undecodable one. A batch command's answer is the tuple of its
    ops' results, with the proposing node's ``waiter`` handle (its
    ``BatchOp.waiter``) and no identity.
    """

    client_id: str
    sequence: int
    result: kv_pb2.CommandResult | tuple[kv_pb2.CommandResult, ...]
    waiter: bytes = b""


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed since the last ``take_changes()``; ``None`` means deleted.

    ``reset`` (after ``restore``): every stored key and session is dropped
    first, and ``kv``/``sessions`` are then the whole new state (plus what was
    applied after it).
    """

    kv: dict[bytes, bytes | None]
    sessions: dict[str, Session | None]
    applied_index: int
    reset: bool = False


class KVStateMachine:
    """A deterministic key-value map with exactly-once client sessions.

    The state machine takes ownership of ``kv`` (mutated in place) and copies
    ``sessions``.
    """

    def __init__(
        self,
        kv: dict[bytes, bytes],
        sessions: Mapping[str, Session],
        applied_index: int,
        limits: Limits = Limits(),
        sessions_max: int = 100_000,
    ) -> None:
        if applied_index < 0:
            raise ValueError(f"applied_index must be >= 0, not {applied_index}")
        if sessions_max < 1:
            raise ValueError(f"sessions_max must be >= 1, not {sessions_max}")
        late = [cid for cid, s in sessions.items() if s.last_index > applied_index]
        if late:
            raise ValueError(
                f"sessions {late[:3]} were applied after applied_index {applied_index}"
            )
        self._kv = kv
        self._sessions: OrderedDict[str, Session] = OrderedDict(
            sorted(sessions.items(), key=lambda item: (item[1].last_index, item[0]))
        )
        self._applied_index = applied_index
        self._limits = limits
        self._sessions_max = sessions_max
        self._kv_changes: dict[bytes, bytes | None] = {}
        self._session_changes: dict[str, Session | None] = {}
        self._reset = False

    # ---- reading ---------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        return self._applied_index

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def sessions_max(self) -> int:
        return self._sessions_max

    def get(self, key: bytes) -> bytes | None:
        return self._kv.get(key)

    def __len__(self) -> int:
        return len(self._kv)

    def __contains__(self, key: object) -> bool:
        return key in self._kv

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value), in no particular order."""
        return iter(self._kv.items())

    def session(self, client_id: str) -> Session | None:
        return self._sessions.get(client_id)

    @property
    def sessions(self) -> Mapping[str, Session]:
        """A read-only view of the session table."""
        return MappingProxyType(self._sessions)

    # ---- applying --------------------------------------------------------------

    def apply(self, index: int, value: tuple[bytes, ...]) -> list[Applied]:
        """Apply the chosen ``value`` of slot ``index``; one ``Applied`` per command."""
        assert index == self._applied_index + 1, (index, self._applied_index)
        applied = [self._apply_one(index, data) for data in value]
        self._applied_index = index
        return applied

    def _apply_one(self, index: int, data: bytes) -> Applied:
        try:
            cmd = decode(data)
        except DecodeError as exc:
            return Applied("", 0, kv_pb2.CommandResult(code=_INVALID, index=index, error=str(exc)))
        client_id, sequence = cmd.client_id, cmd.sequence
        if cmd.HasField("batch"):
            return self._apply_batch(index, cmd)
        error = validate(cmd, self._limits)
        if error is not None:
            return Applied(
                client_id, sequence, kv_pb2.CommandResult(code=_INVALID, index=index, error=error)
            )
        if client_id:
            session = self._sessions.get(client_id)
            if session is not None and sequence == session.sequence:
                return Applied(client_id, sequence, _copy_result(session.result))
            if session is not None and sequence < session.sequence:
                return Applied(client_id, sequence, _stale(index, client_id, sequence, session))
        result = self._execute(index, cmd)
        if client_id:
            self._remember(client_id, Session(sequence, _copy_result(result), index))
        return Applied(client_id, sequence, result)

    def _apply_batch(self, index: int, cmd: kv_pb2.Command) -> Applied:
        """Every op of a batch command, in order, each exactly as if it were a
        command of its own (its identity, its validation, its result); one
        ``Applied`` carries the tuple of their results. A result is shared with
        the session that remembers it: results are never mutated."""
        error = validate(cmd, self._limits)
        waiter = cmd.batch.waiter
        if error is not None:
            return Applied("", 0, (kv_pb2.CommandResult(code=_INVALID, index=index, error=error),), waiter)
        if cmd.batch.HasField("request"):
            return Applied("", 0, self._apply_packed(index, cmd.batch), waiter)
        limits = self._limits
        key_max, value_max = limits.key_bytes_max, limits.value_bytes_max
        client_id_chars_max = limits.client_id_bytes_max // 4  # this many chars fit in any UTF-8
        sessions = self._sessions
        kv = self._kv
        kv_changes = self._kv_changes
        Result = kv_pb2.CommandResult
        ok = _ok_pair(index)
        results: list[kv_pb2.CommandResult] = []
        append = results.append
        for op in cmd.batch.ops:
            kind = op.WhichOneof("op")
            if kind == "put":
                req = op.put
                value = req.value
            elif kind == "delete":
                req = op.delete
                value = b""
            else:
                append(Result(code=_INVALID, index=index, error=_NOT_IN_LOG))
                continue
            hdr = req.request
            client_id = hdr.client_id
            sequence = hdr.sequence
            key = req.key
            # The common case checked inline; anything else by validate_op.
            if not (
                client_id
                and sequence
                and key
                and len(key) <= key_max
                and len(value) <= value_max
                and len(client_id) <= client_id_chars_max
            ):
                error = validate_op(client_id, sequence, key, value, limits)
                if error is not None:
                    append(Result(code=_INVALID, index=index, error=error))
                    continue
            if client_id:
                session = sessions.get(client_id)
                if session is not None and sequence <= session.sequence:
                    if sequence == session.sequence:
                        append(session.result)
                    else:
                        append(_stale(index, client_id, sequence, session))
                    continue
            # Inline, not self._write: a call per op costs ~10% of this loop.
            if kind == "put":
                existed = key in kv
                kv[key] = value
                kv_changes[key] = value
            else:
                existed = kv.pop(key, None) is not None
                if existed:
                    kv_changes[key] = None
            result = ok[existed]
            if client_id:
                self._remember(client_id, Session(sequence, result, index))
            append(result)
        return Applied("", 0, tuple(results), waiter)

    def _apply_packed(self, index: int, batch: kv_pb2.BatchOp) -> tuple[kv_pb2.CommandResult, ...]:
        """A packed batch (validated): one session check for all its ops, and
        the session remembers each op's outcome (``Session.batch``), so a
        retry of the same batch gets the same results and applies nothing."""
        client_id = batch.request.client_id
        first = batch.request.sequence
        ops = batch.ops
        last = first + len(ops) - 1
        session = self._sessions.get(client_id)
        if session is not None and first <= session.sequence:
            if session.sequence == last and len(session.batch) == len(ops):
                return self._replay_packed(session, ops)
            return tuple(_stale(index, client_id, first + k, session) for k in range(len(ops)))
        limits = self._limits
        key_max, value_max = limits.key_bytes_max, limits.value_bytes_max
        kv = self._kv
        kv_changes = self._kv_changes
        Result = kv_pb2.CommandResult
        ok = _ok_pair(index)
        results: list[kv_pb2.CommandResult] = []
        append = results.append
        codes = bytearray(len(ops))
        for k, op in enumerate(ops):
            kind = op.WhichOneof("op")
            if kind == "put":
                req = op.put
                value = req.value
            elif kind == "delete":
                req = op.delete
                value = b""
            else:
                codes[k] = _PACKED_INVALID
                append(Result(code=_INVALID, index=index, error=_NOT_IN_LOG))
                continue
            key = req.key
            if not key or len(key) > key_max or len(value) > value_max or req.HasField("request"):
                error = validate_packed_op(req.HasField("request"), key, value, limits)
                if error is not None:
                    codes[k] = _PACKED_INVALID
                    append(Result(code=_INVALID, index=index, error=error))
                    continue
            # Inline, not self._write: a call per op costs ~10% of this loop.
            if kind == "put":
                existed = key in kv
                kv[key] = value
                kv_changes[key] = value
            else:
                existed = kv.pop(key, None) is not None
                if existed:
                    kv_changes[key] = None
            codes[k] = existed
            append(ok[existed])
        self._remember(client_id, Session(last, results[-1], index, bytes(codes)))
        return tuple(results)

    def _replay_packed(self, session: Session, ops) -> tuple[kv_pb2.CommandResult, ...]:  # noqa: ANN001
        """The results a packed batch got when it was applied, from its session."""
        index = session.last_index
        Result = kv_pb2.CommandResult
        ok = _ok_pair(index)
        out: list[kv_pb2.CommandResult] = []
        for code, op in zip(session.batch, ops):
            if code != _PACKED_INVALID:
                out.append(ok[code])
                continue
            kind = op.WhichOneof("op")
            req = op.put if kind == "put" else op.delete if kind == "delete" else None
            error = (
                _NOT_IN_LOG
                if req is None
                else validate_packed_op(req.HasField("request"), req.key, req.value if kind == "put" else b"", self._limits)
            )
            out.append(Result(code=_INVALID, index=index, error=error or "rejected when this batch was first applied"))
        return tuple(out)

    def _execute(self, index: int, cmd: kv_pb2.Command) -> kv_pb2.CommandResult:
        op = cmd.WhichOneof("op")
        if op == "put":
            existed = self._write(True, cmd.put.key, cmd.put.value)
        else:
            assert op == "delete", op
            existed = self._write(False, cmd.delete.key, b"")
        return kv_pb2.CommandResult(code=_OK, index=index, existed=existed)

    def _write(self, is_put: bool, key: bytes, value: bytes) -> bool:
        """Put ``value`` at ``key`` or delete it, recording the change; whether
        the key had a value before."""
        if is_put:
            existed = key in self._kv
            self._kv[key] = value
            self._kv_changes[key] = value
            return existed
        existed = self._kv.pop(key, None) is not None
        if existed:
            self._kv_changes[key] = None
        return existed

    def _remember(self, client_id: str, session: Session) -> None:
        self._sessions[client_id] = session
        self._sessions.move_to_end(client_id)
        self._session_changes[client_id] = session
        while len(self._sessions) > self._sessions_max:
            self._evict_one()

    def _evict_one(self) -> None:
        oldest_index = None
        victim = None
        for client_id, session in self._sessions.items():
            if oldest_index is None:
                oldest_index = session.last_index
            elif session.last_index != oldest_index:
                break
            if victim is None or client_id < victim:
                victim = client_id
        assert victim is not None
        del self._sessions[victim]
        self._session_changes[victim] = None

    # ---- persistence and snapshots ---------------------------------------------

    def take_changes(self) -> Changes:
        """Everything changed since the previous call, for one storage apply batch."""
        changes = Changes(
            kv=self._kv_changes,
            sessions=self._session_changes,
            applied_index=self._applied_index,
            reset=self._reset,
        )
        self._kv_changes = {}
        self._session_changes = {}
        self._reset = False
        return changes

    def snapshot_items(self) -> tuple[list[tuple[bytes, bytes]], list[tuple[str, Session]]]:
        """A copy of the whole state at ``applied_index``: (key, value) sorted by
        key and (client_id, session) sorted by client id, so every replica at
        the same index produces the same items in the same order."""
        return sorted(self._kv.items()), sorted(self._sessions.items())

    def restore(
        self, applied_index: int, kv: Mapping[bytes, bytes], sessions: Mapping[str, Session]
    ) -> None:
        """Replace the whole state by a snapshot taken at ``applied_index``.

        The next ``take_changes()`` has ``reset=True``: storage replaces its
        keys and sessions by these in one batch.
        """
        if applied_index < self._applied_index:
            raise ValueError(
                f"snapshot at {applied_index} is behind applied index {self._applied_index}"
            )
        late = [cid for cid, s in sessions.items() if s.last_index > applied_index]
        if late:
            raise ValueError(f"sessions {late[:3]} were applied after the snapshot {applied_index}")
        self._kv.clear()
        self._kv.update(kv)
        self._sessions = OrderedDict(
            sorted(sessions.items(), key=lambda item: (item[1].last_index, item[0]))
        )
        self._applied_index = applied_index
        self._kv_changes = dict(self._kv)
        self._session_changes = dict(self._sessions)
        self._reset = True
        while len(self._sessions) > self._sessions_max:
            self._evict_one()
