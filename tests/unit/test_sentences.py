"""The shared sentence splitter: abbreviations, numbers, lists, equations, line breaks."""

from __future__ import annotations

import itertools

import pytest

from shared.sentences import sentence_spans, split_sentences

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Tom has 3 apples. He buys 5 more! How many? He has 8.",
            ["Tom has 3 apples.", "He buys 5 more!", "How many?", "He has 8."],
        ),
        (
            "Dr. Smith met Mrs. Jones, e.g. at noon. They live in the U.S. now. See Fig. 3.",
            ["Dr. Smith met Mrs. Jones, e.g. at noon.", "They live in the U.S. now.",
             "See Fig. 3."],
        ),
        (
            "J. K. Rowling wrote it. George W. Bush read it. Kale has vitamin C. It is green.",
            ["J. K. Rowling wrote it.", "George W. Bush read it.", "Kale has vitamin C.",
             "It is green."],
        ),
        ("No. The answer is no. Call No. 5 later.",
         ["No.", "The answer is no.", "Call No. 5 later."]),
    ],
)  # fmt: skip
def test_sentences_abbreviations_and_initials_do_not_end_a_sentence(
    text: str, expected: list[str]
) -> None:
    assert split_sentences(text) == expected


def test_sentences_numbers_with_a_point_stay_whole() -> None:
    text = "A pear is about 0.59 g/cm^3. Water is 1.0 g/cm^3. So x = 3.5. It costs $3.50. $2 more."
    assert split_sentences(text) == [
        "A pear is about 0.59 g/cm^3.",
        "Water is 1.0 g/cm^3.",
        "So x = 3.5.",
        "It costs $3.50.",
        "$2 more.",
    ]


def test_sentences_list_items_are_steps() -> None:
    assert split_sentences("Steps: 1. Mix the flour. 2. Add water. 3. Bake it.") == [
        "Steps:", "1. Mix the flour.", "2. Add water.", "3. Bake it.",
    ]  # fmt: skip
    assert split_sentences("You need:\n- 2 eggs\n- 1 cup of milk\n\nMix them well.") == [
        "You need:", "- 2 eggs", "- 1 cup of milk", "Mix them well.",
    ]  # fmt: skip
    assert split_sentences("1. Preheat the oven.\n2) Bake for 20 min.\nServe warm.") == [
        "1. Preheat the oven.", "2) Bake for 20 min.", "Serve warm.",
    ]  # fmt: skip


def test_sentences_equations_one_per_line_are_steps() -> None:
    assert split_sentences("2x + 3 = 7\n2x = 4\nx = 2") == ["2x + 3 = 7", "2x = 4", "x = 2"]
    assert split_sentences("3 x 12 = 36 pencils. 36 - 9 = 27. Lena has 27.") == [
        "3 x 12 = 36 pencils.", "36 - 9 = 27.", "Lena has 27.",
    ]  # fmt: skip


def test_sentences_wrapped_lines_and_quotes() -> None:
    assert split_sentences("This line wraps\nonto the next. Done.") == [
        "This line wraps\nonto the next.",
        "Done.",
    ]
    assert split_sentences('He said "stop." Then he left... Why? (It rained.) Fine.') == [
        'He said "stop."', "Then he left...", "Why?", "(It rained.)", "Fine.",
    ]  # fmt: skip


def test_sentences_spans_are_exact_and_cover_the_text() -> None:
    text = "  Tom has 3 apples.  He buys 5 more.\n\nNow he has 8 apples  "
    spans = sentence_spans(text)
    assert [text[a:b] for a, b in spans] == [
        "Tom has 3 apples.", "He buys 5 more.", "Now he has 8 apples",
    ]  # fmt: skip
    gaps = [text[b:a] for (_, b), (a, _) in itertools.pairwise(spans)]
    assert all(not gap.strip() for gap in gaps)
    assert split_sentences("no boundary here") == ["no boundary here"]
    assert split_sentences("   ") == []
