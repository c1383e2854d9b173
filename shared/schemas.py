"""Wire schemas shared by every server and client of the ensemble.

Internal request models forbid unknown fields (a typo is a 422 naming the field, not a silently
ignored option). OpenAI-compatible models live in :mod:`shared.openai_schemas` and tolerate
extras, as OpenAI clients send fields we do not use.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.answer_kinds import AnswerKind
from shared.json_scalars import check_scalars

NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
"""A string that must contain at least one character (whitespace counts)."""


class Strict(BaseModel):
    """Base of internal wire models: unknown fields are errors, and booleans and numbers
    take their JSON type only (:mod:`shared.json_scalars`)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _json_scalars(cls, data: Any) -> Any:
        return check_scalars(cls, data)


class Role(StrEnum):
    """The deployments of the model service."""

    rationalyst = "rationalyst"
    agent = "agent"
    scorer = "scorer"
    reward = "reward"
    """A process or outcome reward model (``train_prm``/``train_orm``): ``POST /v1/reward``."""


# --------------------------------------------------------------------------------------------
# Trajectories


class Demo(Strict):
    """One worked example: a question and its solution, one step per assistant turn."""

    question: NonEmptyStr
    steps: list[NonEmptyStr] = Field(min_length=1)


class Trajectory(Strict):
    """A question and the reasoning steps chosen so far."""

    question: NonEmptyStr = Field(description="The problem to solve.")
    steps: list[NonEmptyStr] = Field(
        default_factory=list, description="Steps chosen so far, oldest first."
    )


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: str


# --------------------------------------------------------------------------------------------
# POST /v1/rationale


class RationaleRequest(Trajectory):
    max_tokens: int = Field(default=128, ge=1, le=2048)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 = greedy.")
    seed: int | None = None


class RationaleResponse(Strict):
    rationale: str
    mean_logprob: float | None = Field(
        description="Mean log-probability of the rationale's tokens; None when it is empty."
    )
    num_tokens: int
    finish_reason: str
    prompt_tokens: int = Field(description="Tokens of the prompt the model was given.")


# --------------------------------------------------------------------------------------------
# POST /v1/propose


class ProposeRequest(Trajectory):
    n: int = Field(default=3, ge=1, description="Number of candidate next steps.")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, description="Same seed, same candidates.")
    max_tokens: int = Field(default=128, ge=1, le=2048)
    few_shot: list[Demo] | None = Field(
        default=None, description="Worked examples; None uses the role's default set."
    )
    system: str | None = Field(default=None, description="Overrides the role's system prompt.")
    rationale: str | None = Field(
        default=None,
        description="Explicit supervision: a rationale the next step must follow. It opens "
        "the next assistant turn as <BOT>rationale<EOT>; the candidates continue after it.",
    )
    step_prefix: str | None = Field(
        default=None,
        description="A forced opening of the next step (e.g. 'The answer is:'): the next "
        "assistant turn starts with it (after the rationale, if any), and every candidate's "
        "text begins with it. The candidates' num_tokens and mean_logprob cover only the "
        "generated tokens after it.",
    )


class Candidate(Strict):
    text: str
    mean_logprob: float | None
    num_tokens: int
    finish_reason: str


class ProposeResponse(Strict):
    candidates: list[Candidate]
    prompt_tokens: int = Field(
        description="Tokens of the prompt the model was given (the prompt all n candidates "
        "share, counted once)."
    )


# --------------------------------------------------------------------------------------------
# POST /v1/rollout


class RolloutRequest(Trajectory):
    """Complete a partial solution (``steps``, possibly empty) to its end, ``n`` times.

    Each completion continues the agent's chat one step (one assistant turn) at a time until
    a step states an answer, ``max_steps`` steps were written, or the context is full.
    """

    n: int = Field(default=1, ge=1, le=64, description="Completions, decoded in one batch.")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(
        default=None, description="Same seed, same completions (completion i is fixed by it)."
    )
    max_steps: int = Field(
        default=8, ge=1, le=64, description="Most steps written after the given ones."
    )
    max_step_tokens: int = Field(default=96, ge=1, le=2048, description="Tokens per step.")
    few_shot: list[Demo] | None = Field(
        default=None,
        description="Worked examples; None uses the default set of the answer kind.",
    )
    answer_kind: AnswerKind | None = Field(
        default=None,
        description="Which default demos to use; None detects it from the question.",
    )


class RolloutCompletion(Strict):
    steps: list[str] = Field(description="The steps written after the given ones.")
    answer: str | None = Field(
        description="The answer the solution states (given and written steps); None if none."
    )
    finished: bool = Field(description="Whether the solution states an answer.")
    completion_tokens: int = Field(description="Tokens sampled for this completion.")


class RolloutUsage(Strict):
    prompt_tokens: int = Field(
        description="Prompt tokens of every engine call (the shared prompt counted once)."
    )
    completion_tokens: int


class RolloutResponse(Strict):
    id: str
    completions: list[RolloutCompletion]
    usage: RolloutUsage


# --------------------------------------------------------------------------------------------
# POST /v1/score


class Aggregate(StrEnum):
    mean = "mean"
    sum = "sum"
    decayed_sum = "decayed_sum"
    decayed_mean = "decayed_mean"


