"""Multistep arithmetic items with gold step-by-step rationales (TriPosT format).

Expressions follow the BIG-bench ``multistep_arithmetic`` generator: operators ``+ - *``,
operands -9..9, ``length`` operands in each innermost parenthesis, and nesting given by depth
levels ([2] = two groups, [2, 2] = two pairs of groups, ...). The value is Python's evaluation
(``*`` before ``+``/``-``, left to right). The rationale names each innermost group with a
letter, computes each group one operation at a time (leftmost innermost first), then the whole
expression::

    (1) This equation can be written as "(A - B)", where A = (7 - -1 + -1) and B = (-7 + 3 * -9).
    (2) Let's calculate A = (7 - -1 + -1) = ((7 - -1) + -1) = (8 + -1) = 7.
    (3) Let's calculate B = (-7 + 3 * -9) = (-7 + (3 * -9)) = (-7 + -27) = -34.
    (4) Then, the final equation is (A - B) = (7 - -34) = 41.
    (Final response) So the answer is 41.

Difficulty buckets (TriPosT): *seen* = lengths 3-4 with depth [2] or [2, 2]; *unseen* = every
other combination of lengths 3-6 and depths [2], [2, 2], [2, 2, 2].
"""

from __future__ import annotations

import ast
import itertools
import random
import re
from dataclasses import dataclass
from typing import Literal

from shared.tasks.base import AnswerKind, TaskItem

OPERATIONS: tuple[str, ...] = ("+", "-", "*")
NUMBERS: tuple[int, ...] = tuple(range(-9, 10))
LENGTHS: tuple[int, ...] = (3, 4, 5, 6)
DEPTH_LEVELS: tuple[tuple[int, ...], ...] = ((2,), (2, 2), (2, 2, 2))
Bucket = Literal["seen", "unseen"]
SEEN: tuple[tuple[int, tuple[int, ...]], ...] = tuple(
    (length, depth) for length in (3, 4) for depth in ((2,), (2, 2))
)
UNSEEN: tuple[tuple[int, tuple[int, ...]], ...] = tuple(
    (length, depth)
    for length, depth in itertools.product(LENGTHS, DEPTH_LEVELS)
    if (length, depth) not in SEEN
)
_GROUP_RE = re.compile(r"\(([^()]+)\)")
_LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# An expression tree: an int, or (operator, left, right).
Node = int | tuple[str, "Node", "Node"]


def _content(rng: random.Random, length: int) -> str:
    parts = [str(rng.choice(NUMBERS))]
    for _ in range(length - 1):
        parts += [rng.choice(OPERATIONS), str(rng.choice(NUMBERS))]
    return "(" + " ".join(parts) + ")"


def generate_expression(rng: random.Random, depth_levels: tuple[int, ...], length: int) -> str:
    """A random expression: ``depth_levels[0]`` groups joined by operators, each built the
    same way from ``depth_levels[1:]``, down to groups of ``length`` operands."""
    if not depth_levels:
        return _content(rng, length)
    parts = [generate_expression(rng, depth_levels[1:], length)]
    for _ in range(depth_levels[0] - 1):
        parts += [rng.choice(OPERATIONS), generate_expression(rng, depth_levels[1:], length)]
    return "(" + " ".join(parts) + ")"


def parse(expression: str) -> Node:
    """The tree of an expression of integers, ``+ - *``, unary minus and parentheses."""
    return _from_ast(ast.parse(expression.strip(), mode="eval").body)


def _from_ast(node: ast.expr) -> Node:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _from_ast(node.operand)
        if isinstance(inner, int):
            return -inner if isinstance(node.op, ast.USub) else inner
        return ("-", 0, inner) if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp):
        ops = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}
        op = ops.get(type(node.op))
        if op is not None:
            return (op, _from_ast(node.left), _from_ast(node.right))
    raise ValueError(f"not an integer +, -, * expression: {ast.unparse(node)}")


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def evaluate(node: Node) -> int:
    if isinstance(node, int):
        return node
    op, left, right = node
    return _apply(op, evaluate(left), evaluate(right))


def render(node: Node) -> str:
    """Fully parenthesized text: every operation in its own parentheses."""
    if isinstance(node, int):
        return str(node)
    op, left, right = node
    return f"({render(left)} {op} {render(right)})"


def _reduce_once(node: Node) -> Node:
    """Compute the leftmost operation whose operands are both numbers."""
    if isinstance(node, int):
        return node
    op, left, right = node
    if isinstance(left, int) and isinstance(right, int):
        return _apply(op, left, right)
    if not isinstance(left, int):
        return (op, _reduce_once(left), right)
    return (op, left, _reduce_once(right))


def calculation_chain(node: Node) -> list[str]:
    """Each form of the expression, one operation computed at a time, ending with the value."""
    forms = [render(node)]
    while not isinstance(node, int):
        node = _reduce_once(node)
        forms.append(render(node))
    return forms


def _join_chain(forms: list[str]) -> str:
    kept: list[str] = []
    for form in forms:
        if not kept or kept[-1] != form:
            kept.append(form)
    return " = ".join(kept)


def _name_list(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def rationale(expression: str) -> list[str]:
    """The gold solution of ``expression``, one line per step, TriPosT style."""
    expression = expression.strip()
    groups: list[str] = []

    def name(match: re.Match[str]) -> str:
        groups.append(match.group(0))
        return _LABELS[len(groups) - 1]

    outer = expression
    if _GROUP_RE.fullmatch(expression) is None:
        outer = _GROUP_RE.sub(name, expression)
    else:  # a single group: compute it directly
        groups.append(expression)
        outer = "A"
    values: dict[str, int] = {}
    where = [f"{_LABELS[i]} = {g}" for i, g in enumerate(groups)]
    lines = [f'(1) This equation can be written as "{outer}", where {_name_list(where)}.']
    for i, group in enumerate(groups):
        label = _LABELS[i]
        chain = [group, *calculation_chain(parse(group))]
        values[label] = evaluate(parse(group))
        lines.append(f"({i + 2}) Let's calculate {label} = {_join_chain(chain)}.")
    substituted = re.sub(r"[A-Z]", lambda m: str(values[m.group(0)]), outer)
    final = [outer, substituted, *calculation_chain(parse(substituted))]
    lines.append(f"({len(groups) + 2}) Then, the final equation is {_join_chain(final)}.")
    answer = evaluate(parse(expression))
    lines.append(f"(Final response) So the answer is {answer}.")
    return lines


@dataclass(frozen=True)
class ArithmeticProblem:
    expression: str
    length: int
    depth_levels: tuple[int, ...]
    answer: int


def generate_problem(rng: random.Random, bucket: Bucket) -> ArithmeticProblem:
    """One problem from the bucket's (length, depth) combinations, chosen uniformly."""
    length, depth = rng.choice(SEEN if bucket == "seen" else UNSEEN)
    expression = generate_expression(rng, depth, length)
    return ArithmeticProblem(expression, length, depth, evaluate(parse(expression)))


def question_text(expression: str) -> str:
    return f"{expression} ="


def make_item(task: str, item_id: str, problem: ArithmeticProblem, bucket: Bucket) -> TaskItem:
    return TaskItem(
        task=task,
        id=item_id,
        question=question_text(problem.expression),
        answer=str(problem.answer),
        kind=AnswerKind.number,
        rationale=rationale(problem.expression),
        meta={
            "bucket": bucket,
            "length": problem.length,
            "depth_levels": list(problem.depth_levels),
            "expression": problem.expression,
        },
    )
