"""Privacy filter: what each mode lets leave the node, measured where it leaves.

Real BlazeFace and BlazePose on sample-clip frames and a real face
(``tests/assets/face_messi5_crop.jpg``); cases go over real gRPC on loopback, to the real
``fedge cloud`` through a recording TCP proxy, or to a recording gRPC cloud that keeps the
exact messages it received.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from clients.detector import Detector
from clients.privacy_filter import (
    PrivacyFilter,
    PrivacyMode,
    PrivacyPolicy,
    head_box,
)
from clients.uploader import Uploader, UploaderConfig
from data.frame_store import FrameStore, LabelStatus
from fedge.core.errors import ConfigError
from fedge.core.geometry import iou
from fedge.core.proto import cloud_pb2
from fedge.core.records import Detection, FrameResult, Person
from tests.uplink_support import (
    REPO,
    CloudProcess,
    RecordingCloud,
    TcpRecorder,
    clip_frames,
    fill_store,
)

FACE = REPO / "tests" / "assets" / "face_messi5_crop.jpg"
FACE_SCALE = 2.5
FACE_AT = (320, 160)  # top-left corner of the pasted (scaled) crop in the frame
FACE_IN_CROP = (47, 47, 80, 79)  # the face's BlazeFace box on the 128x128 crop, by hand
JPEG_SOI = b"\xff\xd8\xff"
CHECK_SCORE = 0.3  # below BlazeFace's default 0.5: the node's own uncertainty band


def _person_around(face: tuple[float, float, float, float]) -> Detection:
    """A person box (as a person detector would give) around a face box: crops mode crops
    people, not faces."""
    x1, y1, x2, y2 = face
    w = x2 - x1
    return Detection((max(0.0, x1 - w), max(0.0, y1 - 0.5 * w), min(640.0, x2 + w), 480.0),
                     "person", 0.9)  # fmt: skip


def _face_box() -> tuple[float, float, float, float]:
    x, y = FACE_AT
    return tuple(v * FACE_SCALE + (x if i % 2 == 0 else y) for i, v in enumerate(FACE_IN_CROP))


@pytest.fixture(scope="module")
def face_detector(model_dir: Path) -> Detector:
    """BlazeFace as `fedge edge` runs it, reporting boxes down to 0.3."""
    return Detector.blazeface(model_dir, score_threshold=CHECK_SCORE)


@pytest.fixture(scope="module")
def face_frame() -> np.ndarray:
    """A 640x480 clip frame with the face pasted in, 2.5x (the face about 83 px wide)."""
    face = cv2.imread(str(FACE))
    face = cv2.resize(face, None, fx=FACE_SCALE, fy=FACE_SCALE, interpolation=cv2.INTER_CUBIC)
    frame = clip_frames([0])[0].copy()
    x, y = FACE_AT
    frame[y : y + face.shape[0], x : x + face.shape[1]] = face
    return frame


@pytest.fixture(scope="module")
def pose(model_dir: Path):  # type: ignore[no-untyped-def]
    from clients.pose import create_pose_estimator

    return create_pose_estimator("litert", model_dir)


@pytest.fixture(scope="module")
def posed_frames(pose) -> list[tuple[np.ndarray, list[Person]]]:  # type: ignore[no-untyped-def]
    """Clip frames on which BlazePose finds at least one person, with those persons."""
    found = []
    for image in clip_frames([24, 60, 120, 180, 230]):
        persons = pose.estimate(image)
        if persons:
            found.append((image, persons))
    assert found, "BlazePose found nobody on the chosen clip frames"
    return found


def _best_face_score(detector: Detector, image: np.ndarray, box: tuple[float, ...]) -> float:
    """BlazeFace's best score for a face overlapping ``box`` (image pixels), looking at the
    whole image and at a 240 px window around the box (BlazeFace misses small faces in a
    whole frame)."""
    height, width = image.shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x0 = int(min(max(0, cx - 120), max(0, width - 240)))
    y0 = int(min(max(0, cy - 120), max(0, height - 240)))
    best = 0.0
    for ox, oy, view in ((0, 0, image), (x0, y0, image[y0 : y0 + 240, x0 : x0 + 240])):
        for det in detector.detect(view):
            shifted = (det.box[0] + ox, det.box[1] + oy, det.box[2] + ox, det.box[3] + oy)
            if iou(shifted, box) > 0.1:
                best = max(best, det.score)
    return best


def _decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def _sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian: detail left in an image region."""
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


