"""Gold rationales as RATIONALYST steps, and corrupted alternatives of a step.

A gold rationale is a list of lines; TriPosT rationales end with "(Final response) So the
answer is X.", which becomes the RATIONALYST end step "The answer is: X". Step-selection items
pair a trajectory (question + gold steps so far) with the gold next step and corrupted
alternatives of it:

* ``number``: one number in the step changed (the arithmetic no longer holds);
* ``swap``: another step of the same solution put in its place (out of order), renumbered;
* ``reorder``: two pairs of words of the step swapped;
* ``other``: a step from another problem's solution (used when the others are not enough).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from shared.tasks.answers import extract_span
from shared.tasks.base import TaskItem

_LABEL_RE = re.compile(r"^\((?:\d+(?:\.\d+)*|Final response)\)\s*")
_FINAL_RE = re.compile(r"^\(Final response\)\s*", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.]\d)")
CORRUPTION_KINDS: tuple[str, ...] = ("number", "swap", "reorder", "other")


def gold_steps(item: TaskItem) -> list[str] | None:
    """The item's gold rationale as RATIONALYST steps (last: "The answer is: X"), or None."""
    if not item.rationale:
        return None
    steps = list(item.rationale)
    if _FINAL_RE.match(steps[-1]):
        answer = extract_span(steps[-1])
        if answer is None:
            return None
        steps[-1] = f"The answer is: {answer}"
    return steps


def split_label(step: str) -> tuple[str, str]:
    """("(3.1) ", "We now have ...") for a numbered step; ("", step) otherwise."""
    match = _LABEL_RE.match(step)
    return (match.group(0), step[match.end() :]) if match else ("", step)


def _norm(text: str) -> str:
    return " ".join(text.split())


def change_number(step: str, rng: random.Random) -> str | None:
    """``step`` with one number (not the step label) changed by 1-9; None without numbers."""
    label, body = split_label(step)
    matches = list(_NUMBER_RE.finditer(body))
    if not matches:
        return None
    match = rng.choice(matches)
    text = match.group(0)
    if "." in text:
        value: float | int = float(text)
        decimals = len(text.split(".")[1])
        new = f"{value + rng.choice([-1, 1]) * rng.randint(1, 9) / 10**decimals:.{decimals}f}"
    else:
        value = int(text)
        new = str(value + rng.choice([-1, 1]) * rng.randint(1, 9))
    return label + body[: match.start()] + new + body[match.end() :]


def reorder_words(step: str, rng: random.Random, swaps: int = 2) -> str | None:
    """``step`` with ``swaps`` pairs of differing words exchanged; None if it cannot change."""
    label, body = split_label(step)
    words = body.split()
    if len(set(words)) < 2:
        return None
    original = list(words)
    done = 0
    for _attempt in range(50):
        if done >= swaps and words != original:
            break
        i, j = rng.sample(range(len(words)), 2)
        if words[i] != words[j]:
            words[i], words[j] = words[j], words[i]
            done += 1
    out = label + " ".join(words)
    return out if _norm(out) != _norm(step) else None


def swap_step(steps: Sequence[str], position: int, rng: random.Random) -> str | None:
    """Another step of the same solution at ``position`` (a later one when there is one),
    carrying the gold step's label; None when no other step differs."""
    label, _ = split_label(steps[position])
    later = list(range(position + 1, len(steps)))
    earlier = list(range(position))
    for pool in (later, earlier):
        rng.shuffle(pool)
        for i in pool:
            own_label, body = split_label(steps[i])
            # Renumbered to the gold label, so the order gives nothing away; an unnumbered
            # step (the final "The answer is") stays as it is.
            candidate = label + body if label and own_label else steps[i]
            if _norm(candidate) != _norm(steps[position]):
                return candidate
    return None


@dataclass(frozen=True)
class SelectionItem:
    """A trajectory, candidate next steps (one gold) and what each candidate is."""

    task: str
    item_id: str
    position: int
    question: str
    steps: list[str]
    candidates: list[str]
    gold_index: int
    kinds: list[str]
    """Per candidate: ``gold`` or a corruption kind."""

    @property
    def key_id(self) -> str:
        return f"{self.item_id}@{self.position}"


def build_selection_item(
    item: TaskItem,
    k: int,
    rng: random.Random,
    *,
    others: Sequence[str] = (),
) -> SelectionItem | None:
    """A step-selection item from ``item``'s gold rationale with ``k`` candidates, or None
    when the item has no rationale or ``k - 1`` distinct corruptions cannot be made.

    ``others`` are steps of other problems, drawn from when the step's own corruptions run
    out.
    """
    steps = gold_steps(item)
    if not steps or k < 2:
        return None
    position = rng.randrange(len(steps))
    gold = steps[position]
    makers = {
        "number": lambda: change_number(gold, rng),
        "swap": lambda: swap_step(steps, position, rng),
        "reorder": lambda: reorder_words(gold, rng),
    }
    seen = {_norm(gold)}
    chosen: list[tuple[str, str]] = []
    # One of each kind first, then more of the kinds that can vary, then other problems.
    order = ["number", "swap", "reorder", "number", "reorder", "number", "reorder"] * (k // 3 + 1)
    for kind in order:
        if len(chosen) == k - 1:
            break
        text = makers[kind]()
        if text is not None and text.strip() and _norm(text) not in seen:
            seen.add(_norm(text))
            chosen.append((kind, text))
    pool = [s for s in others if _norm(s) not in seen]
    rng.shuffle(pool)
    while len(chosen) < k - 1 and pool:
        text = pool.pop()
        if _norm(text) not in seen:
            seen.add(_norm(text))
            chosen.append(("other", text))
    if len(chosen) < k - 1:
        return None
    entries = [("gold", gold), *chosen]
    rng.shuffle(entries)
    return SelectionItem(
        task=item.task,
        item_id=item.id,
        position=position,
        question=item.question,
        steps=steps[:position],
        candidates=[text for _, text in entries],
        gold_index=[kind for kind, _ in entries].index("gold"),
        kinds=[kind for kind, _ in entries],
    )
