from paxoskv.etcdpb import kv_pb2 as _kv_pb2
from paxoskv.etcdpb import rpc_pb2 as _rpc_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PutOp(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class DeleteOp(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("client_id", "sequence", "put", "delete", "batch", "etcd")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    ETCD_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    sequence: int
    put: PutOp
    delete: DeleteOp
    batch: BatchOp
    etcd: EtcdOp
    def __init__(self, client_id: _Optional[str] = ..., sequence: _Optional[int] = ..., put: _Optional[_Union[PutOp, _Mapping]] = ..., delete: _Optional[_Union[DeleteOp, _Mapping]] = ..., batch: _Optional[_Union[BatchOp, _Mapping]] = ..., etcd: _Optional[_Union[EtcdOp, _Mapping]] = ...) -> None: ...

class BatchOp(_message.Message):
    __slots__ = ("ops", "request", "waiter")
    OPS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    WAITER_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[RequestOp]
    request: RequestHeader
    waiter: bytes
    def __init__(self, ops: _Optional[_Iterable[_Union[RequestOp, _Mapping]]] = ..., request: _Optional[_Union[RequestHeader, _Mapping]] = ..., waiter: _Optional[bytes] = ...) -> None: ...

class EtcdOp(_message.Message):
    __slots__ = ("put", "delete_range", "txn", "compaction", "alarm", "lease_grant", "lease_revoke", "lease_checkpoint", "lease_expire", "waiter")
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_RANGE_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    COMPACTION_FIELD_NUMBER: _ClassVar[int]
    ALARM_FIELD_NUMBER: _ClassVar[int]
    LEASE_GRANT_FIELD_NUMBER: _ClassVar[int]
    LEASE_REVOKE_FIELD_NUMBER: _ClassVar[int]
    LEASE_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_FIELD_NUMBER: _ClassVar[int]
    WAITER_FIELD_NUMBER: _ClassVar[int]
    put: _rpc_pb2.PutRequest
    delete_range: _rpc_pb2.DeleteRangeRequest
    txn: _rpc_pb2.TxnRequest
    compaction: _rpc_pb2.CompactionRequest
    alarm: _rpc_pb2.AlarmRequest
    lease_grant: _rpc_pb2.LeaseGrantRequest
    lease_revoke: _rpc_pb2.LeaseRevokeRequest
    lease_checkpoint: LeaseCheckpoints
    lease_expire: LeaseExpire
    waiter: bytes
    def __init__(self, put: _Optional[_Union[_rpc_pb2.PutRequest, _Mapping]] = ..., delete_range: _Optional[_Union[_rpc_pb2.DeleteRangeRequest, _Mapping]] = ..., txn: _Optional[_Union[_rpc_pb2.TxnRequest, _Mapping]] = ..., compaction: _Optional[_Union[_rpc_pb2.CompactionRequest, _Mapping]] = ..., alarm: _Optional[_Union[_rpc_pb2.AlarmRequest, _Mapping]] = ..., lease_grant: _Optional[_Union[_rpc_pb2.LeaseGrantRequest, _Mapping]] = ..., lease_revoke: _Optional[_Union[_rpc_pb2.LeaseRevokeRequest, _Mapping]] = ..., lease_checkpoint: _Optional[_Union[LeaseCheckpoints, _Mapping]] = ..., lease_expire: _Optional[_Union[LeaseExpire, _Mapping]] = ..., waiter: _Optional[bytes] = ...) -> None: ...

class LeaseCheckpoint(_message.Message):
    __slots__ = ("ID", "remaining_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    REMAINING_MS_FIELD_NUMBER: _ClassVar[int]
    ID: int
    remaining_ms: int
    def __init__(self, ID: _Optional[int] = ..., remaining_ms: _Optional[int] = ...) -> None: ...

class LeaseCheckpoints(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[LeaseCheckpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[LeaseCheckpoint, _Mapping]]] = ...) -> None: ...

class LeaseExpire(_message.Message):
    __slots__ = ("ID", "epoch")
    ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ID: int
    epoch: int
    def __init__(self, ID: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("code", "index", "existed", "error", "revision", "succeeded")
    class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OK: _ClassVar[CommandResult.Code]
        INVALID: _ClassVar[CommandResult.Code]
        STALE_SEQUENCE: _ClassVar[CommandResult.Code]
        NO_SPACE: _ClassVar[CommandResult.Code]
    OK: CommandResult.Code
    INVALID: CommandResult.Code
    STALE_SEQUENCE: CommandResult.Code
    NO_SPACE: CommandResult.Code
    CODE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    code: CommandResult.Code
    index: int
    existed: bool
    error: str
    revision: int
    succeeded: bool
    def __init__(self, code: _Optional[_Union[CommandResult.Code, str]] = ..., index: _Optional[int] = ..., existed: _Optional[bool] = ..., error: _Optional[str] = ..., revision: _Optional[int] = ..., succeeded: _Optional[bool] = ...) -> None: ...

class RequestHeader(_message.Message):
    __slots__ = ("client_id", "sequence")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    sequence: int
    def __init__(self, client_id: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class ResponseHeader(_message.Message):
    __slots__ = ("node_id", "leader_id", "index", "revision")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    leader_id: int
    index: int
    revision: int
    def __init__(self, node_id: _Optional[int] = ..., leader_id: _Optional[int] = ..., index: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("key", "serializable")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SERIALIZABLE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    serializable: bool
    def __init__(self, key: _Optional[bytes] = ..., serializable: _Optional[bool] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("header", "found", "value")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    found: bool
    value: bytes
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., found: _Optional[bool] = ..., value: _Optional[bytes] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("request", "key", "value")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    request: RequestHeader
    key: bytes
    value: bytes
    def __init__(self, request: _Optional[_Union[RequestHeader, _Mapping]] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("header", "existed")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    existed: bool
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., existed: _Optional[bool] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("request", "key")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    request: RequestHeader
    key: bytes
    def __init__(self, request: _Optional[_Union[RequestHeader, _Mapping]] = ..., key: _Optional[bytes] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("header", "deleted")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    deleted: bool
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., deleted: _Optional[bool] = ...) -> None: ...

class RequestOp(_message.Message):
    __slots__ = ("get", "put", "delete")
    GET_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    get: GetRequest
    put: PutRequest
    delete: DeleteRequest
    def __init__(self, get: _Optional[_Union[GetRequest, _Mapping]] = ..., put: _Optional[_Union[PutRequest, _Mapping]] = ..., delete: _Optional[_Union[DeleteRequest, _Mapping]] = ...) -> None: ...

class ResponseOp(_message.Message):
    __slots__ = ("get", "put", "delete", "code", "error")
    GET_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    get: GetResponse
    put: PutResponse
    delete: DeleteResponse
    code: int
    error: str
    def __init__(self, get: _Optional[_Union[GetResponse, _Mapping]] = ..., put: _Optional[_Union[PutResponse, _Mapping]] = ..., delete: _Optional[_Union[DeleteResponse, _Mapping]] = ..., code: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("ops", "request")
    OPS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[RequestOp]
    request: RequestHeader
    def __init__(self, ops: _Optional[_Iterable[_Union[RequestOp, _Mapping]]] = ..., request: _Optional[_Union[RequestHeader, _Mapping]] = ...) -> None: ...

class BatchResponse(_message.Message):
    __slots__ = ("header", "results")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    results: _containers.RepeatedCompositeFieldContainer[ResponseOp]
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., results: _Optional[_Iterable[_Union[ResponseOp, _Mapping]]] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("id", "op")
    ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    id: int
    op: RequestOp
    def __init__(self, id: _Optional[int] = ..., op: _Optional[_Union[RequestOp, _Mapping]] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("id", "result")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    id: int
    result: ResponseOp
    def __init__(self, id: _Optional[int] = ..., result: _Optional[_Union[ResponseOp, _Mapping]] = ...) -> None: ...

class RangeRequest(_message.Message):
    __slots__ = ("key", "range_end", "prefix", "limit", "revision", "serializable", "keys_only", "count_only")
    KEY_FIELD_NUMBER: _ClassVar[int]
    RANGE_END_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SERIALIZABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_ONLY_FIELD_NUMBER: _ClassVar[int]
    COUNT_ONLY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    range_end: bytes
    prefix: bool
    limit: int
    revision: int
    serializable: bool
    keys_only: bool
    count_only: bool
    def __init__(self, key: _Optional[bytes] = ..., range_end: _Optional[bytes] = ..., prefix: _Optional[bool] = ..., limit: _Optional[int] = ..., revision: _Optional[int] = ..., serializable: _Optional[bool] = ..., keys_only: _Optional[bool] = ..., count_only: _Optional[bool] = ...) -> None: ...

class RangeResponse(_message.Message):
    __slots__ = ("header", "kvs", "more", "count")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    KVS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    kvs: _containers.RepeatedCompositeFieldContainer[_kv_pb2.KeyValue]
    more: bool
    count: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., kvs: _Optional[_Iterable[_Union[_kv_pb2.KeyValue, _Mapping]]] = ..., more: _Optional[bool] = ..., count: _Optional[int] = ...) -> None: ...

class TxnRequest(_message.Message):
    __slots__ = ("request", "compare", "success", "failure")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    COMPARE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    request: RequestHeader
    compare: _containers.RepeatedCompositeFieldContainer[_rpc_pb2.Compare]
    success: _containers.RepeatedCompositeFieldContainer[_rpc_pb2.RequestOp]
    failure: _containers.RepeatedCompositeFieldContainer[_rpc_pb2.RequestOp]
    def __init__(self, request: _Optional[_Union[RequestHeader, _Mapping]] = ..., compare: _Optional[_Iterable[_Union[_rpc_pb2.Compare, _Mapping]]] = ..., success: _Optional[_Iterable[_Union[_rpc_pb2.RequestOp, _Mapping]]] = ..., failure: _Optional[_Iterable[_Union[_rpc_pb2.RequestOp, _Mapping]]] = ...) -> None: ...

class TxnResponse(_message.Message):
    __slots__ = ("header", "succeeded", "responses", "replayed")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    succeeded: bool
    responses: _containers.RepeatedCompositeFieldContainer[_rpc_pb2.ResponseOp]
    replayed: bool
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., succeeded: _Optional[bool] = ..., responses: _Optional[_Iterable[_Union[_rpc_pb2.ResponseOp, _Mapping]]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerStatus(_message.Message):
    __slots__ = ("node_id", "address", "connected", "last_heard_seconds")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    connected: bool
    last_heard_seconds: float
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ..., connected: _Optional[bool] = ..., last_heard_seconds: _Optional[float] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("node_id", "cluster_id", "role", "leader_id", "ballot_round", "ballot_node", "commit_index", "applied_index", "log_start", "snapshot_index", "peers", "keys", "version", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    BALLOT_ROUND_FIELD_NUMBER: _ClassVar[int]
    BALLOT_NODE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    LOG_START_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_INDEX_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    cluster_id: str
    role: str
    leader_id: int
    ballot_round: int
    ballot_node: int
    commit_index: int
    applied_index: int
    log_start: int
    snapshot_index: int
    peers: _containers.RepeatedCompositeFieldContainer[PeerStatus]
    keys: int
    version: str
    counters: _containers.ScalarMap[str, int]
    def __init__(self, node_id: _Optional[int] = ..., cluster_id: _Optional[str] = ..., role: _Optional[str] = ..., leader_id: _Optional[int] = ..., ballot_round: _Optional[int] = ..., ballot_node: _Optional[int] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., log_start: _Optional[int] = ..., snapshot_index: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[PeerStatus, _Mapping]]] = ..., keys: _Optional[int] = ..., version: _Optional[str] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("data", "applied_index", "total_bytes", "sha256")
    DATA_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    applied_index: int
    total_bytes: int
    sha256: bytes
    def __init__(self, data: _Optional[bytes] = ..., applied_index: _Optional[int] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...
