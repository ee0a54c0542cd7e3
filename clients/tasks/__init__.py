"""The task registry: names → what the ClientApp and ServerApp train, evaluate and export.

A new task is one module with a class following :class:`clients.tasks.base.Task` and one
entry in ``TASKS``; its name goes into ``fedge.core.run_config.TASKS`` too, which
validates run configs (a test keeps the two equal). Modules are imported on first use,
so naming a task does not load TensorFlow.
"""

from __future__ import annotations

import functools
import importlib

from clients.tasks.base import CentralEvaluation, EvaluateOutcome, NodeSetup, Task, TrainOutcome
from fedge.core.errors import ConfigError

__all__ = [
    "TASKS",
    "CentralEvaluation",
    "EvaluateOutcome",
    "NodeSetup",
    "Task",
    "TrainOutcome",
    "get_task",
    "task_names",
]

TASKS: dict[str, str] = {
    "fashion-mnist": "clients.tasks.fashion_mnist:FashionMnistTask",
    "person-detector": "clients.tasks.person_detector:PersonDetectorTask",
}
"""Task name → ``module:class`` implementing it."""


def task_names() -> list[str]:
    """Registered task names, in registry order."""
    return list(TASKS)


@functools.cache
def get_task(name: str) -> Task:
    """The task registered as ``name`` (one instance per process).

    Raises
    ------
    ConfigError
        If no task has that name; the message lists the registered ones.
    """
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid names: {', '.join(TASKS)}")
    module_name, _, class_name = TASKS[name].partition(":")
    task: Task = getattr(importlib.import_module(module_name), class_name)()
    return task
