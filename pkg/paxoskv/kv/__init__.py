"""The replicated state machine: kv commands applied in log order, exactly once."""

from paxoskv.kv.commands import (
    DecodeError,
    Limits,
    decode,
    encode,
    encode_delete,
    encode_put,
    validate,
)
from paxoskv.kv.state_machine import Applied, Changes, KVStateMachine, Session

__all__ = [
    "Applied",
    "Changes",
    "DecodeError",
    "KVStateMachine",
    "Limits",
    "Session",
    "decode",
    "encode",
    "encode_delete",
    "encode_put",
    "validate",
]
