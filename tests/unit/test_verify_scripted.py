"""The scripted verifiers: gold rationales of every generated bucket pass, each kind of
corruption is flagged at its step with the right sentence, unreadable attempts get the error
marker."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator

import pytest

from shared.tasks import arithmetic, get_task, word_sorting
from shared.tasks.base import TaskItem
from shared.verify import (
    ERROR_MARKER,
    ArithmeticVerifier,
    QuestionError,
    Verdict,
    WordSortingVerifier,
    parse_feedback,
    resolve_task,
    scripted_verifier,
)
from shared.verify.verdict import error_feedback

pytestmark = pytest.mark.unit

ARITHMETIC = ArithmeticVerifier()
WORDS = WordSortingVerifier()
ARITHMETIC_TASKS = ("multistep_arithmetic_seen", "multistep_arithmetic_unseen")
WORD_TASKS = ("word_sorting_seen", "word_sorting_unseen")
SEEDS = (0, 1, 2)
PER_SEED = 80


def items(task: str) -> Iterator[TaskItem]:
    for seed in SEEDS:
        yield from get_task(task).items(PER_SEED, seed=seed)


def solution(lines: list[str]) -> str:
    return "\n".join(lines)


def label(line: str) -> str:
    return line[1 : line.index(")")]


def expect_error(verdict: Verdict, lines: list[str], index: int, segment: str, reason: str) -> None:
    """``verdict`` flags ``lines[index]`` with this segment and reason, in the one sentence."""
    step = label(lines[index])
    previous = label(lines[index - 1]) if index else None
    assert not verdict.correct and not verdict.unparseable, verdict
    assert (verdict.step, verdict.step_index) == (step, index), verdict
    assert (verdict.segment, verdict.reason) == (segment, reason), verdict
    assert verdict.feedback == error_feedback(step, previous, segment, reason)


# -- gold rationales pass ---------------------------------------------------------------------


@pytest.mark.parametrize("task", ARITHMETIC_TASKS + WORD_TASKS)
def test_verify_gold_rationales_of_every_bucket_are_never_flagged(task: str) -> None:
    verifier = scripted_verifier(task)
    assert verifier is not None
    buckets: set[tuple[object, ...]] = set()
    for item in items(task):
        assert item.rationale is not None
        verdict = verifier.verify(item.question, solution(item.rationale))
        last = label(item.rationale[-2])
        assert verdict.correct, (item.question, verdict)
        assert verdict.feedback == (
            f"Step (1) to ({last}) are correct. The final response is also correct."
        )
        assert verdict.step is None and verdict.segment is None and verdict.reason is None
        meta = item.meta
        buckets.add((meta.get("length"), tuple(meta.get("depth_levels", ())), meta["bucket"]))
    if task.startswith("multistep"):
        expected = arithmetic.SEEN if task.endswith("_seen") else arithmetic.UNSEEN
        assert {(length, depth) for length, depth, _ in buckets} == set(expected)


@pytest.mark.parametrize(
    "words",
    [
        ["apple"],
        ["pear", "apple", "plum"],
        ["care", "career", "cared"],  # every word ties for four letters, a prefix of another
        ["abc", "abd", "ab", "a"],
        ["people", "perfect", "polar", "pepper"],
        ["zebra", "zeal", "zero", "zone", "zoo"],
    ],
)
def test_verify_word_sorting_gold_with_ties_and_prefixes_passes(words: list[str]) -> None:
    lines = word_sorting.rationale(words)
    verdict = WORDS.verify(word_sorting.question_text(words), solution(lines))
    assert verdict.correct, (lines, verdict)


def test_verify_arithmetic_accepts_any_partition_and_order_of_calculation() -> None:
    question = "((1 + 2 * 3) - (4 - 5)) ="
    lines = [
        '(1) This equation can be written as "(A - (4 - 5))", where A = (1 + 2 * 3).',
        "(2) Let's calculate A = (1 + 2 * 3) = (1 + 6) = 7.",
        "(3) Then, the final equation is (A - (4 - 5)) = (7 - (4 - 5)) = (7 - -1) = 8.",
        "(Final response) So the answer is 8.",
    ]
    assert ARITHMETIC.verify(question, solution(lines)).correct
    reordered = [
        '(1) This equation can be written as "(A - B)", where A = (1 + 2 * 3) and B = (4 - 5).',
        "(2) Let's calculate B = (4 - 5) = -1.",
        "(3) Let's calculate A = (1 + 2 * 3) = 7.",
        "(4) Then, the final equation is (A - B) = (7 - -1) = 8.",
        "(Final response) So the answer is 8.",
    ]
    assert ARITHMETIC.verify(question, solution(reordered)).correct


# -- exact sentences --------------------------------------------------------------------------

EXAMPLE_Q = "((7 - -1 + -1) - (-7 + 3 * -9)) ="
EXAMPLE = arithmetic.rationale("((7 - -1 + -1) - (-7 + 3 * -9))")


def test_verify_arithmetic_calculation_error_sentence() -> None:
    lines = list(EXAMPLE)
    lines[1] = lines[1].replace("(8 + -1) = 7", "(8 + -1) = 6")
    verdict = ARITHMETIC.verify(EXAMPLE_Q, solution(lines))
    assert verdict.feedback == (
        'Step (1) is correct. In step (2) the part "(8 + -1) = 6" is incorrect. '
        "This is because there is a calculation error, since (8 + -1) is 7, not 6."
    )


def test_verify_arithmetic_answer_error_sentence() -> None:
    lines = [*EXAMPLE[:-1], "(Final response) So the answer is 40."]
    verdict = ARITHMETIC.verify(EXAMPLE_Q, solution(lines))
    assert verdict.feedback == (
        'Step (1) to (4) are correct. In step (Final response) the part "the answer is 40" '
        "is incorrect. This is because this answer is inconsistent with the result in step (4)."
    )
    assert verdict.step == "Final response" and verdict.step_index == 4


def test_verify_word_sorting_letter_error_sentence() -> None:
    words = ["pear", "apple", "plum"]
    lines = word_sorting.rationale(words)
    lines[0] = lines[0].replace('"apple"="a" (1)', '"apple"="b" (2)')
    verdict = WORDS.verify(word_sorting.question_text(words), solution(lines))
    assert verdict.feedback == (
        'In step (1) the part ""apple"="b" (2)" is incorrect. This is because the first letter '
        'of "apple" should be "a".'
    )


# -- arithmetic corruptions -------------------------------------------------------------------

_CHAIN_RE = re.compile(r"^\((\d+)\) (Let's calculate [A-Z] = |Then, the final equation is )")
Made = tuple[list[str], int, str, str]
"""A corrupted rationale, the index of the step to flag, the segment and the reason."""
Corruption = Callable[[list[str], random.Random], Made | None]


def _chain(line: str) -> tuple[str, list[str]]:
    match = _CHAIN_RE.match(line)
    assert match is not None
    return line[: match.end()], line[match.end() : -1].split(" = ")


def wrong_result(lines: list[str], rng: random.Random) -> Made:
    """A calculation's last value off by a few."""
    index = rng.randrange(1, len(lines) - 2)
    head, terms = _chain(lines[index])
    value = int(terms[-1])
    wrong = value + rng.choice([-3, -1, 1, 2])
    terms[-1] = str(wrong)
    out = list(lines)
    out[index] = head + " = ".join(terms) + "."
    previous = terms[-2]
    segment = f"{previous} = {wrong}"
    return (
        out,
        index,
        segment,
        f"there is a calculation error, since {previous} is {value}, not {wrong}",
    )


