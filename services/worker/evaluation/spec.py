"""What an evaluation run is: the spec models the runners take (and a worker job can carry)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from shared.gateway_schemas import SCORING_HEURISTICS, Aggregation, Heuristic, Strategy

FewShotMode = Literal["task", "default", "none"]


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(min_length=1, description="Task names (or jsonl:<path>).")
    heuristics: list[Heuristic] = Field(min_length=1, description="Heuristics to compare.")
    n: int = Field(default=20, ge=1, description="Examples per task.")
    seed: int = Field(default=0, description="Picks the examples and seeds every request.")
    concurrency: int = Field(default=4, ge=1, le=64, description="Requests in flight.")
    gateway_url: str = Field(default="http://127.0.0.1:8100", description="Gateway base URL.")
    api_key: SecretStr | None = Field(
        default=None, description="Bearer key of the gateway, if it requires one.", exclude=True
    )
    out_dir: Path = Field(description="Where results, report and chart are written.")
    few_shot: FewShotMode = Field(
        default="task",
        description="task: the task's own demos; default: the gateway's built-in; none: no demos.",
    )
    shots: int = Field(default=3, ge=0, le=8, description="Demos per request (few_shot=task).")
    request_timeout_s: float = Field(default=900.0, gt=0, description="Client timeout.")
    label: str | None = Field(
        default=None, description="Free text for the report, e.g. the models behind the gateway."
    )

    @field_validator("tasks", "heuristics")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("names must be distinct")
        return v

    def result_fields(self) -> dict[str, object]:
        """The fields that change a result: the same values give the same record keys."""
        raise NotImplementedError

    @property
    def config_id(self) -> str:
        """A short hash of :meth:`result_fields`; part of every record key, so results made
        with other settings in the same folder are never mixed in."""
        blob = json.dumps(self.result_fields(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


class EvalSpec(_Common):
    """An accuracy evaluation: tasks x heuristics x n examples through POST /v1/reason."""

    n_candidates: int = Field(default=3, ge=1, le=16, description="Candidates per step.")
    max_steps: int = Field(default=15, ge=1, le=64, description="Most steps per solution.")
    max_step_tokens: int | None = Field(default=None, ge=1, le=1024)
    max_rationale_tokens: int | None = Field(default=None, ge=1, le=1024)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    deadline_s: float | None = Field(
        default=None, gt=0.0, le=3600.0, description="Per-request wall-clock budget."
    )
    strict: bool = Field(default=False, description="503 instead of a fallback heuristic.")
    strategies: list[Strategy] = Field(
        default_factory=lambda: [Strategy.step],
        min_length=1,
        description="Search strategies to compare (each with every heuristic and budget).",
    )
    budgets: list[int] = Field(
        default_factory=list,
        description="max_tokens_budget values (generated + scored tokens); empty: unbudgeted.",
    )
    n_beams: int = Field(default=4, ge=1, le=16, description="beam: paths kept per step.")
    beam_width: int = Field(default=2, ge=1, le=16, description="beam: proposals per beam.")
    n_solutions: int = Field(
        default=4, ge=1, le=64, description="best_of_n, vote, weighted_vote: solutions."
    )
    aggregation: Aggregation = Field(default=Aggregation.mean, description="Path score.")

    @field_validator("strategies")
    @classmethod
    def _distinct_strategies(cls, v: list[Strategy]) -> list[Strategy]:
        if len(set(v)) != len(v):
            raise ValueError("names must be distinct")
        return v

    @field_validator("budgets")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v) or len(set(v)) != len(v):
            raise ValueError("budgets must be distinct positive token counts")
        return sorted(v)

    @property
    def compares_compute(self) -> bool:
        """Strategies or budgets are compared: cells are strategy/heuristic@budget."""
        return self.strategies != [Strategy.step] or bool(self.budgets)

    def result_fields(self) -> dict[str, object]:
        fields = self.model_dump(
            mode="json",
            include={
                "n_candidates", "max_steps", "max_step_tokens", "max_rationale_tokens",
                "temperature", "deadline_s", "strict", "few_shot", "shots",
            },
        )  # fmt: skip
        if self.compares_compute:  # an unchanged run keeps its record keys
            fields.update(
                self.model_dump(
                    mode="json", include={"n_beams", "beam_width", "n_solutions", "aggregation"}
                )
            )
        return fields


class SelectionSpec(_Common):
    """A step-selection evaluation: how often each heuristic ranks the gold next step first
    among ``k`` candidates (POST /v1/select)."""

    k: int = Field(default=4, ge=2, le=16, description="Candidates per item (gold included).")

    @field_validator("heuristics")
    @classmethod
    def _scoring(cls, v: list[Heuristic]) -> list[Heuristic]:
        bad = [h.value for h in v if h not in SCORING_HEURISTICS]
        if bad:
            allowed = ", ".join(sorted(h.value for h in SCORING_HEURISTICS))
            raise ValueError(f"{', '.join(bad)} cannot rank given steps; use {allowed}")
        return v

    def result_fields(self) -> dict[str, object]:
        return self.model_dump(mode="json", include={"k", "few_shot", "shots"})


class CompareSpec(BaseModel):
    """A base-vs-trained comparison: the same step-selection items (heuristic ``rationalyst``)
    run twice, once with each model as the rationalyst; agent and scorer are the base model.

    ``base`` and ``trained`` are model folders, names in the models cache, or names in the
    model registry under ``artifacts_dir``.
    """

    model_config = ConfigDict(extra="forbid")

    trained: str = Field(min_length=1, description="The trained rationalyst.")
    base: str = Field(
        default="smollm2-135m-instruct",
        min_length=1,
        description="The base model: rationalyst of the baseline run, agent and scorer.",
    )
    tasks: list[str] = Field(min_length=1, description="Task names (or jsonl:<path>).")
    n: int = Field(default=50, ge=1, description="Items per task.")
    k: int = Field(default=4, ge=2, le=16, description="Candidates per item (gold included).")
    seed: int = Field(default=0, description="Picks items and corruptions; seeds the bootstrap.")
    concurrency: int = Field(default=4, ge=1, le=64, description="Requests in flight.")
    few_shot: FewShotMode = Field(default="task", description="Demos in the scorer's context.")
    shots: int = Field(default=3, ge=0, le=8, description="Demos per request (few_shot=task).")
    out_dir: Path = Field(description="compare.json, compare.md, base/, trained/, logs/.")
    artifacts_dir: Path | None = Field(
        default=None, description="Artifacts root holding the model registry (default cache)."
    )
    scorer_url: str | None = Field(
        default=None, description="A running scorer service to use instead of starting one."
    )
    agent_url: str | None = Field(
        default=None, description="A running agent service to use instead of starting one."
    )
    engine: str | None = Field(default=None, description="Engine of the started model services.")
    ready_timeout_s: float = Field(
        default=600.0, gt=0, description="How long the started processes may take to be ready."
    )
    request_timeout_s: float = Field(default=900.0, gt=0, description="Client timeout.")
    resamples: int = Field(
        default=10_000, ge=100, le=1_000_000, description="Bootstrap resamples of the difference."
    )

    @field_validator("tasks")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("names must be distinct")
        return v

    @field_validator("scorer_url", "agent_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {v!r}")
        return v.rstrip("/") if v else v
