"""An LLM as verifier: the prompt, and reading its answer into a :class:`Verdict`.

The model is asked, as in TriPosT, for three lines::

    Earliest error step: (k)          or None
    Error segment: "<the wrong part>" or None
    Error reason: <why>               or The final response is correct.

which :func:`parse_llm_answer` turns into the feedback sentence that scripted verifiers give.
An answer that does not have that shape, or names a step the attempt does not have, gives an
unparseable verdict. Nothing here does I/O: :func:`llm_verify` calls the ``chat`` it is given.
"""

from __future__ import annotations

import functools
import re
from typing import Protocol

from shared.verify.steps import Step, split_steps
from shared.verify.verdict import FINAL_LABEL, Verdict

SYSTEM = "You check step-by-step solutions carefully and report the first mistake."

INSTRUCTIONS = """Check the answer to the question step by step and find the earliest step \
that contains a mistake. Reply with exactly three lines and nothing else:
Earliest error step: the step's label in brackets, such as (2), or None if every step and the \
final response are correct
Error segment: the incorrect part of that step in double quotes, or None
Error reason: why that part is incorrect, or "The final response is correct." """


class Chat(Protocol):
    """One chat completion: the messages in, the assistant's text out."""

    async def __call__(self, messages: list[dict[str, str]], max_tokens: int) -> str: ...


@functools.cache
def _examples() -> str:
    """Two worked examples, their verdicts given by the scripted verifier (so the example
    answers are right by construction)."""
    from shared.tasks import arithmetic
    from shared.verify.arithmetic import ArithmeticVerifier

    wrong_expr, right_expr = "((3 + -2 * 4) - (5 * -1 - 2))", "((2 * 3 - 7) + (-4 + 8 - 1))"
    wrong = arithmetic.rationale(wrong_expr)
    wrong[2:] = [
        "(3) Let's calculate B = (5 * -1 - 2) = ((5 * -1) - 2) = (-5 - 2) = -3.",
        "(4) Then, the final equation is (A - B) = (-5 - -3) = -2.",
        "(Final response) So the answer is -2.",
    ]
    out = []
    for expr, lines in ((wrong_expr, wrong), (right_expr, arithmetic.rationale(right_expr))):
        question = arithmetic.question_text(expr)
        verdict = ArithmeticVerifier().verify(question, "\n".join(lines))
        out.append(f"Q: {question}\nAnswer:\n" + "\n".join(lines) + "\n" + format_answer(verdict))
    return "\n\n".join(out)


def format_answer(verdict: Verdict) -> str:
    """A verdict in the three-line form the model is asked for."""
    if verdict.correct:
        return (
            "Earliest error step: None\nError segment: None\n"
            "Error reason: The final response is correct."
        )
    reason = (verdict.reason or "")[:1].upper() + (verdict.reason or "")[1:]
    return (
        f'Earliest error step: ({verdict.step})\nError segment: "{verdict.segment}"\n'
        f"Error reason: {reason}."
    )


def llm_messages(
    question: str, solution: str, task_description: str | None = None
) -> list[dict[str, str]]:
    """The chat sent to the verifier model."""
    about = f"Task: {task_description.strip()}\n\n" if task_description else ""
    user = (
        f"{about}{INSTRUCTIONS}\n\n{_examples()}\n\n"
        f"Q: {question.strip()}\nAnswer:\n{solution.strip()}\n"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


_FIELD_RE = re.compile(
    r"^\s*(?P<key>earliest error step|error segment|error reason)\s*:\s*(?P<value>.*?)\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_STEP_RE = re.compile(r"\(?\s*(?:step\s*)?(?P<label>\d+(?:\.\d+)*|final response)\s*\)?", re.I)
_NONE = {"none", "n/a", "null", "no error", '"none"'}


def _lower_first(text: str) -> str:
    """ "It is ..." -> "it is ..." to follow "This is because" (not "A = ..." or "I")."""
    first = text.split(" ", 1)[0]
    if len(first) > 1 and first[0].isupper() and first[1:].islower():
        return text[0].lower() + text[1:]
    return text


def parse_llm_answer(text: str, steps: list[Step]) -> Verdict:
    """The verdict an LLM verifier's answer states about an attempt of ``steps``."""
    text = text.split("[END]", 1)[0]
    fields: dict[str, str] = {}
    matches = list(_FIELD_RE.finditer(text))
    for i, match in enumerate(matches):
        key = match["key"].lower()
        if key in fields:
            continue
        # A reason may run over several lines, up to the next field.
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        value = match["value"] if key != "error reason" else text[match.start("value") : end]
        fields[key] = " ".join(value.split())
    step_text = fields.get("earliest error step")
    if step_text is None:
        return Verdict.unreadable(f"no 'Earliest error step' in the answer: {text[:200]!r}")
    if step_text.strip().rstrip(".").lower() in _NONE:
        numbered = [s for s in steps if not s.final]
        return Verdict.all_correct(numbered[-1].label if numbered else "1")
    named = _STEP_RE.fullmatch(step_text.strip().rstrip("."))
    if named is None:
        return Verdict.unreadable(f"the verifier named no step: {step_text[:80]!r}")
    label = named["label"]
    label = FINAL_LABEL if label.lower() == FINAL_LABEL.lower() else label
    index = next((s.index for s in steps if s.label == label), None)
    if index is None:
        return Verdict.unreadable(f"the verifier named step ({label}), which the answer lacks")
    segment = fields.get("error segment", "").strip()
    if len(segment) >= 2 and segment[0] == segment[-1] == '"':
        segment = segment[1:-1].strip()
    reason = fields.get("error reason", "").strip()
    if not segment or segment.lower() in _NONE or not reason or reason.lower() in _NONE:
        return Verdict.unreadable("the verifier named a step but no segment or reason")
    previous = steps[index - 1].label if index else None
    return Verdict.error(label, index, previous, segment, _lower_first(reason))


async def llm_verify(
    chat: Chat,
    question: str,
    solution: str,
    *,
    task_description: str | None = None,
    max_tokens: int = 256,
) -> tuple[Verdict, str | None]:
    """Ask the model behind ``chat``; returns the verdict and the model's text (None when the
    model was not asked: an attempt without numbered steps is unparseable as it stands)."""
    steps = split_steps(solution, strict=False)
    if not any(not s.final for s in steps):
        return Verdict.unreadable("the answer has no numbered steps"), None
    messages = llm_messages(question, solution, task_description)
    answer = await chat(messages, max_tokens)
    return parse_llm_answer(answer, steps), answer
