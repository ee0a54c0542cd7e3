"""``models.weight_packing``: one flat array on the wire, the model's arrays at each end."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.core.errors import ConfigError
from models.weight_packing import pack_weights, unpack_weights

SHAPES = [(3, 3, 2, 4), (4,), (4,), (1, 1, 4, 5), (5,)]


def _weights(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in SHAPES]


def test_round_trip_gives_back_every_array_bit_for_bit() -> None:
    weights = _weights(0)
    packed = pack_weights(weights)
    assert len(packed) == 1 and packed[0].ndim == 1 and packed[0].dtype == np.float32
    assert packed[0].size == sum(w.size for w in weights)
    for got, expected in zip(unpack_weights(packed, SHAPES), weights, strict=True):
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_unpacked_weights_pass_through() -> None:
    weights = _weights(1)
    for got, expected in zip(unpack_weights(weights, SHAPES), weights, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_averaging_packed_models_is_averaging_their_arrays() -> None:
    # FedAvg's weighted mean, element by element, on packed and on plain models
    models, examples = [_weights(s) for s in range(3)], np.array([10.0, 30.0, 60.0])
    share = examples / examples.sum()
    packed = sum(p * pack_weights(m)[0] for p, m in zip(share, models, strict=True))
    plain = [sum(p * m[i] for p, m in zip(share, models, strict=True)) for i in range(len(SHAPES))]
    for got, expected in zip(unpack_weights([packed], SHAPES), plain, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "arrays",
    [
        [np.zeros(10, np.float32)],  # one array of the wrong size
        [np.zeros((3, 35), np.float32)],  # right size, not flat
        [np.zeros(104, np.float32), np.zeros(1, np.float32)],  # two arrays
        _weights(0)[:-1],  # one array short
    ],
)
def test_anything_else_is_a_clear_error(arrays: list[np.ndarray]) -> None:
    assert sum(int(np.prod(s)) for s in SHAPES) == 105
    with pytest.raises(ConfigError, match="neither this model's 5 arrays nor one packed array"):
        unpack_weights(arrays, SHAPES)
