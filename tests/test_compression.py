"""The update codec: Δ round-trips within its stated bounds, shrinks, and refuses bad records."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedge.core.errors import ConfigError, FedgeError
from fedge.core.run_config import RunConfig
from strategies.compression import (
    RESIDUAL_STATE_KEY,
    CompressionConfig,
    UpdateDecodeError,
    UpdateEncodeError,
    decode_deltas,
    decode_update,
    decode_update_record,
    encode_update,
    is_encoded_update,
    residual_from_record,
    residual_to_record,
)
from strategies.non_finite import has_non_finite_arrays

# Shapes of models.cnn.build_cnn(0).get_weights(), written out to keep TensorFlow out of here.
CNN_SHAPES = [
    (5, 5, 1, 6),
    (6,),
    (5, 5, 6, 16),
    (16,),
    (256, 120),
    (120,),
    (120, 84),
    (84,),
    (84, 10),
    (10,),
]

Weights = list[np.ndarray]


def _model(
    shapes: list[tuple[int, ...]], seed: int = 0, step: float = 0.01
) -> tuple[Weights, Weights]:
    """(new, old): old ~ N(0, 0.1), new = old + N(0, step), float32."""
    rng = np.random.default_rng(seed)
    old = [rng.normal(0.0, 0.1, s).astype(np.float32) for s in shapes]
    new = [(w + rng.normal(0.0, step, w.shape)).astype(np.float32) for w in old]
    return new, old


def _serialized_bytes(record: ArrayRecord) -> int:
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(record).values())


def _array_bytes(record: ArrayRecord) -> int:
    return sum(array.numpy().nbytes for array in record.values())


def _sent(delta: np.ndarray, cfg: CompressionConfig) -> tuple[np.ndarray, ArrayRecord]:
    """Encode one tensor's Δ against zeros; return the decoded Δ̂ and the record."""
    old = [np.zeros(delta.shape, np.float32)]
    record, _ = encode_update([delta.astype(np.float32)], old, cfg)
    return decode_deltas(record, old)[0], record


# --- round trips and bounds -------------------------------------------------------------


def test_dense_float32_delta_round_trips_bitwise() -> None:
    # Prepare
    new, old = _model(CNN_SHAPES)
    # Execute
    record, _ = encode_update(new, old, CompressionConfig())
    deltas = decode_deltas(record, old)
    # Assert
    for delta, w_new, w_old in zip(deltas, new, old, strict=True):
        assert delta.dtype == np.float32
        np.testing.assert_array_equal(delta, w_new - w_old)


def test_dense_float32_weights_round_trip_to_float32_rounding() -> None:
    # Prepare
    new, old = _model(CNN_SHAPES)
    # Execute
    record, _ = encode_update(new, old, CompressionConfig())
    weights = decode_update(record, old)
    # Assert: old + fl(new − old) is new unless the subtraction rounded (sign changes)
    for got, w_new, w_old in zip(weights, new, old, strict=True):
        assert got.dtype == np.float32 and got.shape == w_new.shape
        spacing = np.spacing(np.maximum(np.abs(w_new), np.abs(w_old)))
        assert (np.abs(got.astype(np.float64) - w_new) <= 2 * spacing).all()
    assert (
        np.mean(np.concatenate([(g == w).ravel() for g, w in zip(weights, new, strict=True)])) > 0.9
    )


def test_dense_float32_weights_round_trip_bitwise_when_subtraction_is_exact() -> None:
    # Prepare: same sign, within a factor of 2 (Sterbenz), so new − old is exact in float32
    rng = np.random.default_rng(3)
    old = [rng.uniform(0.5, 1.0, (64, 64)).astype(np.float32)]
    new = [(old[0] * rng.uniform(0.9, 1.1, old[0].shape)).astype(np.float32)]
    # Execute
    record, _ = encode_update(new, old, CompressionConfig())
    # Assert
    np.testing.assert_array_equal(decode_update(record, old)[0], new[0])


def _adversarial_deltas() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    outlier = rng.normal(0.0, 1e-3, 4096)
    outlier[1234] = 1e6
    return {
        "random-normal": rng.normal(0.0, 1.0, 4096),
        "all-zeros": np.zeros(4096),
        "one-huge-outlier": outlier,
        "negative-only": -rng.uniform(1e-3, 5.0, 4096),
        "constant": np.full(4096, -0.3),
        "tiny-subnormal": rng.normal(0.0, 1e-42, 4096),
        "step-below-float32": rng.integers(-20, 21, 4096)
        * float(np.finfo(np.float32).smallest_subnormal),
        "mixed-magnitudes": rng.normal(0.0, 1.0, 4096) * 10.0 ** rng.integers(-8, 8, 4096),
    }


