"""SSD detector: BlazeFace on a real face, and tiny SSDs with known answers (float + int8)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from clients.detector import (
    BLAZEFACE_SHORT_RANGE,
    Detector,
    DetectorSpec,
    RawSsdSpec,
    load_labels,
)
from clients.inference.anchors import AnchorOptions, generate_anchors
from clients.inference.ssd_decoding import BoxDecoding
from fedge.core.errors import ModelError

FACE = Path(__file__).with_name("assets") / "face_messi5_crop.jpg"
FACE_CENTRE = (64.0, 63.0)  # pixels, measured by hand on the 128x128 crop

# --- a post-processed SSD: 4 anchors (one per image quadrant), 2 classes -------------
# The model's class scores are the quadrant's mean G and B values (so the image decides
# them); its box encodings are constants plus the mean R value, which is 0 in our
# images, so the decoded boxes are known exactly.
ANCHORS_YXHW = np.array(
    [
        [0.25, 0.25, 0.5, 0.5],
        [0.25, 0.75, 0.5, 0.5],
        [0.75, 0.25, 0.5, 0.5],
        [0.75, 0.75, 0.5, 0.5],
    ],
    dtype=np.float32,
)
ENCODINGS = np.array(  # ty, tx, th, tw with y/x scale 10 and h/w scale 5
    [[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [-2.0, 2.0, -1.0, 1.0]],
    dtype=np.float32,
)
QUADRANT_RGB = {  # (R, G, B): R must stay 0; G -> class 0 ("cat"), B -> class 1 ("dog")
    0: (0, 230, 13),  # top-left: cat 0.90
    1: (0, 25, 204),  # top-right: dog 0.80
    2: (0, 5, 8),  # bottom-left: nothing
    3: (0, 153, 25),  # bottom-right: cat 0.60
}


def _expected_boxes_xyxy() -> np.ndarray:
    """Decode ``ENCODINGS`` against the anchors as TFLite_Detection_PostProcess does."""
    yc = ENCODINGS[:, 0] / 10 * ANCHORS_YXHW[:, 2] + ANCHORS_YXHW[:, 0]
    xc = ENCODINGS[:, 1] / 10 * ANCHORS_YXHW[:, 3] + ANCHORS_YXHW[:, 1]
    h = np.exp(ENCODINGS[:, 2] / 5) * ANCHORS_YXHW[:, 2]
    w = np.exp(ENCODINGS[:, 3] / 5) * ANCHORS_YXHW[:, 3]
    return np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)


def _quadrant_frame(width: int, height: int) -> np.ndarray:
    """A BGR frame whose four quadrants carry ``QUADRANT_RGB``."""
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    halves = ((0, height // 2), (height // 2, height)), ((0, width // 2), (width // 2, width))
    for quadrant, (r, g, b) in QUADRANT_RGB.items():
        (y0, y1), (x0, x1) = halves[0][quadrant // 2], halves[1][quadrant % 2]
        frame[y0:y1, x0:x1] = (b, g, r)
    return frame


def _postprocess_signature() -> str:
    ints = {"max_detections": 10, "max_classes_per_detection": 1, "detections_per_class": 10}
    floats = {
        "nms_score_threshold": 0.3,
        "nms_iou_threshold": 0.5,
        "y_scale": 10.0,
        "x_scale": 10.0,
        "h_scale": 5.0,
        "w_scale": 5.0,
    }
    parts = ['name: "TFLite_Detection_PostProcess"']
    parts += [f'attr {{ key: "{k}" value {{ i: {v} }} }}' for k, v in ints.items()]
    parts += [f'attr {{ key: "{k}" value {{ f: {v} }} }}' for k, v in floats.items()]
    parts += ['attr { key: "num_classes" value { i: 2 } }']
    parts += ['attr { key: "use_regular_nms" value { b: false } }']
    return " ".join(parts)


def _convert(module: Any, int8: bool) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.__call__.get_concrete_function()], module
    )
    converter.allow_custom_ops = True
    if int8:
        shape = module.__call__.input_signature[0].shape

        def representative() -> Iterator[list[np.ndarray]]:
            # Like the test frames: one colour per quadrant, R often 0 (-1 normalized).
            rng = np.random.default_rng(0)
            half = (shape[1] // 2, shape[2] // 2)
            for i in range(32):
                colours = rng.uniform(-1, 1, (1, 2, 2, 3)).astype(np.float32)
                if i % 2 == 0:
                    colours[..., 0] = -1.0
                yield [np.repeat(np.repeat(colours, half[0], axis=1), half[1], axis=2)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        if getattr(module, "int8_outputs", False):
            converter.inference_output_type = tf.int8
    return bytes(converter.convert())


@pytest.fixture(scope="module")
def postprocessed_ssd() -> Callable[[bool], bytes]:
    """Return a builder of the tiny post-processed SSD (float or int8), cached."""
    import tensorflow as tf

    @tf.function(experimental_implements=_postprocess_signature())
    def postprocess(box_encodings: Any, class_predictions: Any, anchors: Any) -> Any:
        # Placeholder body: the converter replaces the call with the TFLite custom op.
        boxes = tf.constant(0.0, dtype=tf.float32, name="boxes")
        classes = tf.constant(0.0, dtype=tf.float32, name="classes")
        scores = tf.constant(0.0, dtype=tf.float32, name="scores")
        count = tf.constant(0.0, dtype=tf.float32, name="num_detections")
        return boxes, classes, scores, count

    class TinySsd(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 64, 64, 3], tf.float32)])
        def __call__(self, image: Any) -> Any:
            quadrants = tf.reshape(tf.nn.avg_pool2d(image, 32, 32, "VALID"), [1, 4, 3])
            red = quadrants[:, :, :1] + 1.0  # 0 where R == 0
            encodings = tf.tile(red, [1, 1, 4]) + ENCODINGS[None]
            scores = tf.concat([tf.zeros_like(red), (quadrants[:, :, 1:] + 1.0) / 2.0], axis=2)
            return postprocess(encodings, scores, tf.constant(ANCHORS_YXHW))

    cache: dict[bool, bytes] = {}

    def build(int8: bool) -> bytes:
        if int8 not in cache:
            cache[int8] = _convert(TinySsd(), int8)
        return cache[int8]

    return build


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
def test_postprocessed_ssd_boxes_match_the_known_answer(
    postprocessed_ssd: Callable[[bool], bytes], int8: bool, tmp_path: Path
) -> None:
    # Prepare: a non-square frame (the model stretches it to 64x64) and a label map.
    labels = tmp_path / "labelmap.txt"
    labels.write_text("???\ncat\ndog\n")
    spec = DetectorSpec(labels=load_labels(labels), label_offset=1, score_threshold=0.5)
    detector = Detector(postprocessed_ssd(int8), spec)
    width, height = 320, 240

    # Execute
    found = detector.detect(_quadrant_frame(width, height))

    # Assert: best first, bottom-left below threshold, boxes in pixels.
    assert detector.model.inputs[0].dtype == (np.int8 if int8 else np.float32)
    assert [d.label for d in found] == ["cat", "dog", "cat"]
    np.testing.assert_allclose([d.score for d in found], [0.90, 0.80, 0.60], atol=0.02)
    expected = _expected_boxes_xyxy()[[0, 1, 3]] * [width, height, width, height]
    expected = np.clip(expected, 0, [width, height, width, height])
    np.testing.assert_allclose([d.box for d in found], expected, atol=1.0)


def test_postprocessed_outputs_are_found_by_op_order_not_listing_order(
    postprocessed_ssd: Callable[[bool], bytes],
) -> None:
    detector = Detector(postprocessed_ssd(False), DetectorSpec())
    listed = [spec.shape for spec in detector.model.outputs]
    boxes, classes, scores, count = detector._post_order
    assert len(listed[boxes]) == 3 and listed[count] == (1,)
    assert {classes, scores, boxes, count} == {0, 1, 2, 3}
    assert detector.detect(_quadrant_frame(64, 64), score_threshold=0.85)[0].label == "0"


# --- a raw-anchor SSD (BlazeFace layout, 16x16 input, 8 anchors, 1 keypoint) ----------
RAW_ANCHORS = AnchorOptions(
    input_width=16, input_height=16, num_layers=1, min_scale=0.5, max_scale=0.5, strides=(8,)
)
RAW_DECODING = BoxDecoding(
    num_coords=6, num_keypoints=1, x_scale=16, y_scale=16, w_scale=16, h_scale=16
)
RAW_BOXES = np.zeros((8, 6), dtype=np.float32)
RAW_BOXES[0] = [1.0, 2.0, 6.0, 4.0, -1.0, -1.0]  # x, y, w, h, keypoint x, y (input pixels)
RAW_BOXES[1] = [0.0, 0.0, 7.0, 7.0, 0.0, 0.0]  # overlaps anchor 0's box, lower score
RAW_BOXES[6] = [-2.0, 1.0, 4.0, 6.0, 2.0, 2.0]
RAW_LOGITS = np.full((8, 1), -4.0, dtype=np.float32)
RAW_LOGITS[0], RAW_LOGITS[1], RAW_LOGITS[6] = 3.0, 1.0, 2.0


@pytest.fixture(scope="module")
def raw_ssd() -> Callable[[bool], bytes]:
    """Return a builder of the tiny raw-anchor SSD (float, or int8 in and out)."""
    import tensorflow as tf

    class TinyRawSsd(tf.Module):
        int8_outputs = True

        @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32)])
        def __call__(self, image: Any) -> Any:
            red = tf.reduce_mean(image[..., :1], axis=[1, 2], keepdims=True) + 1.0  # (1,1,1)
            boxes = tf.reshape(red, [1, 1, 1]) + RAW_BOXES[None]
            logits = tf.reshape(red, [1, 1, 1]) + RAW_LOGITS[None]
            return boxes, logits

    cache: dict[bool, bytes] = {}

    def build(int8: bool) -> bytes:
        if int8 not in cache:
            cache[int8] = _convert(TinyRawSsd(), int8)
        return cache[int8]

    return build


def _expected_raw(width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (pixels), keypoints and scores after weighted NMS of anchors 0+1, then 6."""
    anchors = generate_anchors(RAW_ANCHORS)
    centre = RAW_BOXES[:, :2] / 16 + anchors[:, :2]
    size = RAW_BOXES[:, 2:4] / 16
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    keypoints = RAW_BOXES[:, 4:6] / 16 + anchors[:, :2]
    scores = 1 / (1 + np.exp(-RAW_LOGITS[:, 0]))
    w0, w1 = scores[0], scores[1]
    merged_box = (boxes[0] * w0 + boxes[1] * w1) / (w0 + w1)
    merged_kp = (keypoints[0] * w0 + keypoints[1] * w1) / (w0 + w1)
    # Letterbox: the frame's long side fills the 16x16 input, centred.
    side = max(width, height)
    offset = np.array([(width - side) / 2, (height - side) / 2])
    to_px = np.concatenate([offset, offset])
    out_boxes = np.array([merged_box, boxes[6]]) * side + to_px
    out_kps = np.array([merged_kp, keypoints[6]]) * side + offset
    return out_boxes, out_kps, np.array([scores[0], scores[6]])


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
def test_raw_anchor_ssd_decodes_letterboxes_and_merges_overlaps(
    raw_ssd: Callable[[bool], bytes], int8: bool
) -> None:
    # Prepare: a landscape frame, letterboxed into the square input; R == 0 everywhere.
    spec = DetectorSpec(
        labels=("thing",),
        keep_aspect_ratio=True,
        raw=RawSsdSpec(anchors=RAW_ANCHORS, decoding=RAW_DECODING),
    )
    detector = Detector(raw_ssd(int8), spec)
    width, height = 160, 120
    frame = np.zeros((height, width, 3), dtype=np.uint8)

    # Execute
    found = detector.detect_keypoints(frame)

    # Assert
    assert detector.model.outputs[0].quantized is int8
    boxes, keypoints, scores = _expected_raw(width, height)
    boxes = np.clip(boxes, 0, [width, height, width, height])
    assert [f.detection.label for f in found] == ["thing", "thing"]
    tolerance = 1.5 if int8 else 1e-3  # int8 outputs: a few quantization steps
    np.testing.assert_allclose([f.detection.box for f in found], boxes, atol=tolerance)
    np.testing.assert_allclose([f.keypoints[0] for f in found], keypoints, atol=tolerance)
    np.testing.assert_allclose([f.detection.score for f in found], scores, atol=0.02)


