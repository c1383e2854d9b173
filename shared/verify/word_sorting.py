"""The scripted verifier of word sorting rationales (TriPosT's format).

An attempt reads (see :mod:`shared.tasks.word_sorting`)::

    (1) The first letter: "pear"="p" (16), "apple"="a" (1), "plum"="p" (16).
    (2) We now have: (1) "apple" < (16) ["pear" ? "plum"].
    (3) Now sort this subpart ["pear" ? "plum"] by looking at their second letters: ...
    (3.1) We now have: (5) "pear" < (12) "plum".
    (3.2) Hence, we have "pear" < "plum".
    (4) Hence, we have "apple" < "pear" < "plum".
    (Final response) So the answer is: apple pear plum.

Each list of words being sorted (the whole list, then every subpart) is checked in order:

1. its letters step names each of its words once, with the word's n-th letter ("(end)" past
   the last one) and that letter's index in the alphabet (0 for "(end)");
2. the next step ("We now have") orders the words by those numbers, tied words grouped in
   brackets;
3. each group of tied words is sorted as a subpart, by the next letter, in nested steps; when
   all the words of a subpart tie, the next letter may instead be read in place (a "Now sort"
   step without nested steps, then "We now have" again);
4. "Hence, we have" lists the words in sorted order, once every subpart is sorted;

and the final response states the whole sorted list. Subparts may be sorted in any order, and
words inside a bracket in any order. An attempt whose steps cannot be read is unparseable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.tasks.word_sorting import ordinal, sortable
from shared.verify.steps import QuestionError, Step, Unparseable, check_outline, split_steps
from shared.verify.verdict import Verdict

_LETTERS_RE = re.compile(r"The (?P<ordinal>[\w-]+) letters?: (?P<entries>.+?)\.?", re.DOTALL)
_SUBPART_RE = re.compile(
    r"Now sort this subpart (?P<bracket>\[[^\]]*\]) by looking at their (?P<ordinal>[\w-]+) "
    r"letters: (?P<entries>.+?)\.?",
    re.DOTALL,
)
_GROUPS_RE = re.compile(r"We now have: (?P<groups>.+?)\.?", re.DOTALL)
_HENCE_RE = re.compile(r"Hence, we have (?P<chain>.+?)\.?", re.DOTALL)
_ANSWER_RE = re.compile(r"the answer is:? *(?P<answer>.+?) *\.?$", re.IGNORECASE | re.DOTALL)
_ENTRY_RE = re.compile(r'"(?P<word>[^"]*)" ?= ?(?:"(?P<letter>[^"]*)"|\(end\)) ?\((?P<num>\d+)\)')
_GROUP_RE = re.compile(r'\((?P<num>\d+)\) ?(?:"(?P<word>[^"]*)"|\[(?P<list>[^\]]*)\])')
_QUOTED_RE = re.compile(r'"(?P<word>[^"]*)"')
_LIST_RE = re.compile(r"List: *(?P<words>.+)", re.IGNORECASE)
_ORDINALS = {ordinal(n): n for n in range(100)}


@dataclass(frozen=True)
class _Entry:
    word: str
    letter: str | None
    number: int
    text: str


@dataclass(frozen=True)
class _Group:
    number: int
    words: list[str]
    text: str
    bracketed: bool


@dataclass
class _Node:
    step: Step
    kind: str  # letters | subpart | groups | hence | answer
    text: str = ""
    """The part of the step an error in it is reported on (entries, groups, chain, answer)."""
    position: int = 0
    """The letter the step reads (letters, subpart)."""
    ordinal_text: str = ""
    bracket: list[str] = field(default_factory=list)
    bracket_text: str = ""
    entries: list[_Entry] = field(default_factory=list)
    groups: list[_Group] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    """The chain of "Hence, we have", or the words of the final response."""
    children: list[_Node] = field(default_factory=list)


class _Flag(Exception):
    def __init__(self, step: Step, segment: str, reason: str) -> None:
        super().__init__(reason)
        self.step, self.segment, self.reason = step, segment, reason


def read_words(question: str) -> list[str]:
    """The words of a question ending in "List: w1 w2 ..."; :class:`QuestionError` when there
    is no list, or its words are not distinct words of letters a-z."""
    lines = [line for line in question.strip().splitlines() if line.strip()]
    match = _LIST_RE.search(lines[-1]) if lines else None
    if match is None:
        raise QuestionError('the question has no "List: ..." line')
    words = match["words"].split()
    if not sortable(words):
        raise QuestionError("the list must hold distinct lower-case words of letters a-z")
    return words


def _ordinal(text: str) -> int:
    if text.lower() not in _ORDINALS:
        raise Unparseable(f"unknown ordinal {text!r}")
    return _ORDINALS[text.lower()]


def _quoted(text: str, sep: str) -> list[str]:
    words = []
    for piece in re.split(rf" ?{re.escape(sep)} ?", text):
        match = _QUOTED_RE.fullmatch(piece.strip())
        if match is None:
            raise Unparseable(f"not a quoted word: {piece.strip()[:40]!r}")
        words.append(match["word"])
    return words


def _entries(text: str) -> list[_Entry]:
    out = []
    for piece in re.split(r", *(?=\")", text):
        match = _ENTRY_RE.fullmatch(piece.strip())
        if match is None:
            raise Unparseable(f'not "word"="letter" (number): {piece.strip()[:40]!r}')
        out.append(_Entry(match["word"], match["letter"], int(match["num"]), piece.strip()))
    return out


def _groups(text: str) -> list[_Group]:
    out = []
    for piece in re.split(r" ?< ?", text):
        match = _GROUP_RE.fullmatch(piece.strip())
        if match is None:
            raise Unparseable(f"not (number) followed by words: {piece.strip()[:40]!r}")
        if match["word"] is not None:
            out.append(_Group(int(match["num"]), [match["word"]], piece.strip(), False))
        else:
            words = _quoted(match["list"], "?")
            out.append(_Group(int(match["num"]), words, piece.strip(), True))
    return out


def _read(step: Step) -> _Node:
    if step.final:
        answer = _ANSWER_RE.search(step.text)
        if answer is None:
            raise Unparseable("the final response states no answer")
        text = answer["answer"]
        return _Node(step, "answer", text=text, words=[w for w in re.split(r"[,\s]+", text) if w])
    if (m := _SUBPART_RE.fullmatch(step.text)) is not None:
        return _Node(
            step,
            "subpart",
            text=m["entries"],
            position=_ordinal(m["ordinal"]),
            ordinal_text=m["ordinal"],
            bracket=_quoted(m["bracket"][1:-1], "?"),
            bracket_text=m["bracket"],
            entries=_entries(m["entries"]),
        )
    if (m := _LETTERS_RE.fullmatch(step.text)) is not None:
        return _Node(
            step,
            "letters",
            text=m["entries"],
            position=_ordinal(m["ordinal"]),
            ordinal_text=m["ordinal"],
            entries=_entries(m["entries"]),
        )
    if (m := _GROUPS_RE.fullmatch(step.text)) is not None:
        return _Node(step, "groups", text=m["groups"], groups=_groups(m["groups"]))
    if (m := _HENCE_RE.fullmatch(step.text)) is not None:
        return _Node(step, "hence", text=m["chain"], words=_quoted(m["chain"], "<"))
    raise Unparseable(f"step ({step.label}) is not a step of word sorting")


def _tree(steps: list[Step]) -> tuple[list[_Node], _Node]:
    """The top-level nodes (children nested by label) and the final response."""
    nodes = [_read(step) for step in steps]
    by_label = {node.step.label: node for node in nodes}
    top: list[_Node] = []
    for node in nodes[:-1]:
        parent = ".".join(node.step.label.split(".")[:-1])
        if not parent:
            top.append(node)
            continue
        owner = by_label[parent]
        if owner.kind != "subpart":
            raise Unparseable(f'step ({parent}) has nested steps but is not a "Now sort" step')
        owner.children.append(node)
    if top[0].kind != "letters":
        raise Unparseable("step (1) does not read the first letters")
    return top, nodes[-1]


def _bracket(words: Sequence[str]) -> str:
    return "[" + " ? ".join(f'"{w}"' for w in words) + "]"


def _last(node: _Node) -> _Node:
    return _last(node.children[-1]) if node.children else node


class WordSortingVerifier:
    """Checks word sorting attempts; see the module's docstring."""

    name = "word_sorting"

    def verify(self, question: str, solution: str) -> Verdict:
        """The verdict on ``solution`` for ``question`` (:class:`QuestionError` when the
        question has no list of sortable words)."""
        listed = read_words(question)
        try:
            steps = split_steps(solution)
            check_outline(steps, nested=True)
            top, final = _tree(steps)
        except Unparseable as exc:
            return Verdict.unreadable(str(exc))
        check = _Check(listed, steps)
        try:
            if top[0].position != 0:
                raise _Flag(
                    top[0].step,
                    f"The {top[0].ordinal_text} letter",
                    "the words are sorted by their first letters first",
                )
            result = check.frame(top, listed, 0, final.step)
            check.answer(final, result, top[-1].step.label)
        except _Flag as flag:
            previous = steps[flag.step.index - 1].label if flag.step.index else None
            return Verdict.error(
                flag.step.label, flag.step.index, previous, flag.segment, flag.reason
            )
        return Verdict.all_correct(steps[-2].label)


