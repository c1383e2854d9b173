"""Text utilities of the pipeline: prefilter normalization, rationale markup, similarity, the
triples of an extraction, and the sentence boundaries of boundary mode (cut by the project's
one splitter, :mod:`shared.sentences`).

An extraction is the agent's copy of a document with ``<BOT>rationale<EOT>`` inserted. The
copy may differ slightly from the document (the model is not a perfect copier); triples are
cut from the ORIGINAL document at the places the rationales were inserted, found by aligning
the copy (rationales removed) to the original with Levenshtein opcodes. So ``preceding`` and
``following`` are always exact spans of the input: ``preceding + following`` of a triple is
the input's prefix up to the next rationale.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

from shared.sentences import sentence_spans

BOT, EOT = "<BOT>", "<EOT>"

# A stopword list written for this project (the common English function words: articles,
# pronouns, auxiliaries, prepositions, conjunctions), in the apostrophe-free forms that remain
# after punctuation is removed.
STOPWORDS: frozenset[str] = frozenset(
    """
    a about above after again against all am an and any are arent as at be because been before
    being below between both but by can cannot cant could couldnt did didnt do does doesnt doing
    dont down during each few for from further had hadnt has hasnt have havent having he hed
    hell hes her here heres hers herself him himself his how hows i id ill im ive if in into is
    isnt it its itself lets me more most mustnt my myself no nor not of off on once only or other
    ought our ours ourselves out over own same shant she shed shell shes should shouldnt so some
    such than that thats the their theirs them themselves then there theres these they theyd
    theyll theyre theyve this those through to too under until up very was wasnt we wed well
    were weve werent what whats when whens where wheres which while who whos whom why whys will
    with wont would wouldnt you youd youll youre youve your yours yourself yourselves s t d ll
    m o re ve y just now also
    """.split()  # noqa: SIM905 (a word list is easier to read and edit as text)
)

_PUNCT = str.maketrans("", "", string.punctuation + "“”‘’«»—–…")


def normalize(text: str) -> str:
    """Lowercase, remove punctuation and stopwords (the original prefilter's normalization)."""
    words = text.lower().translate(_PUNCT).split()
    return " ".join(w for w in words if w not in STOPWORDS)


def similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / length of the longer text, on whitespace-normalized texts
    (removing a rationale leaves a double space that should not count)."""
    a2, b2 = " ".join(a.split()), " ".join(b.split())
    if not a2 and not b2:
        return 1.0
    return float(Levenshtein.normalized_similarity(a2, b2))


_SPAN = re.compile(re.escape(BOT) + r"(.*?)" + re.escape(EOT), re.DOTALL)


@dataclass(frozen=True)
class Markup:
    """An extraction split into its plain text and its rationales."""

    text: str
    """The output with every rationale (and stray marker) removed."""
    rationales: list[tuple[int, str]]
    """(position in ``text``, rationale) in order; unterminated ones are left out."""


def parse_markup(output: str) -> Markup:
    """Find ``<BOT>...<EOT>`` spans. An unterminated ``<BOT>`` (generation cut off) drops the
    rest of the output; a stray ``<EOT>`` is removed."""
    pieces: list[str] = []
    rationales: list[tuple[int, str]] = []
    pos = 0
    length = 0
    for m in _SPAN.finditer(output):
        before = output[pos : m.start()]
        before = before.replace(EOT, "")
        if BOT in before:  # a BOT inside plain text: a nested/garbled span; cut there
            before = before[: before.index(BOT)]
        pieces.append(before)
        length += len(before)
        rationales.append((length, m.group(1).strip()))
        pos = m.end()
    tail = output[pos:].replace(EOT, "")
    if BOT in tail:
        tail = tail[: tail.index(BOT)]
    pieces.append(tail)
    return Markup("".join(pieces), rationales)


def map_positions(copy: str, original: str, positions: list[int]) -> list[int]:
    """Map character positions in ``copy`` to positions in ``original`` through a Levenshtein
    alignment; the result is non-decreasing."""
    ops = Levenshtein.opcodes(copy, original)
    out: list[int] = []
    last = 0
    for p in positions:
        mapped = len(original)
        for op in ops:
            if op.src_start <= p < op.src_end or (p == op.src_end == op.src_start):
                offset = p - op.src_start
                if op.tag == "equal":
                    mapped = op.dest_start + offset
                elif op.tag == "replace":
                    mapped = op.dest_start + min(offset, op.dest_end - op.dest_start)
                else:  # delete (text only in the copy) or insert at p (text only in original)
                    mapped = op.dest_start
                break
        last = max(last, mapped)
        out.append(last)
    return out


@dataclass(frozen=True)
class Triple:
    preceding: str
    rationale: str
    following: str
    start: int
    """Where the rationale sits in the original (= len(preceding))."""
    end: int
    """Where ``following`` ends in the original."""


def triples(original: str, markup: Markup) -> list[Triple]:
    """One triple per rationale: the original before it, the rationale, and the original up to
    the next rationale. Triples with an empty field are dropped."""
    if not markup.rationales:
        return []
    places = map_positions(markup.text, original, [p for p, _ in markup.rationales])
    out: list[Triple] = []
    for i, (start, (_, rationale)) in enumerate(zip(places, markup.rationales, strict=True)):
        end = places[i + 1] if i + 1 < len(places) else len(original)
        preceding, following = original[:start], original[start:end]
        if preceding.strip() and rationale.strip() and following.strip():
            out.append(Triple(preceding, rationale.strip(), following, start, end))
    return out


# --------------------------------------------------------------------------------------------
# Boundary mode: sentences, boundaries, and the agent's answer at one boundary


@dataclass(frozen=True)
class Boundary:
    """The place before sentence ``index`` + 1 of a document: ``text[:start]`` is the text so
    far, ``text[start:end]`` the next sentence."""

    index: int
    """0 for the boundary after the first sentence."""
    start: int
    end: int


def boundaries(text: str) -> list[Boundary]:
    """Every sentence boundary of ``text`` (none for a text of one sentence), cut by the
    project's one splitter (:mod:`shared.sentences`)."""
    spans = sentence_spans(text)
    return [Boundary(i, a, b) for i, (a, b) in enumerate(spans[1:])]


_LABEL = re.compile(r"^\s*(?:hidden thought|thought|rationale|reason|answer)\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'“”‘’"


def clean_rationale(answer: str, *, truncated: bool = False) -> str:
    """The rationale in an agent's answer at a boundary: its first paragraph, without a label
    (``Thought:``), markers or wrapping quotes; when generation was cut off (``truncated``), the
    unfinished last sentence is dropped if a finished one comes before it."""
    text = answer.replace(BOT, " ").replace(EOT, " ").strip()
    text = re.split(r"\n\s*\n|\n", text, maxsplit=1)[0].strip() if text else ""
    text = _LABEL.sub("", text).strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    if truncated and text and text[-1] not in ".!?":
        spans = sentence_spans(text)
        if len(spans) > 1:
            text = text[: spans[-2][1]]
    return " ".join(text.split())


def _comparable(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .!?;:,\"'")


MIN_CONTENT_WORDS = 3
"""A sentence needs this many content words before word overlap can call an answer a repeat
of it (two shared words say little)."""


def content_recall(answer: str, sentence: str) -> float:
    """The share of ``sentence``'s content words (:func:`normalize`: no case, punctuation or
    stopwords) that ``answer`` contains; 0 for a sentence without them."""
    words = set(normalize(sentence).split())
    return len(words & set(normalize(answer).split())) / len(words) if words else 0.0


def repeats(answer: str, sentence: str, *, max_similarity: float) -> bool:
    """Whether ``answer`` repeats ``sentence``: contains it, is at least ``max_similarity``
    similar to it (Levenshtein; case, spacing and end punctuation ignored), or holds at least
    that share of its content words (a restatement in another order: "If you drop out, you
    cannot earn a degree" for "You cannot earn a degree if you drop out")."""
    a, s = _comparable(answer), _comparable(sentence)
    if not a or not s:
        return False
    if s in a or similarity(a, s) >= max_similarity:
        return True
    enough = len(set(normalize(sentence).split())) >= MIN_CONTENT_WORDS
    return enough and content_recall(answer, sentence) >= max_similarity
