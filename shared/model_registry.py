"""The registry of trained models: one JSON card per model under the artifacts root.

A training job registers the model it exported (``<artifacts>/_models/<name>.json``); the
gateway lists the cards (``GET /v1/registry/models``), and a model service resolves a
registered name to the model's folder, at start-up (``MODEL_SERVER_MODEL=<name>``) or when
switched through its admin endpoint. The artifacts root is the volume that every service
shares, so the cards and the model folders they point at are seen by all of them.

The files on disk are the registry (there is no other copy): cards are written atomically,
and a name belongs to the job that registered it first, so a training job that finishes
twice (a worker killed after writing) registers its model once.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from shared.errors import Conflict, InvalidRequest, NotFound
from shared.files import read_json, write_json
from shared.schemas import Strict

logger = logging.getLogger(__name__)

REGISTRY_DIRNAME = "_models"
"""Under the artifacts root; the leading underscore keeps it apart from job folders."""
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class RegisteredModel(Strict):
    """What the registry knows of one trained model."""

    name: str = Field(pattern=MODEL_NAME_PATTERN, description="Registry name.")
    path: str = Field(description="The Hugging Face model folder (on the shared volume).")
    base_model: str = Field(description="The model it was fine-tuned from.")
    kind: Literal["rationalyst", "tripost", "prm", "orm"] = Field(
        default="rationalyst",
        description="What it was trained to do: write rationales (train_rationalyst), "
        "attempt, judge and update its own answers in TriPosT's format (train_tripost), or "
        "score steps (prm: train_prm) or whole solutions (orm: train_orm) as a reward model.",
    )
    method: Literal["full", "lora"] = Field(description="Full fine-tune or LoRA (merged).")
    job_id: str | None = Field(default=None, description="The training job that made it.")
    data: dict[str, Any] = Field(
        default_factory=dict, description="Training data: files, row counts, dropped rows."
    )
    metrics: dict[str, float | None] = Field(
        default_factory=dict, description="train_loss, eval_loss (first and last), steps..."
    )
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time, description="Unix time.")


class ModelRegistry:
    """Cards of trained models under ``<artifacts root>/_models/``."""

    def __init__(self, artifacts_dir: str | Path) -> None:
        self.root = Path(artifacts_dir).expanduser() / REGISTRY_DIRNAME

    def card_path(self, name: str) -> Path:
        check_model_name(name)
        return self.root / f"{name}.json"

    def register(self, model: RegisteredModel) -> RegisteredModel:
        """Write the card. Registering again from the same job replaces it (idempotent);
        a name that another job registered is a Conflict."""
        path = self.card_path(model.name)
        if path.is_file():
            existing = self._read(path)
            if existing is not None and existing.job_id != model.job_id:
                raise Conflict(
                    f"model name {model.name!r} is taken (registered by job {existing.job_id})",
                    field="model_name",
                )
        write_json(path, model.model_dump(mode="json"))
        logger.info("registered model %s at %s", model.name, model.path)
        return model

    def get(self, name: str) -> RegisteredModel:
        path = self.card_path(name)
        model = self._read(path) if path.is_file() else None
        if model is None:
            raise NotFound(f"no registered model {name!r}")
        return model

    def find(self, name: str) -> RegisteredModel | None:
        """The card of ``name``, or None when it is not a registered name."""
        try:
            return self.get(name)
        except (NotFound, InvalidRequest):
            return None

    def list(self) -> list[RegisteredModel]:
        """Newest first; unreadable cards are skipped with a warning."""
        if not self.root.is_dir():
            return []
        models = [m for p in self.root.glob("*.json") if (m := self._read(p)) is not None]
        return sorted(models, key=lambda m: m.created_at, reverse=True)

    @staticmethod
    def _read(path: Path) -> RegisteredModel | None:
        try:
            return RegisteredModel.model_validate(read_json(path))
        except (OSError, ValueError, ValidationError) as exc:
            logger.warning("skipping unreadable model card %s: %s", path, exc)
            return None


def check_model_name(name: str) -> str:
    if not re.match(MODEL_NAME_PATTERN, name):
        raise InvalidRequest(
            f"invalid model name {name!r}: lowercase letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 64 characters",
            field="model_name",
        )
    return name
