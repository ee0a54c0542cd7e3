from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PrivacyMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIVACY_MODE_UNSPECIFIED: _ClassVar[PrivacyMode]
    PRIVACY_MODE_NONE: _ClassVar[PrivacyMode]
    PRIVACY_MODE_LANDMARKS: _ClassVar[PrivacyMode]
    PRIVACY_MODE_CROPS: _ClassVar[PrivacyMode]
    PRIVACY_MODE_FRAMES: _ClassVar[PrivacyMode]
PRIVACY_MODE_UNSPECIFIED: PrivacyMode
PRIVACY_MODE_NONE: PrivacyMode
PRIVACY_MODE_LANDMARKS: PrivacyMode
PRIVACY_MODE_CROPS: PrivacyMode
PRIVACY_MODE_FRAMES: PrivacyMode

class Box(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("box", "label", "score")
    BOX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    box: Box
    label: str
    score: float
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Landmark(_message.Message):
    __slots__ = ("x", "y", "z", "visibility")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    z: float
    visibility: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., z: _Optional[float] = ..., visibility: _Optional[float] = ...) -> None: ...

class Person(_message.Message):
    __slots__ = ("landmarks", "score", "box")
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    landmarks: _containers.RepeatedCompositeFieldContainer[Landmark]
    score: float
    box: Box
    def __init__(self, landmarks: _Optional[_Iterable[_Union[Landmark, _Mapping]]] = ..., score: _Optional[float] = ..., box: _Optional[_Union[Box, _Mapping]] = ...) -> None: ...

class Crop(_message.Message):
    __slots__ = ("jpeg", "x", "y", "width", "height")
    JPEG_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    jpeg: bytes
    x: int
    y: int
    width: int
    height: int
    def __init__(self, jpeg: _Optional[bytes] = ..., x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class CropSet(_message.Message):
    __slots__ = ("crops",)
    CROPS_FIELD_NUMBER: _ClassVar[int]
    crops: _containers.RepeatedCompositeFieldContainer[Crop]
    def __init__(self, crops: _Optional[_Iterable[_Union[Crop, _Mapping]]] = ...) -> None: ...

class HardCase(_message.Message):
    __slots__ = ("node_id", "frame_id", "capture_time", "privacy_mode", "model_version", "frame_width", "frame_height", "detections", "persons", "hard_reasons", "frame_jpeg", "crops")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_MODE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRAME_WIDTH_FIELD_NUMBER: _ClassVar[int]
    FRAME_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    PERSONS_FIELD_NUMBER: _ClassVar[int]
    HARD_REASONS_FIELD_NUMBER: _ClassVar[int]
    FRAME_JPEG_FIELD_NUMBER: _ClassVar[int]
    CROPS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    frame_id: int
    capture_time: float
    privacy_mode: PrivacyMode
    model_version: str
    frame_width: int
    frame_height: int
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    persons: _containers.RepeatedCompositeFieldContainer[Person]
    hard_reasons: _containers.RepeatedScalarFieldContainer[str]
    frame_jpeg: bytes
    crops: CropSet
    def __init__(self, node_id: _Optional[str] = ..., frame_id: _Optional[int] = ..., capture_time: _Optional[float] = ..., privacy_mode: _Optional[_Union[PrivacyMode, str]] = ..., model_version: _Optional[str] = ..., frame_width: _Optional[int] = ..., frame_height: _Optional[int] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., persons: _Optional[_Iterable[_Union[Person, _Mapping]]] = ..., hard_reasons: _Optional[_Iterable[str]] = ..., frame_jpeg: _Optional[bytes] = ..., crops: _Optional[_Union[CropSet, _Mapping]] = ...) -> None: ...

class FusedBox(_message.Message):
    __slots__ = ("box", "label", "score", "has_edge", "edge_score", "has_cloud", "cloud_score")
    BOX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    HAS_EDGE_FIELD_NUMBER: _ClassVar[int]
    EDGE_SCORE_FIELD_NUMBER: _ClassVar[int]
    HAS_CLOUD_FIELD_NUMBER: _ClassVar[int]
    CLOUD_SCORE_FIELD_NUMBER: _ClassVar[int]
    box: Box
    label: str
    score: float
    has_edge: bool
    edge_score: float
    has_cloud: bool
    cloud_score: float
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., label: _Optional[str] = ..., score: _Optional[float] = ..., has_edge: _Optional[bool] = ..., edge_score: _Optional[float] = ..., has_cloud: _Optional[bool] = ..., cloud_score: _Optional[float] = ...) -> None: ...

class CloudResult(_message.Message):
    __slots__ = ("node_id", "frame_id", "boxes", "teacher_detections", "fusion_method", "teacher_version", "schema_version", "cached", "cloud_seconds")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    TEACHER_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    FUSION_METHOD_FIELD_NUMBER: _ClassVar[int]
    TEACHER_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    CLOUD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    frame_id: int
    boxes: _containers.RepeatedCompositeFieldContainer[FusedBox]
    teacher_detections: _containers.RepeatedCompositeFieldContainer[Detection]
    fusion_method: str
    teacher_version: str
    schema_version: int
    cached: bool
    cloud_seconds: float
    def __init__(self, node_id: _Optional[str] = ..., frame_id: _Optional[int] = ..., boxes: _Optional[_Iterable[_Union[FusedBox, _Mapping]]] = ..., teacher_detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., fusion_method: _Optional[str] = ..., teacher_version: _Optional[str] = ..., schema_version: _Optional[int] = ..., cached: _Optional[bool] = ..., cloud_seconds: _Optional[float] = ...) -> None: ...

class StreamReply(_message.Message):
    __slots__ = ("node_id", "frame_id", "result", "code", "message")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    frame_id: int
    result: CloudResult
    code: int
    message: str
    def __init__(self, node_id: _Optional[str] = ..., frame_id: _Optional[int] = ..., result: _Optional[_Union[CloudResult, _Mapping]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...
