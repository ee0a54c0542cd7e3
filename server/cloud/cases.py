"""Validate and decode one wire ``HardCase`` into plain Python values.

``decode_case`` is the single place where the cloud turns a ``fedge.cloud.v1.HardCase``
into a ``DecodedCase`` the teacher and the fusion can use. Everything it rejects raises
``CaseError`` carrying the gRPC status the service answers with:

- ``INVALID_ARGUMENT``: a missing field (node id, frame id, frame size), an unspecified or
  ``NONE`` privacy mode, pixels that do not match the mode (landmarks with pixels, frames
  without ``frame_jpeg``, crops without crops), a person without 33 landmarks, a
  non-finite or inverted box, a crop outside the frame, bytes that are not a decodable
  JPEG, or a JPEG whose size contradicts the sizes the case states.
- ``RESOURCE_EXHAUSTED``: the JPEGs of a case would decode to more pixels than
  ``CaseLimits.max_pixels``. The request is well formed, it only asks for more memory than
  this server grants (the same code gRPC itself uses for an oversized message), so a node
  may retry it smaller; INVALID_ARGUMENT would claim the image is malformed.

Decompression bombs: a small JPEG can declare a huge image (65535 x 65535 is 4.3 G
pixels, 12.9 GB as BGR). ``jpeg_dimensions`` reads the width and height from the JPEG's
start-of-frame (SOF) marker, walking the segment lengths without decoding anything, and
the limit is enforced before OpenCV allocates a single pixel. OpenCV's decoder would
apply the EXIF orientation by default; the case's coordinates are the stored pixels, so
decoding ignores it (``IMREAD_IGNORE_ORIENTATION``) and the decoded shape must equal the
header's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import grpc
import numpy as np

from fedge.core.errors import FedgeError
from fedge.core.proto import cloud_pb2
from fedge.core.records import Detection, Person

__all__ = [
    "MAX_NODE_ID_LENGTH",
    "MODE_NAMES",
    "NUM_LANDMARKS",
    "CaseError",
    "CaseLimits",
    "CropImage",
    "DecodedCase",
    "decode_case",
    "decode_jpeg",
    "jpeg_dimensions",
]

NUM_LANDMARKS = 33
"""Landmarks per BlazePose person."""

MAX_NODE_ID_LENGTH = 128
"""Longest node id a case may name."""

MODE_NAMES: dict[int, str] = {
    cloud_pb2.PRIVACY_MODE_LANDMARKS: "landmarks",
    cloud_pb2.PRIVACY_MODE_CROPS: "crops",
    cloud_pb2.PRIVACY_MODE_FRAMES: "frames",
}
"""Wire privacy modes the cloud accepts, by their names in ``DecodedCase.mode``."""

# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_SOF_MARKERS = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
# Markers that stand alone, without a length field.
_STANDALONE_MARKERS = frozenset({0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})
_SOS = 0xDA
_EOI = 0xD9


class CaseError(FedgeError):
    """A hard case the cloud refuses; ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class CaseLimits:
    """What one case may ask of the server.

    Parameters
    ----------
    max_pixels:
        Most pixels (width x height, summed over the frame or all crops) a case may
        decode to. 16.8 M by default: a 4096 x 4096 frame, 50 MB as BGR.
    max_crops:
        Most crops in one ``crops`` case.
    """

    max_pixels: int = 4096 * 4096
    max_crops: int = 64


@dataclass(frozen=True)
class CropImage:
    """One decoded crop; ``(x, y)`` is its top-left corner in frame pixels."""

    image: np.ndarray
    x: int
    y: int


@dataclass(frozen=True)
class DecodedCase:
    """A validated, decoded ``HardCase``; all coordinates in stored-frame pixels."""

    node_id: str
    frame_id: int
    capture_time: float
    mode: str
    model_version: str
    frame_width: int
    frame_height: int
    detections: tuple[Detection, ...]
    persons: tuple[Person, ...]
    hard_reasons: tuple[str, ...]
    frame: np.ndarray | None
    crops: tuple[CropImage, ...]

    @property
    def pixel_count(self) -> int:
        """Decoded pixels this case carries (0 in ``landmarks`` mode)."""
        total = 0 if self.frame is None else int(self.frame.shape[0] * self.frame.shape[1])
        return total + sum(int(c.image.shape[0] * c.image.shape[1]) for c in self.crops)


def _mode_name(value: int) -> str:
    try:
        return cloud_pb2.PrivacyMode.Name(value)
    except ValueError:
        return str(value)


