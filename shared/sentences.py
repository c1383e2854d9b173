"""The one sentence splitter of the project: documents into sentences or steps.

Used wherever text is cut at sentence boundaries: the extraction stage's boundary mode asks for
a rationale at each boundary, and task loaders turn explanations into steps. Rules, in order:

* A blank line always ends a sentence; a single line break ends one unless it wraps a
  sentence (the next line starts in lowercase, the line before does not end with punctuation,
  and neither is an equation) - so list items, equations and headings written one per line are
  steps of their own. After a colon, an inline list item (``Steps: 1. Mix``) starts one.
* ``.``, ``!``, ``?`` (and ``...``), with any closing quotes or brackets, end a sentence when
  whitespace follows and the next text starts like a sentence: a capital, a digit, a quote, an
  opening bracket, a list bullet or a currency sign. So ``3.5``, ``e.g. apples`` and ``x =
  2.5 and`` do not end one.
* A period after a known abbreviation (``Dr.``, ``e.g.``, ``U.S.``, ``Fig.``, ...), after an
  initial (``J. K. Rowling``; not ``vitamin C.``) or after a list number at the start of a line
  or sentence (``1. Mix``, ``2) Bake``) does not end a sentence.

Sentences are returned as character spans of the original text, so callers can cut exact
prefixes (``text[:start]``) and never re-join pieces.
"""

from __future__ import annotations

import re

ABBREVIATIONS: frozenset[str] = frozenset(
    """
    mr mrs ms dr prof sr jr st mt ft vs cf ca approx dept est fig eq vol pp ch
    sec gen gov sgt capt col lt rev inc ltd co corp bros jan feb mar apr jun jul aug sep sept
    oct nov dec tue tues thu thur thurs fri e.g i.e a.m p.m u.s u.k u.n e.u a.d b.c ph.d al op
    resp viz
    """.split()  # noqa: SIM905 (a word list reads better as text)
)
"""Words that end with a period without ending the sentence (lowercase, inner dots kept).
Words that are also ordinary words at the end of a sentence (``no``, ``sun``, ``sat``) are
left out; ``No.`` before a digit is handled on its own."""

_TERMINAL = re.compile(r"(?:\.\.\.|[.!?])+[\"'”’)\]]*(?=\s)")
_STARTS_SENTENCE = re.compile(r"[A-Z0-9\"'“‘(\[$£€•*\-]")
_LIST_NUMBER = re.compile(r"(?:\(?\d{1,2}[.)]|\(?[a-z][.)])")
_WORD_BEFORE = re.compile(r"(?<![A-Za-z0-9])([A-Za-z][A-Za-z.]*)\.$")
_TOKEN_BEFORE = re.compile(r"(\S+)$")
_INLINE_LIST = re.compile(r"[:;][ \t]+(\(?(?:\d{1,2}|[a-z])[.)][ \t])")


def _ends_sentence(text: str, end: int, sentence_start: int) -> bool:
    """Whether the punctuation run ending at ``end`` (exclusive) closes the sentence."""
    rest = text[end:].lstrip(" \t")
    if not rest or rest[0] in "\r\n":
        return True
    if not _STARTS_SENTENCE.match(rest):
        return False
    head = text[sentence_start:end].rstrip("\"'”’)]")
    if not head.endswith(".") or head.endswith(".."):
        return True
    word = _WORD_BEFORE.search(head)
    if word is not None:
        token = word.group(1).lower()
        if token in ABBREVIATIONS or (token == "no" and rest[0].isdigit()):
            return False
        if len(word.group(1)) == 1 and word.group(1).isupper() and _initial(head, word.start()):
            return False
        if "." in token:  # a dotted acronym not in the list (e.g. "U.S.A")
            return not all(len(p) == 1 for p in token.split("."))
    last = _TOKEN_BEFORE.search(head)
    if last is not None and _LIST_NUMBER.fullmatch(last.group(1)):
        before = head[: last.start()].rstrip()
        if not before or before[-1] in ":;":  # "1." opening a sentence or a list: a marker
            return False
    return True


def _initial(head: str, at: int) -> bool:
    """A single capital at ``head[at]`` is an initial when it opens the sentence or follows a
    capitalized word or another initial (``P. G. Wodehouse``, ``George W. Bush``), not when
    it follows a lowercase word (``the letter T.``, ``vitamin C.``)."""
    before = head[:at].split()
    return not before or before[-1][:1].isupper()


def _split_line_breaks(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Cut ``text[start:end]`` at blank lines, and at line breaks unless the next line starts
    in lowercase and continues a sentence (neither line is an equation, the first does not end
    with punctuation)."""
    pieces: list[tuple[int, int]] = []
    pos = start
    for m in re.finditer(r"[ \t]*\r?\n\s*", text[start:end]):
        a, b = start + m.start(), start + m.end()
        blank = m.group().count("\n") >= 2
        line = text[pos:a].rstrip()
        nxt = text[b:end].split("\n", 1)[0]
        wrapped = nxt[:1].islower() and "=" not in line + nxt and line[-1:] not in ".!?:;"
        if blank or not wrapped:
            pieces.append((pos, a))
            pos = b
    pieces.append((pos, end))
    return pieces


def _inline_list_starts(text: str, start: int, end: int) -> list[int]:
    """Where an inline list item begins after a colon (``Steps: 1. Mix ...``)."""
    return [m.start(1) for m in _INLINE_LIST.finditer(text, start, end)]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence of ``text``, in order, without surrounding whitespace;
    only whitespace lies between two spans."""
    spans: list[tuple[int, int]] = []
    for line_start, line_end in _split_line_breaks(text, 0, len(text)):
        ends = {m.end() for m in _TERMINAL.finditer(text, line_start, line_end)}
        items = set(_inline_list_starts(text, line_start, line_end))
        start = line_start
        for cut in sorted(ends | items):
            if cut >= line_end:
                break
            if cut > start and (cut in items or _ends_sentence(text, cut, start)):
                spans.append((start, cut))
                start = cut
        spans.append((start, line_end))
    out: list[tuple[int, int]] = []
    for start, end in spans:
        a, b = start, end
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            out.append((a, b))
    return out


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (see :func:`sentence_spans`)."""
    return [text[a:b] for a, b in sentence_spans(text)]
