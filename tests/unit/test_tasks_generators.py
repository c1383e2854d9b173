"""Generated tasks: multistep arithmetic and word sorting with TriPosT-style gold rationales,
and simple word problems."""

from __future__ import annotations

import random
import re

import pytest

from shared.tasks import arithmetic, check_answer, get_task, word_sorting
from shared.tasks.base import AnswerKind
from shared.tasks.words import WORDS

pytestmark = pytest.mark.unit

FINAL_RE = re.compile(r"^\(Final response\) So the answer is:? (.+)\.$")


@pytest.mark.parametrize("name", ["multistep_arithmetic_seen", "multistep_arithmetic_unseen"])
def test_arithmetic_gold_is_pythons_evaluation(name: str) -> None:
    for it in get_task(name).items(n=60, seed=3):
        expression = it.meta["expression"]
        assert it.answer == str(eval(expression))  # the BIG-bench generator's semantics
        assert it.question == f"{expression} ="
        assert it.kind is AnswerKind.number


@pytest.mark.parametrize("name", ["multistep_arithmetic_seen", "multistep_arithmetic_unseen"])
def test_arithmetic_rationale_steps_and_final_line(name: str) -> None:
    for it in get_task(name).items(n=40, seed=1):
        lines = it.rationale
        assert lines is not None
        match = FINAL_RE.match(lines[-1])
        assert match is not None and match.group(1) == it.answer
        for i, line in enumerate(lines[:-1], start=1):
            assert line.startswith(f"({i}) ")
        assert lines[0].startswith("(1) This equation can be written as ")
        assert lines[-2].endswith(f"= {it.answer}.")
        # Every "=" chain holds: each calculated letter's value is what it claims.
        for line in lines[1:-2]:
            m = re.match(r"\(\d+\) Let's calculate ([A-Z]) = (.+)\.$", line)
            assert m is not None, line
            forms = m.group(2).split(" = ")
            assert len({eval(f) for f in forms}) == 1, line
        assert check_answer(it, "\n".join(lines)).correct


def test_arithmetic_rationale_matches_the_tripost_example() -> None:
    assert arithmetic.rationale("((7 - -1 + -1 + -4) - (-7 + 7 * 3 * -9))") == [
        '(1) This equation can be written as "(A - B)", where A = (7 - -1 + -1 + -4) and '
        "B = (-7 + 7 * 3 * -9).",
        "(2) Let's calculate A = (7 - -1 + -1 + -4) = (((7 - -1) + -1) + -4) = ((8 + -1) + -4) "
        "= (7 + -4) = 3.",
        "(3) Let's calculate B = (-7 + 7 * 3 * -9) = (-7 + ((7 * 3) * -9)) = (-7 + (21 * -9)) "
        "= (-7 + -189) = -196.",
        "(4) Then, the final equation is (A - B) = (3 - -196) = 199.",
        "(Final response) So the answer is 199.",
    ]


def test_arithmetic_buckets_follow_tripost() -> None:
    seen = get_task("multistep_arithmetic_seen").items(n=80, seed=0)
    unseen = get_task("multistep_arithmetic_unseen").items(n=80, seed=0)
    for it in seen:
        assert it.meta["length"] in (3, 4)
        assert it.meta["depth_levels"] in ([2], [2, 2])
    combos = {(it.meta["length"], tuple(it.meta["depth_levels"])) for it in unseen}
    assert combos <= set(arithmetic.UNSEEN)
    assert all(c not in arithmetic.SEEN for c in combos)
    assert any(length >= 5 for length, _ in combos)
    assert any(depth == (2, 2, 2) for _, depth in combos)


def test_arithmetic_expression_shape() -> None:
    rng = random.Random(0)
    expression = arithmetic.generate_expression(rng, (2, 2), 3)
    groups = re.findall(r"\(([^()]+)\)", expression)
    assert len(groups) == 4
    for group in groups:
        tokens = group.split(" ")
        numbers = tokens[::2]
        assert len(numbers) == 3
        assert all(-9 <= int(x) <= 9 for x in numbers)
        assert set(tokens[1::2]) <= {"+", "-", "*"}