@pytest.mark.parametrize("name", sorted(_adversarial_deltas()))
@pytest.mark.parametrize("topk", [1.0, 0.25])
def test_int8_error_is_within_half_a_scale_step(name: str, topk: float) -> None:
    # Prepare
    delta = _adversarial_deltas()[name].astype(np.float32)
    cfg = CompressionConfig(bits=8, topk_ratio=topk, error_feedback=False)
    # Execute
    got, record = _sent(delta, cfg)
    # Assert
    scale = float(record["0/scale"].numpy())
    assert scale <= float(np.abs(delta).max()) / 127 * (1 + 1e-6) + 1.5e-45
    kept = got != 0 if topk < 1.0 else np.ones(delta.shape, bool)
    error = np.abs(got.astype(np.float64) - delta)[kept]
    assert (error <= scale / 2 + np.spacing(np.abs(delta[kept]))).all()


def test_int8_keeps_zero_exact_and_all_zero_delta_decodes_to_zeros() -> None:
    # Prepare
    delta = np.zeros(1000, np.float32)
    delta[::7] = np.linspace(-1.0, 1.0, delta[::7].size)
    # Execute
    got, _ = _sent(delta, CompressionConfig(bits=8))
    zeros, record = _sent(np.zeros(1000, np.float32), CompressionConfig(bits=8))
    # Assert
    assert (got[delta == 0] == 0).all()
    assert float(record["0/scale"].numpy()) == 0.0
    assert not zeros.any()


@pytest.mark.parametrize(
    ("size", "ratio", "k"), [(1000, 0.1, 100), (1001, 0.1, 101), (2400, 0.1, 240)]
)
def test_topk_keeps_exactly_the_k_largest_magnitudes(size: int, ratio: float, k: int) -> None:
    # Prepare
    delta = np.random.default_rng(size).normal(0.0, 1.0, size).astype(np.float32)
    # Execute
    got, record = _sent(delta, CompressionConfig(topk_ratio=ratio))
    # Assert
    largest = np.argsort(-np.abs(delta))[:k]
    assert k == math.ceil(round(ratio * size, 6))
    assert np.count_nonzero(got) == k
    np.testing.assert_array_equal(got[largest], delta[largest])
    assert record["0/idx"].numpy().dtype == np.uint16
    assert record["0/val"].numpy().dtype == np.float32


def test_topk_with_int8_sends_k_int8_values_within_half_a_step() -> None:
    # Prepare
    delta = np.random.default_rng(11).normal(0.0, 1.0, 5000).astype(np.float32)
    # Execute
    got, record = _sent(delta, CompressionConfig(bits=8, topk_ratio=0.05))
    # Assert
    idx, q = record["0/idx"].numpy(), record["0/q"].numpy()
    scale = float(record["0/scale"].numpy())
    assert q.dtype == np.int8 and idx.shape == q.shape == (250,)
    np.testing.assert_array_equal(np.sort(idx), np.sort(np.argsort(-np.abs(delta))[:250]))
    assert (np.abs(got[idx] - delta[idx]) <= scale / 2 + np.spacing(np.abs(delta[idx]))).all()
    assert not np.delete(got, idx).any()


def test_topk_falls_back_to_dense_zeros_when_indices_would_cost_more() -> None:
    # Prepare: keeping 90% with 2-byte indices + 4-byte values exceeds 4 bytes per entry
    delta = np.random.default_rng(5).normal(0.0, 1.0, 1000).astype(np.float32)
    # Execute
    got, record = _sent(delta, CompressionConfig(topk_ratio=0.9))
    # Assert
    assert set(record) >= {"0/raw"} and "0/idx" not in record
    assert np.count_nonzero(got) == 900


@pytest.mark.parametrize(
    "cfg", [CompressionConfig(bits=8), CompressionConfig(bits=8, topk_ratio=0.01)]
)
def test_tensors_below_min_elements_are_sent_as_plain_float32_delta(cfg: CompressionConfig) -> None:
    # Prepare
    new, old = _model([(255,), (256,)])
    # Execute
    record, _ = encode_update(new, old, cfg)
    # Assert
    assert record["0/raw"].numpy().dtype == np.float32
    np.testing.assert_array_equal(decode_deltas(record, old)[0], new[0] - old[0])
    assert "1/raw" not in record and "1/q" in record


# --- error feedback ---------------------------------------------------------------------


class _Accumulated(NamedTuple):
    errors: list[float]  # ‖Σ sent − Σ true‖ after each round
    gap: np.ndarray  # Σ sent − Σ true after the last round
    residual: list[np.ndarray]
    last: ArrayRecord


