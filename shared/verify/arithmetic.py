"""The scripted verifier of multistep arithmetic rationales (TriPosT's format).

An attempt reads::

    (1) This equation can be written as "(A - B)", where A = (7 - -1 + -1) and B = (-7 + 3 * -9).
    (2) Let's calculate A = (7 - -1 + -1) = ((7 - -1) + -1) = (8 + -1) = 7.
    (3) Let's calculate B = (-7 + 3 * -9) = (-7 + (3 * -9)) = (-7 + -27) = -34.
    (4) Then, the final equation is (A - B) = (7 - -34) = 41.
    (Final response) So the answer is 41.

Steps are checked in order, and the first wrong one is reported:

1. the partition reproduces the question's expression when the parts are put in place of
   their letters (any partition does, not only the innermost brackets);
2. a calculation starts from its part as step (1) defined it, and every "=" of it holds;
3. the final equation is step (1)'s, every letter in it was calculated in an earlier step,
   and the values put in place of the letters are those results; every further "=" holds;
4. the final response states the final equation's result.

Together these make the checks exact: an attempt passes only when every stated equality is
true and its answer is the expression's value. An attempt whose steps cannot be read (an
unknown kind of step, labels out of order, no final response, no number as the answer) is
unparseable. Calculations may come in any order; a letter may be calculated again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from shared.verify.expressions import (
    ExpressionError,
    Node,
    evaluate,
    parse,
    render,
    substitute,
    variables,
)
from shared.verify.steps import QuestionError, Step, Unparseable, check_outline, split_steps
from shared.verify.verdict import Verdict

_PARTITION_RE = re.compile(
    r'This equation can be written as "(?P<outer>[^"]+)",? where (?P<parts>.+?)\.?',
    re.IGNORECASE | re.DOTALL,
)
_CALCULATE_RE = re.compile(r"Let's calculate (?P<var>[A-Z]) ?= ?(?P<chain>.+?)\.?", re.DOTALL)
_FINAL_RE = re.compile(r"Then, the final equation is (?P<chain>.+?)\.?", re.DOTALL)
_ANSWER_RE = re.compile(r"the answer is:? *(?P<answer>-?\d+)(?= *\.? *$)", re.IGNORECASE)
_PART_SPLIT_RE = re.compile(r"(?:, *(?:and +)?| +and +)(?=[A-Z] *=)")
_PART_RE = re.compile(r"(?P<var>[A-Z]) *= *(?P<expr>.+)", re.DOTALL)


class Incorrect(Exception):
    """Raised inside a step's check: ``segment`` of the step is wrong because ``reason``."""

    def __init__(self, segment: str, reason: str) -> None:
        super().__init__(reason)
        self.segment = segment
        self.reason = reason


def read_expression(question: str) -> tuple[Node, str]:
    """The expression of a question such as ``((1 + 2) * (3 - 4)) =``, and its text."""
    text = question.strip()
    text = text[:-1].rstrip() if text.endswith("=") else text
    try:
        node = parse(text)
    except ExpressionError as exc:
        raise QuestionError(f"not an arithmetic expression ({exc}): {text[:80]!r}") from exc
    if variables(node):
        raise QuestionError(f"the expression has letters in it: {text[:80]!r}")
    return node, text


def _invalid(text: str) -> str:
    if text.count("(") != text.count(")"):
        return "it is an invalid equation as the number of left and right brackets do not match"
    return "it is an invalid equation"


def _parse_term(text: str, segment: str | None = None) -> Node:
    try:
        return parse(text)
    except ExpressionError as exc:
        raise Incorrect(segment or text, _invalid(text)) from exc


@dataclass
class _Parsed:
    """One step, read: its kind and its pieces."""

    step: Step
    kind: str  # partition | calculate | final | answer
    groups: dict[str, str]


@dataclass
class _State:
    expression: Node
    expression_text: str
    outer: Node | None = None
    outer_text: str = ""
    parts: dict[str, tuple[Node, str]] = field(default_factory=dict)
    values: dict[str, int] = field(default_factory=dict)
    computed_in: dict[str, str] = field(default_factory=dict)
    result: int | None = None
    result_step: str | None = None