def wrong_substitution(lines: list[str], rng: random.Random) -> Made:
    """One letter's value put wrongly into the final equation."""
    index = len(lines) - 2
    head, terms = _chain(lines[index])
    values = {}
    for i, line in enumerate(lines[1:index], start=1):
        var = line.split("calculate ")[1][0]
        values[var] = (int(_chain(line)[1][-1]), label(lines[i]))
    var = rng.choice(sorted(values))
    value, where = values[var]
    wrong = value + rng.choice([-2, 1, 5])
    terms[1] = re.sub(r"[A-Z]", lambda m: str(wrong if m[0] == var else values[m[0]][0]), terms[0])
    out = list(lines)
    out[index] = head + " = ".join(terms) + "."
    return out, index, f"{terms[0]} = {terms[1]}", f"{var} = {value} in step ({where}), not {wrong}"


def used_before_computed(lines: list[str], rng: random.Random) -> Made:
    """A calculation step left out (the later steps renumbered)."""
    drop = rng.randrange(1, len(lines) - 2)
    var = lines[drop].split("calculate ")[1][0]
    kept = [line for i, line in enumerate(lines) if i != drop]
    out = [
        re.sub(r"^\(\d+\)", f"({i + 1})", line) if i < len(kept) - 1 else line
        for i, line in enumerate(kept)
    ]
    index = len(out) - 2
    _, terms = _chain(out[index])
    return (
        out,
        index,
        f"{terms[0]} = {terms[1]}",
        f"{var} has not been calculated in previous steps",
    )