def _accumulate(cfg: CompressionConfig, rounds: int = 50) -> _Accumulated:
    """Send ``rounds`` updates of drifting random Δ; compare the sums sent and true."""
    rng = np.random.default_rng(1)
    drift = rng.normal(0.0, 0.1, 1000)
    old = [np.zeros(1000, np.float32)]
    residual: list[np.ndarray] | None = None
    true_total, sent_total, errors = np.zeros(1000), np.zeros(1000), []
    for _ in range(rounds):
        new = [(drift + rng.normal(0.0, 1.0, 1000)).astype(np.float32)]
        record, residual = encode_update(new, old, cfg, residual)
        true_total += new[0]
        sent_total += decode_deltas(record, old)[0]
        errors.append(float(np.linalg.norm(sent_total - true_total)))
    return _Accumulated(errors, sent_total - true_total, residual or [], record)


@pytest.mark.parametrize("bits", [32, 8])
def test_error_feedback_keeps_accumulated_topk_error_bounded(bits: int) -> None:
    # Prepare
    with_feedback = CompressionConfig(bits=bits, topk_ratio=0.1)
    without = CompressionConfig(bits=bits, topk_ratio=0.1, error_feedback=False)
    # Execute
    bounded = _accumulate(with_feedback)
    growing = _accumulate(without)
    # Assert: with feedback what is missing is exactly the residual, and it stops growing
    np.testing.assert_allclose(bounded.gap, -bounded.residual[0], atol=1e-4)
    assert max(bounded.errors[25:]) <= 1.25 * max(bounded.errors[:25])
    assert growing.errors[-1] >= 2.0 * growing.errors[9]
    assert bounded.errors[-1] <= growing.errors[-1] / 3


def test_error_feedback_keeps_int8_accumulated_error_within_half_a_step() -> None:
    # Prepare
    with_feedback = CompressionConfig(bits=8)
    without = CompressionConfig(bits=8, error_feedback=False)
    # Execute
    bounded = _accumulate(with_feedback)
    growing = _accumulate(without)
    # Assert: Σ sent − Σ true = −residual, at most half of the last round's step
    scale = float(bounded.last["0/scale"].numpy())
    np.testing.assert_allclose(bounded.gap, -bounded.residual[0], atol=1e-4)
    assert np.abs(bounded.gap).max() <= scale / 2 * (1 + 1e-4)
    assert growing.errors[-1] >= 3 * bounded.errors[-1]


def test_without_error_feedback_no_residual_is_kept() -> None:
    # Prepare
    new, old = _model([(1000,)])
    stale = [np.full(1000, 5.0, np.float32)]
    # Execute
    record, residual = encode_update(
        new, old, CompressionConfig(bits=8, error_feedback=False), stale
    )
    # Assert: the stale residual was ignored
    assert residual == []
    assert np.abs(decode_deltas(record, old)[0] - (new[0] - old[0])).max() < 0.01


def test_residual_survives_a_round_in_context_state() -> None:
    # Prepare
    new, old = _model(CNN_SHAPES)
    cfg = CompressionConfig(bits=8, topk_ratio=0.1)
    state = RecordDict()
    # Execute
    _, residual = encode_update(new, old, cfg, residual_from_record(None))
    state[RESIDUAL_STATE_KEY] = residual_to_record(residual)
    restored = residual_from_record(state.array_records.get(RESIDUAL_STATE_KEY))
    # Assert
    assert restored is not None and len(restored) == len(CNN_SHAPES)
    for got, kept in zip(restored, residual, strict=True):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, kept)
    assert residual_from_record(residual_to_record([])) is None


def test_mismatched_inputs_are_refused_before_encoding() -> None:
    # Prepare
    new, old = _model([(300,), (4,)])
    # Execute / Assert
    with pytest.raises(UpdateEncodeError, match="tensors"):
        encode_update(new, old[:1], CompressionConfig())
    with pytest.raises(UpdateEncodeError, match="tensor 1"):
        encode_update(new, [old[0], np.zeros(5, np.float32)], CompressionConfig())
    with pytest.raises(UpdateEncodeError, match="residual"):
        encode_update(new, old, CompressionConfig(), [np.zeros(300), np.zeros(3)])


