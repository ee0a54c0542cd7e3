"""Models from the server to the node over Flower: the install query and its reply.

After each round the ServerApp sends the exported model to every connected node in a
``query.install_model`` message (``server.model_broadcast``)::

    content["model"]    ConfigRecord {"tflite": <bytes>, "manifest": "<manifest JSON>"}

The node verifies and installs it (``clients.model_installer.install_model``) into its
detector directory (node config ``detector-dir``, else ``$FEDGE_DETECTOR_DIR``, else
``<store-dir>/detector``, else ``~/.cache/fedge/detector``), using a frame of its store
(node config ``store-dir``) for the smoke inference, and replies::

    content["install"]  ConfigRecord {"status": "installed" | "rejected",
                                      "version": <int, -1 if unreadable>,
                                      "sha256": "<hex or empty>", "reason": "<why rejected>"}

Only the model and the verdict travel; no frame leaves the node.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from clients.model_installer import install_model, resolve_detector_dir
from export.artifact import ModelArtifact, ModelManifest
from fedge.core.errors import FedgeError, ModelError

__all__ = [
    "DETECTOR_DIR_KEY",
    "INSTALL_MODEL_ACTION",
    "INSTALL_RESULT_KEY",
    "MODEL_RECORD_KEY",
    "artifact_from_record",
    "artifact_record",
    "install_model_reply",
    "install_result",
    "smoke_frame_from_store",
]

log = logging.getLogger(__name__)

INSTALL_MODEL_ACTION = "install_model"
"""Query action: the message type is ``query.install_model``."""
MODEL_RECORD_KEY = "model"
INSTALL_RESULT_KEY = "install"
DETECTOR_DIR_KEY = "detector-dir"
_STORE_DIR_KEY = "store-dir"


def artifact_record(artifact: ModelArtifact) -> ConfigRecord:
    """The artifact as the ``model`` ConfigRecord of an install query."""
    manifest = json.dumps(artifact.manifest.to_json(), sort_keys=True)
    return ConfigRecord({"tflite": bytes(artifact.model), "manifest": manifest})


def artifact_from_record(record: ConfigRecord) -> tuple[bytes, ModelManifest]:
    """Read ``(model bytes, manifest)`` back from :func:`artifact_record`'s record.

    Raises
    ------
    ModelError
        A field is missing or of the wrong type, or the manifest is not valid.
    """
    model, text = record.get("tflite"), record.get("manifest")
    if not isinstance(model, bytes) or not isinstance(text, str):
        raise ModelError(
            "install query lacks the model bytes ('tflite') or its manifest ('manifest'); "
            "the server must send export.artifact's artifact"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelError(f"install query's manifest is not JSON ({err}); resend it") from None
    return model, ModelManifest.from_json(data)


def smoke_frame_from_store(store_dir: str | None) -> np.ndarray | None:
    """One frame of the node's store for the smoke inference (``None``: no store, or empty)."""
    if not store_dir:
        return None
    from data.frame_store import FrameStore

    try:
        store = FrameStore.open_reader(store_dir)
    except FedgeError:
        return None
    try:
        for frame in store.iter_frames(batch=1):
            try:
                return frame.load_image()
            except FedgeError:
                continue
        return None
    finally:
        store.close()


def install_result(record: ConfigRecord, node_config: Mapping[str, Any]) -> dict[str, Any]:
    """Install the model of an install query's ``model`` record on this node.

    Returns the reply's values (module docstring); a rejected model is not an error here.
    """
    version = -1
    sha = ""
    try:
        model, manifest = artifact_from_record(record)
        version, sha = manifest.version, manifest.sha256
        store_dir = node_config.get(_STORE_DIR_KEY) or None
        directory = resolve_detector_dir(node_config.get(DETECTOR_DIR_KEY) or None, store_dir)
        smoke = smoke_frame_from_store(store_dir)
        installed = install_model(directory, model, manifest, smoke_frame=smoke)
    except ModelError as err:
        log.warning("model version %s rejected: %s", version, err)
        return {"status": "rejected", "version": version, "sha256": sha, "reason": str(err)}
    return {
        "status": "installed",
        "version": installed.version,
        "sha256": installed.sha256,
        "reason": "",
    }


def install_model_reply(msg: Message, context: Context) -> Message:
    """Answer a ``query.install_model`` message (the ClientApp's query handler)."""
    record = msg.content.config_records.get(MODEL_RECORD_KEY, ConfigRecord())
    result = install_result(record, context.node_config)
    return Message(RecordDict({INSTALL_RESULT_KEY: ConfigRecord(result)}), reply_to=msg)
