"""Build a MediaPipe ``.task`` bundle for ``PoseLandmarker`` from the plain ``.tflite`` files.

The Tasks runtime reads each float model's input normalization from its TFLite
metadata. ``pose_detection.tflite`` carries it; ``pose_landmark_full.tflite`` does not,
so :func:`with_normalization_metadata` writes a ``ModelMetadata`` flatbuffer (the
schemas shipped in ``mediapipe/tasks/metadata``, pure Python) into the model. The
bundle is an uncompressed zip with 4-byte-aligned members, like the official ones.
"""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np

__all__ = [
    "DETECTOR_MEMBER",
    "LANDMARKS_MEMBER",
    "build_pose_task_bundle",
    "has_tflite_metadata",
    "with_normalization_metadata",
]

DETECTOR_MEMBER = "pose_detector.tflite"
LANDMARKS_MEMBER = "pose_landmarks_detector.tflite"
_METADATA_NAME = "TFLITE_METADATA"
_METADATA_IDENTIFIER = b"M001"
_MODEL_IDENTIFIER = b"TFL3"
_ALIGNMENT = 4
_PADDING_EXTRA_ID = 0xD935  # the "alignment" extra field Android's zipalign writes


def has_tflite_metadata(model: bytes) -> bool:
    """Return whether ``model`` already carries a ``TFLITE_METADATA`` entry."""
    from mediapipe.tasks.metadata import schema_py_generated as schema

    root = schema.Model.GetRootAsModel(model, 0)
    return any(
        root.Metadata(i).Name() == _METADATA_NAME.encode() for i in range(root.MetadataLength())
    )


def with_normalization_metadata(
    model: bytes, mean: float, std: float, *, name: str = "model"
) -> bytes:
    """Return ``model`` with metadata declaring an RGB image input ``(x - mean) / std``."""
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as meta
    from mediapipe.tasks.metadata import schema_py_generated as schema

    tflite = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    subgraph = tflite.subgraphs[0]

    image = meta.TensorMetadataT()
    image.name = "image"
    image.content = meta.ContentT()
    image.content.contentPropertiesType = meta.ContentProperties.ImageProperties
    image.content.contentProperties = meta.ImagePropertiesT()
    image.content.contentProperties.colorSpace = meta.ColorSpaceType.RGB
    normalization = meta.NormalizationOptionsT()
    normalization.mean, normalization.std = [float(mean)], [float(std)]
    unit = meta.ProcessUnitT()
    unit.optionsType = meta.ProcessUnitOptions.NormalizationOptions
    unit.options = normalization
    image.processUnits = [unit]
    image.stats = meta.StatsT()
    image.stats.min, image.stats.max = [(0.0 - mean) / std], [(255.0 - mean) / std]

    outputs = []
    for index in subgraph.outputs:
        tensor = meta.TensorMetadataT()
        tensor.name = subgraph.tensors[index].name.decode()
        outputs.append(tensor)
    graph = meta.SubGraphMetadataT()
    graph.inputTensorMetadata = [image]
    graph.outputTensorMetadata = outputs
    metadata = meta.ModelMetadataT()
    metadata.name = name
    metadata.minParserVersion = "1.0.0"
    metadata.subgraphMetadata = [graph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(metadata.Pack(builder), _METADATA_IDENTIFIER)

    buffer = schema.BufferT()
    buffer.data = np.frombuffer(bytes(builder.Output()), dtype=np.uint8)
    tflite.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = _METADATA_NAME
    entry.buffer = len(tflite.buffers) - 1
    tflite.metadata = [m for m in (tflite.metadata or []) if m.name != _METADATA_NAME.encode()]
    tflite.metadata.append(entry)
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(tflite.Pack(builder), _MODEL_IDENTIFIER)
    return bytes(builder.Output())


def build_pose_task_bundle(detector: bytes, landmarks: bytes) -> bytes:
    """Return the bytes of a ``pose_landmarker.task`` bundle holding both models."""
    if not has_tflite_metadata(detector):
        detector = with_normalization_metadata(detector, 127.5, 127.5, name="Pose detector")
    if not has_tflite_metadata(landmarks):
        landmarks = with_normalization_metadata(landmarks, 0.0, 255.0, name="Pose landmarks")
    return _aligned_zip({DETECTOR_MEMBER: detector, LANDMARKS_MEMBER: landmarks})


def _aligned_zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            start = out.tell() + 30 + len(name.encode()) + 4  # header + name + extra header
            padding = -start % _ALIGNMENT
            info.extra = struct.pack("<HH", _PADDING_EXTRA_ID, padding) + b"\0" * padding
            archive.writestr(info, data)
    return out.getvalue()
