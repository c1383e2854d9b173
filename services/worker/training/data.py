"""Training rows -> token ids and labels, with the original recipe's two defects ruled out.

A row is a chat whose last message is the assistant's rationale (``{"messages": [...]}``, as
the ``sft_data`` stage writes it, or ``{"preceding", "rationale"}``). The whole chat is
rendered with the model's chat template and tokenized once; the assistant turn's tokens are
found by character offsets (the rendered prompt is a prefix of the rendered chat), and only
they carry labels: every other label is -100, so the loss falls on the rationale alone.

* **One BOS.** A chat template that writes the BOS token and a tokenizer that adds one again
  gave the original two. Here the rendered text is tokenized without special tokens, every
  leading BOS is stripped, and one is put back when the model expects one (its template or its
  tokenizer writes it).
* **Truncation keeps the trained tokens.** A row over ``max_length`` loses the start of its
  last user message first (the text farthest from the rationale), then, if the rationale alone
  is still too long, the end of the rationale. A row left with no trained token is dropped and
  counted (``dropped["no_trained_tokens"]``), never trained on with an all-masked label.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.data_roots import DataRoots

IGNORE_INDEX = -100


class RowError(ValueError):
    """A row that cannot be trained on (its reason is counted)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class EncodedRow:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def n_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class DataReport:
    """What became of the rows of one split."""

    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    trained_tokens: int = 0
    max_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "kept": self.kept,
            "truncated": self.truncated,
            "dropped": dict(self.dropped),
            "dropped_total": sum(self.dropped.values()),
            "trained_tokens": self.trained_tokens,
            "max_tokens": self.max_tokens,
        }


