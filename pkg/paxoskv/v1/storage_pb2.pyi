from paxoskv.v1 import peer_pb2 as _peer_pb2
from paxoskv.v1 import kv_pb2 as _kv_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
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
    __slots__ = ("applied_index",)
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    applied_index: int
    def __init__(self, applied_index: _Optional[int] = ...) -> None: ...

class SnapshotHeader(_message.Message):
    __slots__ = ("format_version", "cluster_id", "applied_index", "keys", "sessions")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    cluster_id: str
    applied_index: int
    keys: int
    sessions: int
    def __init__(self, format_version: _Optional[int] = ..., cluster_id: _Optional[str] = ..., applied_index: _Optional[int] = ..., keys: _Optional[int] = ..., sessions: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("header", "kv", "session", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    KV_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: SnapshotHeader
    kv: KeyValue
    session: SessionEntry
    trailer: SnapshotTrailer
    def __init__(self, header: _Optional[_Union[SnapshotHeader, _Mapping]] = ..., kv: _Optional[_Union[KeyValue, _Mapping]] = ..., session: _Optional[_Union[SessionEntry, _Mapping]] = ..., trailer: _Optional[_Union[SnapshotTrailer, _Mapping]] = ...) -> None: ...