# --- BlazeFace on a real face ---------------------------------------------------------
@pytest.fixture(scope="module")
def blazeface(model_dir: Path) -> Detector:
    return Detector.blazeface(model_dir)


def test_blazeface_finds_the_face_in_a_real_photo(blazeface: Detector) -> None:
    # Prepare
    image = cv2.imread(str(FACE))
    assert image is not None, FACE

    # Execute
    found = blazeface.detect(image)

    # Assert
    assert len(found) >= 1
    best = found[0]
    x1, y1, x2, y2 = best.box
    assert best.label == "face" and best.score > 0.8
    assert x1 < FACE_CENTRE[0] < x2 and y1 < FACE_CENTRE[1] < y2
    assert 20 < x2 - x1 < 60 and 20 < y2 - y1 < 60


@pytest.mark.parametrize("size,offset", [((200, 160), (60, 20)), ((160, 200), (20, 60))])
def test_blazeface_boxes_follow_the_face_through_letterboxing(
    blazeface: Detector, size: tuple[int, int], offset: tuple[int, int]
) -> None:
    # Prepare: the face crop pasted into a larger, non-square black frame.
    image = cv2.imread(str(FACE))
    width, height = size
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[offset[1] : offset[1] + 128, offset[0] : offset[0] + 128] = image
    reference = np.asarray(blazeface.detect(image)[0].box)

    # Execute
    best = blazeface.detect(canvas)[0]

    # Assert: the same box, shifted by the offset (the model sees a smaller face).
    shift = np.array([offset[0], offset[1], offset[0], offset[1]])
    np.testing.assert_allclose(np.asarray(best.box) - shift, reference, atol=4.0)


def test_blazeface_threshold_is_configurable(model_dir: Path) -> None:
    image = cv2.imread(str(FACE))
    strict = Detector.blazeface(model_dir, score_threshold=0.999)
    assert strict.spec == replace(BLAZEFACE_SHORT_RANGE, score_threshold=0.999)
    assert strict.detect(image) == []
    assert len(strict.detect(image, score_threshold=0.3)) >= 1


def test_a_file_that_is_not_a_model_is_a_model_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(ModelError, match="not a valid TFLite model"):
        Detector(junk)
    with pytest.raises(ModelError, match="does not exist"):
        Detector(tmp_path / "absent.tflite")


def test_a_raw_spec_on_the_wrong_model_is_a_model_error(model_dir: Path) -> None:
    with pytest.raises(ModelError, match="no output has 16 values per anchor"):
        Detector(model_dir / "pose_detection.tflite", BLAZEFACE_SHORT_RANGE)
    with pytest.raises(ModelError, match="expected the 4 outputs"):
        Detector(model_dir / "face_detection_short_range.tflite", DetectorSpec())