# --- size -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "serialized_limit", "array_limit"),
    [
        (CompressionConfig(bits=8), 0.30, 0.27),
        (CompressionConfig(topk_ratio=0.1), 0.20, 0.16),
        (CompressionConfig(bits=8, topk_ratio=0.1), 0.14, 0.09),
        (CompressionConfig(topk_ratio=0.01), 0.07, 0.03),
    ],
    ids=["int8", "top10%", "int8+top10%", "top1%"],
)
def test_encoded_cnn_update_is_a_fraction_of_dense_float32(
    cfg: CompressionConfig, serialized_limit: float, array_limit: float
) -> None:
    # Prepare
    new, old = _model(CNN_SHAPES)
    dense = ArrayRecord(new)
    # Execute
    record, _ = encode_update(new, old, cfg)
    # Assert: bytes Flower puts on the wire (array data, headers, object ids)
    assert _serialized_bytes(record) <= serialized_limit * _serialized_bytes(dense)
    assert _array_bytes(record) <= array_limit * _array_bytes(dense)


# --- wire format ------------------------------------------------------------------------


def test_encoded_update_is_recognised_and_plain_weights_are_not() -> None:
    # Prepare
    new, old = _model(CNN_SHAPES)
    # Execute
    record, _ = encode_update(new, old, CompressionConfig(bits=8))
    # Assert
    assert is_encoded_update(record)
    assert not is_encoded_update(ArrayRecord(new))


def test_decoded_record_keeps_the_global_record_keys() -> None:
    # Prepare
    new, old = _model([(300,), (4,)])
    global_record = ArrayRecord({"conv.w": Array(old[0]), "conv.b": Array(old[1])})
    record, _ = encode_update(new, old, CompressionConfig())
    # Execute
    decoded = decode_update_record(record, global_record)
    # Assert
    assert list(decoded) == ["conv.w", "conv.b"]
    np.testing.assert_array_equal(decoded["conv.b"].numpy(), decode_update(record, old)[1])


def _valid() -> tuple[ArrayRecord, Weights]:
    """Tensor 0 raw, 1 int8, 2 sparse-int8, 3 sparse float32."""
    new, old = _model([(8,), (300,), (1000,), (1000,)])
    dense, _ = encode_update(new[:2], old[:2], CompressionConfig(bits=8))
    sparse8, _ = encode_update(new[2:3], old[2:3], CompressionConfig(bits=8, topk_ratio=0.1))
    sparse, _ = encode_update(new[3:], old[3:], CompressionConfig(topk_ratio=0.1))
    record, _ = encode_update(new, old, CompressionConfig())
    for key in [k for k in record if k[0].isdigit()]:
        del record[key]
    for key in dense:
        if key[0].isdigit():
            record[key] = dense[key]
    for source, index in ((sparse8, 2), (sparse, 3)):
        for key in source:
            if key.startswith("0/"):
                record[f"{index}/{key[2:]}"] = source[key]
    return record, old


def _set(key: str, values: np.ndarray) -> Callable[[ArrayRecord], None]:
    def mutate(record: ArrayRecord) -> None:
        record[key] = Array(values)

    return mutate


def _delete(key: str) -> Callable[[ArrayRecord], None]:
    def mutate(record: ArrayRecord) -> None:
        del record[key]

    return mutate


def _corrupt(key: str) -> Callable[[ArrayRecord], None]:
    def mutate(record: ArrayRecord) -> None:
        record[key] = Array(dtype="float32", shape=(8,), stype="numpy.ndarray", data=b"junk")

    return mutate


MALFORMED: dict[str, tuple[Callable[[ArrayRecord], None], str]] = {
    "missing scale": (_delete("1/scale"), "lacks '1/scale'"),
    "missing values": (_delete("3/val"), "lacks '3/val'"),
    "missing tensor": (_delete("0/raw"), "no arrays for tensor 0"),
    "missing header": (_delete("fedge-delta/format"), "plain weights"),
    "q not int8": (_set("1/q", np.zeros(300, np.int16)), "int8"),
    "raw not float32": (_set("0/raw", np.zeros(8, np.float64)), "float32"),
    "raw wrong shape": (_set("0/raw", np.zeros(9, np.float32)), r"shape \(8,\)"),
    "scale not scalar": (_set("1/scale", np.ones(2, np.float32)), "scale"),
    "scale NaN": (_set("1/scale", np.array(np.nan, np.float32)), "finite"),
    "scale Inf": (_set("2/scale", np.array(np.inf, np.float32)), "finite"),
    "scale negative": (_set("1/scale", np.array(-1.0, np.float32)), ">= 0"),
    "index out of range": (_set("3/idx", np.arange(900, 1000 + 100, 10, np.int32)), "range"),
    "index negative": (_set("3/idx", np.arange(-1, 99, dtype=np.int32)), "range"),
    "index repeated": (_set("3/idx", np.repeat(np.arange(50, dtype=np.uint16), 2)), "increasing"),
    "index float": (_set("3/idx", np.arange(100, dtype=np.float32)), "integer"),
    "values count": (_set("3/val", np.zeros(99, np.float32)), r"shape \(100,\)"),
    "unknown part": (_set("1/extra", np.zeros(1, np.float32)), "match no layout"),
    "tensor beyond count": (_set("4/raw", np.zeros(1, np.float32)), "unexpected key '4/raw'"),
    "unreadable bytes": (_corrupt("0/raw"), "not a readable NumPy array"),
    "wrong version": (_set("fedge-delta/format", np.array([99, 4], np.int64)), "version 99"),
    "wrong count": (_set("fedge-delta/format", np.array([1, 3], np.int64)), "3 tensors"),
}


