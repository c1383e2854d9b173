"""Task loaders: BIG-bench files (pulled once per machine by the fixture), user JSONL, the
registry, and the few-shot demos of every task."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from gateway.answering import choose_few_shot
from shared.answer_kinds import detect_answer_kind
from shared.schemas import Demo
from shared.tasks import (
    AnswerKind,
    DataMissingError,
    UnknownTaskError,
    check_answer,
    get_task,
    task_names,
)
from shared.tasks.data import BIGBENCH_FILES, missing_files, pull
from shared.tasks.jsonl import JsonlFormatError
from shared.tasks.registry import builtin_tasks

pytestmark = pytest.mark.unit

BIGBENCH = sorted(name for name, t in builtin_tasks().items() if t.source == "bigbench")
SIZES = {
    "date_understanding": 369,
    "elementary_math_qa": 7688,
    "logical_deduction_three_objects": 300,
    "logical_deduction_five_objects": 500,
    "logical_deduction_seven_objects": 700,
    "navigate": 1000,
    "object_counting": 1000,
    "strategyqa": 2290 - 3,  # three examples are its demos
    "tracking_shuffled_objects_three_objects": 750,
    "tracking_shuffled_objects_five_objects": 1250,
    "tracking_shuffled_objects_seven_objects": 1750,
    "word_sorting": 1900,
}


@pytest.fixture(scope="session")
def bigbench_data() -> Path:
    """The BIG-bench task files: the first run on a machine downloads the bigbench sdist
    (358 MB, a few minutes) and keeps only the task files; later runs find them."""
    return pull()


def test_registry_lists_every_task() -> None:
    names = task_names()
    assert set(SIZES) <= set(names)
    assert {
        "multistep_arithmetic_seen",
        "multistep_arithmetic_unseen",
        "word_sorting_seen",
        "word_sorting_unseen",
    } <= set(names)
    assert get_task("multistep_arithmetic").name == "multistep_arithmetic_seen"
    with pytest.raises(UnknownTaskError, match="known: "):
        get_task("no_such_task")


def test_missing_data_says_to_pull(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATIONALYST_DATA_DIR", str(tmp_path))
    assert missing_files() == list(BIGBENCH_FILES)
    task = get_task("date_understanding")
    with pytest.raises(DataMissingError, match="rationalyst data pull"):
        task.items(n=1)


def test_pull_is_a_no_op_when_present(bigbench_data: Path) -> None:
    assert missing_files() == []
    assert pull() == bigbench_data


@pytest.mark.parametrize("name", BIGBENCH)
def test_bigbench_items_are_well_formed_and_gold_is_accepted(
    bigbench_data: Path, name: str
) -> None:
    task = get_task(name)
    items = task.items(seed=0)
    assert len(items) == SIZES[name]
    assert len({it.id for it in items}) == len(items)
    for it in items:
        assert it.task == name
        assert it.question.strip()
        if it.kind is AnswerKind.choice:
            assert it.choices and len(it.choices) >= 2
            assert "\nOptions:\n(A) " in it.question
            assert f"({it.answer}) {it.choices[ord(it.answer) - 65]}" in it.question
            text = f"The answer is: ({it.answer})"
        elif it.rationale:
            text = "\n".join(it.rationale)
        else:
            text = f"The answer is: {it.answer}"
        verdict = check_answer(it, text)
        assert verdict.parsed and verdict.correct, (it.id, text, verdict)


@pytest.mark.parametrize("name", BIGBENCH)
def test_bigbench_choice_gold_text_is_accepted_too(bigbench_data: Path, name: str) -> None:
    for it in get_task(name).items(n=50, seed=1):
        if it.kind is AnswerKind.choice:
            assert it.choices is not None
            gold = it.choices[ord(it.answer) - 65]
            assert check_answer(it, f"The answer is: {gold}").correct, (it.id, gold)


def test_choices_are_shuffled_but_stable(bigbench_data: Path) -> None:
    items = get_task("date_understanding").items(seed=0)
    letters = Counter(it.answer for it in items)
    assert len(letters) >= 5, "the right option is not always in the same place"
    assert max(letters.values()) < 0.4 * len(items)
    again = {it.id: it for it in get_task("date_understanding").items(seed=5)}
    assert all(again[it.id] == it for it in items)


def test_seed_orders_bigbench_items(bigbench_data: Path) -> None:
    task = get_task("navigate")
    assert task.items(n=5, seed=0) == task.items(n=10, seed=0)[:5]
    assert task.items(n=5, seed=0) != task.items(n=5, seed=1)


def test_strategyqa_carries_explanations(bigbench_data: Path) -> None:
    items = get_task("strategyqa").items(seed=0)
    with_steps = [it for it in items if it.rationale]
    assert len(with_steps) > 0.95 * len(items)
    for it in with_steps[:200]:
        assert it.rationale is not None
        assert it.rationale[-1] == f"The answer is: {it.answer}"
        assert it.answer in ("Yes", "No")
    reserved = {"0", "1", "2"}
    assert not reserved & {it.id for it in items}


def test_object_counting_accepts_digits_and_words(bigbench_data: Path) -> None:
    for it in get_task("object_counting").items(n=30, seed=0):
        assert it.answer.isdigit()
        assert check_answer(it, f"The answer is: {it.aliases[0]}").correct


def test_word_sorting_rationales_where_the_words_allow(bigbench_data: Path) -> None:
    items = get_task("word_sorting").items(seed=0)
    assert sum(1 for it in items if it.rationale) > 0.9 * len(items)


@pytest.mark.parametrize(
    "name", [*sorted(SIZES), "multistep_arithmetic_seen", "word_sorting_unseen"]
)
def test_demos_are_rationalyst_format(bigbench_data: Path, name: str) -> None:
    task = get_task(name)
    demos = task.demos(3)
    assert 2 <= len(demos) <= 3
    sample = task.items(n=1, seed=0)[0]
    for demo in demos:
        assert isinstance(demo, Demo)
        assert demo.steps[-1].startswith("The answer is: ")
        assert all(step.strip() for step in demo.steps)
        # A demo is formatted like the task's questions and its answer reads as one.
        if sample.kind is AnswerKind.choice:
            assert "\nOptions:\n(A) " in demo.question
        fake = sample.model_copy(update={"question": demo.question})
        assert check_answer(fake, demo.steps[-1]).parsed
    assert task.demos(1) == demos[:1]


@pytest.mark.parametrize("name", [*sorted(SIZES), "multistep_arithmetic_seen", "word_problems"])
def test_the_answer_kind_rule_reads_every_task_right(bigbench_data: Path, name: str) -> None:
    """The gateway's answer-kind rule agrees with each task's kind, and its demos' answers
    read as that kind (no few_shot warning when a task sends its own)."""
    task = get_task(name)
    for item in task.items(n=30, seed=0):
        assert detect_answer_kind(item.question) is task.kind, item.question
    assert choose_few_shot(task.items(n=1)[0].question, task.demos(3), task.kind).warnings == []


def test_demo_answers_are_right(bigbench_data: Path) -> None:
    """Hand-written choice demos: the stated letter is the option the steps conclude."""
    for name in ("date_understanding", "logical_deduction_three_objects", "elementary_math_qa"):
        for demo in get_task(name).demos(3):
            letter = demo.steps[-1].split("(")[1][0]
            option = next(
                line[4:] for line in demo.question.splitlines() if line.startswith(f"({letter})")
            )
            assert option in demo.steps[-1]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "gsm.jsonl",
        [
            {
                "question": "Natalia sold clips to 48 friends in April, and half as many in May. "
                "How many clips did she sell?",
                "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\n"
                "In total 48+24 = <<48+24=72>>72 clips.\n#### 72",
            },
            {"id": "big", "question": "How much is a thousand and a bit?", "answer": "#### 1,234"},
        ],
    )
    task = get_task(f"jsonl:{path}")
    assert task.name == "gsm"
    items = {it.id: it for it in task.items(seed=0)}
    first = items["1"]
    assert first.answer == "72"
    assert first.kind is AnswerKind.number
    assert first.rationale == [
        "In May she sold 48/2 = 24 clips.",
        "In total 48+24 = 72 clips.",
        "The answer is: 72",
    ]
    assert items["big"].answer == "1234"
    assert items["big"].rationale is None
    for it in items.values():
        assert check_answer(it, f"The answer is: {it.answer}").correct
    assert task.demos(3)[0].steps[-1].startswith("The answer is: ")


def test_multiple_choice_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mc.jsonl",
        [
            {"question": "Capital of France?", "choices": ["Berlin", "Paris"], "answer": "B"},
            {"question": "2 + 2?", "choices": ["3", "4", "5"], "answer": 1},
            {"question": "Sky colour?", "choices": ["blue", "green"], "answer": "blue"},
            {"question": "Pick C", "choices": ["a", "b", "c"], "answer": "(C)"},
        ],
    )
    items = get_task(f"jsonl:{path}").items(seed=0)
    by_q = {it.question.splitlines()[0]: it for it in items}
    assert by_q["Capital of France?"].answer == "B"
    assert by_q["2 + 2?"].answer == "B"
    assert by_q["Sky colour?"].answer == "A"
    assert by_q["Pick C"].answer == "C"
    assert (
        by_q["Capital of France?"].question == "Capital of France?\nOptions:\n(A) Berlin\n(B) Paris"
    )
    for it in items:
        assert check_answer(it, f"The answer is: {it.gold_text}").correct
    assert "\nOptions:\n(A) " in get_task(f"jsonl:{path}").demos(2)[0].question


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"question": "q", "answer": "no marker"}, "####"),
        ({"question": "q", "choices": ["a", "b"], "answer": "Z"}, "names none"),
        ({"question": "q", "choices": ["a"], "answer": "A"}, "two choices"),
        ({"answer": "#### 1"}, "question"),
    ],
)
def test_bad_jsonl_is_a_clear_error(tmp_path: Path, row: dict[str, object], message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(JsonlFormatError, match=message):
        get_task(f"jsonl:{path}").items()
