"""Reading a final answer out of reasoning text, normalizing it, and checking it.

Two stages: :func:`extract_span` finds the text that states the answer ("The answer is: X",
"answer is X", "the correct answer is: X", "Answer: X", "#### X", ``\\boxed{X}``; the last one
wins), and a parser for the task's :class:`~shared.tasks.base.AnswerKind` turns that span into a
canonical value. Nothing here guesses: when no span is found, or the span does not parse, the
answer is *unparsed* and counts as wrong. There is no random fallback.

A step that is only a bare answer ("(B)", "42", "True") is read as that answer even without an
answer phrase; anything longer needs the phrase.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from shared.tasks.base import AnswerKind, TaskItem

# --------------------------------------------------------------------------------------------
# Finding the answer span

_PHRASE_RE = re.compile(
    r"(?:\b(?:final\s+|correct\s+)?answer\s*(?:is\b|=|:)\s*(?:[:=]\s*)?)|(?:####\s*)",
    re.IGNORECASE,
)
_BOXED = "\\boxed"
_SENTENCE_END = re.compile(r"[.!?]\s+(?=[A-Z(])")
_BARE_RE = re.compile(
    r"^(?:\(?[A-Za-z]\)|[A-Z]|[-+−]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?%?"
    r"|yes|no|true|false)$",
    re.IGNORECASE,
)
_STRIP = " \t*`_$\"'“”"


def _boxed_spans(text: str) -> list[tuple[int, str]]:
    """``(position, content)`` of every ``\\boxed{...}`` whose braces close."""
    found: list[tuple[int, str]] = []
    start = text.find(_BOXED)
    while start != -1:
        i = start + len(_BOXED)
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        found.append((start, text[i + 1 : j]))
                        break
        start = text.find(_BOXED, start + 1)
    return found


def _clean(span: str) -> str:
    """Strip emphasis, quotes and a closing full stop around a span."""
    previous = None
    while span != previous:
        previous = span
        span = span.strip().strip(_STRIP).rstrip(".!?")
    return span


def extract_span(text: str) -> str | None:
    """The text stating the final answer, or None when ``text`` states none.

    The last answer phrase (or ``\\boxed{}``) in ``text`` wins; its span runs to the end of
    the line or of the sentence. Without any phrase, a last line that is only a bare answer
    ("(B)", "-3.5", "yes") is taken as the span.
    """
    candidates: list[tuple[int, str]] = []
    for match in _PHRASE_RE.finditer(text):
        rest = text[match.end() :].split("\n", 1)[0]
        rest = _SENTENCE_END.split(rest, maxsplit=1)[0]
        span = _clean(rest)
        if span:
            candidates.append((match.start(), span))
    for pos, content in _boxed_spans(text):
        if content.strip():
            candidates.append((pos, content.strip()))
    if candidates:
        return max(candidates, key=lambda c: c[0])[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines:
        last = _clean(lines[-1])
        if _BARE_RE.match(last):
            return last
    return None


# --------------------------------------------------------------------------------------------
# Numbers

_NUMBER_RE = re.compile(
    r"(?<![\w.])(?P<sign>[-+−])?\$?"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?(?![\d])"
)
_FRAC_RE = re.compile(r"\\d?frac\{([^{}]+)\}\{([^{}]+)\}")
_ONES = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}


def _number_words(text: str) -> Fraction | None:
    """The first run of English number words in ``text`` ("twenty-one" -> 21), or None."""
    tokens = re.findall(r"[a-z]+", text.lower().replace("-", " "))
    total = current = 0
    seen = False
    for token in tokens:
        if token in _ONES:
            current += _ONES[token]
        elif token in _TENS:
            current += _TENS[token]
        elif token in _SCALES and seen:
            scale = _SCALES[token]
            if scale == 100:
                current *= 100
            else:
                total += current * scale
                current = 0
        elif (token == "and" and seen) or (token == "minus" and not seen):
            continue
        elif seen:
            break
        else:
            continue
        seen = True
    if not seen:
        return None
    value = Fraction(total + current)
    return -value if re.search(r"\b(minus|negative)\s+[a-z]", text.lower()) else value


def parse_number(span: str) -> Fraction | None:
    """The number a span states, as an exact rational; None when there is none.

    Handles "1,234", "-3.5", "3/4", "$12", "40%", LaTeX ``\\frac{3}{4}`` and number words.
    After an "=" only the right-hand side counts ("3 + 4 = 7" is 7).
    """
    span = _FRAC_RE.sub(r"(\1)/(\2)", span)
    if "=" in span:
        span = span.rsplit("=", 1)[1]
    match = _NUMBER_RE.search(span.replace("(", " ").replace(")", " "))
    if match is None:
        return _number_words(span)
    try:
        value = Fraction(match.group("num").replace(",", ""))
        if match.group("den") is not None:
            value /= Fraction(match.group("den"))
    except (ValueError, ZeroDivisionError):
        return None
    return -value if match.group("sign") in ("-", "−") else value


def format_number(value: Fraction) -> str:
    """Canonical text of a number: "7", "-3/4"."""
    return str(value.numerator) if value.denominator == 1 else str(value)


# --------------------------------------------------------------------------------------------
# Choices, booleans, word lists, text

_LETTER_START_RE = re.compile(
    r"^(?:(?:option|choice|answer)\s*)?(?:\(([A-Za-z])\)|([A-Z])(?:[.):](?:\s|$)|$))",
    re.IGNORECASE,
)
_LETTER_ANY_RE = re.compile(r"\(([A-Z])\)")
_BOOL_RE = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_PUNCT = str.maketrans("", "", string.punctuation.replace("/", "").replace("%", ""))


def normalize_text(text: str) -> str:
    """Lower case, punctuation (but "/" and "%") removed, whitespace collapsed."""
    return " ".join(text.lower().translate(_PUNCT).split())


def _is_numeric_choice(text: str) -> bool:
    return re.fullmatch(r"[-+−]?\$?[\d,]*\.?\d+(?:\s*/\s*\d+)?\s*%?", text.strip()) is not None


def parse_choice(span: str, choices: Sequence[str]) -> str | None:
    """The letter of the option a span names: by letter ("(B)", "B.", "option b") or by the
    option's text (exact, then the longest option the span contains, then the one option
    containing the span), or by number for numeric options. None when it names none."""
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    match = _LETTER_START_RE.match(span.strip())
    if match is not None:
        # A bare capital must be followed by ".", ")", ":" or the end: "A red book" is text.
        letter = (match.group(1) or match.group(2)).upper()
        if letter in letters:
            return letter
    inline = {m.upper() for m in _LETTER_ANY_RE.findall(span) if m.upper() in letters}
    if len(inline) == 1:
        return inline.pop()
    norm_span = normalize_text(span)
    norm_choices = [normalize_text(c) for c in choices]
    if not norm_span:
        return None
    exact = [i for i, c in enumerate(norm_choices) if c and c == norm_span]
    if len(exact) == 1:
        return letters[exact[0]]
    compact = [
        i
        for i, c in enumerate(norm_choices)
        if c and c.replace(" ", "") == norm_span.replace(" ", "")
    ]
    if len(compact) == 1:  # "240%" for "240 %"
        return letters[compact[0]]
    contained = [
        i for i, c in enumerate(norm_choices) if c and re.search(rf"\b{re.escape(c)}\b", norm_span)
    ]
    if contained:
        longest = max(len(norm_choices[i]) for i in contained)
        best = {norm_choices[i] for i in contained if len(norm_choices[i]) == longest}
        if len(best) == 1:
            return letters[next(i for i in contained if len(norm_choices[i]) == longest)]
        return None
    containing = [
        i for i, c in enumerate(norm_choices) if re.search(rf"\b{re.escape(norm_span)}\b", c)
    ]
    if len(containing) == 1:
        return letters[containing[0]]
    if all(_is_numeric_choice(c) for c in choices):
        value = parse_number(span)
        if value is not None:
            equal = [i for i, c in enumerate(choices) if parse_number(c) == value]
            if len(equal) == 1:
                return letters[equal[0]]
    return None


def parse_boolean(span: str) -> bool | None:
    """yes/true -> True, no/false -> False (the first such word); None when there is none."""
    match = _BOOL_RE.search(span)
    if match is None:
        return None
    return match.group(1).lower() in ("yes", "true")


def parse_word_list(span: str) -> list[str]:
    """Words separated by spaces, commas, semicolons or "<", quotes and brackets removed,
    lower-cased."""
    words = []
    for token in re.split(r"[\s,;<]+", span):
        word = token.strip("\"'`“”‘’.:!?()[]{}*").lower()
        if word:
            words.append(word)
    return words


# --------------------------------------------------------------------------------------------
# Checking


@dataclass(frozen=True)
class Judgement:
    """The verdict on one answer. ``predicted`` is the canonical parsed answer (a letter for
    multiple choice), None when unparsed."""

    parsed: bool
    correct: bool
    predicted: str | None
    span: str | None


def canonical(kind: AnswerKind, span: str, choices: Sequence[str] | None = None) -> str | None:
    """The canonical form of an answer span for ``kind``; None when it does not parse."""
    if kind is AnswerKind.number:
        value = parse_number(span)
        return None if value is None else format_number(value)
    if kind is AnswerKind.choice:
        return parse_choice(span, choices or [])
    if kind is AnswerKind.boolean:
        flag = parse_boolean(span)
        return None if flag is None else ("yes" if flag else "no")
    if kind is AnswerKind.word_list:
        words = parse_word_list(span)
        return " ".join(words) if words else None
    text = normalize_text(span)
    return text or None


def gold_forms(item: TaskItem) -> set[str]:
    """Every canonical form that counts as correct for ``item``."""
    forms: set[str] = set()
    for gold in (item.answer, *item.aliases):
        if item.kind is AnswerKind.choice:
            form: str | None = gold.strip().strip("()").upper()
        else:
            form = canonical(item.kind, gold, item.choices)
        if form:
            forms.add(form)
    return forms


def check_answer(item: TaskItem, text: str) -> Judgement:
    """Judge a model's solution text (its steps joined by newlines) against ``item``."""
    span = extract_span(text)
    if span is None:
        return Judgement(parsed=False, correct=False, predicted=None, span=None)
    predicted = canonical(item.kind, span, item.choices)
    if predicted is None:
        return Judgement(parsed=False, correct=False, predicted=None, span=span)
    gold = gold_forms(item)
    correct = predicted in gold
    if not correct and item.kind is AnswerKind.word_list:
        # "apple, banana and cherry": a joining "and" is not a word of the list.
        without_and = " ".join(w for w in predicted.split() if w != "and")
        correct = without_and in gold and not any("and" in g.split() for g in gold)
    return Judgement(parsed=True, correct=correct, predicted=predicted, span=span)