def wrong_answer(lines: list[str], rng: random.Random) -> Made:
    value = int(lines[-1].split("answer is ")[1][:-1])
    wrong = value + rng.choice([-10, -1, 1, 7])
    out = [*lines[:-1], f"(Final response) So the answer is {wrong}."]
    step = label(lines[-2])
    return (
        out,
        len(out) - 1,
        f"the answer is {wrong}",
        (f"this answer is inconsistent with the result in step ({step})"),
    )


def wrong_part(lines: list[str], rng: random.Random) -> Made:
    """A number changed inside one part of the partition."""
    parts = re.findall(r"([A-Z]) = (\([^()]*\))", lines[0])
    var, text = rng.choice(parts)
    numbers = list(re.finditer(r"-?\d+", text))
    pick = rng.choice(numbers)
    changed = text[: pick.start()] + str(int(pick[0]) + 1) + text[pick.end() :]
    out = [lines[0].replace(f"{var} = {text}", f"{var} = {changed}"), *lines[1:]]
    reason = f"it does not match the original equation, where this part is {text}"
    return out, 0, f"{var} = {changed}", reason


def wrong_outer(lines: list[str], rng: random.Random) -> Made:
    """An operator of the outer equation changed."""
    outer = lines[0].split('"')[1]
    ops = list(re.finditer(r" ([-+*]) ", outer))
    pick = rng.choice(ops)
    new = rng.choice([o for o in "+-*" if o != pick[1]])
    changed = outer[: pick.start(1)] + new + outer[pick.end(1) :]
    out = [lines[0].replace(f'"{outer}"', f'"{changed}"'), *lines[1:]]
    # {question} is filled in by the test: the reason quotes the question's expression.
    return out, 0, changed, "it is not consistent with the original equation: {question}"


ARITHMETIC_CORRUPTIONS: dict[str, Corruption] = {
    "wrong_result": wrong_result,
    "wrong_substitution": wrong_substitution,
    "used_before_computed": used_before_computed,
    "wrong_answer": wrong_answer,
    "wrong_partition_part": wrong_part,
    "wrong_partition_outer": wrong_outer,
}


@pytest.mark.parametrize("kind", sorted(ARITHMETIC_CORRUPTIONS))
@pytest.mark.parametrize("task", ARITHMETIC_TASKS)
def test_verify_arithmetic_corruption_is_flagged_at_its_step(task: str, kind: str) -> None:
    rng = random.Random(f"{task}:{kind}")
    flagged = 0
    for item in items(task):
        assert item.rationale is not None
        made = ARITHMETIC_CORRUPTIONS[kind](list(item.rationale), rng)
        if made is None:
            continue
        lines, index, segment, reason = made
        question = item.question
        reason = reason.format(question=question.removesuffix(" ="))
        expect_error(ARITHMETIC.verify(question, solution(lines)), lines, index, segment, reason)
        flagged += 1
    assert flagged >= len(SEEDS) * PER_SEED // 2


# -- word sorting corruptions -----------------------------------------------------------------

_ENTRY_RE = re.compile(r'"([a-z]+)"=(?:"([a-z])"|\(end\)) \((\d+)\)')


def _letters_lines(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if " letter" in line and ": " in line]


