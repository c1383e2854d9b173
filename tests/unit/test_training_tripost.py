"""TriPosT samples -> ids, labels and token weights; the weighted loss. Real SmolLM2 tokenizer,
a hand-made sample whose tokens are checked one by one."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from services.worker.training.data import IGNORE_INDEX, TripostEncoder, sample_text
from services.worker.training.weighted import WeightedCollator, weighted_token_loss
from shared.job_schemas import WEIGHTED_KINDS

pytestmark = pytest.mark.unit

PROMPT = "Q: 2 + 3 =\n"
ANSWER = "Answer: (1) 2 + 3 = 6.\n(Final response) So the answer is 6."
FEEDBACK = '\nFeedback: In step (1) the part "2 + 3 = 6" is incorrect.'
UPDATED = "\nUpdated Answer: (1) 2 + 3 = 5.\n(Final response) So the answer is 5."


def sample(kind: str | None = "improvement") -> dict[str, Any]:
    text = PROMPT + ANSWER + FEEDBACK + UPDATED
    row: dict[str, Any] = {"text": text, "feedback_start": len(PROMPT + ANSWER)}
    if kind is not None:
        row["kind"] = kind
    return row


def encoder(tokenizer: Any, max_length: int = 512) -> TripostEncoder:
    return TripostEncoder(tokenizer, max_length, 1.5, WEIGHTED_KINDS)


def test_tripost_weights_are_1_5_from_the_first_feedback_on(tokenizer: Any) -> None:
    row = sample()
    enc = encoder(tokenizer).encode(row)
    head = tokenizer(PROMPT + ANSWER, add_special_tokens=True)["input_ids"]
    tail = tokenizer(FEEDBACK + UPDATED, add_special_tokens=False)["input_ids"]
    # "\n" + "Feedback" never merge with the answer's last "." : the split is a token boundary
    assert enc.input_ids == [*head, *tail, tokenizer.eos_token_id]
    expected = [1.0] * len(head) + [1.5] * len(tail) + [1.5]  # the EOS ends the update
    assert enc.token_weights == expected
    assert enc.labels == enc.input_ids  # the whole text is trained (SmolLM2 adds no BOS)
    pieces = tokenizer.convert_ids_to_tokens(enc.input_ids)
    first_heavy = enc.token_weights.index(1.5)
    assert pieces[first_heavy] == "Ċ" and pieces[first_heavy + 1].startswith("Feed")
    assert tokenizer.decode(enc.input_ids[first_heavy:-1]) == FEEDBACK + UPDATED


@pytest.mark.parametrize(("kind", "weighted"), [("gold", False), ("non_improvement", True)])
def test_tripost_gold_rows_weigh_1_throughout(tokenizer: Any, kind: str, weighted: bool) -> None:
    enc = encoder(tokenizer).encode(sample(kind))
    assert (1.5 in enc.token_weights) is weighted
    assert set(enc.token_weights) <= {1.0, 1.5}


def test_tripost_feedback_start_is_looked_up_when_missing_or_wrong(tokenizer: Any) -> None:
    row = sample(kind=None)
    good = encoder(tokenizer).encode(row)
    for start in (None, 3):
        moved = {**row, "feedback_start": start}
        assert sample_text(moved)[1] == row["feedback_start"]
        assert encoder(tokenizer).encode(moved).token_weights == good.token_weights
    no_feedback = {"text": PROMPT + ANSWER}
    enc = encoder(tokenizer).encode(no_feedback)
    assert set(enc.token_weights) == {1.0}
    split = {"prompt": PROMPT, "completion": ANSWER + FEEDBACK}
    assert sample_text(split) == (PROMPT + ANSWER + FEEDBACK, len(PROMPT + ANSWER))


def test_tripost_truncation_keeps_the_start_and_counts(tokenizer: Any) -> None:
    rows, report = encoder(tokenizer, max_length=16).encode_all([sample(), {"text": " "}, {}])
    (enc,) = rows
    assert len(enc.input_ids) == 16 and enc.truncated
    assert tokenizer.eos_token_id not in enc.input_ids
    assert report.to_json()["dropped"] == {"bad_row": 2} and report.truncated == 1
    full, report = encoder(tokenizer).encode_all([sample(), sample("gold")])
    assert report.weighted_rows == 1
    assert report.weighted_tokens == sum(1 for w in full[0].token_weights if w == 1.5)
    assert all(lab != IGNORE_INDEX for lab in full[0].labels)


def test_tripost_loss_is_weighted_ce_over_the_number_of_trained_tokens() -> None:
    # two rows of 4 input tokens: position t of log_probs scores input token t + 1
    log_probs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])  # row 2: last is padding
    weights = torch.tensor([[1.0, 1.0, 1.5, 1.5], [1.0, 1.0, 1.5, 0.0]])
    loss = weighted_token_loss(log_probs, mask, weights)
    expected = (1.0 * 1 + 2.0 * 1.5 + 3.0 * 1.5 + 0.5 * 1 + 0.5 * 1.5) / 5
    assert loss.item() == pytest.approx(expected)
    # across gradient accumulation the count of the whole batch divides
    assert weighted_token_loss(log_probs, mask, weights, 10).item() == pytest.approx(
        expected * 5 / 10
    )
    # all weights 1: the plain mean CE that SFTTrainer computes
    ones = torch.ones_like(weights)
    assert weighted_token_loss(log_probs, mask, ones).item() == pytest.approx(7.0 / 5)


def test_tripost_collator_pads_weights_with_zero() -> None:
    batch = WeightedCollator(pad_token_id=2)(
        [
            {"input_ids": [5, 6, 7], "labels": [5, 6, 7], "token_weights": [1.0, 1.5, 1.5]},
            {"input_ids": [8], "labels": [8], "token_weights": [1.0]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    assert batch["token_weights"].tolist() == [[1.0, 1.5, 1.5], [1.0, 0.0, 0.0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
