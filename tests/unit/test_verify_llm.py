"""The LLM verifier apart from any model: its prompt, and how its answer becomes a verdict."""

from __future__ import annotations

import pytest

from shared.verify import ERROR_MARKER, llm_messages, llm_verify, parse_llm_answer, split_steps
from shared.verify.llm import format_answer

pytestmark = pytest.mark.unit

QUESTION = "Today is 3/5/2021. What is the date tomorrow in MM/DD/YYYY?"
SOLUTION = """Let's think step by step.
(1) Today is 03/05/2021.
(2) Tomorrow is one day later: 03/07/2021.
(Final response) So the answer is 03/07/2021."""
STEPS = split_steps(SOLUTION, strict=False)


def test_verify_llm_answer_with_an_error_becomes_the_feedback_sentence() -> None:
    answer = (
        "Earliest error step: (2)\n"
        'Error segment: "one day later: 03/07/2021"\n'
        "Error reason: It adds two days instead of one.\n[END] trailing text"
    )
    verdict = parse_llm_answer(answer, STEPS)
    assert not verdict.correct and not verdict.unparseable
    assert (verdict.step, verdict.step_index) == ("2", 1)
    assert verdict.segment == "one day later: 03/07/2021"
    assert verdict.reason == "it adds two days instead of one"
    assert verdict.feedback == (
        'Step (1) is correct. In step (2) the part "one day later: 03/07/2021" is incorrect. '
        "This is because it adds two days instead of one."
    )


def test_verify_llm_answer_none_means_all_correct() -> None:
    answer = (
        "Earliest error step: None\nError segment: None\n"
        "Error reason: The final response is correct."
    )
    verdict = parse_llm_answer(answer, STEPS)
    assert verdict.correct
    assert verdict.feedback == "Step (1) to (2) are correct. The final response is also correct."


@pytest.mark.parametrize(
    ("answer", "step", "index"),
    [
        ('Earliest error step: step 1\nError segment: "03/05"\nError reason: no', "1", 0),
        (
            'earliest error step: (Final response)\nerror segment: "03/07/2021"\n'
            "error reason: The date is wrong,\nas step (2) shows.",
            "Final response",
            2,
        ),
    ],
)
def test_verify_llm_answer_labels_and_multiline_reasons_are_read(
    answer: str, step: str, index: int
) -> None:
    verdict = parse_llm_answer(answer, STEPS)
    assert (verdict.step, verdict.step_index) == (step, index), verdict
    assert verdict.feedback.startswith("In step (1)" if index == 0 else "Step (1) to (2)")


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "The solution looks fine to me!",
        'Earliest error step: (7)\nError segment: "x"\nError reason: y',  # no such step
        "Earliest error step: (2)\nError segment: None\nError reason: None",
        "Earliest error step: somewhere\nError segment: x\nError reason: y",
    ],
)
def test_verify_llm_answer_that_cannot_be_read_is_unparseable(answer: str) -> None:
    verdict = parse_llm_answer(answer, STEPS)
    assert verdict.unparseable and verdict.feedback == ERROR_MARKER
    assert verdict.detail


def test_verify_llm_prompt_holds_the_question_the_answer_and_the_format() -> None:
    messages = llm_messages(QUESTION, SOLUTION, "Infer a date.")
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert user.startswith("Task: Infer a date.")
    assert user.rstrip().endswith(SOLUTION.splitlines()[-1])
    assert "Earliest error step:" in user and "Error segment:" in user and "Error reason:" in user


def test_verify_llm_examples_agree_with_the_scripted_verifier() -> None:
    """The worked examples in the prompt state the verdicts the scripted verifier gives."""
    user = llm_messages(QUESTION, SOLUTION)[1]["content"]
    assert 'Earliest error step: (3)\nError segment: "(-5 - 2) = -3"' in user
    assert "Earliest error step: None" in user


async def test_verify_llm_verify_asks_the_model_once_and_reads_its_answer() -> None:
    asked: list[list[dict[str, str]]] = []

    async def chat(messages: list[dict[str, str]], max_tokens: int) -> str:
        asked.append(messages)
        assert max_tokens == 64
        return 'Earliest error step: (2)\nError segment: "03/07/2021"\nError reason: off by one'

    verdict, raw = await llm_verify(chat, QUESTION, SOLUTION, max_tokens=64)
    assert len(asked) == 1 and raw is not None and raw.startswith("Earliest")
    assert verdict.step == "2"


async def test_verify_llm_verify_does_not_ask_about_an_answer_without_steps() -> None:
    async def chat(messages: list[dict[str, str]], max_tokens: int) -> str:
        raise AssertionError("not asked")

    verdict, raw = await llm_verify(chat, QUESTION, "The answer is 03/06/2021.")
    assert verdict.unparseable and raw is None


def test_verify_llm_format_answer_reads_back() -> None:
    verdict = parse_llm_answer(
        'Earliest error step: (2)\nError segment: "x"\nError reason: It is wrong.', STEPS
    )
    assert parse_llm_answer(format_answer(verdict), STEPS) == verdict
