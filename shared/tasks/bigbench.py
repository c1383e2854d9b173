"""BIG-bench tasks read from the data cache (see :mod:`shared.tasks.data`).

Each task file holds ``examples`` with an ``input`` and either ``target_scores`` (options with
score 1 for the right one) or ``target`` (a string or a list of accepted strings). Multiple
choice options are shuffled per item with a key fixed by the item's id (the files often list
the right option first) and lettered (A), (B), ... in the question.

Few-shot demos are written for each task in the RATIONALYST format, formatted like the task's
questions; strategyqa takes its demos from its own first examples (their explanations are the
steps), which are then never evaluated.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.schemas import Demo
from shared.sentences import split_sentences
from shared.tasks import word_sorting
from shared.tasks.base import AnswerKind, TaskItem, demo_from_steps
from shared.tasks.data import task_file
from shared.tasks.formatting import format_question, letter, shuffled_choices

# --------------------------------------------------------------------------------------------
# Reading task files


@functools.lru_cache(maxsize=32)
def _read(path: Path, mtime: float) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def read_task_file(relative: str) -> dict[str, Any]:
    """The parsed task.json (cached while the file is unchanged)."""
    path = task_file(relative)
    return _read(path, path.stat().st_mtime)


def _correct_index(scores: dict[str, float]) -> int:
    best = max(scores.values())
    winners = [i for i, v in enumerate(scores.values()) if v == best]
    if len(winners) != 1:
        raise ValueError(f"expected exactly one best option, got {len(winners)}")
    return winners[0]


# --------------------------------------------------------------------------------------------
# Question formats per task


@dataclass(frozen=True)
class Format:
    """How a task's example becomes a question."""

    prefix: str | None = None
    """Text before each question (the file's ``task_prefix`` where it has one)."""
    question: str | None = None
    """Appended to the input, before the options."""
    instruction: str | None = None
    """After the options."""


def mc_item(
    task: str,
    item_id: str,
    body: str,
    options: Sequence[str],
    correct: int,
    fmt: Format,
    *,
    meta: dict[str, Any] | None = None,
) -> TaskItem:
    """A multiple-choice item, options shuffled by ``task:item_id``."""
    choices, answer = shuffled_choices([o.strip() for o in options], correct, f"{task}:{item_id}")
    text = body.rstrip() if fmt.question is None else f"{body.rstrip()}\n{fmt.question}"
    return TaskItem(
        task=task,
        id=item_id,
        question=format_question(
            text, choices=choices, prefix=fmt.prefix, instruction=fmt.instruction
        ),
        answer=letter(answer),
        kind=AnswerKind.choice,
        choices=choices,
        meta=meta or {},
    )


def _boolean_item(
    task: str, item_id: str, body: str, gold: str, fmt: Format, *, meta: dict[str, Any]
) -> TaskItem:
    return TaskItem(
        task=task,
        id=item_id,
        question=format_question(body, prefix=fmt.prefix, instruction=fmt.instruction),
        answer=gold,
        kind=AnswerKind.boolean,
        meta=meta,
    )


def strategyqa_rationale(target: str, gold: str) -> list[str] | None:
    """The explanation of a strategyqa target ("Yes. Because ...") as steps, ending with the
    answer step; None when there is no explanation."""
    explanation = re.sub(r"^\s*(yes|no)\b[.,:]?", "", target, flags=re.IGNORECASE).strip()
    steps = split_sentences(explanation)
    return [*steps, f"The answer is: {gold}"] if steps else None


# --------------------------------------------------------------------------------------------
# Tasks


Builder = Callable[[str, int, dict[str, Any], dict[str, Any]], TaskItem]
"""(task name, example index, example, task file) -> item."""


@dataclass(frozen=True)
class DemoSpec:
    """A hand-written worked example: the input as the task file would have it."""

    body: str
    steps: tuple[str, ...]
    options: tuple[str, ...] = ()
    correct: int = 0
    answer: str = ""
    """The answer of non-choice demos (for choices it comes from ``correct``)."""


