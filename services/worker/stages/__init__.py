"""The pipeline's stages, by kind."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from services.worker.stages.base import Stage
from services.worker.stages.extract import ExtractStage
from services.worker.stages.filter import FilterStage
from services.worker.stages.prefilter import PrefilterStage
from services.worker.stages.prm_labels import PrmLabelsStage
from services.worker.stages.sft import SftStage
from services.worker.stages.train import (
    TrainOrmStage,
    TrainRewardStage,
    TrainStage,
    TrainTripostStage,
)
from services.worker.stages.tripost import TripostCollectStage
from services.worker.stages.tripost_eval import TripostEvalStage
from shared.job_schemas import (
    ExtractOptions,
    FilterOptions,
    JobKind,
    JobStage,
    PrefilterOptions,
    PrmLabelsSpec,
    RationalePipelineSpec,
    SftOptions,
    TrainOrmSpec,
    TrainPrmSpec,
    TrainRationalystSpec,
    TrainTripostSpec,
    TripostCollectSpec,
    TripostEvalSpec,
    TripostSpec,
)

STAGES: dict[JobKind, tuple[type[Stage], type[BaseModel]]] = {
    JobKind.prefilter: (PrefilterStage, PrefilterOptions),
    JobKind.extract: (ExtractStage, ExtractOptions),
    JobKind.filter: (FilterStage, FilterOptions),
    JobKind.sft_data: (SftStage, SftOptions),
    JobKind.train_rationalyst: (TrainStage, TrainRationalystSpec),
    JobKind.tripost_collect: (TripostCollectStage, TripostCollectSpec),
    JobKind.train_tripost: (TrainTripostStage, TrainTripostSpec),
    JobKind.tripost_eval: (TripostEvalStage, TripostEvalSpec),
    JobKind.prm_labels: (PrmLabelsStage, PrmLabelsSpec),
    JobKind.train_prm: (TrainRewardStage, TrainPrmSpec),
    JobKind.train_orm: (TrainOrmStage, TrainOrmSpec),
}


def build_stage(spec: Any, stage: JobKind | JobStage, job_id: str = "") -> Stage:
    """The stage of a job, configured from its spec: a pipeline's per-stage options, a
    ``tripost`` job's options for that stage (:func:`tripost_stage_options`), or the
    single-stage spec's own fields."""
    if isinstance(stage, JobKind):
        stage = JobStage(stage, stage.value)
    cls, options_type = STAGES[stage.kind]
    options: BaseModel
    if isinstance(spec, RationalePipelineSpec):
        options = getattr(spec, stage.kind.value)
    elif isinstance(spec, TripostSpec):
        options = tripost_stage_options(spec, stage, job_id)
    else:
        options = options_type.model_validate(
            spec.model_dump(include=set(options_type.model_fields))
        )
    return cls(options, stage, spec)


def tripost_stage_options(spec: TripostSpec, stage: JobStage, job_id: str) -> BaseModel:
    """A stage of a ``tripost`` job as the single-stage spec it runs: the collection with the
    current model's attempts, the training from the current model on the last collection (or,
    at stage 0, on the gold rationales), the evaluation of the model just trained."""
    model = spec.model_for(stage.model, job_id)
    questions = {"task": spec.task, "items": spec.items, "seed": spec.seed}
    if stage.kind is JobKind.tripost_collect:
        return TripostCollectSpec.model_validate(
            {
                "kind": JobKind.tripost_collect,
                **questions,
                **spec.collect.model_dump(),
                "model": model,
                "sampling_seed": spec.seed + stage.iteration,
            }
        )
    if stage.kind is JobKind.train_tripost:
        rows = (
            f"{stage.folder}/gold.jsonl"
            if stage.produces == "gold"
            else f"tripost_collect-{stage.iteration}/output.jsonl"
        )
        return TrainTripostSpec.model_validate(
            {
                "kind": JobKind.train_tripost,
                **spec.train.model_dump(),
                "data": {"job": job_id, "path": rows, "dev_fraction": spec.dev_fraction},
                "base_model": model,
                "model_name": spec.model_for(stage.produces, job_id),
            }
        )
    if stage.kind is JobKind.tripost_eval:
        return TripostEvalSpec.model_validate(
            {
                "kind": JobKind.tripost_eval,
                **spec.eval.model_dump(),
                "tasks": spec.eval_tasks(),
                "seed": spec.eval_seed(),
                "model": model,
            }
        )
    raise ValueError(f"a tripost job has no {stage.kind.value} stage")  # pragma: no cover


__all__ = ["STAGES", "Stage", "build_stage"]