def _entry(lines: list[str], rng: random.Random) -> tuple[int, re.Match[str], int]:
    """A letters step, one of its entries with a letter, and the letter's position."""
    while True:
        index = rng.choice(_letters_lines(lines))
        entries = [m for m in _ENTRY_RE.finditer(lines[index]) if m[2]]
        if entries:
            break
    match = rng.choice(entries)
    word, letter = match[1], match[2]
    ordinal = lines[index].split("their ")[1].split(" letters")[0] if index else "first"
    position = {word_sorting.ordinal(n): n for n in range(30)}[ordinal]
    assert word[position] == letter
    return index, match, position


def _replace(line: str, match: re.Match[str], new: str) -> str:
    return line[: match.start()] + new + line[match.end() :]


def ws_not_in_list(lines: list[str], rng: random.Random) -> Made:
    """A word of step (1) replaced by one the list does not have."""
    listed = " ".join(m[1] for m in _ENTRY_RE.finditer(lines[0]))  # the question's order
    _, match, _ = _entry(lines[:1], rng)
    stranger = match[1] + "x"
    new = f'"{stranger}"="{match[2]}" ({match[3]})'
    out = [_replace(lines[0], match, new), *lines[1:]]
    reason = f'"{stranger}" is not in the list of words provided by the question statement: '
    return out, 0, new, reason + listed


def ws_wrong_letter(lines: list[str], rng: random.Random) -> Made:
    index, match, position = _entry(lines, rng)
    word, letter = match[1], match[2]
    other = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c != letter])
    new = f'"{word}"="{other}" ({ord(other) - 96})'
    out = list(lines)
    out[index] = _replace(lines[index], match, new)
    ordinal = word_sorting.ordinal(position)
    return out, index, new, f'the {ordinal} letter of "{word}" should be "{letter}"'


def ws_wrong_index(lines: list[str], rng: random.Random) -> Made:
    index, match, _ = _entry(lines, rng)
    word, letter, number = match[1], match[2], int(match[3])
    new = f'"{word}"="{letter}" ({number + rng.choice([-1, 1, 2])})'
    out = list(lines)
    out[index] = _replace(lines[index], match, new)
    return out, index, new, f'the alphabetical order of the character "{letter}" should be {number}'


def ws_wrong_grouping(lines: list[str], rng: random.Random) -> Made | None:
    """Two neighbouring groups of a "We now have" step swapped."""
    candidates = [i for i, line in enumerate(lines) if "We now have: " in line and " < " in line]
    if not candidates:
        return None
    index = rng.choice(candidates)
    head, body = lines[index].split("We now have: ")
    groups = body[:-1].split(" < ")
    i = rng.randrange(len(groups) - 1)
    groups[i], groups[i + 1] = groups[i + 1], groups[i]
    out = list(lines)
    out[index] = f"{head}We now have: {' < '.join(groups)}."
    letters = label(lines[index - 1])
    first, second = (int(g[1 : g.index(")")]) for g in (groups[i + 1], groups[i]))
    reason = (
        f"words are not sorted in ascending order. Using results from step ({letters}), the "
        f"words with ({first}) come before the words with ({second})"
    )
    return out, index, groups[i], reason


def ws_wrong_subpart(lines: list[str], rng: random.Random) -> Made | None:
    """A word left out of a subpart that has more than two words, or the wrong letter."""
    heads = [i for i, line in enumerate(lines) if "Now sort this subpart" in line]
    if not heads:
        return None
    index = rng.choice(heads)
    line = lines[index]
    bracket = line[line.index("[") : line.index("]") + 1]
    ordinal = line.split("their ")[1].split(" letters")[0]
    out = list(lines)
    if bracket.count("?") >= 2 and rng.random() < 0.5:
        words = re.findall(r'"([a-z]+)"', bracket)
        smaller = "[" + " ? ".join(f'"{w}"' for w in words[1:]) + "]"
        out[index] = line.replace(bracket, smaller, 1)
        groups = label(_groups_line_before(lines, index))
        reason = (
            f"it is not a group of words with the same number in step ({groups}) that still "
            "needs sorting"
        )
        return out, index, smaller, reason
    position = {word_sorting.ordinal(n): n for n in range(30)}[ordinal]
    later = word_sorting.ordinal(position + 1)
    out[index] = line.replace(f"their {ordinal} letters", f"their {later} letters")
    n = position - 1
    shared = "first letter" if n == 0 else f"letters up to the {word_sorting.ordinal(n)}"
    reason = (
        f"the words of this subpart share their {shared}, so they are sorted by their {ordinal} "
        "letters"
    )
    return out, index, f"their {later} letters", reason