@dataclass
class BigBenchTask:
    """A task backed by one BIG-bench task file."""

    name: str
    description: str
    kind: AnswerKind
    file: str
    build: Builder
    fmt: Format = field(default_factory=Format)
    demo_specs: tuple[DemoSpec, ...] = ()
    reserved: tuple[int, ...] = ()
    """Example indices used as demos (never evaluated)."""
    demo_builder: Callable[[list[TaskItem]], list[Demo]] | None = None
    source: str = "bigbench"
    _cache: tuple[int, list[TaskItem]] | None = field(default=None, init=False, repr=False)

    def all_items(self) -> list[TaskItem]:
        """Every evaluable item, in file order (built once per loaded file)."""
        data = read_task_file(self.file)
        if self._cache is None or self._cache[0] != id(data):
            items = [
                self.build(self.name, i, ex, data)
                for i, ex in enumerate(data["examples"])
                if i not in self.reserved
            ]
            self._cache = (id(data), items)
        return self._cache[1]

    def items(self, n: int | None = None, seed: int = 0) -> list[TaskItem]:
        items = self.all_items()
        order = list(range(len(items)))
        random.Random(f"{self.name}:{seed}").shuffle(order)
        chosen = order if n is None else order[:n]
        return [items[i] for i in chosen]

    def demos(self, k: int = 3) -> list[Demo]:
        if self.demo_builder is not None:
            data = read_task_file(self.file)
            reserved = [self.build(self.name, i, data["examples"][i], data) for i in self.reserved]
            return self.demo_builder(reserved)[:k]
        out = []
        for i, spec in enumerate(self.demo_specs[:k]):
            if self.kind is AnswerKind.choice:
                item = mc_item(f"demo:{self.name}", str(i), spec.body, spec.options,
                               spec.correct, self.fmt)  # fmt: skip
                out.append(demo_from_steps(item.question, spec.steps, item.gold_text))
            else:
                question = format_question(
                    spec.body, prefix=self.fmt.prefix, instruction=self.fmt.instruction
                )
                out.append(demo_from_steps(question, spec.steps, spec.answer))
        return out


def _mc_builder(fmt: Format) -> Builder:
    def build(task: str, index: int, ex: dict[str, Any], data: dict[str, Any]) -> TaskItem:
        scores: dict[str, float] = ex["target_scores"]
        return mc_item(task, str(index), ex["input"], list(scores), _correct_index(scores), fmt)

    return build


def _navigate(task: str, index: int, ex: dict[str, Any], data: dict[str, Any]) -> TaskItem:
    scores: dict[str, float] = ex["target_scores"]
    gold = list(scores)[_correct_index(scores)]
    meta = {"inst_type": ex.get("inst_type"), "n_sentences": ex.get("n_sentences")}
    return _boolean_item(task, str(index), ex["input"], gold, NAVIGATE_FORMAT, meta=meta)


def _strategyqa(task: str, index: int, ex: dict[str, Any], data: dict[str, Any]) -> TaskItem:
    scores: dict[str, float] = ex["target_scores"]
    gold = list(scores)[_correct_index(scores)]
    item = _boolean_item(task, str(index), ex["input"], gold, STRATEGYQA_FORMAT, meta={})
    steps = strategyqa_rationale(str(ex.get("target", "")), gold)
    return item.model_copy(update={"rationale": steps})


def _strategyqa_demos(items: list[TaskItem]) -> list[Demo]:
    return [Demo(question=it.question, steps=it.rationale) for it in items if it.rationale]


def _object_counting(task: str, index: int, ex: dict[str, Any], data: dict[str, Any]) -> TaskItem:
    targets = [str(t) for t in ex["target"]]
    digits = [t for t in targets if t.strip().lstrip("-").isdigit()]
    answer = digits[0] if digits else targets[0]
    return TaskItem(
        task=task,
        id=str(index),
        question=ex["input"].strip(),
        answer=answer,
        aliases=[t for t in targets if t != answer],
        kind=AnswerKind.number,
    )


