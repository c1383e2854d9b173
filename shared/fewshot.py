"""Default worked examples in the RATIONALYST format: one step per assistant turn, the last
step "The answer is: X". The agent role proposes with them; the gateway puts the same demos
into the scorer's context so that both see one convention.

There is one set per answer kind (:mod:`shared.answer_kinds`), and a set only ever ends with
answers of its own kind: a small model copies the form of the demos' last step, so numeric
demos followed by a yes/no one teach it to answer "no" to "how many". Requests get the set of
their question's kind (:func:`default_demos`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from shared.answer_kinds import AnswerKind
from shared.schemas import Demo

ANSWER_PREFIX = "The answer is:"
"""How the last step of every default demo opens."""

NUMBER_DEMOS: tuple[Demo, ...] = (
    Demo(
        question="A baker makes 24 rolls in the morning and 18 in the afternoon. He sells 30 "
        "of them. How many rolls are left?",
        steps=[
            "In total the baker makes 24 + 18 = 42 rolls.",
            "After selling 30, he has 42 - 30 = 12 rolls left.",
            "The answer is: 12",
        ],
    ),
    Demo(
        question="Maria reads 15 pages a day. Her book has 120 pages and she has already read "
        "45. How many more days does she need to finish it?",
        steps=[
            "Maria still has 120 - 45 = 75 pages to read.",
            "At 15 pages a day that takes 75 / 15 = 5 days.",
            "The answer is: 5",
        ],
    ),
    Demo(
        question="A ticket for the zoo costs 7 dollars. How much do tickets for a family of 4 "
        "cost?",
        steps=[
            "Each of the 4 tickets costs 7 dollars, so together they cost 4 * 7 = 28 dollars.",
            "The answer is: 28",
        ],
    ),
)

BOOLEAN_DEMOS: tuple[Demo, ...] = (
    Demo(
        question="Is a tomato heavier than an elephant?",
        steps=[
            "A tomato weighs about 100 grams.",
            "An elephant weighs several tonnes, far more than a tomato.",
            "The answer is: no",
        ],
    ),
    Demo(
        question="Can water turn into ice?",
        steps=[
            "Water freezes when it is cooled below 0 degrees Celsius.",
            "Frozen water is ice.",
            "The answer is: yes",
        ],
    ),
    Demo(
        question="Does a week have more days than the month of June?",
        steps=[
            "A week has 7 days and June has 30 days.",
            "7 is less than 30.",
            "The answer is: no",
        ],
    ),
)

CHOICE_DEMOS: tuple[Demo, ...] = (
    Demo(
        question="Which of these animals can fly?\nOptions:\n(A) a dog\n(B) a sparrow\n(C) a fish",
        steps=[
            "Dogs walk and fish swim; neither has wings.",
            "A sparrow is a bird with wings, so it can fly.",
            "The answer is: (B)",
        ],
    ),
    Demo(
        question="Sam has 9 marbles and gives away 4. How many marbles does he have now?\n"
        "Options:\n(A) 13\n(B) 4\n(C) 5\n(D) 6",
        steps=[
            "Sam has 9 - 4 = 5 marbles left.",
            "5 is option (C).",
            "The answer is: (C)",
        ],
    ),
    Demo(
        question="What do plants need to make their food?\nOptions:\n(A) sunlight\n"
        "(B) sand\n(C) salt",
        steps=[
            "Plants make their food by photosynthesis.",
            "Photosynthesis uses the energy of sunlight.",
            "The answer is: (A)",
        ],
    ),
)

TEXT_DEMOS: tuple[Demo, ...] = (
    Demo(
        question="What is the capital of France?",
        steps=[
            "France is a country in western Europe.",
            "Its capital and largest city is Paris.",
            "The answer is: Paris",
        ],
    ),
    Demo(
        question="Which colour do you get when you mix blue and yellow paint?",
        steps=[
            "Blue and yellow are primary colours of paint.",
            "Mixed together they make green.",
            "The answer is: green",
        ],
    ),
    Demo(
        question="Who wrote the play Romeo and Juliet?",
        steps=[
            "Romeo and Juliet is an English play from the 1590s.",
            "It was written by William Shakespeare.",
            "The answer is: William Shakespeare",
        ],
    ),
)

WORD_LIST_DEMOS: tuple[Demo, ...] = (
    Demo(
        question="Sort the following words alphabetically:\nList: pear apple plum",
        steps=[
            "The first letters are p (pear), a (apple) and p (plum); a comes first: apple.",
            "pear and plum both start with p; their second letters are e and l, and e comes "
            "first: pear, then plum.",
            "The answer is: apple pear plum",
        ],
    ),
    Demo(
        question="Sort the following words alphabetically:\nList: river cloud banana",
        steps=[
            "The first letters are r (river), c (cloud) and b (banana).",
            "In the alphabet b comes before c, and c before r.",
            "The answer is: banana cloud river",
        ],
    ),
)

DEMOS_BY_KIND: dict[AnswerKind, tuple[Demo, ...]] = {
    AnswerKind.number: NUMBER_DEMOS,
    AnswerKind.boolean: BOOLEAN_DEMOS,
    AnswerKind.choice: CHOICE_DEMOS,
    AnswerKind.text: TEXT_DEMOS,
    AnswerKind.word_list: WORD_LIST_DEMOS,
}
"""The default demos of each answer kind."""

DEFAULT_DEMOS: tuple[Demo, ...] = NUMBER_DEMOS
"""The demos used when nothing tells the kind (the numeric set)."""


def default_demos(kind: AnswerKind) -> list[Demo]:
    """The default demos for questions expecting answers of ``kind``."""
    return list(DEMOS_BY_KIND[kind])


_PREFIX_RE = re.compile(r"^\s*((?:so,?\s+)?the\s+(?:final\s+|correct\s+)?answer\s+is\s*:?)", re.I)


def answer_prefix(demos: Sequence[Demo]) -> str:
    """How the demos' answer step opens ("The answer is:"), read from the first demo whose last
    step opens with an answer phrase; :data:`ANSWER_PREFIX` when none does."""
    for demo in demos:
        match = _PREFIX_RE.match(demo.steps[-1])
        if match:
            return match.group(1)
    return ANSWER_PREFIX