class ScoreRequest(Strict):
    """Score continuations of one context in one batched pass.

    With chat messages as context, each continuation is the next assistant turn, rendered by
    the service's own chat template; with a raw string, each continuation is appended as is.
    Only the continuation's tokens are scored, located by character offsets in the full text.
    """

    context: list[ChatMessage] | str = Field(
        description="Chat messages (the continuation is the next assistant turn) or raw text."
    )
    continuations: list[NonEmptyStr] = Field(min_length=1)
    given: list[str] | None = Field(
        default=None,
        description="Text placed between the context and each continuation, one per "
        "continuation ('' for none): conditioned on, never scored. So one request scores the "
        "same continuation with and without a rationale (given: ['<BOT>r<EOT>\\n', '']), "
        "both sharing the context's tokens.",
    )
    contexts: list[list[ChatMessage] | str] | None = Field(
        default=None,
        description="More contexts, for continuations of several prefixes in one batch (a "
        "beam search's pool): with `context_index`, continuation i follows "
        "`[context, *contexts][context_index[i]]`.",
    )
    context_index: list[int] | None = Field(
        default=None,
        description="Per continuation, its context: 0 = `context`, k = `contexts[k-1]` "
        "(default: all follow `context`).",
    )
    decay: float = Field(default=1.0, gt=0.0, le=1.0, description="w_i = decay**i.")
    aggregate: Aggregate = Field(default=Aggregate.mean, description="Which value is `score`.")
    return_tokens: bool = Field(default=True, description="Include per-token logprobs.")

    @field_validator("context")
    @classmethod
    def _context_not_empty(cls, v: list[ChatMessage] | str) -> list[ChatMessage] | str:
        if isinstance(v, list) and not v:
            raise ValueError("context must hold at least one message")
        return v

    @field_validator("contexts")
    @classmethod
    def _contexts_not_empty(
        cls, v: list[list[ChatMessage] | str] | None
    ) -> list[list[ChatMessage] | str] | None:
        for i, c in enumerate(v or []):
            if isinstance(c, list) and not c:
                raise ValueError(f"contexts[{i}] must hold at least one message")
        return v

    @field_validator("given")
    @classmethod
    def _given_per_continuation(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        continuations = info.data.get("continuations")
        if v is not None and continuations is not None and len(v) != len(continuations):
            raise ValueError(
                f"given holds {len(v)} texts for {len(continuations)} continuations; give one "
                "per continuation"
            )
        return v

    @field_validator("context_index")
    @classmethod
    def _index_per_continuation(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if v is None:
            return v
        continuations = info.data.get("continuations")
        if continuations is not None and len(v) != len(continuations):
            raise ValueError(
                f"context_index holds {len(v)} entries for {len(continuations)} continuations"
            )
        n = 1 + len(info.data.get("contexts") or [])
        if any(i < 0 or i >= n for i in v):
            raise ValueError(f"context_index entries must lie in 0..{n - 1}")
        return v

    def all_contexts(self) -> list[list[ChatMessage] | str]:
        """``context`` then ``contexts``."""
        return [self.context, *(self.contexts or [])]

    def context_indices(self) -> list[int]:
        """Per continuation, the index of its context in :meth:`all_contexts`."""
        if self.context_index is None:
            return [0] * len(self.continuations)
        return list(self.context_index)

    def given_texts(self) -> list[str]:
        """The text before each continuation ('' where none)."""
        return list(self.given) if self.given is not None else [""] * len(self.continuations)


class TokenLogprob(Strict):
    token: str
    logprob: float


class ContinuationScore(Strict):
    score: float = Field(description="The aggregate the request asked for.")
    sum: float
    mean: float
    decayed_sum: float
    decayed_mean: float
    num_tokens: int
    tokens: list[TokenLogprob] | None = None


class ScoreResponse(Strict):
    scores: list[ContinuationScore]
    prompt_tokens: int = Field(description="Distinct tokens scored, shared prefix counted once.")


# --------------------------------------------------------------------------------------------
# POST /v1/reward (the reward role: a PRM or an ORM)


class RewardRequest(Strict):
    question: NonEmptyStr
    solutions: list[list[str]] = Field(
        min_length=1,
        max_length=256,
        description="Solutions to score, each as its list of steps; all go in one batched "
        "forward pass.",
    )


class RewardResult(Strict):
    step_scores: list[float] = Field(
        description="PRM: P(step is good) at the tag after each step; ORM: empty."
    )
    min: float = Field(description="Smallest step score (Math-Shepherd). ORM: the score.")
    prod: float = Field(description="Product of the step scores (OmegaPRM). ORM: the score.")
    last: float = Field(description="The last step's score. ORM: the score.")
    mean: float = Field(description="Mean step score. ORM: the score.")


class RewardUsage(Strict):
    prompt_tokens: int = Field(description="Tokens of every solution's input, summed.")


class RewardResponse(Strict):
    id: str
    model: str
    kind: Literal["prm", "orm"]
    results: list[RewardResult]
    usage: RewardUsage


# --------------------------------------------------------------------------------------------
# POST /admin/model (a model service; needs the internal token)


class SwitchModelRequest(Strict):
    model: NonEmptyStr = Field(
        description="A registered model name, a name in the models cache or a model folder on "
        "the service's machine (remote engine: the model name the upstream serves)."
    )


class SwitchModelResponse(Strict):
    role: Role
    model: str = Field(description="The model served now, as asked.")
    previous_model: str | None = Field(
        description="The model served before the switch; None when none was loaded."
    )
    model_path: str = Field(
        description="What the engine loaded: the model folder (remote engine: the upstream's "
        "model name)."
    )
    engine: str = Field(description="The engine kind (transformers, vllm, remote).")
    load_s: float = Field(description="Seconds the new model took to build and start.")


# --------------------------------------------------------------------------------------------
# Errors


class ErrorDetail(Strict):
    type: str
    message: str
    request_id: str | None = None
    field: str | None = None


class ErrorBody(Strict):
    error: ErrorDetail
