"""Word sorting items with gold step-by-step rationales (TriPosT format).

The rationale reads the first letter of every word with its index in the alphabet, groups the
words that tie, sorts each tied group by the next letter (nested steps "(3.1)", "(3.2)", ...),
and concludes::

    (1) The first letter: "pear"=\"p\" (16), "apple"=\"a\" (1), "plum"=\"p\" (16).
    (2) We now have: (1) "apple" < (16) ["pear" ? "plum"].
    (3) Now sort this subpart ["pear" ? "plum"] by looking at their second letters: ...
    (3.1) We now have: (5) "pear" < (12) "plum".
    (3.2) Hence, we have "pear" < "plum".
    (4) Hence, we have "apple" < "pear" < "plum".
    (Final response) So the answer is: apple pear plum.

A word that has no letter at a position (a prefix of another word, "care" before "career")
shows ``(end) (0)`` there and sorts first. Buckets (TriPosT): *seen* = 2-7 words, *unseen* =
8-20 words.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Literal

from shared.tasks.base import AnswerKind, TaskItem
from shared.tasks.words import WORDS

Bucket = Literal["seen", "unseen"]
SEEN_SIZES: tuple[int, int] = (2, 7)
UNSEEN_SIZES: tuple[int, int] = (8, 20)
PROMPT = "Sort the following words alphabetically:"

_ORDINAL_TEXT = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth"
)
_ORDINALS = _ORDINAL_TEXT.split()


def ordinal(n: int) -> str:
    """0 -> "first", 20 -> "twenty-first", 29 -> "thirtieth", ..."""
    if n < len(_ORDINALS):
        return _ORDINALS[n]
    tens = {2: ("twenty", "twentieth"), 3: ("thirty", "thirtieth"), 4: ("forty", "fortieth")}
    t, u = divmod(n + 1, 10)
    if t in tens:
        return f"{tens[t][0]}-{_ORDINALS[u - 1]}" if u else tens[t][1]
    return f"{n + 1}th"


def sortable(words: Sequence[str]) -> bool:
    """True when the rationale applies: distinct words of lower-case letters a-z."""
    return len(set(words)) == len(words) and all(re.fullmatch(r"[a-z]+", w) for w in words)


def _index(word: str, n: int) -> int:
    return ord(word[n]) - ord("a") + 1 if n < len(word) else 0


def _letters(words: Sequence[str], n: int) -> str:
    parts = []
    for w in words:
        shown = f'"{w[n]}"' if n < len(w) else "(end)"
        parts.append(f'"{w}"={shown} ({_index(w, n)})')
    return ", ".join(parts)


def _group(words: Sequence[str], n: int) -> list[tuple[int, list[str]]]:
    """Words grouped by their n-th letter, groups in alphabet order, words in input order."""
    groups: dict[int, list[str]] = {}
    for w in words:
        groups.setdefault(_index(w, n), []).append(w)
    return sorted(groups.items())


def _bracket(words: Sequence[str]) -> str:
    return "[" + " ? ".join(f'"{w}"' for w in words) + "]"


def _groups_text(groups: list[tuple[int, list[str]]]) -> str:
    return " < ".join(f"({i}) " + (f'"{g[0]}"' if len(g) == 1 else _bracket(g)) for i, g in groups)


def _chain(words: Sequence[str]) -> str:
    return " < ".join(f'"{w}"' for w in sorted(words))


def _subpart(words: list[str], n: int, label: str) -> list[str]:
    steps = [
        f"({label}) Now sort this subpart {_bracket(words)} by looking at their "
        f"{ordinal(n)} letters: {_letters(words, n)}."
    ]
    sub = 1
    groups = _group(words, n)
    steps.append(f"({label}.{sub}) We now have: {_groups_text(groups)}.")
    # The whole subpart ties again: look at the next letter without nesting deeper.
    while len(groups) == 1 and len(set(words)) > 1:
        n += 1
        sub += 1
        steps.append(
            f"({label}.{sub}) Now sort this subpart {_bracket(words)} by looking at their "
            f"{ordinal(n)} letters: {_letters(words, n)}."
        )
        sub += 1
        groups = _group(words, n)
        steps.append(f"({label}.{sub}) We now have: {_groups_text(groups)}.")
    for _, group in groups:
        if len(set(group)) > 1:
            sub += 1
            steps.extend(_subpart(group, n + 1, f"{label}.{sub}"))
    sub += 1
    steps.append(f"({label}.{sub}) Hence, we have {_chain(words)}.")
    return steps


def rationale(words: Sequence[str]) -> list[str]:
    """The gold solution for sorting ``words`` (see :func:`sortable`), one line per step."""
    words = list(words)
    if not sortable(words):
        raise ValueError("the rationale needs distinct words of letters a-z")
    steps = [f"(1) The first letter: {_letters(words, 0)}."]
    groups = _group(words, 0)
    steps.append(f"(2) We now have: {_groups_text(groups)}.")
    label = 3
    for _, group in groups:
        if len(group) > 1:
            steps.extend(_subpart(group, 1, str(label)))
            label += 1
    steps.append(f"({label}) Hence, we have {_chain(words)}.")
    steps.append(f"(Final response) So the answer is: {' '.join(sorted(words))}.")
    return steps


def question_text(words: Sequence[str]) -> str:
    return f"{PROMPT}\nList: {' '.join(words)}"


def generate_words(rng: random.Random, bucket: Bucket) -> list[str]:
    low, high = SEEN_SIZES if bucket == "seen" else UNSEEN_SIZES
    return rng.sample(WORDS, rng.randint(low, high))


def make_item(
    task: str,
    item_id: str,
    words: Sequence[str],
    *,
    bucket: Bucket | None = None,
    meta: dict[str, object] | None = None,
) -> TaskItem:
    """An item for ``words``; the rationale is included when the words are :func:`sortable`."""
    return TaskItem(
        task=task,
        id=item_id,
        question=question_text(words),
        answer=" ".join(sorted(words)),
        kind=AnswerKind.word_list,
        rationale=rationale(words) if sortable(words) else None,
        meta={**(meta or {}), "num_words": len(words)}
        | ({"bucket": bucket} if bucket is not None else {}),
    )