def _word_sorting(task: str, index: int, ex: dict[str, Any], data: dict[str, Any]) -> TaskItem:
    words = ex["input"].split()
    item = word_sorting.make_item(task, str(index), words)
    target = str(ex["target"]).split()
    if target != sorted(words):  # trust the file
        item = item.model_copy(update={"answer": " ".join(target), "rationale": None})
    return item


# --------------------------------------------------------------------------------------------
# Formats and demos


DATE_FORMAT = Format()
DEDUCTION_FORMAT = Format(
    prefix="The following paragraphs each describe a set of objects arranged in a fixed order. "
    "The statements are logically consistent within each paragraph.",
    question="Which statement is true?",
)
TRACKING_FORMAT = Format()
NAVIGATE_FORMAT = Format(
    prefix="If you follow these instructions, do you return to the starting point?",
    instruction="Answer True or False.",
)
STRATEGYQA_FORMAT = Format(instruction="Answer Yes or No.")
MATHQA_FORMAT = Format(prefix="What is the answer to the following math word problem?")


DATE_DEMOS = (
    DemoSpec(
        body="Today is 03/15/2022. What is the date one week from today in MM/DD/YYYY?",
        options=("03/22/2022", "03/08/2022", "03/21/2022", "04/15/2022", "03/22/2021"),
        correct=0,
        steps=(
            "Today is 03/15/2022.",
            "One week is 7 days, and 15 + 7 = 22 is still in March.",
            "So one week from today is 03/22/2022.",
        ),
    ),
    DemoSpec(
        body="Jane was born on the last day of February in 2001. Today is her 16-year-old "
        "birthday. What is the date yesterday in MM/DD/YYYY?",
        options=("02/28/2017", "02/27/2017", "03/01/2017", "02/27/2016", "02/28/2001"),
        correct=1,
        steps=(
            "2001 is not a leap year, so the last day of February 2001 is 02/28/2001.",
            "Her 16-year-old birthday is 16 years later, on 02/28/2017.",
            "Yesterday was one day before that: 02/27/2017.",
        ),
    ),
    DemoSpec(
        body="The concert was scheduled for 06/01/1943 but was delayed by one day to today. "
        "What is the date 10 days ago in MM/DD/YYYY?",
        options=("05/23/1943", "05/22/1943", "06/12/1943", "05/23/1942", "05/24/1943"),
        correct=0,
        steps=(
            "The concert was delayed by one day, so today is 06/02/1943.",
            "10 days before June 2 is May 23, because May has 31 days.",
            "So the date 10 days ago is 05/23/1943.",
        ),
    ),
)

DEDUCTION_DEMOS = (
    DemoSpec(
        body="On a branch, there are three birds: a crow, a robin, and an owl. The owl is to "
        "the left of the robin. The crow is the leftmost.",
        options=(
            "The crow is the rightmost.",
            "The robin is the rightmost.",
            "The owl is the rightmost.",
        ),
        correct=1,
        steps=(
            "The crow is the leftmost, so it is first.",
            "The owl is to the left of the robin, so the owl is second and the robin third.",
            "From left to right: crow, owl, robin. The robin is the rightmost.",
        ),
    ),
    DemoSpec(
        body="In a golf tournament, there were three golfers: Ana, Ben, and Eli. Eli finished "
        "above Ben. Ana finished below Ben.",
        options=("Ana finished first.", "Ben finished first.", "Eli finished first."),
        correct=2,
        steps=(
            "Eli finished above Ben, and Ben finished above Ana.",
            "So the order from first to last is Eli, Ben, Ana.",
            "Eli finished first.",
        ),
    ),
)

