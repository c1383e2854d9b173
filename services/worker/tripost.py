"""TriPosT's collection loop (REFERENCE.md 2.1) as plain async code, and the samples it gives.

One trajectory starts from an attempt of the small model. Each round, the verifier judges the
current answer; a wrong one goes to the improver, which rewrites it from the first error step
with the earlier steps kept, and the rewrite is judged again, for at most ``max_rounds``
rounds. A trajectory is dropped, with its reason, when

* ``unparseable``: an answer (or the verifier's answer about it) cannot be read;
* ``improver_failed``: the improver cannot continue from the error step;
* ``unchanged_step``: the rewrite leaves the flagged step as it was;
* ``no_progress``: the rewrite's first error is not after the previous one;
* ``verifier_missed_error``: an LLM verifier finds no error in an answer that is wrong;
* ``still_wrong``: still wrong after the last round.

A kept trajectory of one turn (right at once) gives a non-improvement sample, ``Answer: ... /
Feedback: <all correct>``; one with improvements gives one sample per improvement, ``Answer:
... / Feedback: ... / Updated Answer: ...``; a gold rationale gives ``Answer: <gold> /
Feedback: <all correct>``. :func:`rebalance` keeps them in the ratio asked for.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.tasks.base import TaskItem
from shared.tripost import FEEDBACK, UPDATED, normalize, render
from shared.verify import Verdict, split_steps
from shared.verify.verdict import all_correct_feedback

DROP_REASONS: tuple[str, ...] = (
    "unparseable",
    "improver_failed",
    "unchanged_step",
    "no_progress",
    "verifier_missed_error",
    "still_wrong",
)
SAMPLE_KINDS: tuple[str, ...] = ("improvement", "non_improvement", "gold")

ATTEMPT_SYSTEM = (
    "Solve the problem step by step, as in the examples: number the steps (1), (2), ... and "
    'end with the line "(Final response) So the answer is X."'
)
IMPROVER_SYSTEM = "You correct step-by-step solutions, given feedback on their first wrong step."


@dataclass(frozen=True)
class Check:
    """A verifier's verdict, or why the trajectory cannot use it."""

    verdict: Verdict
    drop: str | None = None


Verify = Callable[[str], Awaitable[Check]]
"""Judges an answer (the question is bound)."""
Improve = Callable[[str, Verdict], Awaitable[str | None]]
"""Rewrites an answer from its verdict's error step on; None when it cannot."""


@dataclass(frozen=True)
class Turn:
    answer: str
    verdict: Verdict


@dataclass
class Trajectory:
    item_id: str
    attempt: int
    turns: list[Turn] = field(default_factory=list)
    kept: bool = False
    reason: str | None = None
    unread: str | None = None
    """The text that could not be read, for an ``unparseable`` trajectory."""

    @property
    def improvements(self) -> int:
        return max(len(self.turns) - 1, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "attempt": self.attempt,
            "kept": self.kept,
            "reason": self.reason,
            "unread": self.unread,
            "improvements": self.improvements if self.kept else None,
            "turns": [
                {"answer": t.answer, "feedback": t.verdict.feedback, "step": t.verdict.step}
                for t in self.turns
            ],
        }


def _step_text(answer: str, index: int) -> str | None:
    steps = split_steps(answer, strict=False)
    return steps[index].text if 0 <= index < len(steps) else None


async def collect_trajectory(
    item_id: str,
    attempt: int,
    text: str,
    verify: Verify,
    improve: Improve,
    *,
    max_rounds: int,
) -> Trajectory:
    """Verify and improve one attempt until it verifies, or drop it (with the reason)."""
    trajectory = Trajectory(item_id, attempt)

    def drop(reason: str, unread: str | None = None) -> Trajectory:
        trajectory.reason, trajectory.unread = reason, unread
        return trajectory

    answer = normalize(text)
    if answer is None:
        return drop("unparseable", text)
    check = await verify(answer)
    for round_ in range(max_rounds + 1):
        verdict = check.verdict
        if check.drop is not None:
            return drop(check.drop)
        if verdict.unparseable:
            return drop("unparseable", answer)
        trajectory.turns.append(Turn(answer, verdict))
        if verdict.correct:
            trajectory.kept = True
            return trajectory
        if round_ == max_rounds:
            break
        assert verdict.step_index is not None
        rewritten = await improve(answer, verdict)
        if rewritten is None:
            return drop("improver_failed")
        improved = normalize(rewritten)
        if improved is None:
            return drop("unparseable", rewritten)
        flagged = _step_text(answer, verdict.step_index)
        if _step_text(improved, verdict.step_index) == flagged:
            return drop("unchanged_step")
        check = await verify(improved)
        new = check.verdict
        moved_on = new.step_index is not None and new.step_index > verdict.step_index
        if check.drop is None and not new.unparseable and not new.correct and not moved_on:
            return drop("no_progress")
        answer = improved
    return drop("still_wrong")


# --------------------------------------------------------------------------------------------
# Prompts


