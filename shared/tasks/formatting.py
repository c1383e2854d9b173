"""How questions are written for the agent: options lettered "(A) ...", one per line."""

from __future__ import annotations

import random
from collections.abc import Sequence

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def letter(index: int) -> str:
    """0 -> "A", 1 -> "B", ..."""
    if not 0 <= index < len(LETTERS):
        raise ValueError(f"no letter for option {index}: at most {len(LETTERS)} options")
    return LETTERS[index]


def format_choices(choices: Sequence[str]) -> str:
    """ "(A) first\\n(B) second" (surrounding whitespace of each option removed)."""
    return "\n".join(f"({letter(i)}) {c.strip()}" for i, c in enumerate(choices))


def format_question(
    body: str,
    *,
    choices: Sequence[str] | None = None,
    prefix: str | None = None,
    instruction: str | None = None,
) -> str:
    """The question text: optional prefix, the body, the lettered options, an instruction.

    >>> print(format_question("2 + 2 = ?", choices=["3", "4"], instruction="Pick one."))
    2 + 2 = ?
    Options:
    (A) 3
    (B) 4
    Pick one.
    """
    parts = []
    if prefix and prefix.strip():
        parts.append(prefix.strip())
    parts.append(body.strip())
    if choices:
        parts.append("Options:\n" + format_choices(choices))
    if instruction:
        parts.append(instruction.strip())
    return "\n".join(parts)


def shuffled_choices(choices: Sequence[str], correct: int, key: str) -> tuple[list[str], int]:
    """The options in an order fixed by ``key`` (an item id), and the new index of the correct
    one. Source files often list the right option first; shuffling removes that bias while
    keeping every item identical from run to run."""
    order = list(range(len(choices)))
    random.Random(key).shuffle(order)
    return [choices[i] for i in order], order.index(correct)
