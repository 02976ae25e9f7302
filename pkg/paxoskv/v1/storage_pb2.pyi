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
    __slots__ = ("sequence", "result", "last_index")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    LAST_INDEX_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    result: _kv_pb2.CommandResult
    last_index: int
    def __init__(self, sequence: _Optional[int] = ..., result: _Optional[_Union[_kv_pb2.CommandResult, _Mapping]] = ..., last_index: _Optional[int] = ...) -> None: ...

class AppliedState(_message.Message):
    __slots__ = ("applied_index",)
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    applied_index: int
    def __init__(self, applied_index: _Optional[int] = ...) -> None: ...
