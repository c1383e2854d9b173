"""The transformers reward engine on a tiny random-weights PRM: it loads and scores, a model
failure fails only its call (503), and a failure that leaves the engine unusable (out of
memory, a CUDA error) turns /health unhealthy so the service reloads the model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from services.model_server.app import create_app
from services.model_server.engines.reward_engine import TransformersRewardEngine
from services.model_server.settings import ModelServerSettings
from shared.errors import EngineError
from shared.reward import REWARD_CONFIG_FILE, encode_steps, pick_step_tag
from shared.schemas import Role

pytestmark = pytest.mark.unit

QUESTION = "What is 2 + 3?"
STEPS = ["We add 2 and 3.", "2 + 3 = 5.", "The answer is: 5"]

RECOVERABLE = RuntimeError("expected scalar type Float but found Half")
FATAL = [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: an illegal memory access was encountered"),
]


@pytest.fixture(scope="module")
def prm_folder(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PRM exported as train_prm exports one: a token-classification model (random weights
    of a two-layer Llama over the embedded model's tokenizer) beside its ``reward.json``."""
    from transformers import LlamaConfig, LlamaForTokenClassification

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-prm")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForTokenClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tag, tag_id = pick_step_tag(tokenizer)
    config_file = {"kind": "prm", "step_tag": tag, "step_tag_id": tag_id}
    (folder / REWARD_CONFIG_FILE).write_text(json.dumps(config_file))
    return folder


def settings(folder: Path) -> ModelServerSettings:
    return ModelServerSettings(
        role=Role.reward, model=str(folder), dtype="float32", device="cpu", threads=1
    )


@pytest.fixture
async def engine(prm_folder: Path) -> AsyncIterator[TransformersRewardEngine]:
    eng = TransformersRewardEngine(settings(prm_folder), str(prm_folder))
    await eng.start()
    yield eng
    await eng.close()


def failing(exc: BaseException) -> Callable[..., Any]:
    """A model whose forward pass raises ``exc``."""

    def forward(**_: Any) -> Any:
        raise exc

    return forward


async def test_the_reward_engine_scores_each_tag(engine: TransformersRewardEngine) -> None:
    assert engine.healthy() and engine.max_model_len == 256
    enc = encode_steps(engine.tokenizer, QUESTION, STEPS, engine.step_tag_id)
    (scores,) = await engine.reward([enc])
    assert len(scores) == len(STEPS)
    assert all(0.0 <= s <= 1.0 for s in scores)


async def test_a_failing_reward_call_is_an_engine_error_and_the_engine_serves_on(
    engine: TransformersRewardEngine,
) -> None:
    enc = encode_steps(engine.tokenizer, QUESTION, STEPS, engine.step_tag_id)
    expected = await engine.reward([enc])
    model, engine._model = engine._model, failing(RECOVERABLE)
    with pytest.raises(EngineError, match="RuntimeError: expected scalar type Float"):
        await engine.reward([enc])
    assert engine.healthy() and engine.fatal is None
    engine._model = model
    assert await engine.reward([enc]) == expected


@pytest.mark.parametrize("exc", FATAL, ids=["out-of-memory", "cuda-error"])
async def test_a_fatal_reward_failure_makes_the_engine_unhealthy(
    engine: TransformersRewardEngine, exc: BaseException
) -> None:
    enc = encode_steps(engine.tokenizer, QUESTION, STEPS, engine.step_tag_id)
    engine._model = failing(exc)
    with pytest.raises(EngineError, match=type(exc).__name__):
        await engine.reward([enc])
    assert not engine.healthy()
    assert engine.fatal is not None and engine.fatal.startswith(type(exc).__name__)


async def until_ready(client: Any) -> None:
    for _ in range(1000):
        if (await client.get("/ready")).status_code == 200:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the reward model never became ready")


@pytest.mark.parametrize(
    ("exc", "health"),
    [(RECOVERABLE, 200), (FATAL[0], 503)],
    ids=["recoverable", "out-of-memory"],
)
async def test_a_reward_model_failure_is_a_503_and_only_a_fatal_one_fails_health(
    prm_folder: Path, asgi_client: Any, exc: BaseException, health: int
) -> None:
    engine = TransformersRewardEngine(settings(prm_folder), str(prm_folder))
    app = create_app(settings(prm_folder), engine=engine)
    app.state.model.on_unrecoverable = lambda: None  # a failed reload must not stop pytest
    async with asgi_client(app) as client:
        await until_ready(client)
        engine._model = failing(exc)
        r = await client.post("/v1/reward", json={"question": QUESTION, "solutions": [STEPS]})
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["type"] == "engine_error"
        assert type(exc).__name__ in error["message"]
        h = await client.get("/health")
        assert h.status_code == health, h.text
