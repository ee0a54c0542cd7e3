"""Exception types shared across fedge. Messages say what to do next."""

from __future__ import annotations

__all__ = [
    "CaptureError",
    "ConfigError",
    "DatasetNotFoundError",
    "FedgeError",
    "ModelError",
    "StoreError",
]


class FedgeError(Exception):
    """Base class of every error fedge reports to a user as one line."""


class ConfigError(FedgeError, ValueError):
    """A run-config value, flag or setting is invalid."""


class DatasetNotFoundError(FedgeError, FileNotFoundError):
    """A dataset could not be found in any of the places fedge looks."""


class ModelError(FedgeError):
    """A model file is missing, corrupt, or has the wrong shape."""


class CaptureError(FedgeError):
    """A video source cannot be opened or read."""


class StoreError(FedgeError):
    """The local frame store cannot be written or read."""
