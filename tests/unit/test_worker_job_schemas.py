"""Typed job specs: one schema per kind, strict, discriminated by `kind`."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from services.worker.stages import build_stage
from shared.job_schemas import (
    ExtractSpec,
    FilterOptions,
    JobKind,
    JobSpec,
    PrefilterSpec,
    RationalePipelineSpec,
    stage_kinds,
)

pytestmark = pytest.mark.unit

ADAPTER: TypeAdapter[Any] = TypeAdapter(JobSpec)
INPUT = {"paths": ["/data/corpus.jsonl"]}


def test_worker_spec_union_picks_the_kind() -> None:
    spec = ADAPTER.validate_python({"kind": "prefilter", "input": INPUT, "threshold": 0.4})
    assert isinstance(spec, PrefilterSpec)
    assert spec.threshold == 0.4 and spec.max_chars == 2000
    spec = ADAPTER.validate_python({"kind": "extract", "input": INPUT})
    assert isinstance(spec, ExtractSpec) and spec.min_similarity == 0.9


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"kind": "prefilter", "input": INPUT, "treshold": 0.3}, ("prefilter", "treshold")),
        ({"kind": "prefilter", "input": INPUT, "threshold": 2}, ("prefilter", "threshold")),
        ({"kind": "filter", "input": {"paths": []}}, ("filter", "input", "paths")),
        ({"kind": "nope", "input": INPUT}, ()),
        (
            {"kind": "extract", "input": {**INPUT, "separator": ""}},
            ("extract", "input", "separator"),
        ),
    ],
)
def test_worker_spec_errors_name_the_field(body: dict[str, Any], loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        ADAPTER.validate_python(body)
    assert info.value.errors()[0]["loc"][: len(loc)] == loc


def test_worker_pipeline_runs_four_stages_with_their_options() -> None:
    spec = ADAPTER.validate_python(
        {"kind": "rationale_pipeline", "input": INPUT, "filter": {"tau": 0.5}}
    )
    assert isinstance(spec, RationalePipelineSpec)
    assert stage_kinds(spec.kind) == [
        JobKind.prefilter,
        JobKind.extract,
        JobKind.filter,
        JobKind.sft_data,
    ]
    stage = build_stage(spec, JobKind.filter)
    assert isinstance(stage.options, FilterOptions) and stage.options.tau == 0.5


def test_worker_single_stage_spec_becomes_stage_options() -> None:
    spec = ADAPTER.validate_python(
        {"kind": "filter", "input": INPUT, "tau": 1.2, "tau_by_source": {"gsm8k": 2.0}}
    )
    stage = build_stage(spec, JobKind.filter)
    assert stage.options.tau == 1.2  # type: ignore[attr-defined]
    assert stage.options.tau_by_source == {"gsm8k": 2.0}  # type: ignore[attr-defined]


def test_worker_reference_takes_texts_or_input_not_both() -> None:
    with pytest.raises(ValidationError, match="not both"):
        ADAPTER.validate_python(
            {"kind": "prefilter", "input": INPUT, "reference": {"texts": ["a"], "input": INPUT}}
        )
