"""A TFLite model on the LiteRT interpreter: float tensors in, float tensors out.

Quantized (uint8/int8/int16) inputs are quantized from the tensor's own scale and zero
point, and quantized outputs are dequantized, so callers never see the storage type.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedge.core.errors import ModelError

__all__ = ["LiteRTModel", "TensorSpec"]

_INTEGER_TYPES = (np.uint8, np.int8, np.int16)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor: its name, shape, storage type and quantization."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: type[np.generic]
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        """Whether values are stored as integers with a scale and zero point."""
        return self.dtype in _INTEGER_TYPES and self.scale > 0.0

    @classmethod
    def from_details(cls, details: dict[str, Any]) -> TensorSpec:
        """Build from one entry of ``Interpreter.get_input_details()``."""
        scale, zero_point = details["quantization"]
        return cls(
            index=int(details["index"]),
            name=str(details["name"]),
            shape=tuple(int(v) for v in details["shape"]),
            dtype=details["dtype"],
            scale=float(scale),
            zero_point=int(zero_point),
        )


class LiteRTModel:
    """Load a ``.tflite`` model from a path or bytes and run it on float arrays.

    Parameters
    ----------
    model
        Path to a ``.tflite`` file, or the file's bytes.
    num_threads
        Interpreter threads (``None``: the LiteRT default).
    """

    def __init__(
        self, model: str | os.PathLike[str] | bytes, *, num_threads: int | None = None
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(model, bytes):
            self.name = "<bytes>"
            content = model
        else:
            path = Path(model)
            self.name = str(path)
            try:
                content = path.read_bytes()
            except FileNotFoundError:
                raise ModelError(f"model file {path} does not exist") from None
        try:
            self._interpreter = Interpreter(model_content=content, num_threads=num_threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise ModelError(f"{self.name} is not a valid TFLite model: {err}") from None
        self.inputs = [TensorSpec.from_details(d) for d in self._interpreter.get_input_details()]
        self.outputs = [TensorSpec.from_details(d) for d in self._interpreter.get_output_details()]

    def op_outputs(self, op_name: str) -> list[int] | None:
        """Return the output tensor indices of the first op called ``op_name``, if any."""
        try:
            ops = self._interpreter._get_ops_details()
        except AttributeError:  # private API; callers fall back to names and shapes
            return None
        for op in ops:
            if op.get("op_name") == op_name:
                return [int(i) for i in op["outputs"]]
        return None

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Run the model on float ``inputs`` (in input order); return float32 outputs."""
        if len(inputs) != len(self.inputs):
            raise ValueError(f"{self.name} takes {len(self.inputs)} inputs, got {len(inputs)}")
        for spec, value in zip(self.inputs, inputs, strict=True):
            self._interpreter.set_tensor(spec.index, _to_storage(spec, value))
        self._interpreter.invoke()
        return [_to_float(spec, self._interpreter.get_tensor(spec.index)) for spec in self.outputs]


def _to_storage(spec: TensorSpec, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value, dtype=np.float32).reshape(spec.shape)
    if spec.quantized:
        info = np.iinfo(spec.dtype)
        quantized = np.rint(value / spec.scale + spec.zero_point)
        return np.clip(quantized, info.min, info.max).astype(spec.dtype)
    return value.astype(spec.dtype)


def _to_float(spec: TensorSpec, value: np.ndarray) -> np.ndarray:
    if spec.quantized:
        return (value.astype(np.float32) - spec.zero_point) * np.float32(spec.scale)
    return value.astype(np.float32, copy=True)
