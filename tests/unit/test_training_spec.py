"""The train_rationalyst spec (impossible values are 422s at submit) and the model registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from services.worker.stages import build_stage
from services.worker.stages.train import TrainStage, default_model_name
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.job_schemas import (
    PRESETS,
    JobKind,
    JobSpec,
    TrainPreset,
    TrainRationalystSpec,
    stage_kinds,
)
from shared.model_registry import ModelRegistry, RegisteredModel

pytestmark = pytest.mark.unit

ADAPTER: TypeAdapter[Any] = TypeAdapter(JobSpec)
DATA = {"train": ["/data/train.jsonl"]}


def spec(**fields: Any) -> Any:
    return ADAPTER.validate_python({"kind": "train_rationalyst", "data": DATA, **fields})


def test_training_spec_defaults_come_from_the_preset() -> None:
    s = spec()
    assert isinstance(s, TrainRationalystSpec)
    assert s.resolved() == PRESETS[TrainPreset.small]
    paper = spec(preset="paper", learning_rate=1e-5).resolved()
    assert paper["epochs"] == 20 and paper["learning_rate"] == 1e-5
    assert paper["batch_size"] * paper["gradient_accumulation_steps"] == 32
    assert paper["max_length"] == 1024 and paper["lr_scheduler"] == "cosine"
    assert spec(max_steps=7).resolved()["max_steps"] == 7


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"learning_rate": 0}, ("train_rationalyst", "learning_rate")),
        ({"epochs": -1}, ("train_rationalyst", "epochs")),
        ({"batch_size": 0}, ("train_rationalyst", "batch_size")),
        ({"max_length": 4}, ("train_rationalyst", "max_length")),
        ({"method": "qlora"}, ("train_rationalyst", "method")),
        ({"model_name": "Bad Name"}, ("train_rationalyst", "model_name")),
        ({"data": {}}, ("train_rationalyst", "data")),
        ({"data": {"job": "job-1", "train": ["/x"]}}, ("train_rationalyst", "data")),
        ({"data": {"train": []}}, ("train_rationalyst", "data", "train")),
        ({"device": "cpu", "dtype": "float16"}, ("train_rationalyst",)),
        ({"lr": 0.1}, ("train_rationalyst", "lr")),
    ],
)
def test_training_spec_rejects_impossible_values(
    fields: dict[str, Any], loc: tuple[str, ...]
) -> None:
    with pytest.raises(ValidationError) as err:
        spec(**fields)
    assert err.value.errors()[0]["loc"][: len(loc)] == loc


def test_training_is_one_stage_of_its_own_kind() -> None:
    s = spec(model_name="mine")
    assert stage_kinds(s.kind) == [JobKind.train_rationalyst]
    stage = build_stage(s, JobKind.train_rationalyst)
    assert isinstance(stage, TrainStage) and stage.single_shard
    assert stage.options == s
    assert default_model_name("job-abc") == "rationalyst-job-abc"


def card(name: str, job: str, created: float = 1.0) -> RegisteredModel:
    return RegisteredModel(
        name=name, path=f"/a/{job}/model", base_model="smollm2-135m-instruct", method="full",
        job_id=job, metrics={"eval_loss": 1.0}, created_at=created,
    )  # fmt: skip


def test_registry_registers_lists_newest_first_and_finds(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    assert reg.list() == []
    reg.register(card("a", "job-1", 1.0))
    reg.register(card("b", "job-2", 2.0))
    assert [m.name for m in reg.list()] == ["b", "a"]
    assert reg.get("a").job_id == "job-1"
    assert reg.find("nope") is None and reg.find("Not A Name") is None
    with pytest.raises(NotFound):
        reg.get("nope")


def test_registry_same_job_is_idempotent_another_job_conflicts(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    reg.register(card("a", "job-1"))
    reg.register(card("a", "job-1"))  # a finish step that ran twice
    assert len(reg.list()) == 1
    with pytest.raises(Conflict):
        reg.register(card("a", "job-2"))
    with pytest.raises(InvalidRequest):
        reg.card_path("../escape")


def test_registry_skips_unreadable_cards(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    reg.register(card("a", "job-1"))
    (reg.root / "broken.json").write_text("{not json")
    assert [m.name for m in reg.list()] == ["a"]
