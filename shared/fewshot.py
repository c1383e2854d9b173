"""Default worked examples in the RATIONALYST format: one step per assistant turn, the last
step ending "The answer is: X". The agent role proposes with them; the gateway puts the same
demos into the scorer's context so that both see one convention."""

from __future__ import annotations

from shared.schemas import Demo

DEFAULT_DEMOS: tuple[Demo, ...] = (
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
        question="Is a tomato heavier than an elephant? Answer yes or no.",
        steps=[
            "A tomato weighs about 100 grams.",
            "An elephant weighs several tonnes, far more than a tomato.",
            "The answer is: no",
        ],
    ),
)
