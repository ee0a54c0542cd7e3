"""The person detector: box coding, anchors, batch-norm statistics, a short real training."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fedge.core.geometry import iou_matrix
from models.box_coding import (
    DEFAULT_ANCHORS,
    AnchorLevel,
    AnchorSpec,
    decode_boxes,
    encode_boxes,
    encode_targets,
    generate_anchors,
)

CLIP = Path(__file__).resolve().parents[1] / "data" / "samples" / "vtest_clip.mp4"
TRAIN_FRAMES = tuple(range(0, 128, 8))  # 16 frames over the first 13 s
LATER_FRAMES = (180, 196, 212, 228)  # 5-10 s after the last training frame
HOG_MIN_SCORE = 0.5  # HOG's SVM margin 0.5 (server.cloud.teacher's score rule)


def read_clip_frames(indices: tuple[int, ...]) -> dict[int, np.ndarray]:
    """BGR frames of the sample clip at ``indices``."""
    wanted = set(indices)
    capture = cv2.VideoCapture(str(CLIP))
    frames: dict[int, np.ndarray] = {}
    index = 0
    while len(frames) < len(wanted):
        ok, frame = capture.read()
        assert ok, f"{CLIP} ended before frame {max(indices)}"
        if index in wanted:
            frames[index] = frame
        index += 1
    capture.release()
    return frames


def hog_boxes(frames: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Person boxes (frame pixels) of OpenCV's HOG people detector, 2x upscaled."""
    from server.cloud.teacher import HogPeopleDetector

    hog = HogPeopleDetector(upscale=2.0)
    found = {}
    for i, frame in frames.items():
        boxes = [d.box for d in hog.detect(frame) if d.score >= HOG_MIN_SCORE]
        found[i] = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return found


# --- box coding ------------------------------------------------------------------------
def test_encoding_then_decoding_returns_the_boxes() -> None:
    # Prepare: random boxes, each against a random anchor of the default set.
    rng = np.random.default_rng(0)
    anchors = generate_anchors()[rng.integers(0, DEFAULT_ANCHORS.num_anchors, 200)]
    corner = rng.uniform(0.0, 0.8, (200, 2))
    size = rng.uniform(0.01, 0.5, (200, 2))
    boxes = np.concatenate([corner, corner + size], axis=1).astype(np.float32)

    # Execute
    decoded = decode_boxes(encode_boxes(boxes, anchors), anchors)

    # Assert
    np.testing.assert_allclose(decoded, boxes, atol=1e-5)


def test_a_box_on_its_anchor_encodes_to_zero_and_scales_apply() -> None:
    anchor = np.array([[0.5, 0.25, 0.2, 0.1]], dtype=np.float32)  # yc, xc, h, w
    on_anchor = np.array([[0.2, 0.4, 0.3, 0.6]], dtype=np.float32)  # x1, y1, x2, y2
    shifted = on_anchor + np.array([[0.01, 0.02, 0.01, 0.02]], dtype=np.float32)
    np.testing.assert_allclose(encode_boxes(on_anchor, anchor), [[0, 0, 0, 0]], atol=1e-6)
    # 0.02 down = 0.1 anchor heights x y_scale 10; 0.01 right = 0.1 widths x 10.
    np.testing.assert_allclose(encode_boxes(shifted, anchor), [[1.0, 1.0, 0, 0]], atol=1e-5)


def test_anchors_cover_each_level_row_by_row() -> None:
    spec = AnchorSpec(
        input_width=64, input_height=32, levels=(AnchorLevel(16, (8.0, 16.0)),),
        aspect_ratios=(0.5,),
    )  # fmt: skip
    anchors = generate_anchors(spec)
    assert anchors.shape == (spec.num_anchors, 4) == (2 * 4 * 2, 4)
    # cell (row 0, col 1), second height: centre (8/32, 24/64), size (16/32, 8/64)
    np.testing.assert_allclose(anchors[3], [0.25, 0.375, 0.5, 0.125])
    np.testing.assert_allclose(anchors[8], [0.75, 0.125, 0.25, 0.0625])  # row 1, col 0


