from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TensorPayload(_message.Message):
    __slots__ = ("dtype", "shape", "data", "mode", "row_scale")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ROW_SCALE_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    mode: str
    row_scale: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., mode: _Optional[str] = ..., row_scale: _Optional[bytes] = ...) -> None: ...

class ControlPayload(_message.Message):
    __slots__ = ("kind", "payload")
    class PayloadEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    kind: str
    payload: _containers.ScalarMap[str, str]
    def __init__(self, kind: _Optional[str] = ..., payload: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("run_id", "sender", "receiver", "seq", "epoch", "step", "micro", "n_micro", "kind", "tensor", "control")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MICRO_FIELD_NUMBER: _ClassVar[int]
    N_MICRO_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    sender: str
    receiver: str
    seq: int
    epoch: int
    step: int
    micro: int
    n_micro: int
    kind: str
    tensor: TensorPayload
    control: ControlPayload
    def __init__(self, run_id: _Optional[str] = ..., sender: _Optional[str] = ..., receiver: _Optional[str] = ..., seq: _Optional[int] = ..., epoch: _Optional[int] = ..., step: _Optional[int] = ..., micro: _Optional[int] = ..., n_micro: _Optional[int] = ..., kind: _Optional[str] = ..., tensor: _Optional[_Union[TensorPayload, _Mapping]] = ..., control: _Optional[_Union[ControlPayload, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("status", "seq", "reason", "last_digest")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[Ack.Status]
        HELLO: _ClassVar[Ack.Status]
        ACCEPTED: _ClassVar[Ack.Status]
        DUPLICATE: _ClassVar[Ack.Status]
        REJECTED: _ClassVar[Ack.Status]
    STATUS_UNSPECIFIED: Ack.Status
    HELLO: Ack.Status
    ACCEPTED: Ack.Status
    DUPLICATE: Ack.Status
    REJECTED: Ack.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    status: Ack.Status
    seq: int
    reason: str
    last_digest: bytes
    def __init__(self, status: _Optional[_Union[Ack.Status, str]] = ..., seq: _Optional[int] = ..., reason: _Optional[str] = ..., last_digest: _Optional[bytes] = ...) -> None: ...
