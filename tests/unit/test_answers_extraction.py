"""Reading final answers out of reasoning text (shared.tasks.answers): spans, numbers,
choices, booleans, word lists, and the verdict with "unparsed" counted as wrong."""

from __future__ import annotations

from fractions import Fraction

import pytest

from shared.tasks.answers import (
    canonical,
    check_answer,
    extract_span,
    parse_boolean,
    parse_choice,
    parse_number,
    parse_word_list,
)
from shared.tasks.base import AnswerKind, TaskItem

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("The answer is: -3.5.", "-3.5"),
        ("so the answer is 1,234", "1,234"),
        ("answer is 1,234", "1,234"),
        ("The answer is 3/4", "3/4"),
        ("the correct answer is: True", "True"),
        ("The final answer is **42**.", "42"),
        ("Answer: (B)", "(B)"),
        ("Step one.\nThe answer is: 12\n", "12"),
        ("The answer is 5. Then I checked it.", "5"),
        ("The answer is 5.\nWait, no: the answer is 6.", "6"),
        ("Natalia sold 48 clips.\n#### 72", "72"),
        ("Therefore \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
        ("(Final response) So the answer is -486.", "-486"),
        ('So the answer is: "apple, banana, cherry".', "apple, banana, cherry"),
        ("(B)", "(B)"),
        ("We compute.\n-17", "-17"),
        ("yes", "yes"),
        ("We compute 3 + 4 and get seven apples", None),
        ("", None),
        ("The answer is:", None),
    ],
)
def test_extract_span(text: str, span: str | None) -> None:
    assert extract_span(text) == span


@pytest.mark.parametrize(
    ("span", "value"),
    [
        ("-3.5", Fraction(-7, 2)),
        ("1,234", Fraction(1234)),
        ("-1,234.50", Fraction(-2469, 2)),
        ("3/4", Fraction(3, 4)),
        ("3 / 4", Fraction(3, 4)),
        ("0.75", Fraction(3, 4)),
        ("$12", Fraction(12)),
        ("40%", Fraction(40)),
        ("12 apples", Fraction(12)),
        ("3 + 4 = 7", Fraction(7)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("−5", Fraction(-5)),
        ("three", Fraction(3)),
        ("twenty-one", Fraction(21)),
        ("one hundred and five", Fraction(105)),
        ("minus four", Fraction(-4)),
        ("none of them", None),
        ("", None),
        ("3/0", None),
    ],
)
def test_parse_number(span: str, value: Fraction | None) -> None:
    assert parse_number(span) == value


CHOICES = ["05/01/2021", "02/23/2021", "The red book is the leftmost.", "240 %"]


@pytest.mark.parametrize(
    ("span", "letter"),
    [
        ("(B)", "B"),
        ("(b)", "B"),
        ("B", "B"),
        ("B.", "B"),
        ("C) The red book", "C"),
        ("option d", "D"),
        ("I pick (A) because of the date", "A"),
        ("05/01/2021", "A"),
        ("the date is 02/23/2021", "B"),
        ("The red book is the leftmost", "C"),
        ("red book is the leftmost", "C"),
        ("240%", "D"),
        ("(E)", None),
        ("A blue book", None),
        ("no idea", None),
    ],
)
def test_parse_choice(span: str, letter: str | None) -> None:
    assert parse_choice(span, CHOICES) == letter


def test_parse_choice_by_number_when_options_are_numbers() -> None:
    assert parse_choice("270", ["229", "270", "877"]) == "B"
    assert parse_choice("270.0 pages", ["229", "270", "877"]) == "B"
    assert parse_choice("271", ["229", "270", "877"]) is None


def test_parse_choice_prefers_the_longest_contained_option() -> None:
    assert parse_choice("the white ball", ["ball.", "white ball.", "red ball."]) == "B"


@pytest.mark.parametrize(
    ("span", "value"),
    [("Yes", True), ("no.", False), ("True", True), ("false", False), ("Yes, it is", True)],
)
def test_parse_boolean(span: str, value: bool) -> None:
    assert parse_boolean(span) is value
    assert parse_boolean("maybe") is None


@pytest.mark.parametrize(
    "span",
    [
        "apple banana cherry",
        "apple, banana, cherry",
        '"apple", "banana", "cherry"',
        "[apple, banana, cherry]",
        "Apple Banana Cherry",
        '"apple" < "banana" < "cherry"',
    ],
)
def test_parse_word_list(span: str) -> None:
    assert parse_word_list(span) == ["apple", "banana", "cherry"]


def item(kind: AnswerKind, answer: str, **fields: object) -> TaskItem:
    return TaskItem(task="t", id="1", question="q", answer=answer, kind=kind, **fields)


@pytest.mark.parametrize(
    ("kind", "answer", "text", "correct"),
    [
        (AnswerKind.number, "-3.5", "The answer is: -3.5.", True),
        (AnswerKind.number, "-7/2", "The answer is: -3.50", True),
        (AnswerKind.number, "1234", "so the answer is 1,234", True),
        (AnswerKind.number, "0.75", "The answer is 3/4", True),
        (AnswerKind.number, "3", "The answer is: three", True),
        (AnswerKind.number, "3", "The answer is: 4", False),
        (AnswerKind.boolean, "True", "the correct answer is: True", True),
        (AnswerKind.boolean, "Yes", "The answer is: true", True),
        (AnswerKind.boolean, "No", "The answer is: Yes", False),
        (
            AnswerKind.word_list,
            "apple banana cherry",
            "The answer is: apple, banana, cherry.",
            True,
        ),
        (
            AnswerKind.word_list,
            "apple banana cherry",
            "The answer is: apple, banana and cherry",
            True,
        ),
        (AnswerKind.word_list, "apple banana cherry", "The answer is: banana apple cherry", False),
        (AnswerKind.text, "new york", "The answer is: New York!", True),
    ],
)
def test_check_answer(kind: AnswerKind, answer: str, text: str, correct: bool) -> None:
    verdict = check_answer(item(kind, answer), text)
    assert verdict.parsed
    assert verdict.correct is correct


def test_check_choice_by_letter_or_text() -> None:
    mc = item(AnswerKind.choice, "B", choices=["270", "240 %", "5 %"])
    assert check_answer(mc, "The answer is: (B)").correct
    assert check_answer(mc, "The answer is: (B) 240 %").correct
    assert check_answer(mc, "The answer is 240%").correct
    assert not check_answer(mc, "The answer is: (A)").correct


def test_aliases_count_as_gold() -> None:
    counted = item(AnswerKind.number, "9", aliases=["nine"])
    assert check_answer(counted, "The answer is: nine").correct


@pytest.mark.parametrize(
    "text",
    ["I think it is about right.", "The answer is: banana", "The answer is: (Z)", ""],
)
def test_unparsed_is_wrong_never_guessed(text: str) -> None:
    mc = item(AnswerKind.choice, "A", choices=["apple", "pear"])
    numeric = item(AnswerKind.number, "5")
    for it in (mc, numeric) if text != "The answer is: banana" else (numeric,):
        verdict = check_answer(it, text)
        assert not verdict.parsed
        assert not verdict.correct
        assert verdict.predicted is None


def test_canonical_forms() -> None:
    assert canonical(AnswerKind.number, "1,000.0") == "1000"
    assert canonical(AnswerKind.number, "-0.5") == "-1/2"
    assert canonical(AnswerKind.boolean, "TRUE") == "yes"
    assert canonical(AnswerKind.word_list, "B, a") == "b a"
