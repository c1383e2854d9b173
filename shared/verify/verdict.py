"""The verdict of a verifier and the one feedback sentence that scripted and LLM verifiers share.

TriPosT's feedback names the first incorrect step, the incorrect part of it and why::

    Step (1) to (3) are correct. In step (4) the part "(8 + -1) = 6" is incorrect. This is
    because there is a calculation error, since (8 + -1) is 7, not 6.

or, when nothing is wrong::

    Step (1) to (4) are correct. The final response is also correct.

An attempt that cannot be read gets :data:`ERROR_MARKER` as its feedback; such trajectories are
dropped from self-improvement data. :func:`parse_feedback` reads a sentence back (a model
trained on these sentences writes them itself).
"""

from __future__ import annotations

import re

from pydantic import Field

from shared.schemas import Strict

ERROR_MARKER = "[ERROR]"
"""The feedback of an attempt (or of an LLM verifier's answer) that could not be parsed."""

FINAL_LABEL = "Final response"


class Verdict(Strict):
    """What a verifier found in one attempted rationale."""

    correct: bool = Field(description="Every step and the final response are correct.")
    unparseable: bool = Field(
        default=False,
        description="The attempt, or the LLM verifier's answer, could not be read; the "
        "feedback is the error marker and the trajectory is dropped.",
    )
    step: str | None = Field(
        default=None,
        description='Label of the first incorrect step: "3", "3.1" or "Final response".',
    )
    step_index: int | None = Field(
        default=None,
        description="0-based position of that step among the attempt's steps; the steps "
        "before it are correct.",
    )
    segment: str | None = Field(default=None, description="The incorrect part of that step.")
    reason: str | None = Field(default=None, description="Why it is incorrect.")
    feedback: str = Field(description="The feedback sentence (or the error marker).")
    detail: str | None = Field(
        default=None, description="Why the attempt could not be read (unparseable only)."
    )

    @classmethod
    def all_correct(cls, last_label: str) -> Verdict:
        """Everything is right; ``last_label`` is the last numbered step ("4")."""
        return cls(correct=True, feedback=all_correct_feedback(last_label))

    @classmethod
    def error(
        cls,
        step: str,
        step_index: int | None,
        previous: str | None,
        segment: str,
        reason: str,
    ) -> Verdict:
        """Step ``step`` (at ``step_index``) is the first wrong one; ``previous`` is the label
        of the step before it (None for the first step)."""
        reason = clean_reason(reason)
        return cls(
            correct=False,
            step=step,
            step_index=step_index,
            segment=segment,
            reason=reason,
            feedback=error_feedback(step, previous, segment, reason),
        )

    @classmethod
    def unreadable(cls, detail: str) -> Verdict:
        return cls(correct=False, unparseable=True, feedback=ERROR_MARKER, detail=detail)


def clean_reason(reason: str) -> str:
    """One clause to follow "This is because": trimmed, no final period."""
    reason = " ".join(reason.split())
    return reason[:-1].rstrip() if reason.endswith(".") else reason


def correct_steps(previous: str | None) -> str:
    """ "Step (1) to (k) are correct." ("" when no step precedes)."""
    if previous is None:
        return ""
    if previous == "1":
        return "Step (1) is correct."
    return f"Step (1) to ({previous}) are correct."


def all_correct_feedback(last_label: str) -> str:
    return f"{correct_steps(last_label)} The final response is also correct.".lstrip()


def error_feedback(step: str, previous: str | None, segment: str, reason: str) -> str:
    where = f'In step ({step}) the part "{segment}" is incorrect.'
    because = f"This is because {clean_reason(reason)}."
    return " ".join(s for s in (correct_steps(previous), where, because) if s)


_PREFIX = r"(?:Step \(1\)(?: to (?:step )?\((?P<prev>[^()]+)\))? (?:is|are) correct\.\s*)?"
_CORRECT_RE = re.compile(_PREFIX + r"The final response is also correct\.?", re.IGNORECASE)
_ERROR_RE = re.compile(
    _PREFIX + r'In step \((?P<step>[^()]+)\),? the part "(?P<segment>.*?)" is incorrect\.\s*'
    r"(?:This is because (?P<reason>.*?)\.?)?",
    re.IGNORECASE | re.DOTALL,
)


def parse_feedback(text: str, labels: list[str] | None = None) -> Verdict:
    """The verdict a feedback sentence states. ``labels`` (the attempt's step labels, in
    order) fill in ``step_index``; without them it is None. The error marker, or a text that
    is not such a sentence, gives an unparseable verdict."""
    text = " ".join(text.split())
    if text == ERROR_MARKER:
        return Verdict.unreadable("the feedback is the error marker")
    if (m := _CORRECT_RE.fullmatch(text)) is not None:
        return Verdict(correct=True, feedback=text)
    if (m := _ERROR_RE.fullmatch(text)) is not None and m.group("reason"):
        step = m.group("step").strip()
        if step.lower() == FINAL_LABEL.lower():
            step = FINAL_LABEL
        index = labels.index(step) if labels and step in labels else None
        return Verdict.error(step, index, m.group("prev"), m["segment"], m["reason"])
    return Verdict.unreadable(f"not a feedback sentence: {text[:200]!r}")
