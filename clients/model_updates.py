"""Models from the server to the node over Flower: the install query and its reply.

After each round the ServerApp sends the exported model to every connected node in a
``query.install_model`` message (``server.model_broadcast``)::

    content["model"]    ConfigRecord {"tflite": <bytes>, "manifest": "<manifest JSON>"}

The node verifies and installs it (``clients.model_installer.install_model``) into its
detector directory (node config ``detector-dir``, else ``$FEDGE_DETECTOR_DIR``, else
``<store-dir>/detector``, else ``~/.cache/fedge/detector``), using a frame of its store
(node config ``store-dir``) for the smoke inference. A simulated node (no ``store-dir``;
the run config's ``detector-store-root``, ``data.store_sets``) uses its store under that
root and installs into a folder of its own in the run's output (:func:`node_store_config`).
It replies::

    content["install"]  ConfigRecord {"status": "installed" | "rejected",
                                      "version": <int, -1 if unreadable>,
                                      "sha256": "<hex or empty>", "reason": "<why rejected>"}

Only the model and the verdict travel; no frame leaves the node.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from clients.model_installer import install_model, resolve_detector_dir
from data.store_sets import store_for_partition
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
    "node_store_config",
    "smoke_frame_from_store",
]

log = logging.getLogger(__name__)

INSTALL_MODEL_ACTION = "install_model"
"""Query action: the message type is ``query.install_model``."""
MODEL_RECORD_KEY = "model"
INSTALL_RESULT_KEY = "install"
DETECTOR_DIR_KEY = "detector-dir"
_STORE_DIR_KEY = "store-dir"
_STORE_ROOT_KEY = "detector-store-root"


def node_store_config(
    node_config: Mapping[str, Any], run_config: Mapping[str, Any], run_id: int | None = None
) -> dict[str, Any]:
    """``node_config`` with ``store-dir`` filled in for a simulated node (none of its own,
    a ``partition-id``, and ``detector-store-root`` in the run config).

    With ``run_id`` (the install query's run) it also gets a ``detector-dir`` of its own
    under ``<output-dir>/simulated-nodes/run-<run_id>/node-<partition-id>/detector``: a
    simulation's versions must neither land in the user's cache, shared by every node, nor
    clash with the versions the store's real agent installed (a version number names one
    model), and the stores stay as they were.
    """
    config = dict(node_config)
    root = str(run_config.get(_STORE_ROOT_KEY) or "")
    if config.get(_STORE_DIR_KEY) or not root or "partition-id" not in config:
        return config
    partition = int(config["partition-id"])
    count = config.get("num-partitions")
    store = store_for_partition(root, partition, None if count is None else int(count))
    config[_STORE_DIR_KEY] = str(store)
    if run_id is not None and not config.get(DETECTOR_DIR_KEY):
        output = Path(str(run_config.get("output-dir") or "outputs"))
        node_dir = output / "simulated-nodes" / f"run-{run_id}" / f"node-{partition}"
        config[DETECTOR_DIR_KEY] = str(node_dir / "detector")
    return config


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
    node_config = node_store_config(context.node_config, context.run_config, context.run_id)
    result = install_result(record, node_config)
    return Message(RecordDict({INSTALL_RESULT_KEY: ConfigRecord(result)}), reply_to=msg)
