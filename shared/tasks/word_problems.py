"""Simple arithmetic word problems, generated: one or two operations on small whole numbers,
written from a dozen templates ("Bruno has 5 boxes with 3 shells in each box. How many shells
are there in all?"), each with its gold rationale in the RATIONALYST format.

Item ``i`` of seed ``s`` uses template ``i mod 12`` of an order fixed by ``s`` and draws its
names and numbers from a generator seeded by (task, s, i): the same seed gives the same items
everywhere, and asking for more items extends the list. Demos are the gateway's numeric
defaults, which no template reproduces.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from shared.answer_kinds import AnswerKind
from shared.fewshot import default_demos
from shared.schemas import Demo
from shared.tasks.base import TaskItem

NAMES = (
    "Bruno", "Ana", "Leo", "Mia", "Omar", "Sara", "Ivan", "Lena", "Kofi", "Yuki", "Ravi",
    "Nora", "Tom", "Ella", "Hugo", "Zoe",
)  # fmt: skip
THINGS = (
    ("shells", "box"), ("apples", "basket"), ("pencils", "pack"), ("eggs", "carton"),
    ("stickers", "sheet"), ("marbles", "bag"), ("cookies", "tray"), ("books", "shelf"),
)  # fmt: skip
PLURAL_CONTAINER = {"box": "boxes", "shelf": "shelves"}


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int
    steps: list[str]
    template: str


def _containers(word: str) -> str:
    return PLURAL_CONTAINER.get(word, word + "s")


def _groups(rng: random.Random) -> Problem:
    name, (item, box) = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return Problem(
        f"{name} has {a} {_containers(box)} with {b} {item} in each {box}. How many {item} "
        "are there in all?",
        a * b,
        [f"There are {a} {_containers(box)} with {b} {item} each, so {a} * {b} = {a * b}."],
        "groups",
    )


def _gave_away(rng: random.Random) -> Problem:
    name, friend = rng.sample(NAMES, 2)
    item = rng.choice(THINGS)[0]
    a = rng.randint(8, 30)
    b = rng.randint(1, a - 1)
    return Problem(
        f"{name} had {a} {item}. {name} gave {b} of them to {friend}. How many {item} does "
        f"{name} have left?",
        a - b,
        [f"{name} gave away {b} of {a} {item}, so {a} - {b} = {a - b} are left."],
        "gave_away",
    )


def _morning_afternoon(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(THINGS)[0]
    a, b = rng.randint(3, 25), rng.randint(3, 25)
    return Problem(
        f"{name} collected {a} {item} in the morning and {b} {item} in the afternoon. How "
        f"many {item} did {name} collect in total?",
        a + b,
        [f"In total {name} collected {a} + {b} = {a + b} {item}."],
        "morning_afternoon",
    )


def _share(rng: random.Random) -> Problem:
    item = rng.choice(THINGS)[0]
    k, each = rng.randint(2, 6), rng.randint(2, 8)
    total = k * each
    return Problem(
        f"{total} {item} are shared equally among {k} children. How many {item} does each "
        "child get?",
        each,
        [f"Each child gets {total} / {k} = {each} {item}."],
        "share",
    )


def _price(rng: random.Random) -> Problem:
    thing, things = rng.choice(
        (("notebook", "notebooks"), ("sandwich", "sandwiches"), ("toy car", "toy cars"),
         ("kite", "kites"), ("ball", "balls"), ("cup", "cups"))
    )  # fmt: skip
    price, count = rng.randint(2, 9), rng.randint(2, 8)
    return Problem(
        f"A {thing} costs {price} dollars. How many dollars do {count} {things} cost?",
        price * count,
        [f"{count} {things} cost {count} * {price} = {price * count} dollars."],
        "price",
    )


def _savings(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    per_week, weeks = rng.randint(2, 12), rng.randint(2, 9)
    return Problem(
        f"{name} saves {per_week} dollars every week. How many dollars does {name} save in "
        f"{weeks} weeks?",
        per_week * weeks,
        [f"In {weeks} weeks {name} saves {weeks} * {per_week} = {per_week * weeks} dollars."],
        "savings",
    )


def _older(rng: random.Random) -> Problem:
    name, other = rng.sample(NAMES, 2)
    age, diff = rng.randint(4, 15), rng.randint(2, 9)
    return Problem(
        f"{name} is {age} years old. {other} is {diff} years older than {name}. How old is "
        f"{other}?",
        age + diff,
        [f"{other} is {age} + {diff} = {age + diff} years old."],
        "older",
    )


def _shelf(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(THINGS)[0]
    a, b = rng.randint(5, 20), rng.randint(2, 10)
    c = rng.randint(1, a + b - 1)
    return Problem(
        f"There are {a} {item} on a table. {name} puts {b} more on it and then takes {c} "
        f"away. How many {item} are on the table now?",
        a + b - c,
        [
            f"After adding {b} there are {a} + {b} = {a + b} {item}.",
            f"After taking {c} away there are {a + b} - {c} = {a + b - c} {item}.",
        ],
        "shelf",
    )


def _packs_used(rng: random.Random) -> Problem:
    name, (item, pack) = rng.choice(NAMES), rng.choice(THINGS)
    packs, per = rng.randint(2, 6), rng.randint(3, 8)
    used = rng.randint(1, packs * per - 1)
    total = packs * per
    return Problem(
        f"{name} buys {packs} {_containers(pack)} of {item}. Each {pack} has {per} {item}. "
        f"{name} uses {used} of them. How many {item} are left?",
        total - used,
        [
            f"{name} buys {packs} * {per} = {total} {item}.",
            f"After using {used}, {total} - {used} = {total - used} are left.",
        ],
        "packs_used",
    )


def _legs(rng: random.Random) -> Problem:
    animal, legs = rng.choice((("dogs", 4), ("chickens", 2), ("spiders", 8), ("cats", 4)))
    n = rng.randint(2, 9)
    return Problem(
        f"A farm has {n} {animal}. How many legs do the {animal} have altogether?",
        n * legs,
        [f"Each of the {animal} has {legs} legs, so {n} * {legs} = {n * legs} legs."],
        "legs",
    )


def _pages(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    per_day, days = rng.randint(3, 15), rng.randint(2, 7)
    return Problem(
        f"{name} reads {per_day} pages every day for {days} days. How many pages does {name} read?",
        per_day * days,
        [f"{name} reads {days} * {per_day} = {per_day * days} pages."],
        "pages",
    )


def _bus(rng: random.Random) -> Problem:
    start, off, on = rng.randint(10, 30), rng.randint(1, 9), rng.randint(1, 9)
    return Problem(
        f"A bus has {start} people on it. At the first stop {off} people get off and {on} "
        "people get on. How many people are on the bus now?",
        start - off + on,
        [
            f"After {off} get off there are {start} - {off} = {start - off} people.",
            f"After {on} get on there are {start - off} + {on} = {start - off + on} people.",
        ],
        "bus",
    )


TEMPLATES: tuple[Callable[[random.Random], Problem], ...] = (
    _groups, _gave_away, _morning_afternoon, _share, _price, _savings, _older, _shelf,
    _packs_used, _legs, _pages, _bus,
)  # fmt: skip


def make_problem(task: str, seed: int, index: int) -> Problem:
    order = list(TEMPLATES)
    random.Random(f"{task}:order:{seed}").shuffle(order)
    template = order[index % len(order)]
    return template(random.Random(f"{task}:{seed}:{index}"))


@dataclass
class WordProblemsTask:
    """Generated one- and two-step arithmetic word problems with whole-number answers."""

    name: str = "word_problems"
    description: str = (
        "Generated simple word problems (12 templates: groups, sharing, prices, ages, ...), "
        "whole-number answers."
    )
    kind: AnswerKind = AnswerKind.number
    source: str = "generated"

    def item(self, seed: int, index: int) -> TaskItem:
        p = make_problem(self.name, seed, index)
        return TaskItem(
            task=self.name,
            id=f"s{seed}-{index}",
            question=p.question,
            answer=str(p.answer),
            kind=AnswerKind.number,
            rationale=[*p.steps, f"The answer is: {p.answer}"],
            meta={"template": p.template},
        )

    def items(self, n: int | None = None, seed: int = 0) -> list[TaskItem]:
        return [self.item(seed, i) for i in range(100 if n is None else n)]

    def demos(self, k: int = 3) -> list[Demo]:
        return default_demos(AnswerKind.number)[:k]
