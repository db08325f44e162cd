from modelseal.keyrelease import report_pb2 as _report_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttestationRequest(_message.Message):
    __slots__ = ("device_id", "request")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    device_id: int
    request: bytes
    def __init__(self, device_id: _Optional[int] = ..., request: _Optional[bytes] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("device_id", "data", "release")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    device_id: int
    data: bytes
    release: VaultRelease
    def __init__(self, device_id: _Optional[int] = ..., data: _Optional[bytes] = ..., release: _Optional[_Union[VaultRelease, _Mapping]] = ...) -> None: ...

class VaultRelease(_message.Message):
    __slots__ = ("sealed", "domain", "device", "key_name", "key_version", "nonce")
    SEALED_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    sealed: bytes
    domain: str
    device: str
    key_name: str
    key_version: int
    nonce: bytes
    def __init__(self, sealed: _Optional[bytes] = ..., domain: _Optional[str] = ..., device: _Optional[str] = ..., key_name: _Optional[str] = ..., key_version: _Optional[int] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("handle", "session_counter", "inputs", "outputs")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    SESSION_COUNTER_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    handle: str
    session_counter: int
    inputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    def __init__(self, handle: _Optional[str] = ..., session_counter: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "type", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    shape: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., shape: _Optional[_Iterable[str]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("device_id", "handle", "inputs")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    device_id: int
    handle: str
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, device_id: _Optional[int] = ..., handle: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class RunResponse(_message.Message):
    __slots__ = ("outputs",)
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class ResetRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: int
    def __init__(self, device_id: _Optional[int] = ...) -> None: ...

class ResetResponse(_message.Message):
    __slots__ = ("session_counter",)
    SESSION_COUNTER_FIELD_NUMBER: _ClassVar[int]
    session_counter: int
    def __init__(self, session_counter: _Optional[int] = ...) -> None: ...
