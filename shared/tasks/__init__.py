"""Evaluation tasks: registry, loaders, generators, question formatting, answer checking.

Pure Python (no torch, no transformers)::

    from shared.tasks import get_task, check_answer
    task = get_task("multistep_arithmetic_seen")
    item = task.items(n=1, seed=0)[0]
    check_answer(item, "... The answer is: 41").correct
"""

from shared.tasks.answers import Judgement, check_answer, extract_span
from shared.tasks.base import AnswerKind, DataMissingError, Task, TaskItem, UnknownTaskError
from shared.tasks.registry import get_task, task_names

__all__ = [
    "AnswerKind",
    "DataMissingError",
    "Judgement",
    "Task",
    "TaskItem",
    "UnknownTaskError",
    "check_answer",
    "extract_span",
    "get_task",
    "task_names",
]
