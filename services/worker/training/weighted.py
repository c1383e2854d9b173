"""TriPosT's weighted loss with TRL's SFTTrainer (imports torch and trl: the training child
process only).

TRL 1.16's SFTTrainer has no per-token weights (its masks are binary, folded into the labels),
so :class:`WeightedSFTTrainer` overrides ``compute_loss``: it runs the model's fused LM head
as TRL does (``model(**inputs, fused_lm_head=True)`` gives the shifted per-token log-probs and
the label mask) and weighs each token's loss with the ``token_weights`` column, which
:class:`WeightedCollator` pads with 0. The loss is
``sum(-log p * weight over trained tokens) / number of trained tokens``
(:func:`weighted_token_loss`), counted over the whole batch across gradient accumulation, as
TRL counts its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from trl import SFTTrainer

WEIGHTS = "token_weights"


def weighted_token_loss(
    log_probs: torch.Tensor,
    label_mask: torch.Tensor,
    weights: torch.Tensor,
    num_items: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """TriPosT's loss: sum(CE * mask * weight) / sum(mask).

    ``log_probs`` and ``label_mask`` are shifted, shape (B, T-1): position t scores input token
    t+1. ``weights`` has one weight per input token, shape (B, T): the weight of predicting
    it. ``num_items``: the trained tokens of the whole batch (gradient accumulation), else
    those of ``label_mask``."""
    w = weights[:, 1:].to(log_probs.dtype) * label_mask.to(log_probs.dtype)
    n = label_mask.sum() if num_items is None else num_items
    return (-log_probs * w).sum() / torch.as_tensor(n, device=log_probs.device).clamp(min=1)


@dataclass
class WeightedCollator:
    """Right-pads ``input_ids`` (pad id), ``labels`` (-100) and ``token_weights`` (0), and
    builds the attention mask."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(e["input_ids"]) for e in examples)

        def padded(key: str, value: float, dtype: torch.dtype) -> torch.Tensor:
            rows = [list(e[key]) + [value] * (length - len(e[key])) for e in examples]
            return torch.tensor(rows, dtype=dtype)

        return {
            "input_ids": padded("input_ids", self.pad_token_id, torch.long),
            "labels": padded("labels", -100, torch.long),
            WEIGHTS: padded(WEIGHTS, 0.0, torch.float32),
            "attention_mask": torch.tensor(
                [[1] * len(e["input_ids"]) + [0] * (length - len(e["input_ids"])) for e in examples]
            ),
        }


class WeightedSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss weighs each token by the batch's ``token_weights``."""

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        weights = inputs.pop(WEIGHTS)
        mode = "train" if model.training else "eval"
        outputs = model(**inputs, use_cache=False, fused_lm_head=True)
        loss = weighted_token_loss(
            outputs.log_probs, outputs.label_mask, weights, num_items_in_batch
        )
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        if outputs.is_top1 is not None:
            valid = outputs.label_mask.sum()
            accuracy = (outputs.is_top1.sum() / valid).item() if valid > 0 else 0.0
            self._metrics[mode]["mean_token_accuracy"].append(accuracy)
        return (loss, outputs) if return_outputs else loss
