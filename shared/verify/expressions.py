"""Integer expressions with variables, as TriPosT's arithmetic rationales write them.

Integers, one-letter upper-case variables, ``+ - *`` (``*`` first, left to right), unary minus
and parentheses. A minus sign before a literal is part of it ("-9"), so ``(3 * -9)`` and
``(7 - -1)`` read as written. Trees compare equal when the expressions are the same up to
spaces and redundant parentheses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

Node = int | str | tuple[str, "Node", "Node"]
"""An integer, a variable name, or (operator, left, right)."""

MAX_DEPTH = 64
"""Most nested brackets and unary minus signs (the parser and the tree walks recurse)."""
MAX_OPERATORS = 256
"""Most binary operators in one expression (a tree is at most this deep)."""
_TOKEN_RE = re.compile(r"\s*(?:(\d+)|([A-Z])|([-+*()]))")


class ExpressionError(ValueError):
    """Not an expression of this grammar."""


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            raise ExpressionError(f"unexpected {text[pos:].strip()[:20]!r}")
        out.append(match.group(match.lastindex or 0))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        if sum(t in ("+", "*") for t in self.tokens) + self.tokens.count("-") > MAX_OPERATORS:
            raise ExpressionError(f"longer than {MAX_OPERATORS} operations")
        self.pos = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ExpressionError("the expression ends too early")
        self.pos += 1
        return token

    def expression(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError("nested too deeply")
        node = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            node = (op, node, self.term())
        self.depth -= 1
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek() == "*":
            self.take()
            node = ("*", node, self.unary())
        return node

    def unary(self) -> Node:
        if self.peek() == "-":
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExpressionError("nested too deeply")
            inner = self.unary()
            self.depth -= 1
            return -inner if isinstance(inner, int) else ("-", 0, inner)
        return self.atom()

    def atom(self) -> Node:
        token = self.take()
        if token == "(":
            node = self.expression()
            if self.take() != ")":
                raise ExpressionError("a bracket is not closed")
            return node
        if token.isdigit():
            return int(token)
        if token.isalpha():
            return token
        raise ExpressionError(f"unexpected {token!r}")


def parse(text: str) -> Node:
    """The tree of ``text``; :class:`ExpressionError` when it is not an expression."""
    parser = _Parser(text)
    if not parser.tokens:
        raise ExpressionError("empty")
    node = parser.expression()
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected {parser.peek()!r}")
    return node


def variables(node: Node) -> list[str]:
    """Variable names in order of first appearance."""
    if isinstance(node, int):
        return []
    if isinstance(node, str):
        return [node]
    out = variables(node[1])
    out += [v for v in variables(node[2]) if v not in out]
    return out


def evaluate(node: Node, values: Mapping[str, int] | None = None) -> int:
    """The value; variables from ``values`` (KeyError names a missing one)."""
    if isinstance(node, int):
        return node
    if isinstance(node, str):
        if values is None or node not in values:
            raise KeyError(node)
        return values[node]
    op, left, right = node
    a, b = evaluate(left, values), evaluate(right, values)
    return a + b if op == "+" else a - b if op == "-" else a * b


def substitute(node: Node, values: Mapping[str, Node]) -> Node:
    if isinstance(node, str):
        return values.get(node, node)
    if isinstance(node, int):
        return node
    op, left, right = node
    return (op, substitute(left, values), substitute(right, values))


_PRECEDENCE = {"+": 1, "-": 1, "*": 2}


def render(node: Node) -> str:
    """Text with only the parentheses needed, the whole wrapped in one pair unless it is a
    single number or variable: ``("-", ("+", 7, -1), 3)`` -> ``(7 + -1 - 3)``."""
    if isinstance(node, int | str):
        return str(node)
    return f"({_inner(node)})"


def _inner(node: Node, parent: int = 0, right: bool = False) -> str:
    if isinstance(node, int | str):
        return str(node)
    op, left, rhs = node
    prec = _PRECEDENCE[op]
    text = f"{_inner(left, prec)} {op} {_inner(rhs, prec, right=True)}"
    return f"({text})" if prec < parent or (right and prec == parent) else text


def first_difference(template: Node, target: Node) -> tuple[Node, Node] | None:
    """Where ``template`` and ``target`` first differ, reading left to right: the two
    subtrees (a variable of the template against what stands in its place); None when equal."""
    if template == target:
        return None
    if isinstance(template, tuple) and isinstance(target, tuple) and template[0] == target[0]:
        return first_difference(template[1], target[1]) or first_difference(template[2], target[2])
    return template, target
