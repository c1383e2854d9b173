"""Answer kinds told from the question (shared.answer_kinds) and the default demos of each kind
(shared.fewshot)."""

from __future__ import annotations

import pytest

from shared.answer_kinds import (
    AnswerKind,
    classify_answer,
    detect_answer_kind,
    question_options,
    question_sentence,
)
from shared.answers import extract_answer
from shared.fewshot import (
    ANSWER_PREFIX,
    DEFAULT_DEMOS,
    DEMOS_BY_KIND,
    answer_prefix,
    default_demos,
)
from shared.schemas import Demo
from shared.tasks import get_task
from shared.tasks.answers import canonical
from shared.tasks.formatting import format_question

pytestmark = pytest.mark.unit

NUMBER, BOOLEAN, CHOICE, WORDS, TEXT = (
    AnswerKind.number,
    AnswerKind.boolean,
    AnswerKind.choice,
    AnswerKind.word_list,
    AnswerKind.text,
)


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        # how many / how much / how old ... -> number
        ("Bruno has 5 boxes with 3 shells in each box. How many shells are there in all?", NUMBER),
        ("A pen costs 2 dollars. How much do 4 pens cost?", NUMBER),
        ("Tom is 7 years old. His sister is 3 years older. How old is she?", NUMBER),
        ("A train goes 60 km an hour. How far does it go in 3 hours?", NUMBER),
        ("Lia had 9 pens and lost 2. So, how many pens does she have?", NUMBER),
        ("There are 4 cats. Each cat has 4 legs. Tell me how many legs there are.", NUMBER),
        # what is N op M, arithmetic expressions -> number
        ("What is 2 + 3?", NUMBER),
        ("What's 12 * 7?", NUMBER),
        ("what is 15 divided by 3?", NUMBER),
        ("Calculate 48 / 6.", NUMBER),
        ("((3 + -2 * 4) - (5 * -1 - 2)) =", NUMBER),
        ("What is the sum of 4 and 9?", NUMBER),
        ("What is the total cost of 3 books at 5 dollars each?", NUMBER),
        ("Q: How many days are in a week?", NUMBER),
        # is / does / can ... -> yes/no
        ("Is a tomato heavier than an elephant?", BOOLEAN),
        ("Does 7 + 5 equal 12?", BOOLEAN),
        ("Can a penguin fly?", BOOLEAN),
        ("Tom has 3 apples. Are there more than 2 apples?", BOOLEAN),
        ("Would a pear sink in water? Answer Yes or No.", BOOLEAN),
        ("Take 3 steps. Turn around. Take 3 steps. Answer True or False.", BOOLEAN),
        ("Is it true that 2 + 2 = 4 (yes/no)?", BOOLEAN),
        # options listed -> choice
        ("What is 2 + 2?\nOptions:\n(A) 3\n(B) 4\n(C) 5", CHOICE),
        ("Which animal barks? (A) a cat (B) a dog", CHOICE),
        ("How many legs does a spider have?\nA) 6\nB) 8\nC) 10", CHOICE),
        ("Is the sky green?\nOptions:\n(A) yes\n(B) no", CHOICE),
        # word lists
        ("Sort the following words alphabetically:\nList: pear apple plum", WORDS),
        ("Put these words in alphabetical order: dog cat", WORDS),
        # free text
        ("What is the capital of France?", TEXT),
        ("Who wrote Hamlet?", TEXT),
        ("Name a colour of the rainbow.", TEXT),
        ("Which is heavier, a kilo of feathers or a kilo of iron?", TEXT),
    ],
)
def test_detect_answer_kind(question: str, kind: AnswerKind) -> None:
    assert detect_answer_kind(question) is kind


def test_detect_answer_kind_on_the_registry_generated_tasks() -> None:
    for name, kind in [
        ("multistep_arithmetic_seen", NUMBER),
        ("word_sorting_seen", WORDS),
        ("word_problems", NUMBER),
    ]:
        task = get_task(name)
        assert task.kind is kind
        assert {detect_answer_kind(it.question) for it in task.items(20)} == {kind}, name


def test_question_options_reads_the_project_format_and_inline_letters() -> None:
    question = format_question("Pick one.", choices=["red", "green", "blue"])
    assert question_options(question) == ["red", "green", "blue"]
    assert question_options("Which? (A) cat (B) dog") == ["cat", "dog"]
    assert question_options("f(a) = 3. What is f?") == []
    assert question_options("A. only one option") == []


def test_question_sentence_is_the_last_question() -> None:
    assert question_sentence("It rains. So, how wet is it? Answer in words.") == "how wet is it?"
    assert question_sentence("Add 2 and 3") == "Add 2 and 3"


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("12", NUMBER),
        ("-3.5", NUMBER),
        ("3/4", NUMBER),
        ("$1,200", NUMBER),
        ("40%", NUMBER),
        ("no", BOOLEAN),
        ("True.", BOOLEAN),
        ("(B)", CHOICE),
        ("(C) 270", CHOICE),
        ("D", CHOICE),
        ("Paris", TEXT),
        ("apple pear plum", TEXT),
    ],
)
def test_classify_answer(answer: str, kind: AnswerKind) -> None:
    assert classify_answer(answer) is kind


# -- default demos ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(AnswerKind))
def test_every_kind_has_demos_in_the_project_format(kind: AnswerKind) -> None:
    demos = default_demos(kind)
    assert len(demos) >= 2
    for demo in demos:
        assert all(step.strip() for step in demo.steps)
        assert all("answer is" not in step.lower() for step in demo.steps[:-1])
        assert demo.steps[-1].startswith(ANSWER_PREFIX + " ")
        assert answer_prefix([demo]) == ANSWER_PREFIX


@pytest.mark.parametrize("kind", list(AnswerKind))
def test_demos_of_one_kind_only_end_with_answers_of_that_kind(kind: AnswerKind) -> None:
    for demo in default_demos(kind):
        answer = extract_answer(demo.steps[-1])
        assert answer is not None
        assert canonical(kind, answer, question_options(demo.question)) is not None
        looks = classify_answer(answer)
        assert looks is (AnswerKind.text if kind is AnswerKind.word_list else kind), demo
        # The demos' own questions are read as their kind.
        assert detect_answer_kind(demo.question) is kind, demo.question


def test_numeric_default_demos_never_answer_yes_or_no() -> None:
    assert DEMOS_BY_KIND[NUMBER] == DEFAULT_DEMOS
    for demo in DEFAULT_DEMOS:
        assert extract_answer(demo.steps[-1]) not in {"yes", "no"}


def test_answer_prefix_is_read_from_the_demos() -> None:
    custom = [Demo(question="q", steps=["x", "So the final answer is: 3"])]
    assert answer_prefix(custom) == "So the final answer is:"
    assert answer_prefix([Demo(question="q", steps=["Answer: 3"])]) == ANSWER_PREFIX
    assert answer_prefix([]) == ANSWER_PREFIX
