"""The task registry: names -> tasks.

Built-in names are the BIG-bench tasks (need ``rationalyst data pull``) and the generated ones
(no data needed). ``jsonl:<path>`` names a user's JSONL file (see :mod:`shared.tasks.jsonl`).
"""

from __future__ import annotations

import functools
from pathlib import Path

from shared.tasks.base import Task, UnknownTaskError
from shared.tasks.bigbench import bigbench_tasks
from shared.tasks.generated import generated_tasks
from shared.tasks.jsonl import JsonlTask

JSONL_PREFIX = "jsonl:"

ALIASES: dict[str, str] = {
    "multistep_arithmetic": "multistep_arithmetic_seen",
    "logical_deduction": "logical_deduction_three_objects",
    "tracking_shuffled_objects": "tracking_shuffled_objects_three_objects",
}


@functools.cache
def builtin_tasks() -> dict[str, Task]:
    tasks: list[Task] = [*bigbench_tasks(), *generated_tasks()]
    return {t.name: t for t in tasks}


def task_names() -> list[str]:
    """Names of the built-in tasks, sorted."""
    return sorted(builtin_tasks())


def get_task(name: str) -> Task:
    """The task called ``name`` (an alias, a built-in name or ``jsonl:<path>``)."""
    if name.startswith(JSONL_PREFIX):
        return JsonlTask(path=Path(name[len(JSONL_PREFIX) :]))
    tasks = builtin_tasks()
    canonical = ALIASES.get(name, name)
    if canonical not in tasks:
        known = ", ".join(sorted(tasks))
        raise UnknownTaskError(f"unknown task {name!r}; known: {known}, or jsonl:<path>")
    return tasks[canonical]
