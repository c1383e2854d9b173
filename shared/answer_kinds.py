"""Answer kinds: what sort of answer a question expects, told from its text.

The rule (:func:`detect_answer_kind`), first match wins:

1. lettered options, ``(A) ...`` and ``(B) ...`` (or ``A) ...``/``A. ...`` at line starts)
   -> ``choice``;
2. an explicit "yes or no" / "true or false" (also "yes/no", "true/false") -> ``boolean``;
3. "sort ... words" or "alphabetical order" -> ``word_list``;
4. the question sentence (the last one ending in "?", else the last sentence, leading "So," or
   "Q:" dropped) opens with "how many/much/old/long/far/...", "what is the total/sum/
   product/...", "what number", or "what is/calculate/compute/evaluate/find" followed by an
   arithmetic expression -> ``number``;
5. it opens with an auxiliary verb (is, are, was, does, did, can, will, should, has, ...)
   -> ``boolean``;
6. "how many/much" anywhere in it, or the whole question being an arithmetic expression
   ("(3 + 4) * 2 =") -> ``number``;
7. anything else -> ``text``.

Pure standard library: the gateway, the model service and the task code all use it.
"""

from __future__ import annotations

import re
from enum import StrEnum


class AnswerKind(StrEnum):
    """How an answer is read from text and compared with the gold one."""

    number = "number"
    """Integers, decimals, "1,234", negatives, fractions "3/4", number words up to the
    hundreds; compared exactly as rationals."""
    choice = "choice"
    """Multiple choice: a letter "(B)" or the text of one option."""
    boolean = "boolean"
    """Yes/no or true/false (yes == true, no == false)."""
    word_list = "word_list"
    """An ordered list of words, separated by spaces and/or commas; compared case-folded."""
    text = "text"
    """Free text, compared after lower-casing and dropping punctuation and extra spaces."""


# -- options ----------------------------------------------------------------------------------

_LINE_OPTION_RE = re.compile(r"^[ \t]*\(?([A-Za-z])[).:][ \t]+(\S.*)$", re.MULTILINE)
_INLINE_OPTION_RE = re.compile(r"(?<!\S)\(([A-Za-z])\)[ \t]*(\S[^(\n]*)")


def question_options(question: str) -> list[str]:
    """The texts of the lettered options of a question ("(A) 5" ... ), in letter order; []
    when it lists fewer than two options lettered from A."""
    found: dict[str, str] = {}
    for pattern in (_LINE_OPTION_RE, _INLINE_OPTION_RE):
        for match in pattern.finditer(question):
            found.setdefault(match.group(1).upper(), match.group(2).strip())
        if "A" in found and "B" in found:
            break
        found.clear()
    options = []
    for i in range(len(found)):
        letter = chr(ord("A") + i)
        if letter not in found:
            break
        options.append(found[letter])
    return options if len(options) >= 2 else []


# -- the rule ---------------------------------------------------------------------------------

