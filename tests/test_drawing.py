"""Drawing helpers: skeletons and boxes land on a copy of the frame."""

from __future__ import annotations

import numpy as np

from clients.drawing import POSE_CONNECTIONS, annotate
from fedge.core.records import Detection, Person


def test_annotate_draws_on_a_copy() -> None:
    frame = np.zeros((120, 160, 3), dtype=np.uint8)
    landmarks = np.zeros((33, 4), dtype=np.float32)
    landmarks[:, 0] = np.linspace(40, 120, 33)
    landmarks[:, 1] = np.linspace(20, 100, 33)
    landmarks[:, 3] = 1.0
    person = Person(landmarks=landmarks, score=0.9, box=(40.0, 20.0, 120.0, 100.0))
    face = Detection(box=(10.0, 10.0, 30.0, 30.0), label="face", score=0.45)

    out = annotate(frame, [person], [face], fps=12.5, hard=True, reasons=["uncertain_score"])

    assert out.shape == frame.shape and out is not frame
    assert frame.sum() == 0
    assert out[10, 10:30].any()  # the box's top edge
    assert out[60, 60:100].any()  # the skeleton across the middle
    assert max(max(pair) for pair in POSE_CONNECTIONS) == 32


def test_invisible_landmarks_are_not_drawn() -> None:
    frame = np.zeros((120, 160, 3), dtype=np.uint8)
    landmarks = np.full((33, 4), 60.0, dtype=np.float32)
    landmarks[:, 3] = 0.1
    person = Person(landmarks=landmarks, score=0.9, box=(60.0, 60.0, 60.0, 60.0))

    out = annotate(frame, [person], [], fps=0.0, hard=False, reasons=[])

    assert not out[50:70, 50:70].any()
