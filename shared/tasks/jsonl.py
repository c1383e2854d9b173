"""User-supplied tasks from JSONL files, one item per line.

Two formats, told apart per line:

* GSM8K style: ``{"question": ..., "answer": "... #### 72"}``. The gold answer is the number
  after ``####``; the lines before it (calculator annotations ``<<48/2=24>>`` removed) are the
  gold rationale.
* Multiple choice: ``{"question": ..., "choices": [...], "answer": ...}`` where ``answer`` is a
  letter ("B" or "(B)"), a 0-based index, or the text of one choice.

An optional ``id`` field names the item (default: its line number).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.fewshot import default_demos
from shared.schemas import Demo
from shared.tasks.answers import format_number, parse_number
from shared.tasks.base import AnswerKind, TaskItem
from shared.tasks.formatting import format_question, letter

_CALC_RE = re.compile(r"<<[^<>]*>>")

MC_DEMOS: tuple[Demo, ...] = (
    Demo(
        question=format_question(
            "Which of these animals is a mammal?", choices=["shark", "dolphin", "trout", "eel"]
        ),
        steps=[
            "Sharks, trout and eels are fish: they breathe through gills.",
            "A dolphin breathes air and feeds its young with milk, so it is a mammal.",
            "The answer is: (B) dolphin",
        ],
    ),
    Demo(
        question=format_question(
            "A train travels 60 km in 1.5 hours. What is its average speed?",
            choices=["90 km/h", "30 km/h", "40 km/h", "45 km/h"],
        ),
        steps=[
            "Average speed is distance divided by time.",
            "60 / 1.5 = 40, so the speed is 40 km/h.",
            "The answer is: (C) 40 km/h",
        ],
    ),
    Demo(
        question=format_question(
            "Which gas do plants take in from the air to make their food?",
            choices=["carbon dioxide", "oxygen", "nitrogen", "helium"],
        ),
        steps=[
            "Plants make sugar by photosynthesis from water and a gas taken from the air.",
            "That gas is carbon dioxide; oxygen is what they give off.",
            "The answer is: (A) carbon dioxide",
        ],
    ),
)


class JsonlFormatError(ValueError):
    """A line of a task file is not valid JSON or lacks the fields of either format."""


def gsm8k_item(task: str, item_id: str, question: str, answer: str) -> TaskItem:
    if "####" not in answer:
        raise JsonlFormatError(f"item {item_id}: the answer has no '#### <number>' line")
    body, final = answer.rsplit("####", 1)
    value = parse_number(final.strip())
    if value is None:
        raise JsonlFormatError(f"item {item_id}: no number after '####': {final.strip()!r}")
    gold = format_number(value)
    steps = [_CALC_RE.sub("", line).strip() for line in body.strip().splitlines()]
    steps = [s for s in steps if s]
    return TaskItem(
        task=task,
        id=item_id,
        question=question.strip(),
        answer=gold,
        kind=AnswerKind.number,
        rationale=[*steps, f"The answer is: {gold}"] if steps else None,
    )


def mc_item(task: str, item_id: str, question: str, choices: list[str], answer: Any) -> TaskItem:
    if len(choices) < 2:
        raise JsonlFormatError(f"item {item_id}: multiple choice needs at least two choices")
    index: int | None = None
    if isinstance(answer, int) and not isinstance(answer, bool):
        index = answer
    elif isinstance(answer, str):
        text = answer.strip()
        match = re.fullmatch(r"\(?([A-Za-z])\)?", text)
        if match:
            index = ord(match.group(1).upper()) - ord("A")
        elif text in [c.strip() for c in choices]:
            index = [c.strip() for c in choices].index(text)
    if index is None or not 0 <= index < len(choices):
        raise JsonlFormatError(f"item {item_id}: answer {answer!r} names none of the choices")
    return TaskItem(
        task=task,
        id=item_id,
        question=format_question(question, choices=choices),
        answer=letter(index),
        kind=AnswerKind.choice,
        choices=[c.strip() for c in choices],
    )


def parse_line(task: str, line_no: int, row: dict[str, Any]) -> TaskItem:
    item_id = str(row.get("id", line_no))
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise JsonlFormatError(f"line {line_no}: no 'question' string")
    if "choices" in row:
        choices = row["choices"]
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise JsonlFormatError(f"line {line_no}: 'choices' must be a list of strings")
        return mc_item(task, item_id, question, choices, row.get("answer"))
    answer = row.get("answer")
    if not isinstance(answer, str):
        raise JsonlFormatError(f"line {line_no}: 'answer' must be a string ending '#### x'")
    return gsm8k_item(task, item_id, question, answer)


def read_jsonl(task: str, path: Path) -> list[TaskItem]:
    items: list[TaskItem] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise JsonlFormatError(f"{path}:{line_no}: not JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise JsonlFormatError(f"{path}:{line_no}: not a JSON object")
            items.append(parse_line(task, line_no, row))
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise JsonlFormatError(f"{path}: item ids are not unique")
    return items


@dataclass
class JsonlTask:
    """A task read from a user's JSONL file (named ``jsonl:<path>`` on the command line)."""

    path: Path
    name: str = ""
    description: str = ""
    source: str = "jsonl"
    _items: list[TaskItem] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path).expanduser()
        self.name = self.name or self.path.stem
        self.description = self.description or f"User items from {self.path}"

    def all_items(self) -> list[TaskItem]:
        if self._items is None:
            if not self.path.is_file():
                raise FileNotFoundError(f"task file {self.path} does not exist")
            self._items = read_jsonl(self.name, self.path)
        return self._items

    @property
    def kind(self) -> AnswerKind:
        items = self.all_items()
        return items[0].kind if items else AnswerKind.number

    def items(self, n: int | None = None, seed: int = 0) -> list[TaskItem]:
        items = self.all_items()
        order = list(range(len(items)))
        random.Random(f"{self.name}:{seed}").shuffle(order)
        return [items[i] for i in (order if n is None else order[:n])]

    def demos(self, k: int = 3) -> list[Demo]:
        if self.kind is AnswerKind.choice:
            return list(MC_DEMOS[:k])
        # The gateway's default demos of the file's answer kind.
        return default_demos(self.kind)[:k]
