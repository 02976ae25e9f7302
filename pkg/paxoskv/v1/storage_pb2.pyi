from paxoskv.v1 import peer_pb2 as _peer_pb2
from paxoskv.v1 import kv_pb2 as _kv_pb2
from paxoskv.etcdpb import kv_pb2 as _kv_pb2_1
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeMeta(_message.Message):
    __slots__ = ("format_version", "node_id", "cluster_id")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    node_id: int
    cluster_id: str
    def __init__(self, format_version: _Optional[int] = ..., node_id: _Optional[int] = ..., cluster_id: _Optional[str] = ...) -> None: ...

class AcceptorState(_message.Message):
    __slots__ = ("promised",)
    PROMISED_FIELD_NUMBER: _ClassVar[int]
    promised: _peer_pb2.Ballot
    def __init__(self, promised: _Optional[_Union[_peer_pb2.Ballot, _Mapping]] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("sequence", "result", "last_index", "batch")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    LAST_INDEX_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    result: _kv_pb2.CommandResult
    last_index: int
    batch: bytes
    def __init__(self, sequence: _Optional[int] = ..., result: _Optional[_Union[_kv_pb2.CommandResult, _Mapping]] = ..., last_index: _Optional[int] = ..., batch: _Optional[bytes] = ...) -> None: ...

class AppliedState(_message.Message):
    __slots__ = ("applied_index", "revision", "compact_revision", "alarms")
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    COMPACT_REVISION_FIELD_NUMBER: _ClassVar[int]
    ALARMS_FIELD_NUMBER: _ClassVar[int]
    applied_index: int
    revision: int
    compact_revision: int
    alarms: _containers.RepeatedCompositeFieldContainer[StoredAlarm]
    def __init__(self, applied_index: _Optional[int] = ..., revision: _Optional[int] = ..., compact_revision: _Optional[int] = ..., alarms: _Optional[_Iterable[_Union[StoredAlarm, _Mapping]]] = ...) -> None: ...

class StoredAlarm(_message.Message):
    __slots__ = ("member_id", "alarm")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    ALARM_FIELD_NUMBER: _ClassVar[int]
    member_id: int
    alarm: int
    def __init__(self, member_id: _Optional[int] = ..., alarm: _Optional[int] = ...) -> None: ...

class HistoryRecord(_message.Message):
    __slots__ = ("kv", "tombstone")
    KV_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONE_FIELD_NUMBER: _ClassVar[int]
    kv: _kv_pb2_1.KeyValue
    tombstone: bool
    def __init__(self, kv: _Optional[_Union[_kv_pb2_1.KeyValue, _Mapping]] = ..., tombstone: _Optional[bool] = ...) -> None: ...

class StoredLease(_message.Message):
    __slots__ = ("ID", "ttl", "remaining_ms", "epoch")
    ID_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    REMAINING_MS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ID: int
    ttl: int
    remaining_ms: int
    epoch: int
    def __init__(self, ID: _Optional[int] = ..., ttl: _Optional[int] = ..., remaining_ms: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class SnapshotHeader(_message.Message):
    __slots__ = ("format_version", "cluster_id", "applied_index", "keys", "sessions", "rows", "revision", "compact_revision", "alarms", "leases")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    COMPACT_REVISION_FIELD_NUMBER: _ClassVar[int]
    ALARMS_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    cluster_id: str
    applied_index: int
    keys: int
    sessions: int
    rows: int
    revision: int
    compact_revision: int
    alarms: _containers.RepeatedCompositeFieldContainer[StoredAlarm]
    leases: int
    def __init__(self, format_version: _Optional[int] = ..., cluster_id: _Optional[str] = ..., applied_index: _Optional[int] = ..., keys: _Optional[int] = ..., sessions: _Optional[int] = ..., rows: _Optional[int] = ..., revision: _Optional[int] = ..., compact_revision: _Optional[int] = ..., alarms: _Optional[_Iterable[_Union[StoredAlarm, _Mapping]]] = ..., leases: _Optional[int] = ...) -> None: ...

class HistoryRow(_message.Message):
    __slots__ = ("revision", "record")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    revision: bytes
    record: HistoryRecord
    def __init__(self, revision: _Optional[bytes] = ..., record: _Optional[_Union[HistoryRecord, _Mapping]] = ...) -> None: ...

class KeyValue(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class SessionEntry(_message.Message):
    __slots__ = ("client_id", "session")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    session: Session
    def __init__(self, client_id: _Optional[str] = ..., session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class SnapshotTrailer(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: bytes
    def __init__(self, sha256: _Optional[bytes] = ...) -> None: ...

class SnapshotRecord(_message.Message):
    __slots__ = ("header", "kv", "session", "trailer", "row", "lease")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    KV_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    header: SnapshotHeader
    kv: KeyValue
    session: SessionEntry
    trailer: SnapshotTrailer
    row: HistoryRow
    lease: StoredLease
    def __init__(self, header: _Optional[_Union[SnapshotHeader, _Mapping]] = ..., kv: _Optional[_Union[KeyValue, _Mapping]] = ..., session: _Optional[_Union[SessionEntry, _Mapping]] = ..., trailer: _Optional[_Union[SnapshotTrailer, _Mapping]] = ..., row: _Optional[_Union[HistoryRow, _Mapping]] = ..., lease: _Optional[_Union[StoredLease, _Mapping]] = ...) -> None: ...
