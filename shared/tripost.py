"""TriPosT's text format (REFERENCE.md 2.1), shared by the collection, the training, the
evaluation and the gateway's ``self_improve`` strategy.

A sample is plain text, one question and one turn of self-improvement::

    Q: <question>
    Answer: (1) ...
    (Final response) So the answer is 7.
    Feedback: Step (1) is correct. In step (2) the part "..." is incorrect. This is because ...
    Updated Answer: (1) ...
    (Final response) So the answer is 9.

A sample of an answer that was right at once ends after its (all-correct) feedback. A model
trained on such text continues a prompt that ends with ``Answer:`` with its attempt, its own
feedback and, when that feedback names an error, the updated answer; the next round starts
from ``Answer: <updated answer>`` again (:func:`prompt`). Prompts end with the colon: the
space after it belongs to the continuation, as it does in the tokenized samples.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from shared.schemas import Demo
from shared.tasks.base import AnswerKind
from shared.verify.steps import Step, split_steps
from shared.verify.verdict import all_correct_feedback

QUESTION = "Q: "
ANSWER = "Answer: "
FEEDBACK = "\nFeedback: "
UPDATED = "\nUpdated Answer: "
STOP = ("\nQ:",)
"""Stop sequences of a generation: the next question of a few-shot prompt."""

_FINAL_RE = re.compile(r"\s*\(final response\)", re.IGNORECASE)
_FEEDBACK_RE = re.compile(r"\n\s*Feedback:")
_UPDATED_RE = re.compile(r"\n\s*Updated Answer:")


def render(steps: Sequence[Step]) -> str:
    return "\n".join(f"({s.label}) {s.text}" for s in steps)


def normalize(text: str) -> str | None:
    """The answer's labelled steps, one per line, up to and including the first final
    response (models often go on writing); None without numbered steps or a final response."""
    lines = text.splitlines()
    end = next((i for i, line in enumerate(lines) if _FINAL_RE.match(line)), None)
    if end is None:
        return None
    steps = split_steps("\n".join(lines[: end + 1]), strict=False)
    if len(steps) < 2:
        return None
    return render(steps)


def last_label(answer: str) -> str | None:
    """The label of the last numbered step of an answer ("4"), None when it has none."""
    numbered = [s for s in split_steps(answer, strict=False) if not s.final]
    return numbered[-1].label if numbered else None


def tripost_demo(demo: Demo, kind: AnswerKind) -> tuple[str, str]:
    """A worked example in TriPosT's format from a RATIONALYST demo (steps, then "The answer
    is: X"): labelled steps stay as they are, others are numbered; the end step becomes the
    final response."""
    *body, end = demo.steps
    answer = end.split(":", 1)[1].strip() if ":" in end else end
    labelled = all(split_steps(step, strict=False) for step in body)
    lines = list(body) if labelled else [f"({i + 1}) {s}" for i, s in enumerate(body)]
    colon = ":" if kind is AnswerKind.word_list else ""
    lines.append(f"(Final response) So the answer is{colon} {answer.rstrip('.')}.")
    return demo.question, "\n".join(lines)


def sample_text(
    question: str, answer: str, feedback: str | None = None, updated: str | None = None
) -> str:
    """One sample (or a demo): the question, the answer, its feedback, the update."""
    text = f"{QUESTION}{question}\n{ANSWER}{answer}"
    if feedback is not None:
        text += f"{FEEDBACK}{feedback}"
        if updated is not None:
            text += f"{UPDATED}{updated}"
    return text


def demo_text(demos: Sequence[tuple[str, str]]) -> str:
    """Worked examples as samples of answers right at once, each followed by a blank line."""
    out = []
    for question, answer in demos:
        label = last_label(answer)
        feedback = all_correct_feedback(label) if label else None
        out.append(sample_text(question, answer, feedback) + "\n\n")
    return "".join(out)


def prompt(
    question: str,
    demos: Sequence[tuple[str, str]] = (),
    *,
    answer: str | None = None,
    feedback: str | None = None,
) -> str:
    """The text a model continues: after ``Answer:`` (an attempt), after ``Feedback:`` (its
    feedback on ``answer``) or after ``Updated Answer:`` (the update ``feedback`` asks for)."""
    head = demo_text(demos) + f"{QUESTION}{question}\n"
    if answer is None:
        return head + ANSWER.rstrip()
    if feedback is None:
        return head + ANSWER + answer + FEEDBACK.rstrip()
    return head + ANSWER + answer + FEEDBACK + feedback + UPDATED.rstrip()


@dataclass(frozen=True)
class Continuation:
    """A generation cut into its parts; None where it stopped before a part (or, for the parts
    before where the prompt ended, where the prompt already held them)."""

    answer: str | None = None
    feedback: str | None = None
    """The first line after ``Feedback:``."""
    updated: str | None = None


Part = Literal["answer", "feedback", "updated"]


def read_continuation(text: str, after: Part) -> Continuation:
    """Read a generation that continues a :func:`prompt` ending before the part ``after``:
    an answer may be followed by its feedback and an update; a feedback by an update. A
    ``Feedback:`` after the update (a model that goes on to judge it) ends the generation."""
    answer = feedback = None
    if after == "answer":
        match = _FEEDBACK_RE.search(text)
        if match is None:
            return Continuation(answer=text.strip())
        answer, text, after = text[: match.start()].strip(), text[match.end() :], "feedback"
    if after == "feedback":
        match = _UPDATED_RE.search(text)
        head = text if match is None else text[: match.start()]
        feedback = head.strip().split("\n", 1)[0].strip()
        if match is None:
            return Continuation(answer, feedback)
        text = text[match.end() :]
    cut = _FEEDBACK_RE.search(text)
    updated = (text if cut is None else text[: cut.start()]).strip()
    return Continuation(answer, feedback, updated)
