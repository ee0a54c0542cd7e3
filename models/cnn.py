"""The Fashion-MNIST CNN: the "simple CNN" of NIID-Bench (a LeNet-5 variant)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

__all__ = ["INPUT_SHAPE", "NUM_CLASSES", "build_cnn"]

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


def build_cnn(seed: int = 0, num_classes: int = NUM_CLASSES) -> keras.Model:
    """Return conv(6,5)-pool-conv(16,5)-pool-fc120-fc84-fc(num_classes), logits out.

    Weights are initialised deterministically from ``seed``.
    """
    import keras

    init = keras.initializers.GlorotUniform
    layers = [
        keras.Input(INPUT_SHAPE),
        keras.layers.Conv2D(6, 5, activation="relu", kernel_initializer=init(seed)),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 5, activation="relu", kernel_initializer=init(seed + 1)),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(120, activation="relu", kernel_initializer=init(seed + 2)),
        keras.layers.Dense(84, activation="relu", kernel_initializer=init(seed + 3)),
        keras.layers.Dense(num_classes, kernel_initializer=init(seed + 4)),
    ]
    return keras.Sequential(layers, name="fashion_cnn")
