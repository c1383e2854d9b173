"""Process and outcome reward models: the one input layout of training and serving.

A PRM reads its token-classification head at one dedicated step tag after each step; an ORM
reads its sequence-classification head at the tag after the whole solution (the last
non-pad token). :func:`encode_steps` and :func:`encode_outcome` build the input ids and the
tag positions; the ``train_prm``/``train_orm`` jobs and the reward service both call them, so
a step is tokenized the same way in both. Each step is tokenized on its own and the tag is
inserted as an id (never as text), so no merge across a step boundary or with the tag can make
the two differ; a question or step whose text happens to spell the tag loses those ids (vLLM's
STEP pooling reads every occurrence of the tag id).

The layout::

    [BOS if the tokenizer adds one] "Question: <q>\\nSolution:\\n"
    "<step 1>\\n" TAG "<step 2>\\n" TAG ...

This module imports no torch or transformers: ``tokenizer`` is any Hugging Face tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

RewardKind = Literal["prm", "orm"]

STEP_TAG_CANDIDATES: tuple[str, ...] = (
    "ки",  # Math-Shepherd's tag; one id in the Llama-2/Mistral vocabularies
    "<|reserved_special_token_0|>",  # Llama 3
    "<reponame>",  # SmolLM2 / StarCoder vocabularies: a rare added token, one id
    "<file_sep>",
)
"""Step tags tried in order when a training job names none: the first that is ONE id of the
base model's vocabulary (an existing, rare token; no embedding is added, so LoRA and vLLM's
STEP pooling work on the exported folder as is)."""

REWARD_CONFIG_FILE = "reward.json"
"""Written beside the exported model: kind, step tag and its id, label mode. The reward
service reads it to know the folder is a reward model and how to read it."""


@dataclass(frozen=True)
class RewardInput:
    """One solution as the model reads it."""

    input_ids: list[int]
    tag_positions: list[int]
    """Index of the tag after each step (PRM), or the one tag at the end (ORM)."""
    step_ends: list[int]
    """Length of the sequence once step i is in (PRM): to name the step that overflows."""


def single_token_id(tokenizer: Any, tag: str) -> int | None:
    """The id of ``tag`` when it is exactly one token of the vocabulary, else None."""
    ids = tokenizer(tag, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if len(ids) == 1 else None


def pick_step_tag(tokenizer: Any, tag: str | None = None) -> tuple[str, int]:
    """The step tag and its id: ``tag`` when given (it must be one id), else the first of
    :data:`STEP_TAG_CANDIDATES` that is. Raises ValueError when none is."""
    candidates = (tag,) if tag else STEP_TAG_CANDIDATES
    for cand in candidates:
        tid = single_token_id(tokenizer, cand)
        if tid is not None:
            return cand, tid
    if tag:
        raise ValueError(f"step_tag {tag!r} is not a single token of this tokenizer")
    raise ValueError(
        f"none of {list(STEP_TAG_CANDIDATES)} is a single token of this tokenizer; "
        "name one with step_tag"
    )


def header_text(question: str) -> str:
    return f"Question: {question.strip()}\nSolution:\n"


def _header_ids(tokenizer: Any, question: str, tag_id: int) -> list[int]:
    ids = list(tokenizer(header_text(question), add_special_tokens=True)["input_ids"])
    eos = getattr(tokenizer, "eos_token_id", None)
    if len(ids) > 1 and eos is not None and ids[-1] == eos:  # tokenizers that append EOS
        ids = ids[:-1]
    return [int(i) for i in ids if int(i) != tag_id]  # tags only after steps (STEP pooling)


def _piece(tokenizer: Any, text: str, tag_id: int) -> list[int]:
    ids = tokenizer(f"{text.strip()}\n", add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids if int(i) != tag_id]


def encode_steps(tokenizer: Any, question: str, steps: Sequence[str], tag_id: int) -> RewardInput:
    """The PRM's input: the question, then each step followed by the tag."""
    ids = _header_ids(tokenizer, question, tag_id)
    positions: list[int] = []
    ends: list[int] = []
    for step in steps:
        ids += _piece(tokenizer, step, tag_id)
        positions.append(len(ids))
        ids.append(tag_id)
        ends.append(len(ids))
    return RewardInput(ids, positions, ends)


def encode_outcome(
    tokenizer: Any, question: str, completion: str | Sequence[str], tag_id: int
) -> RewardInput:
    """The ORM's input: the question, the whole solution (steps joined by newlines, as the
    outcome rows of ``prm_labels`` carry them), then one tag, read as the last token."""
    text = completion if isinstance(completion, str) else "\n".join(s.strip() for s in completion)
    ids = _header_ids(tokenizer, question, tag_id) + _piece(tokenizer, text, tag_id)
    ids.append(tag_id)
    return RewardInput(ids, [len(ids) - 1], [len(ids)])


# --------------------------------------------------------------------------------------------
# Aggregates of step scores (a solution's score)


AGGREGATES = ("min", "prod", "last", "mean")
"""``min`` is Math-Shepherd's, ``prod`` OmegaPRM's, ``last`` search-and-learn's default."""


def aggregates(scores: Sequence[float]) -> dict[str, float]:
    """min, prod, last and mean of step scores; a solution without steps scores 0."""
    if not scores:
        return dict.fromkeys(AGGREGATES, 0.0)
    return {
        "min": min(scores),
        "prod": math.prod(scores),
        "last": scores[-1],
        "mean": math.fsum(scores) / len(scores),
    }


def probabilities(logits: Sequence[float]) -> float:
    """P(good) from the head's logits at one position: softmax's class 1 with two labels
    (hard labels, CE), sigmoid with one (soft labels or an ORM, BCE)."""
    if len(logits) == 1:
        x = float(logits[0])
        return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
    a, b = float(logits[0]), float(logits[1])
    return 1.0 / (1.0 + math.exp(a - b)) if b >= a else math.exp(b - a) / (1.0 + math.exp(b - a))


# --------------------------------------------------------------------------------------------
# Metrics of step-level (PRM) and solution-level (ORM) predictions


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative (ties count half), exact by ranks (Mann-Whitney U). None without both classes."""
    pairs = sorted(zip(scores, labels, strict=True), key=lambda p: p[0])
    n_pos = sum(1 for _, y in pairs if y)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        mid_rank = (i + 1 + j) / 2  # ranks i+1..j share their mean
        rank_sum += mid_rank * sum(1 for k in range(i, j) if pairs[k][1])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def classification_metrics(
    scores: Sequence[float], labels: Sequence[bool], threshold: float = 0.5
) -> dict[str, float | None]:
    """Accuracy, precision, recall and F1 of the positive class at ``threshold``, AUROC, the
    positive rate and the count."""
    n = len(scores)
    if n == 0:
        return {"n": 0.0, "accuracy": None, "f1": None, "auroc": None}
    pred = [s >= threshold for s in scores]
    tp = sum(1 for p, y in zip(pred, labels, strict=True) if p and y)
    fp = sum(1 for p, y in zip(pred, labels, strict=True) if p and not y)
    fn = sum(1 for p, y in zip(pred, labels, strict=True) if not p and y)
    correct = sum(1 for p, y in zip(pred, labels, strict=True) if p == bool(y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": float(n),
        "accuracy": correct / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": auroc(scores, labels),
        "positive_rate": sum(1 for y in labels if y) / n,
    }
