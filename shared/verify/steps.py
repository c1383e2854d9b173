"""Reading a TriPosT rationale into labelled steps.

One step per line, each opening with its label: "(1) ...", nested "(3.1) ...", and last
"(Final response) ...". Labels follow outline numbering: after (3) come (3.1) or (4); after
(3.2) come (3.2.1), (3.3) or (4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.verify.verdict import FINAL_LABEL

_LABEL_RE = re.compile(r"\((\d+(?:\.\d+)*|final response)\)\s*(.*)", re.IGNORECASE | re.DOTALL)


class Unparseable(ValueError):
    """The attempt does not follow the task's rationale format (its verdict: the error
    marker)."""


class QuestionError(ValueError):
    """The question is not one of the verifier's task (a bad request, not a bad attempt)."""


@dataclass(frozen=True)
class Step:
    label: str
    """ "1", "3.1" or "Final response"."""
    text: str
    """The step without its label, every run of whitespace one space."""
    index: int
    """Position among the attempt's steps."""

    @property
    def final(self) -> bool:
        return self.label == FINAL_LABEL

    @property
    def path(self) -> tuple[int, ...]:
        """(3, 1) for "3.1"; () for the final response."""
        return () if self.final else tuple(int(p) for p in self.label.split("."))


def split_steps(solution: str, *, strict: bool = True) -> list[Step]:
    """The labelled steps of ``solution``, blank lines skipped.

    ``strict``: every line must open with a label (else :class:`Unparseable`). Otherwise lines
    before the first label are dropped (a preamble such as "Let's think step by step.") and an
    unlabelled line continues the step above it.
    """
    labels: list[str] = []
    texts: list[str] = []
    for raw in solution.splitlines():
        line = raw.strip()
        if not line:
            continue
        match = _LABEL_RE.fullmatch(line)
        if match is None:
            if strict:
                raise Unparseable(f"a line without a step label: {line[:80]!r}")
            if texts:
                texts[-1] = " ".join(f"{texts[-1]} {line}".split())
            continue
        label = match.group(1)
        labels.append(FINAL_LABEL if label.lower() == FINAL_LABEL.lower() else label)
        texts.append(" ".join(match.group(2).split()))
    return [Step(label, text, i) for i, (label, text) in enumerate(zip(labels, texts, strict=True))]


def _follows(previous: tuple[int, ...], path: tuple[int, ...]) -> bool:
    """Outline numbering: a first child, or the next sibling of the step or an ancestor."""
    if path == (*previous, 1):
        return True
    return any(path == (*previous[:i], previous[i] + 1) for i in range(len(previous)))


def check_outline(steps: list[Step], *, nested: bool) -> None:
    """Labels in outline order starting at (1), the final response last and only there;
    ``nested=False`` allows only top-level labels. Raises :class:`Unparseable`."""
    if not steps:
        raise Unparseable("no steps")
    if not steps[-1].final:
        raise Unparseable("the last step is not the final response")
    if len(steps) < 2:
        raise Unparseable("no step before the final response")
    previous: tuple[int, ...] = ()
    for step in steps[:-1]:
        if step.final:
            raise Unparseable("the final response is not the last step")
        path = step.path
        if not nested and len(path) > 1:
            raise Unparseable(f"step ({step.label}): this task has no nested steps")
        ok = path == (1,) if not previous else _follows(previous, path)
        if not ok:
            raise Unparseable(f"step ({step.label}) is out of order")
        previous = path
