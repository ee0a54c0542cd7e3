"""The label schema: typed, versioned, validated; built from the cloud's answer."""

from __future__ import annotations

import pytest

from fedge.core.labels import LABEL_SCHEMA_VERSION, FrameLabel, LabelBox, LabelError
from fedge.core.proto import cloud_pb2
from fedge.core.records import Detection


def _label() -> FrameLabel:
    return FrameLabel(
        boxes=(
            LabelBox((10.0, 20.0, 60.0, 140.0), "person", 0.85, edge_score=0.8, cloud_score=0.9),
            LabelBox((200.0, 30.0, 230.0, 100.0), "person", 0.45, cloud_score=0.9),
        ),
        source="cloud",
        fusion_method="mean",
        teacher_version="hog/1",
        frame_width=320,
        frame_height=240,
        teacher_detections=(Detection((11.0, 21.0, 59.0, 139.0), "person", 0.9),),
    )


def test_label_round_trips_through_json() -> None:
    label = _label()

    data = label.to_json()
    back = FrameLabel.from_json(data)

    assert back == label
    assert data["schema_version"] == LABEL_SCHEMA_VERSION
    assert data["boxes"][1]["edge_score"] is None


def test_unknown_schema_version_is_an_error() -> None:
    data = _label().to_json() | {"schema_version": LABEL_SCHEMA_VERSION + 1}

    with pytest.raises(LabelError, match="upgrade fedge"):
        FrameLabel.from_json(data)


def test_untyped_label_is_an_error() -> None:
    with pytest.raises(LabelError, match="untyped label"):
        FrameLabel.from_json({"boxes": [[1, 2, 3, 4]], "labels": ["person"]})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"boxes": [{"box": [5, 5, 1, 1], "label": "person", "score": 0.5}]}, "x1 > x2"),
        ({"boxes": [{"box": [0, 0, 400, 10], "label": "person", "score": 0.5}]}, "outside"),
        ({"boxes": [{"box": [0, 0, 4, 10], "label": "person", "score": 1.5}]}, "0..1"),
        ({"boxes": [{"box": [0, 0, 4, 10], "label": "", "score": 0.5}]}, "non-empty label"),
        ({"boxes": [{"box": [0, 0, 4], "label": "p", "score": 0.5}]}, "4 finite numbers"),
        ({"frame_width": 0}, "frame_width"),
        ({"source": ""}, "source"),
        ({"fusion_method": None}, "fusion_method"),
    ],
)
def test_malformed_label_is_rejected(change: dict[str, object], message: str) -> None:
    data = _label().to_json() | change

    with pytest.raises(LabelError, match=message):
        FrameLabel.from_json(data)


def test_missing_field_is_a_label_error() -> None:
    data = _label().to_json()
    del data["teacher_version"]

    with pytest.raises(LabelError, match="teacher_version"):
        FrameLabel.from_json(data)


def test_label_from_cloud_result_keeps_scores_and_clips_boxes() -> None:
    result = cloud_pb2.CloudResult(
        node_id="n1",
        frame_id=7,
        fusion_method="logit",
        teacher_version="t/2",
        schema_version=1,
        boxes=[
            cloud_pb2.FusedBox(
                box=cloud_pb2.Box(x1=-0.4, y1=10, x2=50, y2=240.3),
                label="person",
                score=0.85,
                has_edge=True,
                edge_score=0.8,
                has_cloud=True,
                cloud_score=0.9,
            ),
            cloud_pb2.FusedBox(
                box=cloud_pb2.Box(x1=100, y1=10, x2=150, y2=90),
                label="person",
                score=0.6,
                has_cloud=True,
                cloud_score=0.6,
            ),
        ],
        teacher_detections=[
            cloud_pb2.Detection(box=cloud_pb2.Box(x1=1, y1=2, x2=3, y2=4), label="person", score=1)
        ],
    )

    label = FrameLabel.from_cloud_result(result, frame_width=320, frame_height=240)

    assert label.source == "cloud" and label.fusion_method == "logit"
    assert label.teacher_version == "t/2"
    first, second = label.boxes
    assert first.box == (0.0, 10.0, 50.0, 240.0)
    assert first.edge_score == pytest.approx(0.8) and first.cloud_score == pytest.approx(0.9)
    assert first.score == pytest.approx(0.85)
    assert second.edge_score is None and second.cloud_score == pytest.approx(0.6)
    assert label.teacher_detections[0].score == 1.0


def test_cloud_result_of_unknown_schema_version_is_refused() -> None:
    result = cloud_pb2.CloudResult(schema_version=9, fusion_method="mean")

    with pytest.raises(LabelError, match="schema version 9"):
        FrameLabel.from_cloud_result(result, frame_width=10, frame_height=10)