def _read(step: Step) -> _Parsed:
    if step.final:
        match = _ANSWER_RE.search(step.text)
        if match is None:
            raise Unparseable("the final response states no integer answer")
        return _Parsed(step, "answer", {"answer": match["answer"], "text": match.group(0)})
    for kind, regex in (
        ("partition", _PARTITION_RE),
        ("calculate", _CALCULATE_RE),
        ("final", _FINAL_RE),
    ):
        if (match := regex.fullmatch(step.text)) is not None:
            return _Parsed(step, kind, {k: v.strip() for k, v in match.groupdict().items()})
    raise Unparseable(f"step ({step.label}) is not a partition, a calculation or the final one")


class ArithmeticVerifier:
    """Checks multistep arithmetic attempts; see the module's docstring."""

    name = "multistep_arithmetic"

    def verify(self, question: str, solution: str) -> Verdict:
        """The verdict on ``solution`` for ``question`` (:class:`QuestionError` when the
        question is not an expression)."""
        expression, text = read_expression(question)
        try:
            steps = split_steps(solution)
            check_outline(steps, nested=False)
            parsed = [_read(step) for step in steps]
            if parsed[0].kind != "partition":
                raise Unparseable("step (1) does not write the equation in parts")
        except Unparseable as exc:
            return Verdict.unreadable(str(exc))
        state = _State(expression, text)
        for item in parsed:
            try:
                self._check(item, state)
            except Incorrect as exc:
                previous = steps[item.step.index - 1].label if item.step.index else None
                return Verdict.error(
                    item.step.label, item.step.index, previous, exc.segment, exc.reason
                )
        return Verdict.all_correct(steps[-2].label)

    def _check(self, item: _Parsed, state: _State) -> None:
        if state.result_step is not None and item.kind != "answer":
            raise Incorrect(
                item.step.text.rstrip("."),
                f"the final equation was already calculated in step ({state.result_step})",
            )
        if item.kind == "partition":
            if state.outer is not None:
                raise Incorrect(
                    item.step.text.rstrip("."), "the equation was already written in parts"
                )
            self._partition(item.groups["outer"], item.groups["parts"], state)
        elif item.kind == "calculate":
            self._calculate(item.step, item.groups["var"], item.groups["chain"], state)
        elif item.kind == "final":
            self._final(item.step, item.groups["chain"], state)
        else:
            self._answer(int(item.groups["answer"]), item.groups["text"], state)

    def _partition(self, outer_text: str, parts_text: str, state: _State) -> None:
        outer = _parse_term(outer_text)
        parts: dict[str, tuple[Node, str]] = {}
        for piece in _PART_SPLIT_RE.split(parts_text):
            match = _PART_RE.fullmatch(piece.strip())
            if match is None:
                raise Incorrect(piece.strip(), "it does not define a part as X = (...)")
            var, text = match["var"], match["expr"].strip()
            segment = f"{var} = {text}"
            if var in parts:
                raise Incorrect(segment, f"{var} is defined twice")
            node = _parse_term(text, segment)
            if variables(node):
                raise Incorrect(segment, f"{var} should be written with numbers only")
            parts[var] = (node, text)
        used = variables(outer)
        for var in used:
            if var not in parts:
                raise Incorrect(outer_text, f"{var} is not defined in this step")
        for var, (_, text) in parts.items():
            if var not in used:
                raise Incorrect(f"{var} = {text}", f'{var} does not appear in "{outer_text}"')
        found = _locate(outer, {v: n for v, (n, _) in parts.items()}, state.expression)
        if found is not None:
            var, target = found
            if var is None:
                raise Incorrect(
                    outer_text,
                    f"it is not consistent with the original equation: {state.expression_text}",
                )
            raise Incorrect(
                f"{var} = {parts[var][1]}",
                f"it does not match the original equation, where this part is {render(target)}",
            )
        state.outer, state.outer_text, state.parts = outer, outer_text, parts

    def _calculate(self, step: Step, var: str, chain: str, state: _State) -> None:
        terms = [t.strip() for t in chain.split("=")]
        if var not in state.parts:
            raise Incorrect(f"{var} = {terms[0]}", f"{var} is not one of the parts of step (1)")
        first = _parse_term(terms[0], f"{var} = {terms[0]}")
        part, part_text = state.parts[var]
        if first != part:
            raise Incorrect(f"{var} = {terms[0]}", f"{var} is {part_text} in step (1)")
        state.values[var] = self._chain(terms, [first], state)
        state.computed_in[var] = step.label

    def _final(self, step: Step, chain: str, state: _State) -> None:
        assert state.outer is not None  # step (1) is always the partition
        terms = [t.strip() for t in chain.split("=")]
        first = _parse_term(terms[0])
        if first != state.outer:
            raise Incorrect(terms[0], f"it is not the equation of step (1): {state.outer_text}")
        pair = " = ".join(terms[:2])
        for var in variables(first):
            if var not in state.values:
                raise Incorrect(pair, f"{var} has not been calculated in previous steps")
        if len(terms) < 2:
            raise Incorrect(terms[0], "the results of the previous steps are not put in it")
        second = _parse_term(terms[1], pair)
        expected = substitute(state.outer, dict(state.values))
        if second != expected:
            found = _locate(state.outer, dict(state.values), second)
            wrong, target = found if found is not None else (None, second)
            if wrong is not None and isinstance(target, int):
                value, where = state.values[wrong], state.computed_in[wrong]
                reason = f"{wrong} = {value} in step ({where}), not {target}"
            else:
                reason = "this substitution is inconsistent with the results in the previous steps"
            raise Incorrect(pair, reason)
        state.result = self._chain(terms[1:], [second], state)
        state.result_step = step.label

    def _chain(self, terms: list[str], trees: list[Node], state: _State) -> int:
        """Checks that every "=" of ``terms`` holds (``trees[0]`` is the first, parsed) and
        that the last term is a number; returns it."""
        for i in range(len(terms) - 1):
            lhs, rhs = terms[i], terms[i + 1]
            pair = f"{lhs} = {rhs}"
            trees.append(_parse_term(rhs, pair))
            try:
                a = evaluate(trees[i], state.values)
                b = evaluate(trees[i + 1], state.values)
            except KeyError as exc:
                raise Incorrect(
                    pair, f"{exc.args[0]} has not been calculated in previous steps"
                ) from exc
            if a != b:
                but = f"not {b}" if isinstance(trees[i + 1], int) else f"but {rhs} is {b}"
                sep = ", " if isinstance(trees[i + 1], int) else " "
                raise Incorrect(pair, f"there is a calculation error, since {lhs} is {a}{sep}{but}")
        last = trees[-1]
        if not isinstance(last, int):
            raise Incorrect(terms[-1], "the calculation does not end with a single number")
        return last

    def _answer(self, answer: int, text: str, state: _State) -> None:
        segment = text.rstrip(" .")
        if state.result_step is None:
            raise Incorrect(segment, "the final equation of step (1) has not been calculated")
        if answer != state.result:
            reason = f"this answer is inconsistent with the result in step ({state.result_step})"
            raise Incorrect(segment, reason)


def _locate(template: Node, parts: dict[str, Node], target: Node) -> tuple[str | None, Node] | None:
    """Where ``template`` with ``parts`` in place of its letters first differs from
    ``target``: (the letter, what stands there in ``target``), or (None, ...) when the
    template's own shape differs; None when they agree. Without ``parts`` every letter
    stands for whatever the target has there, and the first letter is returned."""
    if isinstance(template, str):
        if template in parts:
            return None if parts[template] == target else (template, target)
        return template, target
    if isinstance(template, int):
        return None if template == target else (None, target)
    if not isinstance(target, tuple) or target[0] != template[0]:
        return None, target
    return _locate(template[1], parts, target[1]) or _locate(template[2], parts, target[2])
