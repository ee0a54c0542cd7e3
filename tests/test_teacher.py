"""The teacher ensemble on real frames of the sample clip: HOG, BlazePose tiles, WBF."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from clients.pose import create_pose_estimator
from clients.privacy_filter import PrivacyFilter, PrivacyPolicy
from fedge.core.errors import ConfigError, ModelError
from fedge.core.proto import cloud_pb2
from fedge.core.records import Detection, FrameResult, Person
from server.cloud.cases import CropImage, DecodedCase, decode_case
from server.cloud.fusion import match_boxes
from server.cloud.person_boxes import landmark_person_box
from server.cloud.teacher import (
    LIMB_JOINTS,
    HogPeopleDetector,
    TeacherEnsemble,
    build_teacher,
    hog_people_detector,
    tile_origins,
)

CLIP = Path(__file__).resolve().parents[1] / "data" / "samples" / "vtest_clip.mp4"
LABELS = CLIP.with_name("vtest_clip_people.json")

# People in frames of the clip, labelled by hand (x1, y1, x2, y2 in the 640x480 frame;
# visible extent; data/samples/vtest_clip_people.json, its notes say what is special in
# each frame): the tests use frames 24 and 120 (frame 120 also shows a yellow cloth on the
# grass, which is no person).
PEOPLE = {
    int(index): [tuple(box) for box in boxes]
    for index, boxes in json.loads(LABELS.read_text(encoding="utf-8"))["frames"].items()
    if int(index) in (24, 120)
}
FOUND_IOU = 0.3
"""A box finds a labelled person when the one-to-one matching pairs them at this IoU."""
COUNTED_SCORE = 0.3


@pytest.fixture(scope="module")
def frames() -> dict[int, np.ndarray]:
    capture = cv2.VideoCapture(str(CLIP))
    found: dict[int, np.ndarray] = {}
    index = 0
    while len(found) < len(PEOPLE):
        ok, frame = capture.read()
        assert ok, f"{CLIP} ended before frame {max(PEOPLE)}"
        if index in PEOPLE:
            found[index] = frame
        index += 1
    capture.release()
    return found


@pytest.fixture(scope="module")
def teacher(model_dir: Path) -> TeacherEnsemble:
    return build_teacher(model_dir=model_dir, num_threads=1)


def _people_found(boxes: list[tuple[float, float, float, float]], people: list) -> int:
    return len(match_boxes(np.asarray(boxes).reshape(-1, 4), np.asarray(people), FOUND_IOU))


def _case(frame_id: int, mode: str, **fields: object) -> DecodedCase:
    values: dict[str, object] = {
        "node_id": "node-1", "frame_id": frame_id, "capture_time": 0.0, "mode": mode,
        "model_version": "test", "frame_width": 640, "frame_height": 480,
        "detections": (), "persons": (), "hard_reasons": (), "frame": None, "crops": (),
    }  # fmt: skip
    values.update(fields)
    return DecodedCase(**values)  # type: ignore[arg-type]


def test_opencv_ships_the_hog_people_detector() -> None:
    # Execute
    hog = hog_people_detector()
    weights = cv2.HOGDescriptor_getDefaultPeopleDetector()

    # Assert: the SVM has one weight per HOG feature of the 64x128 window, plus a bias
    assert hog.winSize == (64, 128)
    assert np.asarray(weights).size == hog.getDescriptorSize() + 1


@pytest.mark.parametrize("frame_id", sorted(PEOPLE))
def test_ensemble_finds_more_people_than_the_nodes_blazepose(
    frame_id: int, frames: dict[int, np.ndarray], teacher: TeacherEnsemble, model_dir: Path
) -> None:
    # Prepare: BlazePose as `fedge edge` builds it (LiteRT backend, tracking on)
    frame = frames[frame_id]
    node = create_pose_estimator("litert", model_dir, num_threads=1, track=True)
    people = PEOPLE[frame_id]

    # Execute
    node_boxes = [landmark_person_box(p.landmarks, 640, 480) for p in node.estimate(frame)]
    teacher_boxes = [
        d.box
        for d in teacher.detect(_case(frame_id, "frames", frame=frame))
        if d.score >= COUNTED_SCORE
    ]

    # Assert
    found_by_node = _people_found(node_boxes, people)
    found_by_teacher = _people_found(teacher_boxes, people)
    assert found_by_teacher > found_by_node
    assert found_by_teacher >= len(people) - 2
    assert len(teacher_boxes) - found_by_teacher <= 1  # at most one box on no one


def test_crops_mode_returns_boxes_in_frame_coordinates(
    frames: dict[int, np.ndarray], teacher: TeacherEnsemble
) -> None:
    # Prepare: padded crops around two far people of frame 24, as a node would send them
    frame = frames[24]
    people = [PEOPLE[24][0], PEOPLE[24][2]]
    crops = []
    for x1, y1, x2, y2 in people:
        cx1, cy1 = max(0, x1 - 40), max(0, y1 - 40)
        cx2, cy2 = min(640, x2 + 40), min(480, y2 + 40)
        crops.append(CropImage(image=frame[cy1:cy2, cx1:cx2].copy(), x=cx1, y=cy1))
    case = _case(24, "crops", crops=tuple(crops))

    # Execute
    found = teacher.detect(case)

    # Assert: each person is found where it is in the frame, and nothing outside the crops
    boxes = [d.box for d in found if d.score >= COUNTED_SCORE]
    assert _people_found(boxes, people) == 2
    for x1, y1, x2, y2 in (d.box for d in found):
        assert any(
            c.x <= x1
            and c.y <= y1
            and x2 <= c.x + c.image.shape[1]
            and y2 <= c.y + c.image.shape[0]
            for c in crops
        )


def _found_in_node_crops(
    frames: dict[int, np.ndarray], teacher: TeacherEnsemble, privacy: PrivacyFilter
) -> int:
    """Hand-labelled people the teacher finds (IoU 0.5, counted score) in the ``crops``
    cases ``privacy`` builds around exactly those people, sent and decoded as on the wire."""
    found = 0
    for frame_id, people in PEOPLE.items():
        boxes = [tuple(map(float, b)) for b in people]
        result = FrameResult(
            frame=frame_id,
            time=0.0,
            source="t",
            detections=[Detection(b, "person", 0.45) for b in boxes],
        )
        case = privacy.case_for(
            result, frames[frame_id], frame_id=1, frame_width=640, frame_height=480,
            node_id="node-1",
        )  # fmt: skip
        wire = cloud_pb2.HardCase.FromString(case.SerializeToString())
        sure = [d.box for d in teacher.detect(decode_case(wire)) if d.score >= COUNTED_SCORE]
        found += len(match_boxes(np.asarray(sure).reshape(-1, 4), np.asarray(boxes), 0.5))
    return found


def test_the_nodes_default_crops_give_the_teacher_room_to_find_the_people(
    frames: dict[int, np.ndarray], teacher: TeacherEnsemble, model_dir: Path
) -> None:
    # Prepare: the node's privacy filter with its default padding, and with the old 0.2
    default = PrivacyFilter.create("crops", str(model_dir))
    tight = PrivacyFilter.create("crops", str(model_dir), policy=PrivacyPolicy(crop_padding=0.2))

    # Execute
    found = _found_in_node_crops(frames, teacher, default)
    found_tight = _found_in_node_crops(frames, teacher, tight)

    # Assert: 10 of the 12 people measured with the default, 7 with crops padded by 0.2
    assert found >= 9
    assert found > found_tight


def test_landmarks_mode_returns_one_recalibrated_box_per_pose(
    frames: dict[int, np.ndarray], teacher: TeacherEnsemble, model_dir: Path
) -> None:
    # Prepare: the node's real pose of frame 24, and a copy whose limbs are invisible
    node = create_pose_estimator("litert", model_dir, num_threads=1, track=True)
    poses = node.estimate(frames[24])
    assert poses, "the node's BlazePose finds the near woman of frame 24"
    seen = poses[0]
    hidden = seen.landmarks.copy()
    hidden[list(LIMB_JOINTS), 3] = 0.0
    shifted = hidden.copy()
    shifted[:, 0] += 200.0
    persons = (seen, Person(landmarks=shifted, score=seen.score, box=(0.0, 0.0, 1.0, 1.0)))
    case = _case(24, "landmarks", persons=persons)

    # Execute
    found = teacher.detect(case)

    # Assert
    assert len(found) == 2
    assert found[0].box == landmark_person_box(seen.landmarks, 640, 480)
    assert found[1].box == landmark_person_box(shifted, 640, 480)
    visibility = float(seen.landmarks[list(LIMB_JOINTS), 3].mean())
    assert found[0].score == pytest.approx(seen.score * visibility)
    assert found[1].score == 0.0


def test_tiles_cover_the_frame_with_the_stated_overlap() -> None:
    # Execute
    columns = tile_origins(640, 160, 48)
    single = tile_origins(100, 160, 48)

    # Assert
    assert columns == [0, 112, 224, 336, 448, 480]
    assert all(b - a <= 160 - 48 for a, b in zip(columns, columns[1:], strict=False))
    assert single == [0]


def test_hog_upscales_small_images_and_caps_large_ones() -> None:
    # Prepare
    hog = HogPeopleDetector(upscale=2.0, max_pixels=1_400_000)

    # Execute / Assert
    assert hog.scale_for(640, 480) == 2.0
    assert hog.scale_for(1920, 1080) == 1.0  # 2x would be 8.3 M pixels; never below 1
    assert hog.scale_for(40, 60) == pytest.approx(160 / 60)  # fits 1.25 windows


def test_hog_finds_most_people_of_a_frame_with_far_pedestrians(
    frames: dict[int, np.ndarray],
) -> None:
    # Execute
    found = HogPeopleDetector().detect(frames[120])

    # Assert
    boxes = [d.box for d in found]
    assert _people_found(boxes, PEOPLE[120]) >= 4
    assert all(0.0 <= d.score <= 1.0 and d.label == "person" for d in found)


def test_unknown_member_or_score_rule_is_a_config_error(model_dir: Path) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="hog, blazepose-tiles"):
        build_teacher(model_dir=model_dir, members=["yolo"])
    with pytest.raises(ConfigError, match="avg, max"):
        build_teacher(model_dir=model_dir, members=[], conf_type="median")


def test_an_extra_model_without_postprocessed_outputs_is_a_model_error(model_dir: Path) -> None:
    # Prepare: BlazeFace is a raw-anchor SSD, not a post-processed COCO SSD
    path = model_dir / "face_detection_short_range.tflite"

    # Execute / Assert
    with pytest.raises(ModelError, match="face_detection_short_range.*TFLite_Detection_Post"):
        build_teacher(model_dir=model_dir, members=[], extra_models=[path])


def test_the_version_names_the_members(teacher: TeacherEnsemble) -> None:
    # Assert
    assert teacher.version == "hog+blazepose-tiles/1"
    assert teacher.detect(_case(1, "landmarks")) == []


def test_detections_are_persons_in_the_frame(
    frames: dict[int, np.ndarray], teacher: TeacherEnsemble
) -> None:
    # Execute
    found = teacher.detect_image(frames[24])

    # Assert
    assert found
    for d in found:
        assert isinstance(d, Detection) and d.label == "person" and 0.0 <= d.score <= 1.0
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)


def _postprocess_signature() -> str:
    ints = {"max_detections": 10, "max_classes_per_detection": 1, "detections_per_class": 10}
    floats = {"nms_score_threshold": 0.1, "nms_iou_threshold": 0.5, "y_scale": 10.0,
              "x_scale": 10.0, "h_scale": 5.0, "w_scale": 5.0}  # fmt: skip
    parts = ['name: "TFLite_Detection_PostProcess"']
    parts += [f'attr {{ key: "{k}" value {{ i: {v} }} }}' for k, v in ints.items()]
    parts += [f'attr {{ key: "{k}" value {{ f: {v} }} }}' for k, v in floats.items()]
    parts += ['attr { key: "num_classes" value { i: 2 } }']
    parts += ['attr { key: "use_regular_nms" value { b: false } }']
    return " ".join(parts)


def _two_class_ssd(path: Path) -> None:
    """A post-processed SSD with two anchors: the left half is class 0 (COCO ``person``,
    score 0.9), the right half class 1 (``bicycle``, score 0.8); box encodings are 0."""
    import tensorflow as tf

    anchors = np.array([[0.5, 0.25, 1.0, 0.5], [0.5, 0.75, 1.0, 0.5]], dtype=np.float32)

    @tf.function(experimental_implements=_postprocess_signature())
    def postprocess(box_encodings, class_predictions, anchor_boxes):  # type: ignore[no-untyped-def]
        zero = tf.constant(0.0, dtype=tf.float32)
        return zero, zero, zero, zero

    class TwoClassSsd(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 32, 32, 3], tf.float32)])
        def __call__(self, image):  # type: ignore[no-untyped-def]
            base = tf.reduce_mean(image) * 0.0  # keeps the input in the graph
            encodings = tf.zeros([1, 2, 4]) + base
            scores = tf.constant([[[0.0, 0.9, 0.0], [0.0, 0.0, 0.8]]]) + base
            return postprocess(encodings, scores, tf.constant(anchors))

    module = TwoClassSsd()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.__call__.get_concrete_function()], module
    )
    converter.allow_custom_ops = True
    path.write_bytes(converter.convert())


def test_an_operators_ssd_adds_its_person_boxes_only(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "coco_ssd.tflite"
    _two_class_ssd(path)
    teacher = build_teacher(members=[], extra_models=[path])

    # Execute
    found = teacher.detect_image(np.full((200, 400, 3), 128, dtype=np.uint8))

    # Assert: the left half (class 0) is a person, the right half (class 1) is dropped
    assert teacher.version == "ssd:coco_ssd/1"
    assert len(found) == 1
    assert found[0].box == pytest.approx((0.0, 0.0, 200.0, 200.0), abs=1.0)
    assert found[0].score == pytest.approx(0.9, abs=0.01)
