from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Ballot(_message.Message):
    __slots__ = ("round", "node")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    round: int
    node: int
    def __init__(self, round: _Optional[int] = ..., node: _Optional[int] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("commands",)
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    commands: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, commands: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("slot", "ballot", "value")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    BALLOT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    slot: int
    ballot: Ballot
    value: Value
    def __init__(self, slot: _Optional[int] = ..., ballot: _Optional[_Union[Ballot, _Mapping]] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...

class SlotValue(_message.Message):
    __slots__ = ("slot", "value")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    slot: int
    value: Value
    def __init__(self, slot: _Optional[int] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...

class PreVote(_message.Message):
    __slots__ = ("ballot", "commit")
    BALLOT_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    ballot: Ballot
    commit: int
    def __init__(self, ballot: _Optional[_Union[Ballot, _Mapping]] = ..., commit: _Optional[int] = ...) -> None: ...

class PreVoteReply(_message.Message):
    __slots__ = ("ballot", "granted", "promised")
    BALLOT_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    PROMISED_FIELD_NUMBER: _ClassVar[int]
    ballot: Ballot
    granted: bool
    promised: Ballot
    def __init__(self, ballot: _Optional[_Union[Ballot, _Mapping]] = ..., granted: _Optional[bool] = ..., promised: _Optional[_Union[Ballot, _Mapping]] = ...) -> None: ...

class Prepare(_message.Message):
    __slots__ = ("ballot", "from_slot")
    BALLOT_FIELD_NUMBER: _ClassVar[int]
    FROM_SLOT_FIELD_NUMBER: _ClassVar[int]
    ballot: Ballot
    from_slot: int
    def __init__(self, ballot: _Optional[_Union[Ballot, _Mapping]] = ..., from_slot: _Optional[int] = ...) -> None: ...

class Promise(_message.Message):
    __slots__ = ("ballot", "accepted", "chosen", "commit", "log_start")
    BALLOT_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    LOG_START_FIELD_NUMBER: _ClassVar[int]
    ballot: Ballot
    accepted: _containers.RepeatedCompositeFieldContainer[Entry]
    chosen: _containers.RepeatedCompositeFieldContainer[SlotValue]
    commit: int
    log_start: int
    def __init__(self, ballot: _Optional[_Union[Ballot, _Mapping]] = ..., accepted: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., chosen: _Optional[_Iterable[_Union[SlotValue, _Mapping]]] = ..., commit: _Optional[int] = ..., log_start: _Optional[int] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("ballot", "promised")
    BALLOT_FIELD_NUMBER: _ClassVar[int]
    PROMISED_FIELD_NUMBER: _ClassVar[int]
    ballot: Ballot
    promised: Ballot
    def __init__(self, ballot: _Optional[_Union[Ballot, _Mapping]] = ..., promised: _Optional[_Union[Ballot, _Mapping]] = ...) -> None: ...

class Accept(_message.Message):
    __slots__ = ("ballot", "entries", "commit")
    BALLOT_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    ballot: Ballot
    entries: _containers.RepeatedCompositeFieldContainer[SlotValue]
    commit: int
    def __init__(self, ballot: _Optional[_Union[Ballot, _Mapping]] = ..., entries: _Optional[_Iterable[_Union[SlotValue, _Mapping]]] = ..., commit: _Optional[int] = ...) -> None: ...

class Accepted(_message.Message):
    __slots__ = ("ballot", "slots")
    BALLOT_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    ballot: Ballot
    slots: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ballot: _Optional[_Union[Ballot, _Mapping]] = ..., slots: _Optional[_Iterable[int]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("ballot", "commit", "read_seq", "features")
    BALLOT_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ballot: Ballot
    commit: int
    read_seq: int
    features: int
    def __init__(self, ballot: _Optional[_Union[Ballot, _Mapping]] = ..., commit: _Optional[int] = ..., read_seq: _Optional[int] = ..., features: _Optional[int] = ...) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("ballot", "read_seq", "features")
    BALLOT_FIELD_NUMBER: _ClassVar[int]
    READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ballot: Ballot
    read_seq: int
    features: int
    def __init__(self, ballot: _Optional[_Union[Ballot, _Mapping]] = ..., read_seq: _Optional[int] = ..., features: _Optional[int] = ...) -> None: ...

class CatchupRequest(_message.Message):
    __slots__ = ("from_slot", "to_slot")
    FROM_SLOT_FIELD_NUMBER: _ClassVar[int]
    TO_SLOT_FIELD_NUMBER: _ClassVar[int]
    from_slot: int
    to_slot: int
    def __init__(self, from_slot: _Optional[int] = ..., to_slot: _Optional[int] = ...) -> None: ...

class CatchupReply(_message.Message):
    __slots__ = ("chosen", "commit", "log_start")
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    LOG_START_FIELD_NUMBER: _ClassVar[int]
    chosen: _containers.RepeatedCompositeFieldContainer[SlotValue]
    commit: int
    log_start: int
    def __init__(self, chosen: _Optional[_Iterable[_Union[SlotValue, _Mapping]]] = ..., commit: _Optional[int] = ..., log_start: _Optional[int] = ...) -> None: ...

class Forward(_message.Message):
    __slots__ = ("commands",)
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    commands: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, commands: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ReadIndexRequest(_message.Message):
    __slots__ = ("read_ids", "ballot")
    READ_IDS_FIELD_NUMBER: _ClassVar[int]
    BALLOT_FIELD_NUMBER: _ClassVar[int]
    read_ids: _containers.RepeatedScalarFieldContainer[int]
    ballot: Ballot
    def __init__(self, read_ids: _Optional[_Iterable[int]] = ..., ballot: _Optional[_Union[Ballot, _Mapping]] = ...) -> None: ...

class ReadIndexReply(_message.Message):
    __slots__ = ("read_ids", "index", "ok")
    READ_IDS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    read_ids: _containers.RepeatedScalarFieldContainer[int]
    index: int
    ok: bool
    def __init__(self, read_ids: _Optional[_Iterable[int]] = ..., index: _Optional[int] = ..., ok: _Optional[bool] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("snapshot_index", "offset", "data", "last", "total_size", "sha256")
    SNAPSHOT_INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    snapshot_index: int
    offset: int
    data: bytes
    last: bool
    total_size: int
    sha256: bytes
    def __init__(self, snapshot_index: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., total_size: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class SnapshotAck(_message.Message):
    __slots__ = ("snapshot_index", "offset", "done")
    SNAPSHOT_INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    snapshot_index: int
    offset: int
    done: bool
    def __init__(self, snapshot_index: _Optional[int] = ..., offset: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class LeaseAsk(_message.Message):
    __slots__ = ("ask_id", "lease_id", "renew", "applied")
    ASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    ask_id: int
    lease_id: int
    renew: bool
    applied: int
    def __init__(self, ask_id: _Optional[int] = ..., lease_id: _Optional[int] = ..., renew: _Optional[bool] = ..., applied: _Optional[int] = ...) -> None: ...

class LeaseAnswer(_message.Message):
    __slots__ = ("ask_id", "lease_id", "ttl_ms", "granted_ttl")
    ASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    GRANTED_TTL_FIELD_NUMBER: _ClassVar[int]
    ask_id: int
    lease_id: int
    ttl_ms: int
    granted_ttl: int
    def __init__(self, ask_id: _Optional[int] = ..., lease_id: _Optional[int] = ..., ttl_ms: _Optional[int] = ..., granted_ttl: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("cluster_id", "from_node", "to_node", "pre_vote", "pre_vote_reply", "prepare", "promise", "nack", "accept", "accepted", "heartbeat", "heartbeat_ack", "catchup_request", "catchup_reply", "forward", "read_index_request", "read_index_reply", "snapshot_chunk", "snapshot_ack", "lease_ask", "lease_answer")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_FIELD_NUMBER: _ClassVar[int]
    PRE_VOTE_FIELD_NUMBER: _ClassVar[int]
    PRE_VOTE_REPLY_FIELD_NUMBER: _ClassVar[int]
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    PROMISE_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    CATCHUP_REQUEST_FIELD_NUMBER: _ClassVar[int]
    CATCHUP_REPLY_FIELD_NUMBER: _ClassVar[int]
    FORWARD_FIELD_NUMBER: _ClassVar[int]
    READ_INDEX_REQUEST_FIELD_NUMBER: _ClassVar[int]
    READ_INDEX_REPLY_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ACK_FIELD_NUMBER: _ClassVar[int]
    LEASE_ASK_FIELD_NUMBER: _ClassVar[int]
    LEASE_ANSWER_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    from_node: int
    to_node: int
    pre_vote: PreVote
    pre_vote_reply: PreVoteReply
    prepare: Prepare
    promise: Promise
    nack: Nack
    accept: Accept
    accepted: Accepted
    heartbeat: Heartbeat
    heartbeat_ack: HeartbeatAck
    catchup_request: CatchupRequest
    catchup_reply: CatchupReply
    forward: Forward
    read_index_request: ReadIndexRequest
    read_index_reply: ReadIndexReply
    snapshot_chunk: SnapshotChunk
    snapshot_ack: SnapshotAck
    lease_ask: LeaseAsk
    lease_answer: LeaseAnswer
    def __init__(self, cluster_id: _Optional[str] = ..., from_node: _Optional[int] = ..., to_node: _Optional[int] = ..., pre_vote: _Optional[_Union[PreVote, _Mapping]] = ..., pre_vote_reply: _Optional[_Union[PreVoteReply, _Mapping]] = ..., prepare: _Optional[_Union[Prepare, _Mapping]] = ..., promise: _Optional[_Union[Promise, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., accept: _Optional[_Union[Accept, _Mapping]] = ..., accepted: _Optional[_Union[Accepted, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[HeartbeatAck, _Mapping]] = ..., catchup_request: _Optional[_Union[CatchupRequest, _Mapping]] = ..., catchup_reply: _Optional[_Union[CatchupReply, _Mapping]] = ..., forward: _Optional[_Union[Forward, _Mapping]] = ..., read_index_request: _Optional[_Union[ReadIndexRequest, _Mapping]] = ..., read_index_reply: _Optional[_Union[ReadIndexReply, _Mapping]] = ..., snapshot_chunk: _Optional[_Union[SnapshotChunk, _Mapping]] = ..., snapshot_ack: _Optional[_Union[SnapshotAck, _Mapping]] = ..., lease_ask: _Optional[_Union[LeaseAsk, _Mapping]] = ..., lease_answer: _Optional[_Union[LeaseAnswer, _Mapping]] = ...) -> None: ...
