from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BusControl(_message.Message):
    __slots__ = ("cluster_id", "from_node", "nonce", "probe", "probe_reply")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    PROBE_REPLY_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    from_node: int
    nonce: bytes
    probe: Probe
    probe_reply: ProbeReply
    def __init__(self, cluster_id: _Optional[str] = ..., from_node: _Optional[int] = ..., nonce: _Optional[bytes] = ..., probe: _Optional[_Union[Probe, _Mapping]] = ..., probe_reply: _Optional[_Union[ProbeReply, _Mapping]] = ...) -> None: ...

class Probe(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProbeReply(_message.Message):
    __slots__ = ("probe_nonce", "your_host", "your_bus_port")
    PROBE_NONCE_FIELD_NUMBER: _ClassVar[int]
    YOUR_HOST_FIELD_NUMBER: _ClassVar[int]
    YOUR_BUS_PORT_FIELD_NUMBER: _ClassVar[int]
    probe_nonce: bytes
    your_host: str
    your_bus_port: int
    def __init__(self, probe_nonce: _Optional[bytes] = ..., your_host: _Optional[str] = ..., your_bus_port: _Optional[int] = ...) -> None: ...
