"""SSD anchor generation, as MediaPipe's ``SsdAnchorsCalculator`` does it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["AnchorOptions", "generate_anchors"]


@dataclass(frozen=True)
class AnchorOptions:
    """The anchor layout an SSD was trained with (MediaPipe's option names)."""

    input_width: int
    input_height: int
    num_layers: int
    min_scale: float
    max_scale: float
    strides: tuple[int, ...]
    aspect_ratios: tuple[float, ...] = (1.0,)
    anchor_offset_x: float = 0.5
    anchor_offset_y: float = 0.5
    fixed_anchor_size: bool = True
    interpolated_scale_aspect_ratio: float = 1.0
    reduce_boxes_in_lowest_layer: bool = False


def _scale(options: AnchorOptions, layer: int) -> float:
    if options.num_layers == 1:
        return (options.min_scale + options.max_scale) / 2.0
    step = (options.max_scale - options.min_scale) / (options.num_layers - 1)
    return options.min_scale + step * layer


def _layer_shapes(options: AnchorOptions, first: int, last: int) -> list[tuple[float, float]]:
    """Return (width, height) of every anchor per cell for layers ``first..last-1``."""
    scales: list[float] = []
    ratios: list[float] = []
    for layer in range(first, last):
        scale = _scale(options, layer)
        if layer == 0 and options.reduce_boxes_in_lowest_layer:
            scales += [0.1, scale, scale]
            ratios += [1.0, 2.0, 0.5]
            continue
        for ratio in options.aspect_ratios:
            scales.append(scale)
            ratios.append(ratio)
        if options.interpolated_scale_aspect_ratio > 0.0:
            following = 1.0 if layer == len(options.strides) - 1 else _scale(options, layer + 1)
            scales.append(math.sqrt(scale * following))
            ratios.append(options.interpolated_scale_aspect_ratio)
    return [(s * math.sqrt(r), s / math.sqrt(r)) for s, r in zip(scales, ratios, strict=True)]


def generate_anchors(options: AnchorOptions) -> np.ndarray:
    """Return ``(N, 4)`` float32 anchors: x_center, y_center, width, height (normalized).

    Layers that share a stride share one feature map, so their anchors interleave per
    cell, exactly as in MediaPipe (BlazePose: 2254 anchors, BlazeFace short range: 896).
    """
    if len(options.strides) != options.num_layers:
        raise ValueError("AnchorOptions.strides needs one stride per layer")
    anchors: list[tuple[float, float, float, float]] = []
    layer = 0
    while layer < options.num_layers:
        last = layer
        while last < options.num_layers and options.strides[last] == options.strides[layer]:
            last += 1
        shapes = _layer_shapes(options, layer, last)
        stride = options.strides[layer]
        rows = math.ceil(options.input_height / stride)
        cols = math.ceil(options.input_width / stride)
        for y in range(rows):
            for x in range(cols):
                cx = (x + options.anchor_offset_x) / cols
                cy = (y + options.anchor_offset_y) / rows
                for width, height in shapes:
                    if options.fixed_anchor_size:
                        anchors.append((cx, cy, 1.0, 1.0))
                    else:
                        anchors.append((cx, cy, width, height))
        layer = last
    return np.asarray(anchors, dtype=np.float32)