def _groups_line_before(lines: list[str], index: int) -> str:
    """The "We now have" step whose group a subpart head at ``index`` sorts."""
    depth = label(lines[index]).count(".")
    for line in reversed(lines[:index]):
        if "We now have" in line and label(line).count(".") == depth:
            return line
    raise AssertionError("no groups step")


def ws_wrong_hence(lines: list[str], rng: random.Random) -> Made | None:
    """Two words of a "Hence, we have" chain swapped."""
    candidates = [i for i, line in enumerate(lines) if "Hence, we have" in line and " < " in line]
    if not candidates:
        return None
    index = rng.choice(candidates)
    head, body = lines[index].split("Hence, we have ")
    words = body[:-1].split(" < ")
    i = rng.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    out = list(lines)
    out[index] = f"{head}Hence, we have {' < '.join(words)}."
    return out, index, " < ".join(words), f"{words[i + 1]} should come before {words[i]}"


def ws_wrong_final(lines: list[str], rng: random.Random) -> Made | None:
    words = lines[-1].split(": ")[1][:-1].split()
    if len(words) < 2:
        return None
    i = rng.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    answer = " ".join(words)
    out = [*lines[:-1], f"(Final response) So the answer is: {answer}."]
    reason = f"it is inconsistent with the result in step ({label(lines[-2])})"
    return out, len(out) - 1, answer, reason


WORD_CORRUPTIONS: dict[str, Corruption] = {
    "not_in_list": ws_not_in_list,
    "wrong_letter": ws_wrong_letter,
    "wrong_index": ws_wrong_index,
    "wrong_grouping": ws_wrong_grouping,
    "wrong_subpart": ws_wrong_subpart,
    "wrong_hence": ws_wrong_hence,
    "wrong_final_list": ws_wrong_final,
}


@pytest.mark.parametrize("kind", sorted(WORD_CORRUPTIONS))
@pytest.mark.parametrize("task", WORD_TASKS)
def test_verify_word_sorting_corruption_is_flagged_at_its_step(task: str, kind: str) -> None:
    rng = random.Random(f"{task}:{kind}")
    flagged = 0
    for item in items(task):
        assert item.rationale is not None
        made = WORD_CORRUPTIONS[kind](list(item.rationale), rng)
        if made is None:
            continue
        lines, index, segment, reason = made
        expect_error(WORDS.verify(item.question, solution(lines)), lines, index, segment, reason)
        flagged += 1
    assert flagged >= 10


# -- unreadable attempts and bad questions ----------------------------------------------------

GOLD_ARITH = solution(EXAMPLE)
GOLD_WORDS = solution(word_sorting.rationale(["pear", "apple", "plum"]))
WORDS_Q = word_sorting.question_text(["pear", "apple", "plum"])


@pytest.mark.parametrize(
    "attempt",
    [
        "",
        "The answer is 41.",
        GOLD_ARITH.replace("(Final response) So the answer is 41.", ""),  # no final response
        GOLD_ARITH.replace("(3) Let's", "(5) Let's"),  # labels out of order
        GOLD_ARITH.replace("(2) Let's calculate", "(2) We compute"),  # unknown kind of step
        GOLD_ARITH.replace("So the answer is 41.", "So the answer is forty-one."),
        GOLD_ARITH.replace("(2) Let's", "(1.1) Let's"),  # nested labels
        "\n".join(GOLD_ARITH.splitlines()[1:]),  # no partition first
        GOLD_ARITH + "\nThat is all.",
    ],
)
def test_verify_arithmetic_unreadable_attempt_gives_the_error_marker(attempt: str) -> None:
    verdict = ARITHMETIC.verify(EXAMPLE_Q, attempt)
    assert verdict.unparseable and not verdict.correct
    assert verdict.feedback == ERROR_MARKER
    assert verdict.detail


