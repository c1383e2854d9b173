"""Which tasks have a scripted verifier, by task name."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from shared.tasks.base import UnknownTaskError
from shared.tasks.registry import ALIASES, task_names
from shared.verify.arithmetic import ArithmeticVerifier
from shared.verify.verdict import Verdict
from shared.verify.word_sorting import WordSortingVerifier


class VerifierKind(StrEnum):
    """Who checks a solution."""

    scripted = "scripted"
    """A script that checks the task's rationale format exactly, no model (multistep
    arithmetic and word sorting)."""
    llm = "llm"
    """A model service asked for the earliest error (any task)."""


class ScriptedVerifier(Protocol):
    """Checks an attempt without a model. ``verify`` raises
    :class:`shared.verify.steps.QuestionError` when the question is not one of its task's."""

    name: str

    def verify(self, question: str, solution: str) -> Verdict: ...


_ARITHMETIC = ArithmeticVerifier()
_WORD_SORTING = WordSortingVerifier()
SCRIPTED: dict[str, ScriptedVerifier] = {
    "multistep_arithmetic_seen": _ARITHMETIC,
    "multistep_arithmetic_unseen": _ARITHMETIC,
    "word_sorting": _WORD_SORTING,
    "word_sorting_seen": _WORD_SORTING,
    "word_sorting_unseen": _WORD_SORTING,
}
"""Scripted verifiers by canonical task name (the verifiers hold no state)."""


def resolve_task(name: str) -> str:
    """The canonical name of a built-in task (aliases resolved); :class:`UnknownTaskError`
    otherwise (``jsonl:`` tasks included: they have no verifier of their own)."""
    canonical = ALIASES.get(name, name)
    if canonical not in task_names():
        known = ", ".join(task_names())
        raise UnknownTaskError(f"unknown task {name!r}; known: {known}")
    return canonical


def scripted_verifier(task: str) -> ScriptedVerifier | None:
    """The scripted verifier of ``task`` (a canonical name or an alias), or None."""
    return SCRIPTED.get(ALIASES.get(task, task))
