"""End phrases and answer extraction (shared.answers)."""

from __future__ import annotations

import pytest

from shared.answers import contains_end_phrase, extract_answer

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "ends"),
    [
        ("The answer is: 12", True),
        ("so the correct answer is (B).", True),
        ("THE ANSWER IS 3", True),
        ("Therefore \\boxed{4}", True),
        ("The final answer is 7", True),
        ("First add 3 and 4.", False),
        ("", False),
    ],
)
def test_contains_end_phrase(text: str, ends: bool) -> None:
    assert contains_end_phrase(text) is ends


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("The answer is: 12", "12"),
        ("The answer is 12.", "12"),
        ("So the correct answer is (B).\nDone", "(B)"),
        ("The answer is: no", "no"),
        ("The answer is **$5$**.", "5"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("The answer is \\boxed{42}.", "42"),
        ("The answer is 3. Wait, the answer is 4.", "4"),
        ("The answer is 3.5 apples. That is all.", "3.5 apples"),
        ("The answer is: 1\nThe answer is: 2", "2"),
    ],
)
def test_extract_answer(text: str, answer: str) -> None:
    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    "text", ["no answer here", "The answer is", "The answer is:   ", "\\boxed{", "\\boxed{ }"]
)
def test_extract_answer_is_none_when_nothing_parses(text: str) -> None:
    assert extract_answer(text) is None
