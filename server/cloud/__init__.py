"""fedge cloud: the inference service for the nodes' hard cases (gRPC, ``fedge.cloud.v1``)."""

from server.cloud.cases import CaseError, CaseLimits, CropImage, DecodedCase, decode_case

__all__ = ["CaseError", "CaseLimits", "CropImage", "DecodedCase", "decode_case"]
