"""Booleans and numbers in requests take their JSON type only: no guess from 0.0 or "5"."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from shared.gateway_schemas import GatewayChatRequest, ReasonRequest
from shared.job_schemas import JobSpec
from shared.openai_schemas import CompletionRequest

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("stream", 0.0, "bool_type"),
        ("stream", "true", "bool_type"),
        ("max_steps", "5", "int_type"),
        ("max_steps", True, "int_type"),
        ("temperature", "0.5", "float_type"),
    ],
)
def test_a_scalar_of_another_json_type_is_an_error_at_its_field(
    field: str, value: object, error: str
) -> None:
    with pytest.raises(ValidationError) as err:
        ReasonRequest.model_validate({"question": "q", field: value})
    (only,) = err.value.errors()
    assert (only["type"], only["loc"]) == (error, (field,))


def test_the_right_types_pass_and_enums_still_take_their_values() -> None:
    req = ReasonRequest.model_validate(
        {"question": "q", "stream": True, "max_steps": 3, "temperature": 1, "heuristic": "prm"}
    )
    assert (req.stream, req.max_steps, req.temperature, req.heuristic.value) == (
        True, 3, 1.0, "prm",
    )  # fmt: skip
    assert ReasonRequest(question="q", max_steps=np.int64(2)).max_steps == 2  # numpy numbers


def test_openai_requests_keep_unknown_fields_but_not_wrong_types() -> None:
    ok = CompletionRequest.model_validate({"prompt": "a", "user": "x", "logit_bias": {}})
    assert ok.prompt == "a"
    with pytest.raises(ValidationError) as err:
        GatewayChatRequest.model_validate(
            {"model": "rationalyst", "messages": [{"role": "user", "content": "q"}],
             "stream_options": {"include_usage": 1}}
        )  # fmt: skip
    assert err.value.errors()[0]["loc"] == ("stream_options", "include_usage")


def test_job_specs_are_checked_through_their_discriminated_union() -> None:
    body = {"kind": "train_prm", "data": {"job": "j"}, "max_steps": "3"}
    with pytest.raises(ValidationError) as err:
        TypeAdapter(JobSpec).validate_python(body)
    assert any(e["type"] == "int_type" and e["loc"][-1] == "max_steps" for e in err.value.errors())
