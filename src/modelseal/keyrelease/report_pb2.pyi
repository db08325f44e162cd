from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class AttestationReport(_message.Message):
    __slots__ = ("version", "device_id", "session_public_key", "request_digest", "measurement", "session_counter", "timestamp", "signature")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENT_FIELD_NUMBER: _ClassVar[int]
    SESSION_COUNTER_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    version: int
    device_id: int
    session_public_key: bytes
    request_digest: bytes
    measurement: bytes
    session_counter: int
    timestamp: int
    signature: bytes
    def __init__(self, version: _Optional[int] = ..., device_id: _Optional[int] = ..., session_public_key: _Optional[bytes] = ..., request_digest: _Optional[bytes] = ..., measurement: _Optional[bytes] = ..., session_counter: _Optional[int] = ..., timestamp: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...
