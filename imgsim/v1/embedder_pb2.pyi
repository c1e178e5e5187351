from imgsim.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Image(_message.Message):
    __slots__ = ("id", "data")
    ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    data: bytes
    def __init__(self, id: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("images", "raw")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    raw: bool
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., raw: _Optional[bool] = ...) -> None: ...

class EmbedResult(_message.Message):
    __slots__ = ("id", "vector", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    vector: _common_pb2.Vector
    error: _common_pb2.ItemError
    def __init__(self, id: _Optional[str] = ..., vector: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.ItemError, _Mapping]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("results", "model_fingerprint")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EmbedResult]
    model_fingerprint: str
    def __init__(self, results: _Optional[_Iterable[_Union[EmbedResult, _Mapping]]] = ..., model_fingerprint: _Optional[str] = ...) -> None: ...

class EmbedStreamRequest(_message.Message):
    __slots__ = ("images", "raw")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    raw: bool
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., raw: _Optional[bool] = ...) -> None: ...

class EmbedStreamResponse(_message.Message):
    __slots__ = ("results", "model_fingerprint")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EmbedResult]
    model_fingerprint: str
    def __init__(self, results: _Optional[_Iterable[_Union[EmbedResult, _Mapping]]] = ..., model_fingerprint: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model_id", "revision", "dimension", "image_height", "image_width", "device", "dtype", "model_fingerprint", "max_batch_size", "pooling", "preprocessing", "dtype_reason", "draft_decode")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    DTYPE_REASON_FIELD_NUMBER: _ClassVar[int]
    DRAFT_DECODE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    revision: str
    dimension: int
    image_height: int
    image_width: int
    device: str
    dtype: str
    model_fingerprint: str
    max_batch_size: int
    pooling: str
    preprocessing: str
    dtype_reason: str
    draft_decode: bool
    def __init__(self, model_id: _Optional[str] = ..., revision: _Optional[str] = ..., dimension: _Optional[int] = ..., image_height: _Optional[int] = ..., image_width: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., pooling: _Optional[str] = ..., preprocessing: _Optional[str] = ..., dtype_reason: _Optional[str] = ..., draft_decode: _Optional[bool] = ...) -> None: ...
