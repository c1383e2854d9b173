"""The pipeline's stages, by kind."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from services.worker.stages.base import Stage
from services.worker.stages.extract import ExtractStage
from services.worker.stages.filter import FilterStage
from services.worker.stages.prefilter import PrefilterStage
from services.worker.stages.sft import SftStage
from services.worker.stages.train import TrainStage
from services.worker.stages.tripost import TripostCollectStage
from shared.job_schemas import (
    ExtractOptions,
    FilterOptions,
    JobKind,
    PrefilterOptions,
    RationalePipelineSpec,
    SftOptions,
    TrainRationalystSpec,
    TripostCollectSpec,
)

STAGES: dict[JobKind, tuple[type[Stage], type[BaseModel]]] = {
    JobKind.prefilter: (PrefilterStage, PrefilterOptions),
    JobKind.extract: (ExtractStage, ExtractOptions),
    JobKind.filter: (FilterStage, FilterOptions),
    JobKind.sft_data: (SftStage, SftOptions),
    JobKind.train_rationalyst: (TrainStage, TrainRationalystSpec),
    JobKind.tripost_collect: (TripostCollectStage, TripostCollectSpec),
}


def build_stage(spec: Any, kind: JobKind) -> Stage:
    """The stage ``kind`` of a job, configured from its spec (a pipeline's per-stage options,
    or the single-stage spec's own fields)."""
    cls, options_type = STAGES[kind]
    if isinstance(spec, RationalePipelineSpec):
        options = getattr(spec, kind.value)
    else:
        options = options_type.model_validate(
            spec.model_dump(include=set(options_type.model_fields))
        )
    return cls(options)


__all__ = ["STAGES", "Stage", "build_stage"]