_BOOLEAN_MARKER_RE = re.compile(
    r"\b(?:yes\s*(?:or|/)\s*no|no\s*(?:or|/)\s*yes|true\s*(?:or|/)\s*false|false\s*(?:or|/)\s*true)\b",
    re.IGNORECASE,
)
_WORD_LIST_RE = re.compile(
    r"\b(?:sort|alphabeti[sz]e)\b[^.?!]*\bwords?\b|\balphabetical order\b", re.IGNORECASE
)
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|\n+")
_LEAD_RE = re.compile(
    r"^(?:(?:q|question)\s*:\s*|(?:so|then|and|now|but|well|ok|okay|finally|altogether)\b,?\s+)+",
    re.IGNORECASE,
)
_NUMBER_OPENER_RE = re.compile(
    r"^(?:how\s+(?:many|much|old|long|far|fast|tall|high|heavy|deep|wide|often|big|large)\b"
    r"|what\s+(?:is|was|will\s+be)\s+the\s+(?:total|sum|product|difference|quotient|remainder"
    r"|average|mean|number|value|cost|price|area|perimeter|result|amount)\b"
    r"|what\s+number\b)",
    re.IGNORECASE,
)
_OPERATION = r"\d\s*(?:[-+*/×÷^x]|times|plus|minus|divided\s+by|multiplied\s+by|over)\s*[-(]?\s*\d"
_COMPUTE_RE = re.compile(
    rf"^(?:what\s*(?:is|'s)|calculate|compute|evaluate|find|solve|work\s+out)\b.*{_OPERATION}",
    re.IGNORECASE,
)
_AUXILIARY_RE = re.compile(
    r"^(?:is|are|was|were|am|do|does|did|can|could|will|would|should|shall|has|have|had|may"
    r"|might|must|isn't|aren't|doesn't|don't|didn't|can't|won't)\b",
    re.IGNORECASE,
)
_HOW_MANY_RE = re.compile(r"\bhow\s+(?:many|much)\b", re.IGNORECASE)
_EXPRESSION_RE = re.compile(r"^[\d\s()+\-*/×÷^.,=?]+$")
_OPERATOR_RE = re.compile(r"\d\s*[-+*/×÷^]\s*[-(]?\s*\d")


def question_sentence(question: str) -> str:
    """The sentence that asks: the last one ending in "?" (else the last one), with a leading
    "Q:", "So," or the like dropped."""
    sentences = [s.strip() for s in _SENTENCE_SPLIT_RE.split(question) if s.strip()]
    if not sentences:
        return ""
    asking = [s for s in sentences if s.endswith("?")]
    sentence = asking[-1] if asking else sentences[-1]
    return _LEAD_RE.sub("", sentence)


def _is_expression(text: str) -> bool:
    return bool(_EXPRESSION_RE.match(text)) and bool(_OPERATOR_RE.search(text))


def detect_answer_kind(question: str) -> AnswerKind:
    """The kind of answer ``question`` expects, by the rule in this module's docstring."""
    if question_options(question):
        return AnswerKind.choice
    if _BOOLEAN_MARKER_RE.search(question):
        return AnswerKind.boolean
    if _WORD_LIST_RE.search(question):
        return AnswerKind.word_list
    sentence = question_sentence(question)
    if _NUMBER_OPENER_RE.match(sentence) or _COMPUTE_RE.match(sentence):
        return AnswerKind.number
    if _AUXILIARY_RE.match(sentence):
        return AnswerKind.boolean
    if _HOW_MANY_RE.search(sentence) or _is_expression(question.strip()):
        return AnswerKind.number
    return AnswerKind.text


# -- the kind of a stated answer --------------------------------------------------------------

_NUMBER_ANSWER_RE = re.compile(
    r"^[-+−]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?\s*%?$|^[-+−]?\.\d+$"
)
_BOOLEAN_ANSWER_RE = re.compile(r"^(?:yes|no|true|false)$", re.IGNORECASE)
_CHOICE_ANSWER_RE = re.compile(r"^(?:\([A-Z]\)(?:\s.*)?|[A-Z])$", re.DOTALL)


def classify_answer(answer: str) -> AnswerKind:
    """The kind a stated answer looks like: ``number`` ("12", "-3.5", "3/4", "$12"),
    ``boolean`` (yes/no/true/false), ``choice`` ("(B)", "(B) 270", "B"), else ``text`` (a
    word list cannot be told from free text)."""
    span = answer.strip().rstrip(".").strip()
    if _NUMBER_ANSWER_RE.match(span):
        return AnswerKind.number
    if _BOOLEAN_ANSWER_RE.match(span):
        return AnswerKind.boolean
    if _CHOICE_ANSWER_RE.match(span):
        return AnswerKind.choice
    return AnswerKind.text


def same_family(a: AnswerKind, b: AnswerKind) -> bool:
    """Kinds whose answers look alike: a word list reads as free text."""

    def family(kind: AnswerKind) -> AnswerKind:
        return AnswerKind.text if kind is AnswerKind.word_list else kind

    return family(a) is family(b)