# -- the filter on its own ----------------------------------------------------------------


def test_privacy_modes_parse_and_an_unknown_mode_is_a_config_error() -> None:
    assert PrivacyMode.parse("crops") is PrivacyMode.CROPS
    assert PrivacyMode.FRAMES.sends_pixels and not PrivacyMode.LANDMARKS.sends_pixels
    assert not PrivacyMode.NONE.sends_cases
    with pytest.raises(ConfigError, match="choose one of none, landmarks, crops, frames"):
        PrivacyMode.parse("faces")


def test_pixel_modes_refuse_to_run_without_a_face_detector() -> None:
    with pytest.raises(ConfigError, match="needs BlazeFace"):
        PrivacyFilter("frames", face_detector=None)


def test_none_mode_builds_no_case(posed_frames) -> None:  # type: ignore[no-untyped-def]
    image, persons = posed_frames[0]
    result = FrameResult(frame=0, time=1.0, source="t", persons=persons, hard=True)

    case = PrivacyFilter("none").case_for(
        result, image, frame_id=1, frame_width=640, frame_height=480, node_id="n"
    )

    assert case is None


def test_landmarks_case_carries_the_evidence_and_no_pixels(posed_frames) -> None:  # type: ignore[no-untyped-def]
    image, persons = posed_frames[0]
    result = FrameResult(
        frame=3,
        time=1_800_000_000.5,
        source="t",
        persons=persons,
        detections=[Detection((10.0, 20.0, 40.0, 60.0), "face", 0.45)],
        hard=True,
        hard_reasons=["uncertain_score"],
    )
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()

    case = PrivacyFilter("landmarks").case_for(
        result, image, frame_id=9, frame_width=640, frame_height=480, node_id="node-1"
    )

    assert case is not None
    assert case.WhichOneof("pixels") is None
    assert case.privacy_mode == cloud_pb2.PRIVACY_MODE_LANDMARKS
    assert (case.frame_id, case.frame_width, case.frame_height) == (9, 640, 480)
    assert len(case.persons) == len(persons)
    assert all(len(p.landmarks) == 33 for p in case.persons)
    assert case.persons[0].landmarks[0].x == pytest.approx(float(persons[0].landmarks[0, 0]))
    assert list(case.hard_reasons) == ["uncertain_score"]
    wire = case.SerializeToString()
    assert JPEG_SOI not in wire
    assert len(wire) < len(jpeg) / 10


@pytest.mark.parametrize("mode", ["frames", "crops"])
def test_face_blazeface_finds_is_not_found_in_the_case(
    mode: str, face_detector: Detector, face_frame: np.ndarray, model_dir: Path
) -> None:
    # Prepare: BlazeFace finds the face before filtering, as the node's SSD stage would
    box = _face_box()
    assert _best_face_score(face_detector, face_frame, box) >= 0.5
    detections = [*face_detector.detect(face_frame), _person_around(box)]
    result = FrameResult(frame=0, time=1.0, source="t", detections=detections, hard=True)

    # Execute
    case = PrivacyFilter.create(mode, str(model_dir)).case_for(
        result, face_frame, frame_id=1, frame_width=640, frame_height=480, node_id="n"
    )

    # Assert: no face left in any pixel the case carries
    assert case is not None
    if mode == "frames":
        sent = [(0, 0, _decode(case.frame_jpeg))]
    else:
        sent = [(c.x, c.y, _decode(c.jpeg)) for c in case.crops.crops]
        assert any(x <= box[0] and y <= box[1] for x, y, _ in sent)  # the face was cropped
    for x, y, image in sent:
        local = (box[0] - x, box[1] - y, box[2] - x, box[3] - y)
        assert _best_face_score(face_detector, image, local) < CHECK_SCORE


def test_frames_mode_keeps_the_frame_away_from_faces(
    face_frame: np.ndarray, model_dir: Path
) -> None:
    result = FrameResult(frame=0, time=1.0, source="t", hard=True)

    case = PrivacyFilter.create("frames", str(model_dir)).case_for(
        result, face_frame, frame_id=1, frame_width=640, frame_height=480, node_id="n"
    )

    assert case is not None
    sent = _decode(case.frame_jpeg).astype(np.int16)
    away = (slice(0, 150), slice(0, 300))  # top left: lawn and path, no face
    assert np.abs(sent[away] - face_frame[away].astype(np.int16)).mean() < 4.0
    face = (slice(int(_face_box()[1]), int(_face_box()[3])),) + (
        slice(int(_face_box()[0]), int(_face_box()[2])),
    )
    assert np.abs(sent[face] - face_frame[face].astype(np.int16)).mean() > 10.0


