"""The reward role on vLLM's pooling runner gives the transformers engine's step scores on the
same checkpoint: a PRM (token classification, STEP pooling at the step tag) and an ORM
(sequence classification), each exported as train_prm/train_orm export them (a seeded, untrained
head on the embedded model: the comparison needs a checkpoint, not a good one)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.model_server.settings import ModelServerSettings
from shared.reward import REWARD_CONFIG_FILE, encode_outcome, encode_steps, pick_step_tag
from shared.schemas import Role

pytestmark = [
    pytest.mark.integration,
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]

# float32 on both engines; different kernels add up in different orders (see test_vllm_engine)
TOL = 2e-3
QUESTION = "What is 2 + 3?"
SOLUTIONS = [
    ["We add 2 and 3.", "2 + 3 = 5.", "The answer is: 5"],
    ["We add 2 and 3.", "2 + 3 = 7.", "The answer is: 7"],
    ["The answer is: 5"],
]


def export(model_path: Path, folder: Path, kind: str) -> Path:
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tag, tag_id = pick_step_tag(tokenizer)
    if kind == "prm":
        model: Any = AutoModelForTokenClassification.from_pretrained(model_path, num_labels=2)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=1, problem_type="multi_label_classification"
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = {"kind": kind, "step_tag": tag, "step_tag_id": tag_id}
    (folder / REWARD_CONFIG_FILE).write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def checkpoints(
    model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("reward-ckpt")
    yield {kind: export(model_path, root / kind, kind) for kind in ("prm", "orm")}


async def scores(engine_kind: str, folder: Path) -> tuple[list[list[float]], Any]:
    from services.model_server.engines import build_reward_engine

    settings = ModelServerSettings(
        role=Role.reward, engine=engine_kind, model=str(folder), dtype="float32",
        max_model_len=512, vllm_kv_cache_gib=1,
    )  # fmt: skip
    engine: Any = build_reward_engine(settings)
    await engine.start()
    try:
        encode = encode_steps if engine.reward_kind == "prm" else encode_outcome
        inputs = [encode(engine.tokenizer, QUESTION, s, engine.step_tag_id) for s in SOLUTIONS]
        return await engine.reward(inputs), engine.kind
    finally:
        await engine.close()


@pytest.mark.parametrize("kind", ["prm", "orm"])
async def test_vllm_reward_scores_match_transformers(
    kind: str, checkpoints: dict[str, Path]
) -> None:
    expected, tf_kind = await scores("transformers", checkpoints[kind])
    got, vllm_kind = await scores("vllm", checkpoints[kind])
    assert (tf_kind, vllm_kind) == ("transformers", "vllm")
    n_scores = [len(s) for s in SOLUTIONS] if kind == "prm" else [1] * len(SOLUTIONS)
    assert [len(s) for s in got] == [len(s) for s in expected] == n_scores
    for g, e in zip(got, expected, strict=True):
        assert g == pytest.approx(e, abs=TOL)