TRACKING_DEMOS = (
    DemoSpec(
        body="Alice, Bob, and Claire are playing a game. At the start of the game, they are "
        "each holding a ball: Alice has a red ball, Bob has a green ball, and Claire has a "
        "blue ball.\n\nAs the game progresses, pairs of players trade balls. First, Alice and "
        "Claire swap balls. Then, Bob and Alice swap balls. Finally, Claire and Bob swap balls. "
        "At the end of the game, Bob has the",
        options=("red ball.", "green ball.", "blue ball."),
        correct=0,
        steps=(
            "At the start: Alice has red, Bob has green, Claire has blue.",
            "Alice and Claire swap: Alice has blue, Bob has green, Claire has red.",
            "Bob and Alice swap: Alice has green, Bob has blue, Claire has red.",
            "Claire and Bob swap: Alice has green, Bob has red, Claire has blue.",
            "At the end, Bob has the red ball.",
        ),
    ),
    DemoSpec(
        body="Alice, Bob, and Claire are dancers at a square dance. At the start of a song, "
        "they each have a partner: Alice is dancing with Lola, Bob is dancing with Rodrigo, "
        "and Claire is dancing with Patrick.\n\nThroughout the song, the dancers often trade "
        "partners. First, Bob and Claire switch partners. Then, Alice and Bob switch partners. "
        "Finally, Claire and Alice switch partners. At the end of the dance, Alice is dancing "
        "with",
        options=("Lola.", "Rodrigo.", "Patrick."),
        correct=1,
        steps=(
            "At the start: Alice with Lola, Bob with Rodrigo, Claire with Patrick.",
            "Bob and Claire switch: Alice with Lola, Bob with Patrick, Claire with Rodrigo.",
            "Alice and Bob switch: Alice with Patrick, Bob with Lola, Claire with Rodrigo.",
            "Claire and Alice switch: Alice with Rodrigo, Bob with Lola, Claire with Patrick.",
            "At the end, Alice is dancing with Rodrigo.",
        ),
    ),
)

NAVIGATE_DEMOS = (
    DemoSpec(
        body="Take 3 steps. Turn around. Take 3 steps.",
        answer="True",
        steps=(
            "We start at 0 facing forward and take 3 steps: we are 3 steps ahead.",
            "We turn around and take 3 steps back: 3 - 3 = 0.",
            "We are back at the starting point.",
        ),
    ),
    DemoSpec(
        body="Always face forward. Take 5 steps forward. Take 2 steps backward. Take 1 step left.",
        answer="False",
        steps=(
            "Forward and backward: 5 - 2 = 3 steps forward.",
            "Left and right: 1 step left.",
            "We end 3 steps forward and 1 step left, not at the starting point.",
        ),
    ),
    DemoSpec(
        body="Turn right. Take 4 steps. Turn around. Take 4 steps.",
        answer="True",
        steps=(
            "We turn right and take 4 steps: we are 4 steps to the right.",
            "We turn around and take 4 steps: 4 - 4 = 0.",
            "We are back at the starting point.",
        ),
    ),
)

COUNTING_DEMOS = (
    DemoSpec(
        body="I have a piano, a flute, and two trombones. How many musical instruments do I have?",
        answer="4",
        steps=(
            "The musical instruments are a piano (1), a flute (1) and two trombones (2).",
            "In total 1 + 1 + 2 = 4.",
        ),
    ),
    DemoSpec(
        body="I have a cabbage, three onions, a cat, and a carrot. How many vegetables do I have?",
        answer="5",
        steps=(
            "The vegetables are a cabbage (1), three onions (3) and a carrot (1); a cat is not "
            "a vegetable.",
            "In total 1 + 3 + 1 = 5.",
        ),
    ),
    DemoSpec(
        body="I have a chair, two beds, a table, and a lamp. How many objects do I have?",
        answer="5",
        steps=(
            "The objects are a chair (1), two beds (2), a table (1) and a lamp (1).",
            "In total 1 + 2 + 1 + 1 = 5.",
        ),
    ),
)

MATHQA_DEMOS = (
    DemoSpec(
        body="a shop sells 15 pens a day . how many pens does it sell in 12 days ?",
        options=("150", "180", "165", "200", "120"),
        correct=1,
        steps=("The shop sells 15 pens each day.", "In 12 days it sells 15 * 12 = 180 pens."),
    ),
    DemoSpec(
        body="what is 20 % of 450 ?",
        options=("80", "90", "45", "100", "9"),
        correct=1,
        steps=("20 % is 20 / 100 = 0.2.", "0.2 * 450 = 90."),
    ),
    DemoSpec(
        body="a car travels 240 km in 4 hours . what is its average speed in km / hr ?",
        options=("50", "55", "60", "65", "80"),
        correct=2,
        steps=("Average speed is distance divided by time.", "240 / 4 = 60 km / hr."),
    ),
)