def attempt_messages(question: str, demos: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """The agent's chat for one attempt: the demos as earlier turns, then the question."""
    messages = [{"role": "system", "content": ATTEMPT_SYSTEM}]
    for q, a in demos:
        messages += [{"role": "user", "content": f"Q: {q}"}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": f"Q: {question}"})
    return messages


def improver_messages(question: str, answer: str, verdict: Verdict) -> list[dict[str, str]]:
    """The LLM improver's chat: the answer, its feedback, and what to rewrite."""
    step = verdict.step
    keep = (
        f"keep the steps before step ({step}) exactly as they are and "
        if verdict.step_index
        else ""
    )
    user = (
        f"Q: {question}\nAnswer:\n{answer}\nFeedback: {verdict.feedback}\n\n"
        f"Write the updated answer from step ({step}) on: {keep}correct step ({step}), then "
        "write the steps that follow in the same format, ending with the final response. "
        f"Start with step ({step})."
    )
    return [{"role": "system", "content": IMPROVER_SYSTEM}, {"role": "user", "content": user}]


def splice_llm(answer: str, verdict: Verdict, output: str) -> str:
    """The answer's steps before the error step, then the model's steps from the error
    step's label on (a model that restates the earlier steps has them ignored); "" when the
    output has no step with that label."""
    assert verdict.step_index is not None
    prefix = split_steps(answer, strict=False)[: verdict.step_index]
    steps = split_steps(output, strict=False)
    start = next((i for i, s in enumerate(steps) if s.label == verdict.step), None)
    if start is None:
        return ""
    return render([*prefix, *steps[start:]])


def splice_gold(answer: str, verdict: Verdict, gold: Sequence[str]) -> str | None:
    """The scripted improver: the gold rationale from the error step on, when the answer's
    steps before it are the gold rationale's (else None: the task's own steps cannot
    continue a different, if correct, start)."""
    assert verdict.step_index is not None
    k = verdict.step_index
    mine = split_steps(answer, strict=False)[:k]
    theirs = split_steps("\n".join(gold), strict=False)
    if len(theirs) <= k or [(s.label, s.text) for s in mine] != [
        (s.label, s.text) for s in theirs[:k]
    ]:
        return None
    return render([*mine, *theirs[k:]])


# --------------------------------------------------------------------------------------------
# Samples


def _row(
    item: TaskItem, kind: str, suffix: str, completion: str, trajectory: Trajectory | None
) -> dict[str, Any]:
    prompt = f"Q: {item.question}\n"
    return {
        "id": f"{item.id}#{suffix}",
        "task": item.task,
        "item_id": item.id,
        "kind": kind,
        "attempt": trajectory.attempt if trajectory else None,
        "prompt": prompt,
        "completion": completion,
        "text": prompt + completion,
        "feedback_start": len(prompt) + completion.index(FEEDBACK),
    }


def sample_rows(item: TaskItem, trajectory: Trajectory) -> list[dict[str, Any]]:
    """The single-turn samples of a kept trajectory.

    ``feedback_start`` is the character offset in ``text`` of the first "\\nFeedback:" (where
    TriPosT's weighted loss starts counting x1.5)."""
    if not trajectory.kept:
        return []
    turns = trajectory.turns
    if len(turns) == 1:
        completion = f"Answer: {turns[0].answer}{FEEDBACK}{turns[0].verdict.feedback}"
        return [_row(item, "non_improvement", f"{trajectory.attempt}", completion, trajectory)]
    rows = []
    for i in range(len(turns) - 1):
        completion = (
            f"Answer: {turns[i].answer}{FEEDBACK}{turns[i].verdict.feedback}"
            f"{UPDATED}{turns[i + 1].answer}"
        )
        rows.append(_row(item, "improvement", f"{trajectory.attempt}.{i}", completion, trajectory))
    return rows


def gold_row(item: TaskItem) -> dict[str, Any] | None:
    """The gold rationale with the all-correct feedback (None without a rationale)."""
    if not item.rationale:
        return None
    steps = split_steps("\n".join(item.rationale), strict=False)
    numbered = [s for s in steps if not s.final]
    if not numbered:
        return None
    feedback = all_correct_feedback(numbered[-1].label)
    completion = f"Answer: {render(steps)}{FEEDBACK}{feedback}"
    return _row(item, "gold", "gold", completion, None)


def rebalance(
    rows: Sequence[dict[str, Any]], ratios: dict[str, float], seed: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows of each kind in the ratio ``ratios`` (kind -> weight; 0 leaves a kind out), as
    many as the scarcest kind allows: each kind with rows and weight w keeps
    ``round(w * s)`` of its rows, s = min over those kinds of count / w. Kinds without rows do
    not limit the others. Which rows are kept is seeded; their order is the input's."""
    by_kind: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_kind.setdefault(str(row["kind"]), []).append(i)
    present = [k for k, w in ratios.items() if w > 0 and by_kind.get(k)]
    if not present:
        return [], dict.fromkeys(ratios, 0)
    scale = min(len(by_kind[k]) / ratios[k] for k in present)
    rng = random.Random(seed)
    keep: set[int] = set()
    counts = Counter[str]()
    for kind, weight in ratios.items():
        if kind not in present:
            counts[kind] = 0
            continue
        indices = by_kind[kind]
        n = min(len(indices), max(1, round(weight * scale)))
        keep.update(rng.sample(indices, n))
        counts[kind] = n
    return [row for i, row in enumerate(rows) if i in keep], dict(counts)
