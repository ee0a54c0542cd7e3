"""The person detector's training batches: a Keras ``PyDataset`` over a node's examples.

Kept apart from :mod:`clients.tasks.detector_data` because it is the one part of the
detector's data that needs Keras: a ClientApp process that hands training to the node's
warm worker (``clients.warm_worker``) lists examples and reads node settings without
importing TensorFlow (about 6 s of CPU per message on the demo's 2-core machine, paid by
the 3 nodes' evaluation processes at once).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np

from clients.tasks.detector_data import (
    DetectorExample,
    augment_view,
    example_targets,
    read_frame,
)
from models.box_coding import DEFAULT_ANCHORS, TARGET_COLUMNS, AnchorSpec
from models.detector_input import frame_to_input, normalize_input

__all__ = ["StoreBatches"]


class StoreBatches(keras.utils.PyDataset):  # type: ignore[misc]
    """Batches ``(normalized images, targets)`` read from the store's JPEGs on demand.

    Only the current batch's frames are in memory. Batch ``i`` of epoch ``e`` depends only
    on ``(seed, e, i)`` (order and augmentation), so training is reproducible whatever
    order Keras asks for batches in. Pass ``shuffle=False`` to ``fit``: the order is ours.
    """

    def __init__(
        self,
        examples: Sequence[DetectorExample],
        spec: AnchorSpec = DEFAULT_ANCHORS,
        *,
        batch_size: int = 8,
        augmentation: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not examples:
            raise ValueError("no training examples to batch")
        self.examples = list(examples)
        self.spec = spec
        self.batch_size = int(batch_size)
        self.augmentation = augmentation
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.examples) / self.batch_size)

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.examples))

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = self._order()[index * self.batch_size : (index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        spec = self.spec
        images = np.empty((len(chosen), spec.input_height, spec.input_width, 3), np.uint8)
        targets = np.empty((len(chosen), spec.num_anchors, TARGET_COLUMNS), np.float32)
        for row, i in enumerate(chosen):
            example = self.examples[i]
            frame = read_frame(example)
            if self.augmentation:
                view = augment_view(
                    frame, example.boxes, example.ignore, rng, spec, coverage=example.coverage
                )
                images[row] = view.image
                boxes, ignore, coverage = view.boxes, view.ignore, view.coverage
                weights = example.weights[view.keep]
            else:
                images[row] = frame_to_input(frame, spec)
                size = np.array([example.width, example.height] * 2, np.float32)
                boxes, ignore, weights = (
                    example.boxes / size,
                    example.ignore / size,
                    example.weights,
                )
                coverage = None if example.coverage is None else example.coverage / size
            targets[row] = example_targets(
                boxes, weights, ignore, example.background, spec, coverage=coverage
            )
        return normalize_input(images), targets

    def on_epoch_end(self) -> None:
        self.epoch += 1