def test_every_box_gets_a_positive_anchor_even_smaller_than_all_anchors() -> None:
    # Prepare: a tiny person (8 x 16 input pixels) and a normal one, with weights.
    tiny = [100 / 384, 100 / 288, 108 / 384, 116 / 288]
    normal = [200 / 384, 60 / 288, 224 / 384, 120 / 288]

    # Execute
    targets = encode_targets([tiny, normal], weights=[0.5, 1.0])

    # Assert
    anchors = generate_anchors()
    positive = targets[:, 4] == 1
    decoded = decode_boxes(targets[positive, :4], anchors[positive])
    best = iou_matrix(decoded, np.array([tiny, normal])).argmax(axis=1)
    assert set(best) == {0, 1}
    np.testing.assert_allclose(iou_matrix(decoded, [tiny, normal]).max(axis=1), 1.0, atol=1e-4)
    assert set(targets[positive, 5]) == {0.5, 1.0}
    assert (targets[~positive, 5] == 1.0).all()
    assert {-1.0, 0.0, 1.0} == set(np.unique(targets[:, 4]))


def test_an_image_without_people_is_all_background() -> None:
    targets = encode_targets(np.zeros((0, 4)))
    assert (targets[:, 4] == 0).all() and (targets[:, 5] == 1).all()


# --- the network -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_inputs() -> np.ndarray:
    from models.person_detector import frame_to_input

    frames = read_clip_frames(TRAIN_FRAMES)
    return np.stack([frame_to_input(frames[i]) for i in TRAIN_FRAMES])


def test_the_model_predicts_one_box_and_logit_per_anchor(clip_inputs: np.ndarray) -> None:
    from models.person_detector import PRIOR_PROBABILITY, build_person_detector, normalize_input

    model = build_person_detector()
    boxes, logits = model(normalize_input(clip_inputs[:2]), training=False)
    assert tuple(boxes.shape) == (2, DEFAULT_ANCHORS.num_anchors, 4)
    assert tuple(logits.shape) == (2, DEFAULT_ANCHORS.num_anchors, 1)
    assert model.count_params() < 250_000
    # A fresh model says "probably nobody" everywhere (the focal-loss prior).
    scores = 1 / (1 + np.exp(-np.asarray(logits)))
    assert abs(float(np.median(scores)) - PRIOR_PROBABILITY) < 0.01


def test_recomputed_batchnorm_statistics_make_inference_match_training_mode(
    clip_inputs: np.ndarray,
) -> None:
    # Prepare: a fresh model's running statistics (mean 0, variance 1) are not those of
    # the frames, so inference mode and training mode disagree.
    from models.person_detector import (
        build_person_detector,
        normalize_input,
        recompute_batchnorm_statistics,
    )

    model = build_person_detector(seed=1)
    images = clip_inputs[:8]
    x = normalize_input(images)
    training_mode = np.asarray(model(x, training=True)[1])
    before = np.abs(np.asarray(model(x, training=False)[1]) - training_mode).max()

    # Execute: one batch of all the frames, so the averages are exactly its statistics.
    recompute_batchnorm_statistics(model, images, batch_size=len(images))

    # Assert
    after = np.abs(np.asarray(model(x, training=False)[1]) - training_mode).max()
    assert before > 0.5
    assert after < 1e-3
    momenta = {layer.momentum for layer in model.layers if hasattr(layer, "moving_mean")}
    assert momenta == {0.9}  # restored


# --- a short real training ---------------------------------------------------------------
@pytest.fixture(scope="module")
def trained() -> dict[str, object]:
    """The detector trained briefly on HOG-labelled clip frames, and what it saw."""
    from models.person_detector import (
        DetectionBatches,
        build_person_detector,
        fit_person_detector,
        frame_to_input,
    )

    frames = read_clip_frames(TRAIN_FRAMES + LATER_FRAMES)
    labels = hog_boxes(frames)
    height, width = frames[0].shape[:2]
    scale = np.array([width, height, width, height], dtype=np.float32)
    images = np.stack([frame_to_input(frames[i]) for i in TRAIN_FRAMES])
    batches = DetectionBatches(images, [labels[i] / scale for i in TRAIN_FRAMES], batch_size=4)
    model = build_person_detector(seed=0)
    report = fit_person_detector(
        model, batches, epochs=16, learning_rate=1e-2, recompute_statistics=False
    )
    return {"model": model, "report": report, "frames": frames, "labels": labels,
            "images": images}  # fmt: skip


