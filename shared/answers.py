"""Final answers in reasoning text: when a solution has ended, and what its answer is.

A solution ends with a step such as "The answer is: 12" (the few-shot convention) or, for
MATH-style problems, ``\\boxed{...}``. Matching is case-insensitive. Nothing here guesses:
when no answer can be read, :func:`extract_answer` returns None.
"""

from __future__ import annotations

import re

END_PHRASES: tuple[str, ...] = (
    "the answer is",
    "the correct answer is",
    "the final answer is",
    "\\boxed",
)
"""Phrases that mark a finished solution (compared case-insensitively)."""

_PHRASE_RE = re.compile(
    "|".join(re.escape(p) for p in END_PHRASES if not p.startswith("\\")), re.IGNORECASE
)
_BOXED = "\\boxed"
_SENTENCE_END = re.compile(r"\.\s")
# Characters stripped around an answer: separators after the phrase, markdown emphasis,
# inline-math dollars and a closing full stop.
_LEAD = " \t:=*$"
_TRAIL = " \t.*$"


def contains_end_phrase(text: str) -> bool:
    """True when ``text`` contains an end phrase such as "The answer is" or ``\\boxed``."""
    lowered = text.lower()
    return any(phrase in lowered for phrase in END_PHRASES)


def _boxed_content(text: str, start: int) -> str | None:
    """Content of the ``\\boxed{...}`` at ``start``, braces balanced; None when unclosed."""
    i = start + len(_BOXED)
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def extract_answer(text: str) -> str | None:
    """The answer stated last in ``text``, or None when there is none.

    "... The answer is: 12." gives ``"12"``; "\\boxed{\\frac{1}{2}}" gives ``"\\frac{1}{2}"``.
    The text after a phrase is read up to the end of its line or sentence (". ").
    """
    candidates: list[tuple[int, str]] = []
    for match in _PHRASE_RE.finditer(text):
        rest = _SENTENCE_END.split(text[match.end() :].split("\n", 1)[0], maxsplit=1)[0]
        answer = rest.lstrip(_LEAD).rstrip(_TRAIL).strip()
        if answer:
            candidates.append((match.start(), answer))
    start = text.find(_BOXED)
    while start != -1:
        content = _boxed_content(text, start)
        if content is not None and content.strip():
            candidates.append((start, content.strip()))
        start = text.find(_BOXED, start + 1)
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[0])[1]
