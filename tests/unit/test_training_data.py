"""Training rows -> ids and labels: one BOS, loss on the rationale only, truncation that keeps
the trained tokens, and every dropped row counted. Real SmolLM2 tokenizer."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.worker.training.data import (
    IGNORE_INDEX,
    RowEncoder,
    RowError,
    chat_messages,
    split_dev,
    with_one_bos,
)

pytestmark = pytest.mark.unit

PRECEDING = "Question: (3 + 4) * 2 =\nAnswer: (1) This equation can be written as A * 2."
RATIONALE = "A is named but not computed yet, so work it out next."


def row(preceding: str = PRECEDING, rationale: str = RATIONALE) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": preceding},
            {"role": "assistant", "content": rationale},
        ]
    }


def trained_text(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    return str(tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100]))


def test_training_row_has_exactly_one_leading_bos(tokenizer: Any) -> None:
    enc = RowEncoder(tokenizer, 512).encode(row())
    bos = tokenizer.bos_token_id
    assert enc.input_ids[0] == bos
    assert enc.input_ids[1] != bos


def test_training_template_that_writes_bos_twice_still_gives_one(tokenizer: Any) -> None:
    tok = copy.deepcopy(tokenizer)
    # A template that writes the BOS itself in front of a tokenizer/template pair that also
    # starts with it: the original recipe's duplicate.
    tok.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    encoder = RowEncoder(tok, 512)
    assert encoder.expects_bos
    enc = encoder.encode(row())
    assert enc.input_ids[:2].count(tok.bos_token_id) == 1
    assert enc.input_ids[0] == tok.bos_token_id


def test_training_with_one_bos_strips_and_restores() -> None:
    assert with_one_bos([1, 1, 1, 5, 6], 1, True) == [1, 5, 6]
    assert with_one_bos([5, 6], 1, True) == [1, 5, 6]
    assert with_one_bos([1, 5, 6], 1, False) == [5, 6]
    assert with_one_bos([5, 6], None, True) == [5, 6]


def test_training_labels_cover_the_rationale_only(tokenizer: Any) -> None:
    enc = RowEncoder(tokenizer, 512).encode(row())
    assert len(enc.labels) == len(enc.input_ids)
    first = next(i for i, lab in enumerate(enc.labels) if lab != IGNORE_INDEX)
    assert all(lab == IGNORE_INDEX for lab in enc.labels[:first])  # the user turn is masked
    assert "assistant" in tokenizer.decode(enc.input_ids[:first])
    assert trained_text(tokenizer, enc.input_ids, enc.labels).startswith(RATIONALE)
    assert PRECEDING not in trained_text(tokenizer, enc.input_ids, enc.labels)
    assert enc.n_trained > 5 and not enc.truncated


def test_training_truncation_cuts_the_user_turn_first(tokenizer: Any) -> None:
    long = "filler words here " * 200 + PRECEDING
    enc = RowEncoder(tokenizer, 128).encode(row(preceding=long))
    assert enc.truncated and len(enc.input_ids) == 128
    assert enc.input_ids[0] == tokenizer.bos_token_id
    # every rationale token survives; what was cut is the start of the user's text
    assert trained_text(tokenizer, enc.input_ids, enc.labels).startswith(RATIONALE)
    assert "(1) This equation can be written as A * 2." in tokenizer.decode(enc.input_ids)


def test_training_overlong_rationale_keeps_its_start(tokenizer: Any) -> None:
    enc = RowEncoder(tokenizer, 64).encode(row(rationale="think more " * 100))
    assert enc.truncated and len(enc.input_ids) == 64
    assert enc.n_trained > 0
    assert trained_text(tokenizer, enc.input_ids, enc.labels).startswith("think more")


def test_training_rows_left_without_trained_tokens_are_dropped_and_counted(
    tokenizer: Any,
) -> None:
    encoder = RowEncoder(tokenizer, 16)  # shorter than the chat template's own tokens
    rows, report = encoder.encode_all([row(), row()])
    assert rows == []
    assert report.rows == 2 and report.kept == 0
    assert report.dropped == {"no_trained_tokens": 2}


def test_training_bad_rows_are_counted_by_reason(tokenizer: Any) -> None:
    rows = [
        row(),
        {"preceding": PRECEDING, "rationale": "Plain rows work too."},
        {"messages": [{"role": "user", "content": "hi"}]},
        row(rationale="   "),
        row(preceding=""),
        {},
    ]
    encoded, report = RowEncoder(tokenizer, 512).encode_all(rows)
    assert len(encoded) == 2 and report.kept == 2
    assert report.dropped == {"bad_row": 2, "no_rationale": 1, "no_preceding_text": 1}
    assert report.to_json()["dropped_total"] == 4


def test_training_chat_messages_rejects_a_user_last_turn() -> None:
    with pytest.raises(RowError) as err:
        chat_messages(
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}
        )
    assert err.value.reason == "no_rationale"


def test_training_split_dev_is_seeded_and_never_takes_everything() -> None:
    rows = [{"i": i} for i in range(40)]
    train, dev = split_dev(rows, 0.1, seed=3)
    assert len(dev) == 4 and len(train) == 36
    assert split_dev(rows, 0.1, seed=3) == (train, dev)
    assert {r["i"] for r in train} | {r["i"] for r in dev} == set(range(40))
    assert split_dev(rows[:1], 0.5, seed=0) == (rows[:1], [])
    assert split_dev(rows, 0.0, seed=0) == (rows, [])
