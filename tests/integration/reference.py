"""What engine tests compare against: prompts built the way a caller builds them, and
log-probs from one plain, cache-free transformers forward pass of the full text."""

from __future__ import annotations

from typing import Any

import torch

from services.model_server.engines.base import ScoreJob, encode


def chat(engine: Any, question: str) -> str:
    """The generation prompt of one user message, in the engine's chat template."""
    messages = [{"role": "user", "content": question}]
    return str(
        engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )


def prompt_ids(engine: Any, question: str) -> list[int]:
    return encode(engine.tokenizer, chat(engine, question))[0]


def full_logprobs(reference: Any, ids: list[int]) -> torch.Tensor:
    """log_softmax of one cache-free forward pass over ``ids``: row j-1 predicts token j."""
    with torch.inference_mode():
        logits = reference(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def job_of(context: str, continuations: list[str]) -> ScoreJob:
    """A score job: each continuation appended to the context, its characters as the span."""
    return ScoreJob(
        texts=[context + c for c in continuations],
        spans=[(len(context), len(context) + len(c)) for c in continuations],
    )