@pytest.mark.parametrize(
    "attempt",
    [
        "",
        GOLD_WORDS.replace("(3.1) We now have", "(3.1) Then we have"),
        GOLD_WORDS.replace('"pear"="e" (5)', "pear=e (5)"),
        GOLD_WORDS.replace("second letters", "umpteenth letters"),
        GOLD_WORDS.replace("(2) We now have", "(2.1) We now have"),  # nested under step (1)
        GOLD_WORDS.replace("So the answer is: apple pear plum.", "Done."),
    ],
)
def test_verify_word_sorting_unreadable_attempt_gives_the_error_marker(attempt: str) -> None:
    verdict = WORDS.verify(WORDS_Q, attempt)
    assert verdict.unparseable and verdict.feedback == ERROR_MARKER, verdict


@pytest.mark.parametrize(
    ("verifier", "question"),
    [
        (ARITHMETIC, "What is two plus two?"),
        (ARITHMETIC, "((A + 1) * 2) ="),
        (WORDS, "Sort these: b a"),
        (WORDS, "Sort the following words alphabetically:\nList: b a b"),
        (WORDS, "Sort the following words alphabetically:\nList: Bob alice"),
    ],
)
def test_verify_question_of_another_kind_is_a_question_error(
    verifier: ArithmeticVerifier | WordSortingVerifier, question: str
) -> None:
    with pytest.raises(QuestionError):
        verifier.verify(question, GOLD_ARITH)


# -- the feedback sentence reads back, the registry -------------------------------------------


def test_verify_feedback_sentence_reads_back_into_the_same_verdict() -> None:
    rng = random.Random(0)
    for item in get_task("word_sorting_seen").items(30):
        assert item.rationale is not None
        lines, *_ = ws_wrong_index(list(item.rationale), rng)
        verdict = WORDS.verify(item.question, solution(lines))
        labels = [label(line) for line in lines]
        assert parse_feedback(verdict.feedback, labels) == verdict
    correct = ARITHMETIC.verify(EXAMPLE_Q, GOLD_ARITH)
    assert parse_feedback(correct.feedback) == correct
    assert parse_feedback(ERROR_MARKER).unparseable
    assert parse_feedback("Looks fine to me.").unparseable


def test_verify_registry_knows_the_scripted_tasks_and_their_aliases() -> None:
    assert resolve_task("multistep_arithmetic") == "multistep_arithmetic_seen"
    assert scripted_verifier("multistep_arithmetic") is not None
    assert scripted_verifier("word_sorting_unseen") is not None
    assert scripted_verifier("date_understanding") is None
    assert resolve_task("date_understanding") == "date_understanding"
    with pytest.raises(KeyError, match="unknown task"):
        resolve_task("no_such_task")
    with pytest.raises(KeyError):
        resolve_task("jsonl:/etc/passwd")


def _mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    kind = rng.randrange(4)
    if kind == 0:  # a character dropped
        i = rng.randrange(len(text))
        return text[:i] + text[i + 1 :]
    if kind == 1:  # a character inserted
        i = rng.randrange(len(text))
        return text[:i] + rng.choice('()=-+*"?<[],. 0123456789ABZaez\n') + text[i:]
    if kind == 2:  # a line repeated
        i = rng.randrange(len(lines))
        return "\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])
    i, j = sorted(rng.sample(range(len(lines)), 2))  # two lines swapped
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


@pytest.mark.parametrize("task", ["multistep_arithmetic_unseen", "word_sorting_unseen"])
def test_verify_mangled_attempts_give_a_verdict_never_an_exception(task: str) -> None:
    verifier = scripted_verifier(task)
    assert verifier is not None
    rng = random.Random(task)
    for item in get_task(task).items(40, seed=7):
        assert item.rationale is not None
        for _ in range(10):
            attempt = _mutate(solution(item.rationale), rng)
            verdict = verifier.verify(item.question, attempt)
            assert verdict.correct == (verdict.feedback.endswith("also correct.")), verdict
            if verdict.unparseable:
                assert verdict.feedback == ERROR_MARKER
