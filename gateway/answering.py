"""What the search loop does about answers, apart from the loop itself:

- which few-shot demos a request gets (:func:`choose_few_shot`): the caller's as given, else
  the built-in set of the answer kind, which the request names or the question's text tells
  (:func:`shared.answer_kinds.detect_answer_kind`);
- candidates that repeat a step of the trajectory (:func:`find_repeats`), which are dropped
  before scoring, and the higher temperature of the one retry when every candidate repeats;
- the answer-kind check (:func:`prefer_answer_kind`): a chosen answer that does not read as
  the expected kind ("no" to "how many") gives way to the best-scored candidate of the same
  step whose answer does.

No I/O here; :mod:`gateway.loop` calls these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.answer_kinds import (
    AnswerKind,
    classify_answer,
    detect_answer_kind,
    question_options,
    same_family,
)
from shared.answers import extract_answer
from shared.fewshot import answer_prefix, default_demos
from shared.gateway_schemas import AnswerKindSource, CandidateTrace, FewShotSource
from shared.schemas import Demo
from shared.tasks.answers import parse_boolean, parse_choice, parse_number

RETRY_TEMPERATURE_RAISE = 0.5
"""How much the temperature goes up for the retry when every candidate repeats."""
MIN_RETRY_TEMPERATURE = 1.0
"""The retry samples at least this hot (so greedy decoding, at 0, gets real samples)."""
MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class FewShot:
    """The demos of one request and what they were chosen for."""

    demos: list[Demo]
    answer_kind: AnswerKind
    answer_kind_source: AnswerKindSource
    source: FewShotSource
    demo_kind: AnswerKind | None
    """The kind the demos' answers read as; None without demos or when they mix kinds."""
    answer_prefix: str
    """How the demos' answer step opens; the forced answer step opens the same way."""
    options: list[str] = field(default_factory=list)
    """The question's lettered options (choice questions)."""
    warnings: list[str] = field(default_factory=list)


def demo_answer_kinds(demos: Sequence[Demo]) -> set[AnswerKind]:
    """The kinds the demos' final answers read as (a word list reads as text)."""
    answers = (extract_answer(demo.steps[-1]) for demo in demos)
    return {classify_answer(a) for a in answers if a is not None}


def choose_few_shot(
    question: str, few_shot: Sequence[Demo] | None, answer_kind: AnswerKind | None
) -> FewShot:
    """The demos of a request. ``few_shot`` from the caller is used as given; when its answers
    read as another kind than the expected one, a warning says so."""
    kind = answer_kind or detect_answer_kind(question)
    kind_source: AnswerKindSource = "request" if answer_kind is not None else "detected"
    # The answer check reads a choice by the question's options.
    options = question_options(question) if kind is AnswerKind.choice else []
    if few_shot is None:
        demos = default_demos(kind)
        return FewShot(
            demos, kind, kind_source, "default", kind, answer_prefix(demos), options=options
        )
    demos = list(few_shot)
    stated = demo_answer_kinds(demos)
    demo_kind = next(iter(stated)) if len(stated) == 1 else None
    warnings = []
    odd = sorted(k.value for k in stated if not same_family(k, kind))
    if odd:
        warnings.append(
            f"few_shot: the demos' answers read as {', '.join(odd)}, but the question expects "
            f"{kind.value} ({kind_source}); the demos were used as given"
        )
    return FewShot(
        demos,
        kind,
        kind_source,
        "request",
        demo_kind,
        answer_prefix(demos),
        options=options,
        warnings=warnings,
    )


# -- repeated steps ---------------------------------------------------------------------------


def step_key(text: str) -> str:
    """The form in which a candidate is compared with the trajectory's steps: whitespace runs
    collapsed, case folded, a final full stop dropped."""
    return " ".join(text.casefold().split()).rstrip(".").rstrip()


def find_repeats(candidates: Sequence[str], steps: Sequence[str]) -> list[int | None]:
    """Per candidate, the index of the (latest) trajectory step it repeats, or None."""
    index: dict[str, int] = {}
    for i, step in enumerate(steps):
        key = step_key(step)
        if key:
            index[key] = i
    return [index.get(step_key(c)) if step_key(c) else None for c in candidates]


def all_repeat(candidates: Sequence[str], repeat_of: Sequence[int | None]) -> bool:
    """Every non-empty candidate repeats the trajectory, and there is at least one."""
    non_empty = [r for c, r in zip(candidates, repeat_of, strict=True) if c.strip()]
    return bool(non_empty) and all(r is not None for r in non_empty)


def retry_temperature(temperature: float) -> float:
    """The temperature of the retry after every candidate repeated the trajectory."""
    return min(MAX_TEMPERATURE, max(MIN_RETRY_TEMPERATURE, temperature + RETRY_TEMPERATURE_RAISE))


# -- the answer-kind check --------------------------------------------------------------------


def answer_fits(answer: str, kind: AnswerKind, options: Sequence[str] = ()) -> bool:
    """Whether a stated answer reads as ``kind``: a number, yes/no, one of the options (by
    letter or text; any letter when the options are unknown). Text and word lists always fit."""
    if kind is AnswerKind.number:
        return parse_number(answer) is not None
    if kind is AnswerKind.boolean:
        return parse_boolean(answer) is not None
    if kind is AnswerKind.choice:
        if options:
            return parse_choice(answer, options) is not None
        return classify_answer(answer) is AnswerKind.choice
    return bool(answer.strip())


def prefer_answer_kind(
    candidates: Sequence[CandidateTrace],
    chosen: int,
    kind: AnswerKind,
    options: Sequence[str] = (),
) -> int | None:
    """The candidate to keep instead of ``chosen`` when the answer ``chosen`` states does not
    read as ``kind``: the best-scored other candidate (first on ties; the first one when the
    heuristic does not score) that is neither a duplicate nor a repeat and states an answer of
    ``kind``. None keeps ``chosen`` (its answer fits, it states none, or no other does)."""
    answer = extract_answer(candidates[chosen].text)
    if answer is None or answer_fits(answer, kind, options):
        return None
    best: int | None = None
    best_score = -math.inf
    for i, cand in enumerate(candidates):
        if i == chosen or cand.duplicate_of is not None or cand.repeat_of is not None:
            continue
        stated = extract_answer(cand.text)
        if stated is None or not answer_fits(stated, kind, options):
            continue
        score = -math.inf if cand.score is None or math.isnan(cand.score) else cand.score
        if best is None or score > best_score:
            best, best_score = i, score
    return best
