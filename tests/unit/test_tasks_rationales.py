"""Gold rationales as RATIONALYST steps and the corrupted alternatives of step selection."""

from __future__ import annotations

import random

import pytest

from shared.tasks import get_task
from shared.tasks.base import AnswerKind, TaskItem
from shared.tasks.rationales import (
    build_selection_item,
    change_number,
    gold_steps,
    reorder_words,
    split_label,
    swap_step,
)

pytestmark = pytest.mark.unit


def norm(text: str) -> str:
    return " ".join(text.split())


def test_gold_steps_end_with_the_rationalyst_answer_step() -> None:
    item = get_task("multistep_arithmetic_seen").items(n=1, seed=0)[0]
    steps = gold_steps(item)
    assert steps is not None
    assert steps[:-1] == item.rationale[:-1]  # type: ignore[index]
    assert steps[-1] == f"The answer is: {item.answer}"
    sorting = get_task("word_sorting_seen").items(n=1, seed=0)[0]
    assert gold_steps(sorting)[-1] == f"The answer is: {sorting.answer}"  # type: ignore[index]
    bare = TaskItem(task="t", id="1", question="q", answer="1", kind=AnswerKind.number)
    assert gold_steps(bare) is None


def test_split_label() -> None:
    assert split_label("(3.1) We now have: x.") == ("(3.1) ", "We now have: x.")
    assert split_label("(Final response) So the answer is 4.") == (
        "(Final response) ",
        "So the answer is 4.",
    )
    assert split_label("The answer is: 4") == ("", "The answer is: 4")


def test_change_number_keeps_the_label_and_changes_one_number() -> None:
    rng = random.Random(0)
    step = "(2) Let's calculate A = (7 + -4) = 3."
    for _ in range(20):
        out = change_number(step, rng)
        assert out is not None and out != step
        assert out.startswith("(2) Let's calculate A = ")
    assert change_number("(3) Hence, we have it.", rng) is None
    assert (
        change_number("The price is 2.50 dollars", random.Random(1)) != "The price is 2.50 dollars"
    )


def test_reorder_and_swap() -> None:
    rng = random.Random(0)
    step = "(1) The first letter: a b c."
    out = reorder_words(step, rng)
    assert (
        out is not None and out.startswith("(1) ") and sorted(out.split()) == sorted(step.split())
    )
    assert reorder_words("same same", rng) is None
    steps = ["(1) one thing.", "(2) another thing.", "The answer is: 3"]
    assert swap_step(steps, 0, rng) in ("(1) another thing.", "The answer is: 3")
    assert swap_step(["only"], 0, rng) is None


@pytest.mark.parametrize("name", ["multistep_arithmetic_seen", "word_sorting_unseen"])
@pytest.mark.parametrize("k", [2, 4, 6])
def test_selection_items_have_k_distinct_candidates_and_one_gold(name: str, k: int) -> None:
    items = get_task(name).items(n=25, seed=0)
    pool = [s for it in items for s in it.rationale or []]
    for it in items:
        rng = random.Random(it.id)
        sel = build_selection_item(it, k, rng, others=[s for s in pool if s not in it.rationale])  # type: ignore[operator]
        assert sel is not None
        steps = gold_steps(it)
        assert steps is not None
        assert len(sel.candidates) == k
        assert len({norm(c) for c in sel.candidates}) == k
        assert sel.kinds.count("gold") == 1
        assert sel.candidates[sel.gold_index] == steps[sel.position]
        assert sel.steps == steps[: sel.position]
        assert set(sel.kinds) <= {"gold", "number", "swap", "reorder", "other"}


def test_selection_items_are_reproducible() -> None:
    item = get_task("multistep_arithmetic_unseen").items(n=1, seed=2)[0]
    a = build_selection_item(item, 4, random.Random("x"))
    b = build_selection_item(item, 4, random.Random("x"))
    assert a == b


def test_selection_item_needs_a_rationale_and_enough_corruptions() -> None:
    bare = TaskItem(task="t", id="1", question="q", answer="1", kind=AnswerKind.number)
    assert build_selection_item(bare, 4, random.Random(0)) is None
    tiny = bare.model_copy(update={"rationale": ["Add both."]})
    # Two words and no number: one reordering only, so 3 corruptions need other problems.
    assert build_selection_item(tiny, 4, random.Random(0)) is None
    built = build_selection_item(
        tiny, 4, random.Random(0), others=["Add the numbers.", "Count again."]
    )
    assert built is not None and len(built.candidates) == 4
    assert sorted(built.kinds) == ["gold", "other", "other", "reorder"]