WORD_SORTING_DEMO_LISTS: tuple[tuple[str, ...], ...] = (
    ("pear", "apple", "plum"),
    ("river", "banana", "robot", "cherry"),
    ("stone", "silver", "cloud"),
)


def word_sorting_demos(k: int = 3) -> list[Demo]:
    """Demos from the scripted rationale of a few short fixed lists."""
    out = []
    for words in WORD_SORTING_DEMO_LISTS[:k]:
        steps = word_sorting.rationale(words)
        out.append(
            demo_from_steps(word_sorting.question_text(words), steps[:-1], " ".join(sorted(words)))
        )
    return out


@dataclass
class _WordSortingTask(BigBenchTask):
    def demos(self, k: int = 3) -> list[Demo]:
        return word_sorting_demos(k)


def bigbench_tasks() -> list[BigBenchTask]:
    """Every BIG-bench task of the registry."""
    tasks: list[BigBenchTask] = [
        BigBenchTask(
            name="date_understanding",
            description="Infer a date from context (multiple choice, MM/DD/YYYY).",
            kind=AnswerKind.choice,
            file="date_understanding/task.json",
            build=_mc_builder(DATE_FORMAT),
            fmt=DATE_FORMAT,
            demo_specs=DATE_DEMOS,
        ),
        BigBenchTask(
            name="navigate",
            description="Do these moves return to the start? (True/False)",
            kind=AnswerKind.boolean,
            file="navigate/task.json",
            build=_navigate,
            fmt=NAVIGATE_FORMAT,
            demo_specs=NAVIGATE_DEMOS,
        ),
        BigBenchTask(
            name="strategyqa",
            description="Yes/no questions needing implicit multi-step reasoning; explanations "
            "give gold rationales.",
            kind=AnswerKind.boolean,
            file="strategyqa/task.json",
            build=_strategyqa,
            fmt=STRATEGYQA_FORMAT,
            reserved=(0, 1, 2),
            demo_builder=_strategyqa_demos,
        ),
        BigBenchTask(
            name="object_counting",
            description="Count the objects of a kind in a list (a number).",
            kind=AnswerKind.number,
            file="object_counting/task.json",
            build=_object_counting,
            demo_specs=COUNTING_DEMOS,
        ),
        BigBenchTask(
            name="elementary_math_qa",
            description="MathQA word problems, multiple choice (question only).",
            kind=AnswerKind.choice,
            file="elementary_math_qa/question_only/task.json",
            build=_mc_builder(MATHQA_FORMAT),
            fmt=MATHQA_FORMAT,
            demo_specs=MATHQA_DEMOS,
        ),
        _WordSortingTask(
            name="word_sorting",
            description="Sort 2-20 words alphabetically (BIG-bench lists).",
            kind=AnswerKind.word_list,
            file="word_sorting/task.json",
            build=_word_sorting,
        ),
    ]
    for size in ("three", "five", "seven"):
        tasks.append(
            BigBenchTask(
                name=f"logical_deduction_{size}_objects",
                description=f"Order {size} objects from clues (multiple choice).",
                kind=AnswerKind.choice,
                file=f"logical_deduction/{size}_objects/task.json",
                build=_mc_builder(DEDUCTION_FORMAT),
                fmt=DEDUCTION_FORMAT,
                demo_specs=DEDUCTION_DEMOS,
            )
        )
        tasks.append(
            BigBenchTask(
                name=f"tracking_shuffled_objects_{size}_objects",
                description=f"Track {size} objects through pairwise swaps (multiple choice).",
                kind=AnswerKind.choice,
                file=f"tracking_shuffled_objects/{size}_objects/task.json",
                build=_mc_builder(TRACKING_FORMAT),
                fmt=TRACKING_FORMAT,
                demo_specs=TRACKING_DEMOS,
            )
        )
    return tasks