def test_the_valid_mixed_layout_record_decodes() -> None:
    # Prepare
    record, old = _valid()
    # Execute
    deltas = decode_deltas(record, old)
    # Assert
    assert [d.shape for d in deltas] == [w.shape for w in old]
    assert {"0/raw", "1/q", "2/q", "2/idx", "3/val"} <= set(record)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_record_raises_update_decode_error(case: str) -> None:
    # Prepare
    record, old = _valid()
    mutate, message = MALFORMED[case]
    mutate(record)
    # Execute / Assert
    with pytest.raises(UpdateDecodeError, match=message) as err:
        decode_update(record, old)
    assert isinstance(err.value, FedgeError)


def test_update_decoded_against_other_global_weights_is_refused() -> None:
    # Prepare
    new, old = _model(CNN_SHAPES)
    record, _ = encode_update(new, old, CompressionConfig(bits=8))
    other = [w.copy() for w in old]
    other[4][0, 0] += 1e-3
    # Execute / Assert
    with pytest.raises(UpdateDecodeError, match="other global weights"):
        decode_update(record, other)
    with pytest.raises(UpdateDecodeError, match="10 tensors"):
        decode_update(record, old[:-1])


# --- non-finite updates -----------------------------------------------------------------


def _nan(new: Weights, old: Weights) -> None:
    new[0][17] = np.nan


def _inf(new: Weights, old: Weights) -> None:
    new[0][17] = np.inf


def _overflow(new: Weights, old: Weights) -> None:  # both finite, Δ beyond float32
    new[0][17], old[0][17] = 3e38, -3e38


@pytest.mark.parametrize("spoil", [_nan, _inf, _overflow], ids=["nan", "inf", "overflow"])
def test_non_finite_delta_reaches_the_server_guard_and_resets_its_residual(
    spoil: Callable[[Weights, Weights], None],
) -> None:
    # Prepare
    new, old = _model([(1000,), (1000,)])
    spoil(new, old)
    cfg = CompressionConfig(bits=8, topk_ratio=0.1)
    # Execute
    record, residual = encode_update(new, old, cfg, [np.ones(1000, np.float32)] * 2)
    weights = decode_update(record, old)
    reply = SimpleNamespace(content=RecordDict({"arrays": record}))
    # Assert: sent raw so the NaN/Inf is visible; the healthy tensor is still compressed
    assert record["0/raw"].numpy().dtype == np.float32 and "1/q" in record
    assert has_non_finite_arrays(reply)  # type: ignore[arg-type]
    assert not np.isfinite(weights[0][17])
    assert not residual[0].any() and np.isfinite(residual[1]).all()


# --- configuration ----------------------------------------------------------------------


def test_run_config_reads_compression_keys() -> None:
    # Prepare
    values = {
        "compression-bits": 8,
        "compression-topk": 0.1,
        "compression-min-elements": 64,
        "compression-error-feedback": "false",
        "learning-rate": 0.05,
    }
    # Execute
    cfg = RunConfig.from_mapping(values).compression
    default = RunConfig.from_mapping({}).compression
    # Assert
    assert cfg == CompressionConfig(bits=8, topk_ratio=0.1, min_elements=64, error_feedback=False)
    assert cfg.enabled and not default.enabled
    assert default == CompressionConfig()
    assert CompressionConfig(topk_ratio=0.5).enabled


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"compression-bits": 16}, "8 or 32"),
        ({"compression-bits": True}, "whole number"),
        ({"compression-bits": "eight"}, "whole number"),
        ({"compression-topk": 0.0}, r"\(0, 1\]"),
        ({"compression-topk": 1.5}, r"\(0, 1\]"),
        ({"compression-topk": "nan"}, "finite number"),
        ({"compression-min-elements": -1}, ">= 0"),
        ({"compression-error-feedback": 1}, "true or false"),
    ],
)
def test_invalid_config_raises_config_error(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(values)