@dataclass
class _Check:
    listed: list[str]
    steps: list[Step]

    def _not_here(self, word: str, words: Sequence[str]) -> str:
        if word not in self.listed:
            return (
                f'"{word}" is not in the list of words provided by the question statement: '
                f"{' '.join(self.listed)}"
            )
        return f'"{word}" is not in this subpart {_bracket(words)}'

    def frame(self, items: list[_Node], words: list[str], n: int, after: Step) -> list[str]:
        """Checks the steps sorting ``words`` from their ``n``-th letter on: ``items[0]``
        reads the letters, the others follow at the same level. ``after`` is the step that
        comes next. Returns the sorted words."""
        self.letters(items[0], words, n)
        letters_step = items[0].step
        groups_step: Step | None = None
        pending: list[set[str]] = []
        whole = False
        for index in range(1, len(items) + 1):
            if index == len(items):
                if groups_step is None:
                    reason = f"the words of step ({letters_step.label}) were never put in order"
                else:
                    reason = (
                        f"the words {_bracket(words)} were never combined in a "
                        '"Hence, we have" step'
                    )
                raise _Flag(after, after.text.rstrip("."), reason)
            node = items[index]
            if groups_step is None:
                if node.kind != "groups":
                    raise _Flag(
                        node.step,
                        node.step.text.rstrip("."),
                        f"the words of step ({letters_step.label}) have to be put in order by "
                        "their numbers first",
                    )
                order = self.order(node, words, n, letters_step)
                pending = [set(g) for g in order if len(g) > 1]
                whole = len(order) == 1
                groups_step = node.step
                continue
            if node.kind == "subpart":
                chosen = set(node.bracket)
                if not node.children and whole and chosen == set(words) and node.position == n + 1:
                    # All the words tie: the next letter is read in place.
                    n = node.position
                    self.letters(node, words, n)
                    letters_step, groups_step = node.step, None
                    continue
                self.subpart(node, pending, n, groups_step)
                pending.remove(chosen)
                nxt = self.steps[_last(node).step.index + 1]
                self.frame([node, *node.children], node.bracket, node.position, nxt)
                continue
            if node.kind == "hence":
                if pending:
                    first = next(g for g in pending)
                    ordered = [w for w in words if w in first]
                    raise _Flag(
                        node.step,
                        node.text,
                        f"the subpart {_bracket(ordered)} of step ({groups_step.label}) has not "
                        "been sorted yet",
                    )
                self.chain(node, words)
                if index < len(items) - 1:
                    extra = items[index + 1].step
                    raise _Flag(
                        extra,
                        extra.text.rstrip("."),
                        f"the words were already combined in step ({node.step.label})",
                    )
                return sorted(words)
            if node.kind == "groups":
                raise _Flag(
                    node.step,
                    node.text,
                    f"no new letters were read after step ({groups_step.label})",
                )
            raise _Flag(node.step, node.text, "the first letters were already read in step (1)")
        raise AssertionError("unreachable")

    def letters(self, node: _Node, words: list[str], n: int) -> None:
        """Each word once, with its n-th letter and that letter's number."""
        seen: set[str] = set()
        for entry in node.entries:
            if entry.word not in words:
                raise _Flag(node.step, entry.text, self._not_here(entry.word, words))
            if entry.word in seen:
                raise _Flag(node.step, entry.text, f'"{entry.word}" appears more than once')
            seen.add(entry.word)
            word = entry.word
            letter = word[n] if n < len(word) else None
            if entry.letter != letter:
                reason = (
                    f'the {ordinal(n)} letter of "{word}" should be "{letter}"'
                    if letter is not None
                    else f'"{word}" has no {ordinal(n)} letter, so it should be (end)'
                )
                raise _Flag(node.step, entry.text, reason)
            number = ord(letter) - ord("a") + 1 if letter is not None else 0
            if entry.number != number:
                reason = (
                    f'the alphabetical order of the character "{letter}" should be {number}'
                    if letter is not None
                    else "a word without this letter has the number 0"
                )
                raise _Flag(node.step, entry.text, reason)
        missing = [w for w in words if w not in seen]
        if missing:
            raise _Flag(node.step, node.text, f'"{missing[0]}" is missing')

    def order(self, node: _Node, words: list[str], n: int, letters: Step) -> list[list[str]]:
        """The words ordered by their n-th letter's number, ties grouped; returns the
        groups."""
        numbers = {w: (ord(w[n]) - ord("a") + 1 if n < len(w) else 0) for w in words}
        expected: dict[int, list[str]] = {}
        for w in words:
            expected.setdefault(numbers[w], []).append(w)
        order = sorted(expected.items())
        seen: set[str] = set()
        for i, group in enumerate(node.groups):
            if group.bracketed and len(group.words) == 1:
                raise _Flag(
                    node.step,
                    group.text,
                    f'["{group.words[0]}"] has only a single word, so it is not a subpart that '
                    "needs further sorting",
                )
            for w in group.words:
                if w not in words:
                    raise _Flag(node.step, group.text, self._not_here(w, words))
                if w in seen:
                    raise _Flag(node.step, group.text, f'"{w}" appears more than once')
                seen.add(w)
            if i >= len(order):
                raise _Flag(node.step, group.text, "it is not in the result of the step before")
            number, members = order[i]
            if group.number != number:
                if group.number in expected:
                    reason = (
                        "words are not sorted in ascending order. Using results from step "
                        f"({letters.label}), the words with ({number}) come before the words "
                        f"with ({group.number})"
                    )
                else:
                    reason = f"according to step ({letters.label}), no word has ({group.number})"
                raise _Flag(node.step, group.text, reason)
            if set(group.words) != set(members):
                shown = f'"{members[0]}"' if len(members) == 1 else _bracket(members)
                raise _Flag(
                    node.step,
                    group.text,
                    f"according to step ({letters.label}), the words with ({number}) are {shown}",
                )
        if len(node.groups) < len(order):
            number, members = order[len(node.groups)]
            raise _Flag(
                node.step,
                node.text,
                f"according to step ({letters.label}), the words with ({number}) are missing",
            )
        return [members for _, members in order]

    def subpart(self, node: _Node, pending: list[set[str]], n: int, groups: Step) -> None:
        """A subpart is a group of tied words, sorted by the next letter."""
        if set(node.bracket) not in pending or len(node.bracket) != len(set(node.bracket)):
            reason = (
                f"it is not a group of words with the same number in step ({groups.label}) "
                "that still needs sorting"
                if pending
                else f"every word already has its own number in step ({groups.label})"
            )
            raise _Flag(node.step, node.bracket_text, reason)
        if node.position != n + 1:
            shared = "first letter" if n == 0 else f"letters up to the {ordinal(n)}"
            raise _Flag(
                node.step,
                f"their {node.ordinal_text} letters",
                f"the words of this subpart share their {shared}, so they are sorted by their "
                f"{ordinal(n + 1)} letters",
            )
        if not node.children:
            missing = "the steps that sort this subpart are missing"
            raise _Flag(node.step, node.bracket_text, missing)

    def chain(self, node: _Node, words: list[str]) -> None:
        """ "Hence, we have": the words, each once, in sorted order."""
        seen: set[str] = set()
        for w in node.words:
            if w not in words:
                raise _Flag(node.step, node.text, self._not_here(w, words))
            if w in seen:
                raise _Flag(node.step, node.text, f'"{w}" appears more than once')
            seen.add(w)
        missing = [w for w in words if w not in seen]
        if missing:
            raise _Flag(node.step, node.text, f'"{missing[0]}" is missing')
        for got, want in zip(node.words, sorted(words), strict=True):
            if got != want:
                raise _Flag(node.step, node.text, f'"{want}" should come before "{got}"')

    def answer(self, final: _Node, result: list[str], hence: str) -> None:
        if [w.casefold() for w in final.words] != result:
            raise _Flag(
                final.step,
                final.text,
                f"it is inconsistent with the result in step ({hence})",
            )