def test_pose_face_landmarks_are_blurred_where_blazeface_sees_no_face(
    posed_frames, face_detector: Detector, model_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    # Prepare: pedestrians BlazeFace cannot find (too small), but the pose can
    image, persons = posed_frames[0]
    assert not face_detector.detect(image, 0.5)
    result = FrameResult(frame=0, time=1.0, source="t", persons=persons, hard=True)

    # Execute
    case = PrivacyFilter.create("frames", str(model_dir)).case_for(
        result, image, frame_id=1, frame_width=640, frame_height=480, node_id="n"
    )

    # Assert: each head region lost its detail, the rest of the frame did not
    assert case is not None
    sent = _decode(case.frame_jpeg)
    for person in persons:
        x1, y1, x2, y2 = (int(round(v)) for v in head_box(person))
        x1, y1 = max(0, x1), max(0, y1)
        before, after = image[y1:y2, x1:x2], sent[y1:y2, x1:x2]
        assert _sharpness(after) < 0.2 * _sharpness(before)
    away = (slice(0, 100), slice(0, 200))
    assert np.abs(sent[away].astype(np.int16) - image[away].astype(np.int16)).mean() < 4.0


def test_crop_regions_are_padded_and_clipped_to_the_frame(model_dir: Path) -> None:
    result = FrameResult(
        frame=0,
        time=1.0,
        source="t",
        detections=[
            Detection((600.0, 400.0, 640.0, 480.0), "person", 0.5),  # at the corner
            Detection((100.0, 100.0, 200.0, 300.0), "person", 0.9),
            Detection((10.0, 10.0, 14.0, 14.0), "person", 0.4),  # too small to crop
            Detection((300.0, 20.0, 420.0, 110.0), "face", 0.4),  # not a person: no crop
        ],
    )
    privacy = PrivacyFilter.create("crops", str(model_dir))

    regions = privacy.crop_regions(result, 640, 480)

    assert regions == [(580, 360, 640, 480), (50, 0, 250, 400)]  # the less sure first


def test_when_people_outnumber_crops_the_crops_go_to_the_least_sure(model_dir: Path) -> None:
    found = [
        Detection((100.0, 100.0, 200.0, 300.0), "person", 0.95),  # found: the largest
        Detection((400.0, 100.0, 440.0, 180.0), "person", 0.35),  # unsure: asked about
        Detection((300.0, 100.0, 360.0, 220.0), "person", 0.35),  # as unsure, larger
    ]
    result = FrameResult(frame=0, time=1.0, source="t", detections=found)
    two = PrivacyFilter.create("crops", str(model_dir), policy=PrivacyPolicy(max_crops=2))

    regions = two.crop_regions(result, 640, 480)

    assert regions == [(270, 40, 390, 280), (380, 60, 460, 220)]  # equal scores: largest first


def test_crops_mode_with_nothing_to_crop_sends_no_pixels(
    face_frame: np.ndarray, model_dir: Path
) -> None:
    result = FrameResult(frame=0, time=1.0, source="t", hard=True)

    case = PrivacyFilter.create("crops", str(model_dir)).case_for(
        result, face_frame, frame_id=1, frame_width=640, frame_height=480, node_id="n"
    )

    assert case is not None
    assert case.WhichOneof("pixels") is None
    assert case.privacy_mode == cloud_pb2.PRIVACY_MODE_LANDMARKS


# -- measured on the wire -----------------------------------------------------------------


def _upload(store: FrameStore, privacy: PrivacyFilter, target: str) -> Uploader:
    config = UploaderConfig(target=target, node_id="node-1", insecure=True, batch_size=4)
    uploader = Uploader(store, privacy, config).start()
    try:
        assert uploader.drain(180), uploader.stats
    finally:
        uploader.stop()
    return uploader


def test_landmarks_mode_puts_no_pixel_byte_on_the_wire(
    tmp_path: Path, posed_frames, model_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    # Prepare: hard cases with real poses; the real cloud behind a recording proxy
    images = [image for image, _ in posed_frames]
    jpeg_sizes = [len(cv2.imencode(".jpg", image)[1]) for image in images]
    with (
        FrameStore(tmp_path / "store", 10**8, fsync=False) as store,
        CloudProcess(tmp_path) as cloud,
        TcpRecorder(cloud.address) as proxy,
    ):
        ids = fill_store(store, images, [persons for _, persons in posed_frames])

        # Execute
        _upload(store, PrivacyFilter.create("landmarks"), proxy.address)
        wire = proxy.bytes_up
        statuses = [store.get(i).label_status for i in ids]

    # Assert: every case labelled, and no JPEG (nor anything JPEG-sized) crossed
    assert statuses == [LabelStatus.LABELLED] * len(ids)
    assert proxy.connections >= 1
    assert JPEG_SOI not in wire
    assert len(wire) / len(ids) < min(jpeg_sizes) / 10
    assert [e["pixel_bytes"] for e in cloud.audit()] == [0] * len(ids)


def test_frames_mode_does_put_jpegs_on_the_wire(
    tmp_path: Path, posed_frames, model_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    # the control of the test above: the same measurement sees pixels when they are sent
    image, persons = posed_frames[0]
    with (
        FrameStore(tmp_path / "store", 10**8, fsync=False) as store,
        RecordingCloud() as cloud,
        TcpRecorder(("127.0.0.1", int(cloud.target.rpartition(":")[2]))) as proxy,
    ):
        fill_store(store, [image], [persons])

        _upload(store, PrivacyFilter.create("frames", str(model_dir)), proxy.address)

    assert JPEG_SOI in proxy.bytes_up
    assert len(proxy.bytes_up) > len(cloud.received[0].frame_jpeg)


@pytest.mark.parametrize("mode", ["frames", "crops"])
def test_received_pixels_hold_no_face_blazeface_finds(
    mode: str, tmp_path: Path, face_detector: Detector, face_frame: np.ndarray, model_dir: Path
) -> None:
    # Prepare: the face frame as a stored hard case, with the face detection the node made
    box = _face_box()
    assert _best_face_score(face_detector, face_frame, box) >= 0.5
    with (
        FrameStore(tmp_path / "store", 10**8, fsync=False) as store,
        RecordingCloud() as cloud,
    ):
        frame_id = store.add(
            face_frame,
            FrameResult(
                frame=0,
                time=1.0,
                source="t",
                detections=[*face_detector.detect(face_frame), _person_around(box)],
                hard=True,
                hard_reasons=["uncertain_score"],
            ),
        )

        # Execute
        _upload(store, PrivacyFilter.create(mode, str(model_dir)), cloud.target)
        labelled = store.get(frame_id).label_status

    # Assert: what the cloud received carries pixels, but not the face
    assert labelled is LabelStatus.LABELLED
    (case,) = cloud.received
    if mode == "frames":
        received = [(0, 0, _decode(case.frame_jpeg))]
    else:
        received = [(c.x, c.y, _decode(c.jpeg)) for c in case.crops.crops]
    assert received
    for x, y, image in received:
        local = (box[0] - x, box[1] - y, box[2] - x, box[3] - y)
        assert _best_face_score(face_detector, image, local) < CHECK_SCORE


def test_fedge_edge_in_none_mode_never_connects(tmp_path: Path, model_dir: Path) -> None:
    # Prepare: a proxy stands where the cloud would be and counts connection attempts
    with TcpRecorder() as proxy:
        # Execute
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedge",
                "edge",
                "--max-frames",
                "30",
                "--store-dir",
                str(tmp_path / "store"),
                "--model-dir",
                str(model_dir),
                "--pose-workers",
                "1",
                "--hard-per-minute",
                "600",
                "--quiet",
                "--cloud",
                proxy.address,
                "--privacy",
                "none",
                "--insecure",
            ],  # fmt: skip
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        attempts = proxy.connections + proxy.refused

    # Assert
    assert done.returncode == 0, done.stderr
    assert attempts == 0
    assert "--privacy none" in done.stderr and "kept on the node" in done.stderr
    with FrameStore.open_reader(tmp_path / "store") as store:
        counts = store.status_counts()
    assert counts[LabelStatus.SENT] == counts[LabelStatus.LABELLED] == 0