def read_rows(paths: Iterable[str | Path], roots: DataRoots) -> Iterator[dict[str, Any]]:
    """JSONL rows of every file in order; an unparsable line is yielded as ``{}`` (and then
    dropped as ``bad_row``), so one bad line does not sink a run. Each file is checked to lie
    inside ``roots`` as it is opened (:class:`shared.data_roots.OutsideDataRoots` if not)."""
    for path in paths:
        with roots.open(path) as raw, io.TextIOWrapper(raw, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    row = {}
                yield row if isinstance(row, dict) else {}


def chat_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """The row as chat messages ending with the assistant's rationale."""
    messages = row.get("messages")
    if messages is None and "preceding" in row:
        messages = [
            {"role": "user", "content": row.get("preceding")},
            {"role": "assistant", "content": row.get("rationale")},
        ]
    if not isinstance(messages, list) or len(messages) < 2:
        raise RowError("bad_row")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise RowError("bad_row")
    if messages[-1].get("role") != "assistant" or not messages[-1]["content"].strip():
        raise RowError("no_rationale")
    if not any(m.get("role") == "user" and m["content"].strip() for m in messages[:-1]):
        raise RowError("no_preceding_text")
    return [{"role": str(m["role"]), "content": m["content"]} for m in messages]


def expects_bos(tokenizer: Any) -> bool:
    """Whether sequences of this model start with its BOS token: its chat template writes it,
    or its tokenizer adds it to plain text."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    probe = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    )
    if tokenizer.bos_token and probe.startswith(tokenizer.bos_token):
        return True
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def with_one_bos(ids: list[int], bos: int | None, expected: bool) -> list[int]:
    """Strip every leading BOS, then put exactly one back when the model expects it."""
    if bos is None:
        return ids
    start = 0
    while start < len(ids) and ids[start] == bos:
        start += 1
    return ([bos] if expected else []) + ids[start:]


class RowEncoder:
    """Tokenizes chat rows for one tokenizer and length limit."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.bos = tokenizer.bos_token_id
        self.expects_bos = expects_bos(tokenizer)

    def render(self, messages: list[dict[str, str]]) -> tuple[str, int, tuple[int, int]]:
        """The full chat text, where the assistant turn starts, and the character span of the
        last user message's content (the part truncation may shorten)."""
        full = self.tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = self.tokenizer.apply_chat_template(
            messages[:-1], tokenize=False, add_generation_prompt=True
        )
        if not full.startswith(prompt):
            raise RowError("template_mismatch")
        user = next(m for m in reversed(messages[:-1]) if m["role"] == "user")["content"]
        start = prompt.rfind(user)
        span = (start, start + len(user)) if start >= 0 and user else (len(prompt), len(prompt))
        return full, len(prompt), span

    def encode(self, row: dict[str, Any]) -> EncodedRow:
        messages = chat_messages(row)
        text, completion_start, (user_start, user_end) = self.render(messages)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
        # Tokens that end past the prompt belong to the rationale (a token straddling the
        # boundary is trained: it is what the model must produce there).
        trained = [end > completion_start for _, end in offsets]
        in_user = [
            user_start <= s and e <= user_end and not t
            for (s, e), t in zip(offsets, trained, strict=True)
        ]
        # A leading BOS written by the template is re-added by with_one_bos below.
        lead = 0
        while lead < len(ids) and ids[lead] == self.bos:
            lead += 1
        ids, trained, in_user = ids[lead:], trained[lead:], in_user[lead:]
        bos_len = 1 if self.expects_bos and self.bos is not None else 0
        truncated = False
        excess = bos_len + len(ids) - self.max_length
        if excess > 0:
            truncated = True
            user_positions = [i for i, u in enumerate(in_user) if u]
            cut = set(user_positions[:excess])
            keep = [i for i in range(len(ids)) if i not in cut]
            ids = [ids[i] for i in keep]
            trained = [trained[i] for i in keep]
            excess -= len(cut)
            if excess > 0:  # the rationale alone is too long: lose its end
                ids, trained = ids[:-excess], trained[:-excess]
        ids = with_one_bos(ids, self.bos, self.expects_bos)
        if bos_len:
            trained = [False, *trained]
        labels = [tok if t else IGNORE_INDEX for tok, t in zip(ids, trained, strict=True)]
        row_out = EncodedRow(ids, labels, truncated)
        if row_out.n_trained == 0:
            raise RowError("no_trained_tokens")
        return row_out

    def encode_all(self, rows: Iterable[dict[str, Any]]) -> tuple[list[EncodedRow], DataReport]:
        out: list[EncodedRow] = []
        report = DataReport()
        for row in rows:
            report.rows += 1
            try:
                enc = self.encode(row)
            except RowError as exc:
                report.dropped[exc.reason] += 1
                continue
            out.append(enc)
            report.kept += 1
            report.truncated += int(enc.truncated)
            report.trained_tokens += enc.n_trained
            report.max_tokens = max(report.max_tokens, len(enc.input_ids))
        return out, report


def split_dev(
    rows: list[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out ``fraction`` of the rows (seeded; at least one row, and never every row)."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_dev = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
    dev_idx = set(order[:n_dev])
    train = [r for i, r in enumerate(rows) if i not in dev_idx]
    dev = [r for i, r in enumerate(rows) if i in dev_idx]
    return train, dev


# --------------------------------------------------------------------------------------------
# TriPosT samples: plain text, every token trained, the feedback section weighted

FEEDBACK_MARK = "\nFeedback:"


@dataclass
class WeightedRow(EncodedRow):
    token_weights: list[float] = field(default_factory=list)
    """One weight per input token: the weight of predicting that token."""


@dataclass
class WeightedDataReport(DataReport):
    weighted_rows: int = 0
    weighted_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "weighted_rows": self.weighted_rows,
            "weighted_tokens": self.weighted_tokens,
        }


def sample_text(row: dict[str, Any]) -> tuple[str, int | None]:
    """A TriPosT sample's text and the character offset of its first "\\nFeedback:" (None
    when it has none). ``text`` is used, else ``prompt + completion``; a ``feedback_start``
    that does not point at "\\nFeedback:" is looked up again."""
    text = row.get("text")
    if not isinstance(text, str):
        prompt, completion = row.get("prompt"), row.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise RowError("bad_row")
        text = prompt + completion
    if not text.strip():
        raise RowError("bad_row")
    start = row.get("feedback_start")
    if not isinstance(start, int) or not text.startswith(FEEDBACK_MARK, start):
        start = text.find(FEEDBACK_MARK)
    return text, (start if start >= 0 else None)


class TripostEncoder:
    """Tokenizes TriPosT samples for one tokenizer and length limit.

    The text is tokenized as the model service tokenizes a prompt (the tokenizer's own
    special tokens, if any), and the end-of-sequence token is appended, so a trained model
    stops after its update. Every token is trained (a leading BOS is not a target); the tokens
    that end after the first "\\nFeedback:" weigh ``feedback_weight`` in rows of the weighted
    kinds (a row without a kind counts as weighted), 1 elsewhere: TriPosT's loss is
    sum(CE * mask * weight) / sum(mask). A row over ``max_length`` loses its end (and its
    end-of-sequence token) and is counted as truncated.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        feedback_weight: float,
        weighted_kinds: Iterable[str],
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.feedback_weight = feedback_weight
        self.weighted_kinds = frozenset(weighted_kinds)
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        probe = tokenizer("x", add_special_tokens=True)["input_ids"]
        self.expects_bos = bool(probe) and self.bos is not None and probe[0] == self.bos

    def weighted(self, row: dict[str, Any], feedback_start: int | None) -> bool:
        kind = row.get("kind")
        return feedback_start is not None and (kind is None or kind in self.weighted_kinds)

    def encode(self, row: dict[str, Any]) -> WeightedRow:
        text, start = sample_text(row)
        enc = self.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
        heavy = self.feedback_weight if self.weighted(row, start) else 1.0
        weights = [heavy if start is not None and end > start else 1.0 for _, end in offsets]
        trained = [end > begin for begin, end in offsets]  # special tokens are zero-width
        if self.eos is not None:
            ids.append(self.eos)
            weights.append(weights[-1] if weights else 1.0)
            trained.append(True)
        truncated = len(ids) > self.max_length
        ids, weights, trained = (
            ids[: self.max_length],
            weights[: self.max_length],
            trained[: self.max_length],
        )
        labels = [tok if t else IGNORE_INDEX for tok, t in zip(ids, trained, strict=True)]
        weights = [w if t else 0.0 for w, t in zip(weights, trained, strict=True)]
        out = WeightedRow(ids, labels, truncated, weights)
        if out.n_trained == 0:
            raise RowError("no_trained_tokens")
        return out

    def encode_all(
        self, rows: Iterable[dict[str, Any]]
    ) -> tuple[list[WeightedRow], WeightedDataReport]:
        out: list[WeightedRow] = []
        report = WeightedDataReport()
        for row in rows:
            report.rows += 1
            try:
                enc = self.encode(row)
            except RowError as exc:
                report.dropped[exc.reason] += 1
                continue
            out.append(enc)
            report.kept += 1
            report.truncated += int(enc.truncated)
            report.trained_tokens += enc.n_trained
            report.max_tokens = max(report.max_tokens, len(enc.input_ids))
            heavy = sum(1 for w in enc.token_weights if w not in (0.0, 1.0))
            report.weighted_tokens += heavy
            report.weighted_rows += int(heavy > 0)
        return out, report
