"""What of a hard case may leave the node, and faces blurred before any pixel does.

Four modes (``--privacy``):

=============  ============================================================================
``none``       nothing: no hard case leaves the node (only model weights ever do)
``landmarks``  the frame's size, the 33 pose landmarks, boxes, scores and hard-case
               reasons of each person and detection; zero pixel bytes
``crops``      that, plus a JPEG of each person (pose box or person detector box, padded)
               and of each moving region no person explains (``clients.motion``)
``frames``     that, plus the whole frame as a JPEG
=============  ============================================================================

Motion proposals (detections labelled ``"motion"``, ``clients.motion``) never go on the
wire as detections: they are the node's guesses of where to look, not findings. In
``crops`` mode each one that the person crops do not already cover (less than
``motion_explained`` of it inside them) becomes a crop of its own (after the person
crops, within ``max_crops``), with faces blurred like every crop. That is how a node
with no person detector yet (cold start), whose BlazePose misses small far people, still
shows the cloud its people; and why a node with a detector shows it the moving people
the detector missed, the labels that teach it recall. :func:`case_coverage` says what of
the frame a case shows, which the node records with the label the cloud returns.

In ``crops`` and ``frames`` every face is blurred on the node before a pixel leaves it.
Faces are found two ways, and both are blurred:

1. **BlazeFace** (``clients.detector.Detector`` with the BlazeFace spec, as ``fedge edge``
   runs it) on the whole image and on half-overlapping tiles of half its short side, at
   a low threshold (``PrivacyPolicy.face_score``), so faces too small for one pass over
   the whole frame are found too;
2. **the pose's face landmarks** (BlazePose landmarks 0–10: nose, eyes, ears, mouth):
   a square head box around them, found even when the face is turned away or too small
   for BlazeFace.

Each face region grows by a margin (``face_margin`` face widths on every side) and is
pixelated to a few blocks across, then smoothed. Afterwards BlazeFace looks again at
exactly the JPEG bytes that would be sent, in the same passes; anything it still takes
for a face is blurred again, and after ``verify_rounds`` rounds filled flat. So BlazeFace
at ``face_score`` finds no face in what leaves the node.

Limits: a face that neither BlazeFace nor the pose finds (a far, tiny person the pose
missed) is not blurred; at that size it is a few pixels across.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import cv2
import numpy as np

from clients.motion import MOTION_LABEL
from fedge.core.errors import ConfigError, FedgeError
from fedge.core.proto import cloud_pb2
from fedge.core.records import Detection, FrameResult, Person

if TYPE_CHECKING:
    from clients.detector import Detector
    from data.frame_store import StoredFrame

__all__ = [
    "FACE_LANDMARKS",
    "FaceBlurrer",
    "PrivacyError",
    "PrivacyFilter",
    "PrivacyMode",
    "PrivacyPolicy",
    "build_hard_case",
    "case_coverage",
    "crop_regions",
    "head_box",
    "shown_regions",
]

Box = tuple[float, float, float, float]

FACE_LANDMARKS = tuple(range(11))
"""BlazePose landmarks of the face: nose, eyes (inner, centre, outer), ears, mouth."""
_SHOULDERS = (11, 12)


class PrivacyError(FedgeError):
    """A hard case could not be made safe to send (e.g. its JPEG cannot be encoded)."""


class PrivacyMode(StrEnum):
    """What a hard case reveals (see the module docstring)."""

    NONE = "none"
    LANDMARKS = "landmarks"
    CROPS = "crops"
    FRAMES = "frames"

    @property
    def sends_cases(self) -> bool:
        """Whether hard cases leave the node at all."""
        return self is not PrivacyMode.NONE

    @property
    def sends_pixels(self) -> bool:
        """Whether a case carries pixels (faces blurred)."""
        return self in (PrivacyMode.CROPS, PrivacyMode.FRAMES)

    @property
    def wire(self) -> int:
        """The ``fedge.cloud.v1.PrivacyMode`` value."""
        return {
            PrivacyMode.NONE: cloud_pb2.PRIVACY_MODE_NONE,
            PrivacyMode.LANDMARKS: cloud_pb2.PRIVACY_MODE_LANDMARKS,
            PrivacyMode.CROPS: cloud_pb2.PRIVACY_MODE_CROPS,
            PrivacyMode.FRAMES: cloud_pb2.PRIVACY_MODE_FRAMES,
        }[self]

    @classmethod
    def parse(cls, text: str) -> PrivacyMode:
        """Return the mode named ``text``; ``ConfigError`` for an unknown name."""
        try:
            return cls(text)
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ConfigError(f"unknown privacy mode {text!r}: choose one of {names}") from None


@dataclass(frozen=True)
class PrivacyPolicy:
    """Knobs of face blurring and of the pixels a case carries."""

    face_score: float = 0.5
    """BlazeFace threshold when looking for faces to blur (BlazeFace's own default)."""
    face_margin: float = 0.75
    """Growth of a BlazeFace box on every side, in face widths (the box is eyes to mouth)."""
    head_scale: float = 2.4
    """Side of a landmark head box, in spans of landmarks 0–10."""
    head_shoulder_scale: float = 0.8
    """Smallest landmark head box side, in shoulder widths (a profile face spans little)."""
    min_face_px: int = 8
    pixel_blocks: int = 5
    """A face region becomes at most this many blocks across before smoothing."""
    tile_fraction: float = 0.5
    """BlazeFace also runs on tiles of this share of the short side, half overlapping."""
    min_tile_px: int = 64
    verify_rounds: int = 3
    crop_padding: float = 0.5
    """A person crop grows by this share of its box's width and height on every side.

    The teacher needs the context: on the sample clip, around exactly the people it finds
    on the whole frame, it finds 65% of them again in crops padded by 0.2 (mean score
    0.49) and 91% in crops padded by 0.5 (0.77), for 1.4x the bytes
    (``benchmarks/results/crop_padding.md``). A person it misses in a crop comes back
    unlabelled where the cloud looked, i.e. as background to train on."""
    min_crop_px: int = 16
    max_crops: int = 16
    """At most this many crops a case: the people the node is least sure of first."""
    motion_crops: bool = True
    """Crop moving regions no person crop explains (module docstring)."""
    motion_explained: float = 0.8
    """A motion box at least this share inside the person crops needs no crop of its own."""
    jpeg_quality: int = 85


def _clip_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    return (
        int(max(0, min(width, np.floor(x1)))),
        int(max(0, min(height, np.floor(y1)))),
        int(max(0, min(width, np.ceil(x2)))),
        int(max(0, min(height, np.ceil(y2)))),
    )


def _grow(box: Sequence[float], margin: float) -> Box:
    """Grow ``box`` by ``margin`` of its larger side on every side (a square-ish region)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1)
    pad = margin * side
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = side / 2 + pad
    return (cx - half, cy - half, cx + half, cy + half)


def head_box(person: Person, policy: PrivacyPolicy | None = None) -> Box:
    """The square head region of a pose: around landmarks 0–10, sized by their span."""
    policy = policy or PrivacyPolicy()
    points = np.asarray(person.landmarks, dtype=np.float64)[list(FACE_LANDMARKS), :2]
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = float(max(hi - lo))
    shoulders = np.asarray(person.landmarks, dtype=np.float64)[list(_SHOULDERS), :2]
    shoulder_width = float(np.linalg.norm(shoulders[0] - shoulders[1]))
    side = max(
        span * policy.head_scale,
        shoulder_width * policy.head_shoulder_scale,
        float(policy.min_face_px),
    )
    cx, cy = (lo + hi) / 2
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def _tiles(width: int, height: int, policy: PrivacyPolicy) -> list[tuple[int, int, int, int]]:
    """The whole image plus half-overlapping square tiles of ``tile_fraction`` its short side."""
    regions = [(0, 0, width, height)]
    side = int(min(width, height) * policy.tile_fraction)
    if side < policy.min_tile_px:
        return regions
    stride = max(1, side // 2)

    def starts(extent: int) -> list[int]:
        values = list(range(0, max(1, extent - side + 1), stride))
        if values[-1] + side < extent:
            values.append(extent - side)
        return values

    regions += [(x, y, x + side, y + side) for y in starts(height) for x in starts(width)]
    return regions


class FaceBlurrer:
    """Find faces (BlazeFace passes + pose landmarks) and blur them; see the module docstring.

    ``face_detector`` is a BlazeFace ``Detector`` of its own (LiteRT interpreters are not
    shared between threads); ``None`` blurs only the landmark head boxes.
    """

    def __init__(self, face_detector: Detector | None, policy: PrivacyPolicy | None = None):
        self.detector = face_detector
        self.policy = policy or PrivacyPolicy()

    def find_faces(self, image: np.ndarray) -> list[Detection]:
        """BlazeFace on the whole image and on its tiles; boxes in ``image`` pixels."""
        if self.detector is None:
            return []
        height, width = image.shape[:2]
        found: list[Detection] = []
        for x1, y1, x2, y2 in _tiles(width, height, self.policy):
            for det in self.detector.detect(image[y1:y2, x1:x2], self.policy.face_score):
                bx1, by1, bx2, by2 = det.box
                found.append(Detection((bx1 + x1, by1 + y1, bx2 + x1, by2 + y1), "face", det.score))
        return found

    def face_regions(self, image: np.ndarray, persons: Sequence[Person]) -> list[Box]:
        """Regions to blur: BlazeFace boxes with their margin, and landmark head boxes."""
        regions = [_grow(d.box, self.policy.face_margin) for d in self.find_faces(image)]
        regions += [head_box(p, self.policy) for p in persons]
        return regions

    def blur_regions(
        self, image: np.ndarray, regions: Sequence[Box], *, flat: bool = False
    ) -> None:
        """Pixelate and smooth (or, with ``flat``, fill with the mean colour) in place."""
        height, width = image.shape[:2]
        for region in regions:
            x1, y1, x2, y2 = _clip_box(region, width, height)
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            roi = image[y1:y2, x1:x2]
            if flat:
                roi[:] = roi.reshape(-1, 3).mean(axis=0).astype(np.uint8)
                continue
            blocks = self.policy.pixel_blocks
            rw, rh = x2 - x1, y2 - y1
            small = cv2.resize(
                roi,
                (max(1, min(blocks, rw)), max(1, min(blocks, round(blocks * rh / max(rw, rh))))),
                interpolation=cv2.INTER_AREA,
            )
            blocky = cv2.resize(small, (rw, rh), interpolation=cv2.INTER_NEAREST)
            sigma = max(1.0, max(rw, rh) / (2.0 * blocks))
            roi[:] = cv2.GaussianBlur(blocky, (0, 0), sigma)

    def blur(self, image: np.ndarray, persons: Sequence[Person] = ()) -> tuple[np.ndarray, bytes]:
        """Return the blurred copy of ``image`` and its JPEG, verified face-free.

        ``persons`` are in ``image`` pixels. BlazeFace finds no face at ``face_score``
        in the returned JPEG (decoded), in the same passes it searched with.
        """
        out = np.ascontiguousarray(image).copy()
        self.blur_regions(out, self.face_regions(out, persons))
        for attempt in range(self.policy.verify_rounds + 1):
            data = _encode_jpeg(out, self.policy.jpeg_quality)
            left = self.find_faces(_decode_jpeg(data))
            if not left:
                return out, data
            regions = [_grow(d.box, self.policy.face_margin) for d in left]
            self.blur_regions(out, regions, flat=attempt >= self.policy.verify_rounds - 1)
        data = _encode_jpeg(out, self.policy.jpeg_quality)
        if self.find_faces(_decode_jpeg(data)):
            raise PrivacyError("faces are still found after blurring; the case is not sent")
        return out, data


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise PrivacyError("cannot encode a hard case's pixels as JPEG")
    return encoded.tobytes()


def _decode_jpeg(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def _shift_person(person: Person, dx: float, dy: float) -> Person:
    landmarks = np.asarray(person.landmarks, dtype=np.float32).copy()
    landmarks[:, 0] -= dx
    landmarks[:, 1] -= dy
    x1, y1, x2, y2 = person.box
    return Person(landmarks, person.score, (x1 - dx, y1 - dy, x2 - dx, y2 - dy))


def _wire_box(box: Sequence[float]) -> cloud_pb2.Box:
    return cloud_pb2.Box(x1=box[0], y1=box[1], x2=box[2], y2=box[3])


def build_hard_case(
    result: FrameResult,
    *,
    frame_id: int,
    frame_width: int,
    frame_height: int,
    node_id: str,
    mode: PrivacyMode,
    model_version: str = "",
) -> cloud_pb2.HardCase:
    """The pixel-free part of a ``HardCase``: ids, sizes, edge evidence and reasons
    (motion proposals are not evidence and stay on the node)."""
    case = cloud_pb2.HardCase(
        node_id=node_id,
        frame_id=int(frame_id),
        capture_time=float(result.time),
        privacy_mode=mode.wire,
        model_version=model_version,
        frame_width=int(frame_width),
        frame_height=int(frame_height),
        hard_reasons=[r for r in result.hard_reasons if not r.startswith("suppressed:")],
    )
    for det in result.detections:
        if det.label != MOTION_LABEL:
            case.detections.add(box=_wire_box(det.box), label=det.label, score=float(det.score))
    for person in result.persons:
        wire = case.persons.add(box=_wire_box(person.box), score=float(person.score))
        for x, y, z, visibility in np.asarray(person.landmarks, dtype=np.float64):
            wire.landmarks.add(x=x, y=y, z=z, visibility=visibility)
    return case


class PrivacyFilter:
    """Turn a stored hard case into the ``HardCase`` message its privacy mode allows.

    Parameters
    ----------
    mode
        What may leave the node.
    face_detector
        A BlazeFace ``Detector`` owned by this filter; required in ``crops`` and
        ``frames`` (``create`` loads one).
    policy
        Blurring and crop knobs.
    """

    def __init__(
        self,
        mode: PrivacyMode | str,
        face_detector: Detector | None = None,
        policy: PrivacyPolicy | None = None,
    ) -> None:
        self.mode = PrivacyMode.parse(mode) if isinstance(mode, str) else mode
        self.policy = policy or PrivacyPolicy()
        if self.mode.sends_pixels and face_detector is None:
            raise ConfigError(
                f"--privacy {self.mode.value} sends pixels and needs BlazeFace to blur faces; "
                "run `fedge models fetch`"
            )
        self.blurrer = FaceBlurrer(face_detector, self.policy)

    @classmethod
    def create(
        cls,
        mode: PrivacyMode | str,
        model_dir: str | None = None,
        *,
        policy: PrivacyPolicy | None = None,
        num_threads: int | None = None,
    ) -> PrivacyFilter:
        """Build a filter, loading its own BlazeFace when the mode sends pixels."""
        mode = PrivacyMode.parse(mode) if isinstance(mode, str) else mode
        detector = None
        if mode.sends_pixels:
            from clients.detector import Detector

            policy = policy or PrivacyPolicy()
            detector = Detector.blazeface(
                model_dir, score_threshold=policy.face_score, num_threads=num_threads
            )
        return cls(mode, detector, policy)

    def build_case(
        self,
        stored: StoredFrame,
        *,
        node_id: str,
        model_version: str = "",
        image: np.ndarray | None = None,
    ) -> cloud_pb2.HardCase | None:
        """The message for one stored hard case (``None`` in ``none`` mode).

        ``image`` is the stored frame (loaded from the store when not given and the mode
        sends pixels). Raises ``PrivacyError`` when the pixels cannot be made safe.
        """
        if not self.mode.sends_cases:
            return None
        result = stored.result()
        if self.mode.sends_pixels and image is None:
            image = stored.load_image()
        return self.case_for(
            result,
            image,
            frame_id=stored.id,
            frame_width=stored.width,
            frame_height=stored.height,
            node_id=node_id,
            model_version=model_version,
        )

    def case_for(
        self,
        result: FrameResult,
        image: np.ndarray | None,
        *,
        frame_id: int,
        frame_width: int,
        frame_height: int,
        node_id: str,
        model_version: str = "",
    ) -> cloud_pb2.HardCase | None:
        """Like ``build_case`` from a ``FrameResult`` and its frame (BGR, stored pixels)."""
        if not self.mode.sends_cases:
            return None
        mode = self.mode
        regions: list[tuple[int, int, int, int]] = []
        if mode is PrivacyMode.CROPS:
            regions = self.crop_regions(result, frame_width, frame_height)
            if not regions:  # nothing to crop around: send what landmarks mode sends
                mode = PrivacyMode.LANDMARKS
        case = build_hard_case(
            result,
            frame_id=frame_id,
            frame_width=frame_width,
            frame_height=frame_height,
            node_id=node_id,
            mode=mode,
            model_version=model_version,
        )
        if not mode.sends_pixels:
            return case
        if image is None or image.shape[:2] != (frame_height, frame_width):
            raise PrivacyError(
                f"frame {frame_id}: the image does not match the stored "
                f"{frame_width}x{frame_height} frame"
            )
        # landmark head boxes first on the whole frame, then BlazeFace where it will be sent
        frame = np.ascontiguousarray(image).copy()
        self.blurrer.blur_regions(frame, [head_box(p, self.policy) for p in result.persons])
        if mode is PrivacyMode.FRAMES:
            _, case.frame_jpeg = self.blurrer.blur(frame)
            return case
        for x1, y1, x2, y2 in regions:
            _, data = self.blurrer.blur(frame[y1:y2, x1:x2])
            case.crops.crops.add(jpeg=data, x=x1, y=y1, width=x2 - x1, height=y2 - y1)
        return case

    def crop_regions(
        self, result: FrameResult, width: int, height: int
    ) -> list[tuple[int, int, int, int]]:
        """This filter's :func:`crop_regions` of ``result``'s frame."""
        return crop_regions(result.persons, result.detections, width, height, self.policy)


def crop_regions(
    persons: Sequence[Person],
    detections: Sequence[Detection],
    width: int,
    height: int,
    policy: PrivacyPolicy | None = None,
) -> list[tuple[int, int, int, int]]:
    """The crops a ``crops`` case of a ``width`` x ``height`` frame shows: padded person
    regions (pose boxes and ``person`` detector boxes), then padded motion regions the
    person regions do not explain (``motion_crops``), largest first; clipped, at most
    ``max_crops``. The person regions go least sure first (a region's lowest box score),
    then largest first: when a frame has more people than crops, the crops go to those the
    node is unsure of, which are what a hard case asks about, not to those it has found.
    Other labels (BlazeFace's ``face`` boxes) get no crop: a face is never what the cloud
    labels, and it is blurred anyway."""
    policy = policy or PrivacyPolicy()
    people = [(p.box, p.score) for p in persons]
    people += [(d.box, d.score) for d in detections if d.label == "person"]
    regions = _padded(people, width, height, policy)
    if policy.motion_crops:
        covered = np.zeros((height, width), dtype=bool)
        for x1, y1, x2, y2 in regions:
            covered[y1:y2, x1:x2] = True
        motion = [(d.box, 0.0) for d in detections if d.label == MOTION_LABEL]
        for x1, y1, x2, y2 in _padded(motion, width, height, policy):
            if covered[y1:y2, x1:x2].mean() < policy.motion_explained:
                regions.append((x1, y1, x2, y2))
    return list(dict.fromkeys(regions))[: policy.max_crops]


def shown_regions(
    mode: PrivacyMode | str, policy: PrivacyPolicy | None = None
) -> Callable[[Sequence[Person], Sequence[Detection], int, int], list[Box] | None]:
    """What a hard case of a frame shows the cloud in ``mode``, as the hard-case
    selector's ``shows`` (``clients.hard_cases.HardCaseSelector``): given the frame's
    persons, detections (motion proposals included) and size, the crops' rectangles in
    ``crops`` mode, or ``None`` when the case describes every object on the frame (all its
    boxes and landmarks in ``landmarks`` mode, the whole frame in ``frames``, and a
    ``crops`` case with nothing to crop, which goes as a ``landmarks`` one)."""
    mode = PrivacyMode.parse(mode) if isinstance(mode, str) else mode
    policy = policy or PrivacyPolicy()

    def shows(
        persons: Sequence[Person], detections: Sequence[Detection], width: int, height: int
    ) -> list[Box] | None:
        if mode is not PrivacyMode.CROPS:
            return None
        regions = crop_regions(persons, detections, width, height, policy)
        return [(float(x1), float(y1), float(x2), float(y2)) for x1, y1, x2, y2 in regions] or None

    return shows


def _padded(
    boxes: Sequence[tuple[Sequence[float], float]],
    width: int,
    height: int,
    policy: PrivacyPolicy,
) -> list[tuple[int, int, int, int]]:
    """``(box, score)`` pairs' boxes padded by ``crop_padding``, clipped, big enough,
    distinct; lowest score first (a region's lowest), then largest first."""
    lowest: dict[tuple[int, int, int, int], float] = {}
    for (x1, y1, x2, y2), score in boxes:
        pad_x = (x2 - x1) * policy.crop_padding
        pad_y = (y2 - y1) * policy.crop_padding
        region = _clip_box((x1 - pad_x, y1 - pad_y, x2 + pad_x, y2 + pad_y), width, height)
        if min(region[2] - region[0], region[3] - region[1]) >= policy.min_crop_px:
            lowest[region] = min(float(score), lowest.get(region, float(score)))
    return sorted(lowest, key=lambda r: (lowest[r], -(r[2] - r[0]) * (r[3] - r[1])))


def case_coverage(case: cloud_pb2.HardCase) -> tuple[Box, ...] | None:
    """What of its frame a case shows the cloud, as a label's ``coverage``
    (``fedge.core.labels``): ``None`` the whole frame (``frames``), the crops' rectangles
    (``crops``), or nothing (``landmarks``: no pixel)."""
    if case.privacy_mode == cloud_pb2.PRIVACY_MODE_FRAMES:
        return None
    if case.privacy_mode == cloud_pb2.PRIVACY_MODE_CROPS:
        return tuple(
            (float(c.x), float(c.y), float(c.x + c.width), float(c.y + c.height))
            for c in case.crops.crops
        )
    return ()
