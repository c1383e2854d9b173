"""The vocabulary of evaluation tasks: items, answer kinds, the task interface and its errors.

A task yields :class:`TaskItem` objects: a question formatted as the gateway receives it, a gold
answer, the kind of answer (which decides how a model's answer is read and compared), and, where
the task has one, a gold step-by-step rationale. Items carry stable ids so an evaluation can be
resumed and its per-example results joined across runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from shared.answer_kinds import AnswerKind
from shared.schemas import Demo

__all__ = [
    "AnswerKind",
    "DataMissingError",
    "Task",
    "TaskItem",
    "UnknownTaskError",
    "demo_from_steps",
]


class TaskItem(BaseModel):
    """One evaluation example."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(description="Registry name of the task.")
    id: str = Field(description="Stable id within the task (same data, same id).")
    question: str = Field(description="The question as sent to the gateway, choices included.")
    answer: str = Field(description="The gold answer: a letter for multiple choice.")
    kind: AnswerKind
    choices: list[str] | None = Field(
        default=None, description="Option texts, in the order they are lettered (A), (B), ..."
    )
    aliases: list[str] = Field(
        default_factory=list, description="Other spellings of the gold answer (e.g. 'three')."
    )
    rationale: list[str] | None = Field(
        default=None,
        description="Gold solution, one step per entry, the last one stating the answer.",
    )
    meta: dict[str, Any] = Field(default_factory=dict, description="Difficulty, source, ...")

    @property
    def gold_text(self) -> str:
        """The gold answer as a reader sees it: "(B) 270" for a choice, else the answer."""
        if self.kind is AnswerKind.choice and self.choices:
            index = ord(self.answer) - ord("A")
            if 0 <= index < len(self.choices):
                return f"({self.answer}) {self.choices[index]}"
        return self.answer


class DataMissingError(FileNotFoundError):
    """A task's data files are not in the data cache; the message says how to fetch them."""


class UnknownTaskError(KeyError):
    """No task of that name; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown task"


@runtime_checkable
class Task(Protocol):
    """What every task offers: items, few-shot demos and a description."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def kind(self) -> AnswerKind: ...

    @property
    def source(self) -> str:
        """``bigbench``, ``generated`` or ``jsonl``."""
        ...

    def items(self, n: int | None = None, seed: int = 0) -> list[TaskItem]:
        """The first ``n`` items (all when None) of the order that ``seed`` fixes.

        Increasing ``n`` extends the list: the first items stay the same for one seed.
        Items used as few-shot demos are never returned.
        """
        ...

    def demos(self, k: int = 3) -> list[Demo]:
        """Up to ``k`` worked examples in the RATIONALYST format (one step per entry, the last
        "The answer is: X"), formatted like the task's questions."""
        ...


def demo_from_steps(question: str, steps: Sequence[str], answer: str) -> Demo:
    """A demo whose last step is the RATIONALYST end step "The answer is: X"."""
    return Demo(question=question, steps=[*steps, f"The answer is: {answer}"])
