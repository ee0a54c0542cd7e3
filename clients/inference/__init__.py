"""Building blocks shared by the edge models: LiteRT runner, image-to-tensor, SSD decoding."""

from clients.inference.anchors import AnchorOptions, generate_anchors
from clients.inference.image_tensor import RotatedRect, crop_to_tensor, normalize_pixels
from clients.inference.litert_model import LiteRTModel, TensorSpec
from clients.inference.nms import non_max_suppression
from clients.inference.ssd_decoding import BoxDecoding, Candidates, decode_ssd

__all__ = [
    "AnchorOptions",
    "BoxDecoding",
    "Candidates",
    "LiteRTModel",
    "RotatedRect",
    "TensorSpec",
    "crop_to_tensor",
    "decode_ssd",
    "generate_anchors",
    "non_max_suppression",
    "normalize_pixels",
]