def _invalid(message: str) -> CaseError:
    return CaseError(grpc.StatusCode.INVALID_ARGUMENT, message)


def jpeg_dimensions(data: bytes) -> tuple[int, int]:
    """Return ``(width, height)`` from a JPEG's start-of-frame marker, decoding nothing.

    Raises
    ------
    CaseError
        INVALID_ARGUMENT when the bytes are not a JPEG or end before a start-of-frame
        marker with a non-zero size.
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise _invalid("image is not a JPEG (no SOI marker): send JPEG bytes")
    pos = 2
    end = len(data)
    while pos < end:
        if data[pos] != 0xFF:
            raise _invalid(f"JPEG is corrupt (no marker at byte {pos}): re-encode the image")
        while pos < end and data[pos] == 0xFF:  # fill bytes may pad any marker
            pos += 1
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE_MARKERS:
            continue
        if marker in (_SOS, _EOI):
            break
        if pos + 2 > end:
            break
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            raise _invalid(f"JPEG is corrupt (segment length {length}): re-encode the image")
        if marker in _SOF_MARKERS:
            if pos + 7 > end:
                break
            height = int.from_bytes(data[pos + 3 : pos + 5], "big")
            width = int.from_bytes(data[pos + 5 : pos + 7], "big")
            if width == 0 or height == 0:
                raise _invalid(f"JPEG declares a {width}x{height} image: re-encode the image")
            return width, height
        pos += length
    raise _invalid("JPEG has no start-of-frame marker before its scan: re-encode the image")


def decode_jpeg(data: bytes, *, max_pixels: int, what: str = "image") -> np.ndarray:
    """Decode a JPEG to BGR uint8 after checking its declared size against ``max_pixels``.

    Raises
    ------
    CaseError
        RESOURCE_EXHAUSTED when the header declares more than ``max_pixels`` pixels;
        INVALID_ARGUMENT when the bytes are not a decodable JPEG.
    """
    width, height = jpeg_dimensions(data)
    if width * height > max_pixels:
        raise CaseError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{what} declares {width}x{height} = {width * height} pixels, over this server's "
            f"limit of {max_pixels}: send a smaller image",
        )
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None or image.shape[:2] != (height, width):
        raise _invalid(f"{what} is not a decodable JPEG: re-encode it")
    return image


def _finite(values: Iterable[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def _box(message: cloud_pb2.Box, what: str) -> tuple[float, float, float, float]:
    box = (float(message.x1), float(message.y1), float(message.x2), float(message.y2))
    if not _finite(box) or box[2] < box[0] or box[3] < box[1]:
        raise _invalid(
            f"{what} box {list(box)} is not a finite [x1, y1, x2, y2] with x1<=x2, y1<=y2"
        )
    return box


def _score(value: float, what: str) -> float:
    score = float(value)
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise _invalid(f"{what} score {score} is outside 0..1")
    return score


def _detections(message: cloud_pb2.HardCase) -> tuple[Detection, ...]:
    found = []
    for i, det in enumerate(message.detections):
        what = f"detection {i}"
        if not det.HasField("box"):
            raise _invalid(f"{what} has no box")
        if not det.label:
            raise _invalid(f"{what} has no label")
        found.append(
            Detection(box=_box(det.box, what), label=det.label, score=_score(det.score, what))
        )
    return tuple(found)


def _persons(message: cloud_pb2.HardCase) -> tuple[Person, ...]:
    found = []
    for i, person in enumerate(message.persons):
        what = f"person {i}"
        if len(person.landmarks) != NUM_LANDMARKS:
            raise _invalid(
                f"{what} has {len(person.landmarks)} landmarks; "
                f"BlazePose persons need {NUM_LANDMARKS}"
            )
        landmarks = np.array(
            [(lm.x, lm.y, lm.z, lm.visibility) for lm in person.landmarks], dtype=np.float32
        )
        if not np.isfinite(landmarks).all():
            raise _invalid(f"{what} has non-finite landmarks")
        if not person.HasField("box"):
            raise _invalid(f"{what} has no box")
        found.append(
            Person(
                landmarks=landmarks, score=_score(person.score, what), box=_box(person.box, what)
            )
        )
    return tuple(found)


def _crops(message: cloud_pb2.HardCase, limits: CaseLimits) -> tuple[CropImage, ...]:
    crops = message.crops.crops
    if not crops:
        raise _invalid("crops mode needs at least one crop in 'crops'")
    if len(crops) > limits.max_crops:
        raise CaseError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"case has {len(crops)} crops, over this server's limit of {limits.max_crops}",
        )
    declared = []
    for i, crop in enumerate(crops):
        what = f"crop {i}"
        if not crop.jpeg:
            raise _invalid(f"{what} has no JPEG bytes")
        width, height = jpeg_dimensions(crop.jpeg)
        if (crop.width, crop.height) != (width, height):
            raise _invalid(
                f"{what} states {crop.width}x{crop.height} but its JPEG is {width}x{height}"
            )
        if (
            crop.x < 0
            or crop.y < 0
            or crop.x + width > message.frame_width
            or crop.y + height > message.frame_height
        ):
            raise _invalid(
                f"{what} at ({crop.x}, {crop.y}) size {width}x{height} lies outside the "
                f"{message.frame_width}x{message.frame_height} frame"
            )
        declared.append(width * height)
    if sum(declared) > limits.max_pixels:
        raise CaseError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"crops declare {sum(declared)} pixels in all, over this server's limit of "
            f"{limits.max_pixels}: send fewer or smaller crops",
        )
    return tuple(
        CropImage(
            image=decode_jpeg(crop.jpeg, max_pixels=limits.max_pixels, what=f"crop {i}"),
            x=int(crop.x),
            y=int(crop.y),
        )
        for i, crop in enumerate(crops)
    )


def _frame(message: cloud_pb2.HardCase, limits: CaseLimits) -> np.ndarray:
    if not message.frame_jpeg:
        raise _invalid("frames mode needs the frame's JPEG in 'frame_jpeg'")
    width, height = jpeg_dimensions(message.frame_jpeg)
    if width * height <= limits.max_pixels and (width, height) != (
        message.frame_width,
        message.frame_height,
    ):
        raise _invalid(
            f"frame_jpeg is {width}x{height} but the case states a "
            f"{message.frame_width}x{message.frame_height} frame"
        )
    return decode_jpeg(message.frame_jpeg, max_pixels=limits.max_pixels, what="frame_jpeg")


def decode_case(message: cloud_pb2.HardCase, limits: CaseLimits | None = None) -> DecodedCase:
    """Validate a wire ``HardCase`` and decode its pixels.

    Parameters
    ----------
    message:
        The case as received.
    limits:
        Server limits; ``CaseLimits()`` when not given.

    Raises
    ------
    CaseError
        With INVALID_ARGUMENT or RESOURCE_EXHAUSTED (see the module docstring).
    """
    limits = limits or CaseLimits()
    if not message.node_id:
        raise _invalid("node_id is missing: every hard case names its node")
    if len(message.node_id) > MAX_NODE_ID_LENGTH:
        raise _invalid(f"node_id is longer than {MAX_NODE_ID_LENGTH} characters")
    if message.frame_id <= 0:
        raise _invalid(
            f"frame_id {message.frame_id} is missing: send the frame's store id (1 or more)"
        )
    if message.privacy_mode not in MODE_NAMES:
        name = _mode_name(message.privacy_mode)
        raise _invalid(
            f"privacy_mode {name} is not sent to the cloud: use LANDMARKS, CROPS or FRAMES"
        )
    mode = MODE_NAMES[message.privacy_mode]
    if message.frame_width <= 0 or message.frame_height <= 0:
        raise _invalid(
            f"frame size {message.frame_width}x{message.frame_height} is missing: state the "
            "stored frame's width and height"
        )
    if not math.isfinite(message.capture_time) or message.capture_time < 0:
        raise _invalid(f"capture_time {message.capture_time} is not a Unix time")
    pixels = message.WhichOneof("pixels")
    expected = {"landmarks": None, "crops": "crops", "frames": "frame_jpeg"}[mode]
    if pixels != expected:
        if expected is None:
            raise _invalid(f"landmarks mode carries '{pixels}': a landmarks case sends no pixels")
        raise _invalid(f"{mode} mode needs '{expected}', but the case carries '{pixels}'")
    frame = _frame(message, limits) if mode == "frames" else None
    crops = _crops(message, limits) if mode == "crops" else ()
    return DecodedCase(
        node_id=message.node_id,
        frame_id=int(message.frame_id),
        capture_time=float(message.capture_time),
        mode=mode,
        model_version=message.model_version,
        frame_width=int(message.frame_width),
        frame_height=int(message.frame_height),
        detections=_detections(message),
        persons=_persons(message),
        hard_reasons=tuple(message.hard_reasons),
        frame=frame,
        crops=crops,
    )