def _found_people(
    model: object, frames: dict[int, np.ndarray], labels: dict, iou: float = 0.5
) -> tuple[int, int]:
    """(HOG people matched at ``iou`` by a score >= 0.3 box, boxes at score >= 0.3)."""
    import tensorflow as tf

    from export.report import match_detections
    from fedge.core.records import Detection
    from models.person_detector import frame_to_input, normalize_input

    anchors = generate_anchors()
    matched = total = 0
    for i in LATER_FRAMES:
        height, width = frames[i].shape[:2]
        boxes, logits = model(normalize_input(frame_to_input(frames[i]))[None], training=False)
        decoded = decode_boxes(np.asarray(boxes[0]), anchors)
        scores = 1 / (1 + np.exp(-np.asarray(logits[0, :, 0])))
        keep = tf.image.non_max_suppression(decoded[:, [1, 0, 3, 2]], scores, 50, 0.5, 0.3)
        found = [
            Detection(tuple(decoded[k] * [width, height, width, height]), "person", scores[k])
            for k in keep.numpy()
        ]
        matched += len(match_detections(found, labels[i], iou))
        total += len(found)
    return matched, total


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_finds_people_after_the_batchnorm_fix(
    trained: dict,
) -> None:
    from models.person_detector import recompute_batchnorm_statistics

    # Assert: the loss fell (measured, seeds 0-2: 3.9-4.0 -> 0.48-0.63 over 16 epochs).
    report = trained["report"]
    assert report.losses[-1] < 0.5 * report.losses[0]
    assert report.images_per_second > 0

    # Execute: the batch-norm fix, then inference on later frames of the clip.
    model = trained["model"]
    recompute_batchnorm_statistics(model, trained["images"], batch_size=8)
    matched, total = _found_people(model, trained["frames"], trained["labels"])

    # Assert: it finds people HOG found, and many of its boxes are people (measured,
    # seeds 0-2: 11-18 of HOG's 25 people matched, by 25-29 boxes).
    people = sum(len(trained["labels"][i]) for i in LATER_FRAMES)
    assert matched >= 0.3 * people, (matched, people, total)
    assert matched >= 0.3 * total, (matched, people, total)


def test_the_same_seed_builds_the_same_weights_without_touching_global_seeds() -> None:
    from models.person_detector import build_person_detector

    state = np.random.get_state()[1].copy()
    first, again, other = (build_person_detector(seed=s).get_weights() for s in (3, 3, 4))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    assert np.array_equal(np.random.get_state()[1], state)


def test_detection_loss_known_answer() -> None:
    # One person anchor, one background anchor and one ignored anchor, all at logit 0
    # (p = 0.5); the person's box encoding is off by 0.5 in one coordinate. Each counted
    # anchor costs alpha_t * (1 - 0.5)^gamma * ln 2, the box 0.5 * 0.5^2 (Huber), over
    # the weighted positives (at least 1); the ignored anchor costs nothing.
    import tensorflow as tf

    from models.person_detector import FOCAL_ALPHA, FOCAL_GAMMA, detection_loss

    y_true = np.zeros((1, 3, 6), np.float32)
    y_true[0, :, 4] = (1.0, 0.0, -1.0)
    y_true[0, :, 5] = 1.0
    y_pred = np.zeros((1, 3, 5), np.float32)
    y_pred[0, 0, 0] = 0.5
    y_pred[0, 2, 4] = 5.0  # ignored: even a confident call costs nothing
    loss = float(detection_loss(tf.constant(y_true), tf.constant(y_pred))[0])
    focal = 0.5**FOCAL_GAMMA * np.log(2.0)
    assert loss == pytest.approx(FOCAL_ALPHA * focal + (1 - FOCAL_ALPHA) * focal + 0.125, rel=1e-5)
    # A node's own box trains at half weight: its focal and box terms halve, and the
    # positive count it divides by is clamped at 1.
    y_true[0, 0, 5] = 0.5
    half = float(detection_loss(tf.constant(y_true), tf.constant(y_pred))[0])
    expected = 0.5 * FOCAL_ALPHA * focal + (1 - FOCAL_ALPHA) * focal + 0.5 * 0.125
    assert half == pytest.approx(expected, rel=1e-5)
