"""The step rule: how the agent's output becomes reasoning steps, and when a solution ends.

One step is one assistant turn of the agent's chat (the few-shot demos write one step per
turn, and the agent's prompt gives each step so far its own turn). A step's text is the turn
with surrounding whitespace removed; a turn that is empty after that is no step. A solution
ends with the first step that states an answer (an end phrase of :mod:`shared.answers`, such
as "The answer is: 12"), and its answer is read from its steps joined by newlines.

The gateway's search loop (one chosen candidate per step) and the model service's
``/v1/rollout`` (whole completions of a partial solution) both use these functions, so a step,
a finished solution and its answer mean the same in search, in labelling and in training data.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.answers import contains_end_phrase, extract_answer

STEP_SEPARATOR = "\n"
"""Between steps when a solution is written as one text (outcome rows, answer extraction)."""


def step_text(turn: str) -> str:
    """The step an assistant turn holds ('' when the turn holds none)."""
    return turn.strip()


def ends_solution(step: str) -> bool:
    """Whether ``step`` finishes the solution: it states an answer."""
    return contains_end_phrase(step)


def solution_text(steps: Sequence[str]) -> str:
    """The steps of a solution as one text, one step per line."""
    return STEP_SEPARATOR.join(steps)


def solution_answer(steps: Sequence[str]) -> str | None:
    """The answer the steps state last, or None when they state none."""
    return extract_answer(solution_text(steps))


def is_finished(steps: Sequence[str]) -> bool:
    """Whether the last of ``steps`` ends the solution."""
    return bool(steps) and ends_solution(steps[-1])