@pytest.mark.parametrize(
    "name",
    [
        "multistep_arithmetic_seen",
        "multistep_arithmetic_unseen",
        "word_sorting_seen",
        "word_sorting_unseen",
        "word_problems",
    ],
)
def test_seeds_reproduce_and_n_extends(name: str) -> None:
    task = get_task(name)
    first = task.items(n=10, seed=7)
    assert first == task.items(n=10, seed=7)
    assert task.items(n=20, seed=7)[:10] == first
    assert first != task.items(n=10, seed=8)
    assert len({it.id for it in task.items(n=50, seed=7)}) == 50


def test_word_sorting_sizes_and_answers() -> None:
    for name, (low, high) in [("word_sorting_seen", (2, 7)), ("word_sorting_unseen", (8, 20))]:
        sizes = set()
        for it in get_task(name).items(n=60, seed=0):
            words = it.question.split("List: ")[1].split()
            sizes.add(len(words))
            assert low <= len(words) <= high
            assert len(set(words)) == len(words)
            assert set(words) <= set(WORDS)
            assert it.answer == " ".join(sorted(words))
            assert it.rationale is not None
            match = FINAL_RE.match(it.rationale[-1])
            assert match is not None and match.group(1) == it.answer
            assert check_answer(it, "\n".join(it.rationale)).correct
        assert len(sizes) > 2


def test_word_sorting_rationale_nests_and_handles_prefixes() -> None:
    lines = word_sorting.rationale(["careful", "pear", "care", "plum", "apple"])
    assert lines[0] == (
        '(1) The first letter: "careful"="c" (3), "pear"="p" (16), "care"="c" (3), '
        '"plum"="p" (16), "apple"="a" (1).'
    )
    assert lines[1] == (
        '(2) We now have: (1) "apple" < (3) ["careful" ? "care"] < (16) ["pear" ? "plum"].'
    )
    assert any(line.startswith("(3.1) We now have") for line in lines)
    assert any('"care"=(end) (0)' in line for line in lines)
    assert lines[-2] == ('(5) Hence, we have "apple" < "care" < "careful" < "pear" < "plum".')
    assert lines[-1] == "(Final response) So the answer is: apple care careful pear plum."
    labels = [line.split(")")[0] + ")" for line in lines[:-1]]
    assert len(labels) == len(set(labels)), "step labels are unique"


def test_word_sorting_rationale_rejects_what_it_cannot_explain() -> None:
    with pytest.raises(ValueError):
        word_sorting.rationale(["it&t", "apple"])
    with pytest.raises(ValueError):
        word_sorting.rationale(["apple", "apple"])


def test_ordinals() -> None:
    assert word_sorting.ordinal(0) == "first"
    assert word_sorting.ordinal(19) == "twentieth"
    assert word_sorting.ordinal(20) == "twenty-first"
    assert word_sorting.ordinal(29) == "thirtieth"


@pytest.mark.parametrize(
    "name", ["multistep_arithmetic_seen", "word_sorting_seen", "word_problems"]
)
def test_generated_demos_are_in_the_rationalyst_format(name: str) -> None:
    demos = get_task(name).demos(3)
    assert len(demos) == 3
    for demo in demos:
        assert demo.steps[-1].startswith("The answer is: ")
        assert not any(step.startswith("(Final response)") for step in demo.steps)


def test_word_problems_vary_are_solved_by_their_rationale_and_avoid_the_demos() -> None:
    task = get_task("word_problems")
    items = task.items(n=40, seed=0)
    assert len({it.meta["template"] for it in items}) == 12
    assert len({it.question for it in items}) == 40
    demo_questions = {d.question for d in task.demos(3)}
    for it in items:
        assert it.kind is AnswerKind.number
        assert int(it.answer) >= 0
        assert it.question not in demo_questions
        assert it.rationale is not None
        assert it.rationale[-1] == f"The answer is: {it.answer}"
        assert check_answer(it, "\n".join(it.rationale)).correct
        # The arithmetic in the last working step gives the answer.
        assert re.search(rf"= {it.answer}\b", it.rationale[-2])
