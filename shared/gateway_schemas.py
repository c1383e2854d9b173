"""Wire schemas of the gateway's public API: /v1/reason, /v1/select, /v1/verify and the
OpenAI-compatible /v1/chat/completions.

Request models of the gateway's own endpoints forbid unknown fields (a typo is a 422 naming the
field). The OpenAI-compatible models tolerate extras, as OpenAI clients send fields the gateway
does not use; the extra fields the gateway does read are declared and validated.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, field_validator

from shared.answer_kinds import AnswerKind
from shared.openai_schemas import LenientRequest, OAChatMessage
from shared.openai_schemas import Usage as CompletionUsage
from shared.schemas import Demo, NonEmptyStr, Strict, TokenLogprob
from shared.verify.registry import VerifierKind
from shared.verify.verdict import Verdict

Question = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
"""A question: surrounding whitespace is dropped, and nothing may remain empty."""


class Heuristic(StrEnum):
    """How the next step is chosen among the agent's candidates."""

    rationalyst = "rationalyst"
    """Implicit supervision (default): score each candidate by the scorer's mean log P(step |
    trajectory, rationale) and keep the best."""
    rationalyst_explicit = "rationalyst_explicit"
    """Explicit supervision: the rationale goes into the agent's prompt; the candidates it
    proposes are then ranked by the scorer's likelihood without the rationale."""
    likelihood = "likelihood"
    """The scorer's mean log P(step | trajectory), no rationale."""
    random = "random"
    """Uniform pick among the same candidates (seeded): the paper's baseline."""
    greedy = "greedy"
    """One candidate, no scoring: plain chain of thought."""
    prm = "prm"
    """The process reward model's score of each candidate as the next step (P(step is good)
    after trajectory + candidate), all candidates in one /v1/reward call; needs
    GATEWAY_REWARD_URL."""
    orm = "orm"
    """The outcome reward model's score of trajectory + candidate, read as a whole solution;
    needs GATEWAY_REWARD_URL (a reward service on an ORM)."""


class Strategy(StrEnum):
    """How a solution is searched for."""

    step = "step"
    """Step by step (default): propose candidates, keep the one the heuristic selects."""
    self_improve = "self_improve"
    """TriPosT's self-improvement: the agent writes a whole answer, then "Feedback:" on it,
    then "Updated Answer:", until the feedback says the final response is correct or
    ``max_rounds`` answers were written (`heuristic` does not apply)."""
    beam = "beam"
    """Beam search over steps: every live beam proposes ``beam_width`` next steps, the whole
    pool is scored in one scorer call and the ``n_beams`` best paths (by aggregated score) are
    kept; the answer is the best finished beam."""
    best_of_n = "best_of_n"
    """``n`` whole solutions from one batched rollout of the agent, each scored by the
    heuristic's scorer; the best by aggregated score is the answer."""
    vote = "vote"
    """Self-consistency: the most frequent normalized final answer among ``n`` solutions."""
    weighted_vote = "weighted_vote"
    """The answer whose solutions' scores sum highest among ``n`` solutions."""


class Aggregation(StrEnum):
    """How a path's step scores make one score (log-prob scores are aggregated in the log
    domain: `prod` is their sum, the log of the product of the step probabilities)."""

    min = "min"
    prod = "prod"
    last = "last"
    mean = "mean"


SEARCH_STRATEGIES: frozenset[Strategy] = frozenset(
    {Strategy.beam, Strategy.best_of_n, Strategy.vote, Strategy.weighted_vote}
)
"""Strategies that return a tree of several paths (with `step`, the tree is one path)."""


SCORING_HEURISTICS: frozenset[Heuristic] = frozenset(
    {Heuristic.rationalyst, Heuristic.rationalyst_explicit, Heuristic.likelihood, Heuristic.random}
    | {Heuristic.prm, Heuristic.orm}
)
"""Heuristics that can rank caller-supplied candidates (/v1/select)."""


class Finish(StrEnum):
    """How a search ended."""

    answer = "answer"
    """A chosen step stated the answer."""
    forced_answer = "forced_answer"
    """The search ran out (steps, deadline, or candidates) without an answer step, and the
    agent was then asked for the answer step: the next step forced to open with the demos'
    answer prefix ("The answer is:")."""
    max_steps = "max_steps"
    """max_steps were taken without an answer, and no answer could be forced."""
    cancelled = "cancelled"
    """Cancelled by ``POST /v1/reason/{id}/cancel``: no answer step is forced after it."""
    deadline = "deadline"
    """The deadline passed without an answer, and no answer could be forced in time."""
    no_candidates = "no_candidates"
    """The agent proposed no usable step (all empty, or all repeating the trajectory even when
    asked again), and no answer could be forced."""
    budget = "budget"
    """``max_tokens_budget`` stopped the search before an answer (none is forced after it)."""


AnswerKindSource = Literal["request", "detected"]
FewShotSource = Literal["default", "request"]

_ANSWER_KIND_HELP = (
    "Kind of answer the question expects: number, boolean (yes/no), choice, word_list or text. "
    "It picks the default few-shot demos and the answer check. Default: detected from the "
    "question (lettered options -> choice; 'yes or no' -> boolean; 'how many/much', "
    "'what is 3 + 4' -> number; a question opening with is/does/can... -> boolean; else text)."
)


# --------------------------------------------------------------------------------------------
# Options shared by /v1/reason and the OpenAI-compatible endpoint


class SearchOptions(Strict):
    """Budget and selection options of one reasoning request."""

    heuristic: Heuristic = Field(default=Heuristic.rationalyst, description="Step selection.")
    n_candidates: int = Field(
        default=3, ge=1, le=16, description="Candidate next steps the agent proposes per step."
    )
    max_steps: int = Field(default=15, ge=1, le=64, description="Most reasoning steps.")
    temperature: float = Field(
        default=0.7,
        ge=0.0,
        le=2.0,
        description="Agent sampling temperature. `greedy` decodes at 0 unless this is given.",
    )
    seed: int | None = Field(
        default=None,
        description="Makes proposals and the `random` pick reproducible; the response reports "
        "the seed used.",
    )
    decay: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Per-token weight decay**i in the candidate score (1.0 = mean log-prob; "
        "0.9 = the original's older script).",
    )
    few_shot: list[Demo] | None = Field(
        default=None,
        description="Worked examples shown to the agent and the scorer, used as given "
        "(default: the built-in demos of the answer kind; [] for none).",
    )
    answer_kind: AnswerKind | None = Field(default=None, description=_ANSWER_KIND_HELP)
    deadline_s: float | None = Field(
        default=None,
        gt=0.0,
        le=3600.0,
        description="Wall-clock budget; when it passes, the steps chosen so far are returned "
        "with `deadline_reached: true` (after a bounded extra answer step when none was "
        "stated).",
    )
    strict: bool = Field(
        default=False,
        description="No degradation: a model service that is down gives 503 instead of a "
        "fallback heuristic.",
    )
    max_step_tokens: int = Field(
        default=128, ge=1, le=1024, description="Most tokens in one proposed step."
    )
    max_rationale_tokens: int = Field(
        default=128, ge=1, le=1024, description="Most tokens in one rationale."
    )
    strategy: Strategy = Field(default=Strategy.step, description="How to search.")
    max_rounds: int = Field(
        default=10,
        ge=1,
        le=10,
        description="self_improve: answers at most (the attempt and its updates).",
    )
    feedback: Literal["self", "verifier"] = Field(
        default="self",
        description="self_improve: who writes the feedback on each answer: the agent itself "
        "(TriPosT at test time) or a verifier (`verifier`).",
    )
    verifier: VerifierKind | None = Field(
        default=None,
        description="self_improve with `feedback: verifier`: scripted (needs `task`) or llm; "
        "default: scripted where the task has one, else llm.",
    )
    task: NonEmptyStr | None = Field(
        default=None,
        description="self_improve: the task of the question (`multistep_arithmetic`, "
        "`word_sorting`, ...): picks the scripted verifier and the answer format of the "
        "worked examples.",
    )
    max_round_tokens: int = Field(
        default=512,
        ge=16,
        le=1024,
        description="self_improve: most tokens of one generation (an answer with its feedback "
        "and update).",
    )
    beam_width: int = Field(
        default=2,
        ge=1,
        le=16,
        description="beam: next steps each live beam proposes per step (at most n_beams).",
    )
    n_beams: int = Field(
        default=4, ge=1, le=16, description="beam: paths kept after each step (N)."
    )
    n: int = Field(
        default=4,
        ge=1,
        le=64,
        description="best_of_n, vote, weighted_vote: whole solutions sampled (one rollout).",
    )
    aggregation: Aggregation = Field(
        default=Aggregation.mean,
        description="beam, best_of_n, weighted_vote: how a path's step scores make its score "
        "(min, prod, last, mean).",
    )
    max_tokens_budget: int | None = Field(
        default=None,
        ge=1,
        description="Most tokens the search may spend (generated + scored, over all model "
        "services); the search stops before a step that would exceed it and returns the best "
        "so far with `budget_reached: true`. Below one step's cost: 422.",
    )
    trace_tokens: bool = Field(
        default=False,
        description="Each scored candidate's per-token log-probabilities under the scorer in "
        "its trace (`trace[].candidates[].tokens`) and its tree node (`tree[].tokens`; beam "
        "and the solution strategies have only the tree), as the /ui page colours them.",
    )


# --------------------------------------------------------------------------------------------
# POST /v1/reason


class ReasonRequest(SearchOptions):
    """Solve a question step by step, choosing each step with process supervision."""

    question: Question = Field(description="The problem to solve.")
    stream: bool = Field(
        default=False,
        description="Server-sent events: `step` per step (self_improve: `round` per round), "
        "then `done`.",
    )


class CandidateTrace(Strict):
    """One proposed next step and how it fared."""

    text: str = Field(description="The candidate as proposed, surrounding whitespace removed.")
    score: float | None = Field(
        default=None,
        description="Selection score (mean log-prob for scoring heuristics); None when the "
        "heuristic does not score, or the candidate is empty.",
    )
    duplicate_of: int | None = Field(
        default=None,
        description="Index of the identical earlier candidate (whitespace-normalized); it was "
        "merged into it and not scored separately.",
    )
    repeat_of: int | None = Field(
        default=None,
        description="Index of the trajectory step this candidate repeats (whitespace, case and "
        "a final full stop ignored); it was dropped before scoring.",
    )
    num_tokens: int | None = Field(default=None, description="Tokens the agent generated.")
    finish_reason: str | None = Field(default=None, description="`stop` or `length`.")
    tokens: list[TokenLogprob] | None = Field(
        default=None,
        description="With `trace_tokens`: the candidate's tokens and their log-probabilities "
        "in its last scoring (None when it was not scored).",
    )


class StageTimings(Strict):
    """Milliseconds spent per stage of a step. Rationale and propose may overlap."""

    rationale_ms: float | None = None
    propose_ms: float | None = None
    score_ms: float | None = None
    model_ms: float = Field(
        description="Time waiting for model services on the step's critical path."
    )
    total_ms: float = Field(description="Wall time of the whole step.")


class StepTrace(Strict):
    """Everything that happened in one step."""

    index: int = Field(description="0-based step number.")
    heuristic: Heuristic = Field(description="The heuristic that chose this step.")
    rationale: str | None = Field(default=None, description="The rationalyst's rationale.")
    rationale_logprob: float | None = Field(
        default=None, description="Mean log-prob of the rationale under the rationalyst."
    )
    candidates: list[CandidateTrace]
    chosen: int = Field(description="Index of the chosen candidate.")
    step: str = Field(description="The chosen step's text.")
    duplicates: int = Field(default=0, description="Candidates merged as duplicates.")
    repeats: int = Field(
        default=0, description="Candidates dropped because they repeat a trajectory step."
    )
    retry_temperature: float | None = Field(
        default=None,
        description="Set when every candidate of the first proposal repeated the trajectory: "
        "the agent was asked once more at this temperature (its candidates follow the first "
        "ones in `candidates`).",
    )
    forced_answer: bool = Field(
        default=False,
        description="The answer step asked for after the search ran out: every candidate opens "
        "with the demos' answer prefix.",
    )
    timings: StageTimings
    warnings: list[str] = Field(default_factory=list)


FeedbackBy = Literal["self", "scripted", "llm"]
"""Who wrote a feedback of self-improvement: the model itself, or a verifier."""


class RoundTrace(Strict):
    """One answer of self-improvement, the feedback on it and the update it led to."""

    index: int = Field(description="0 = the first attempt.")
    answer: str = Field(description="The answer judged this round, one step per line.")
    parsed: bool = Field(
        description="The answer has numbered steps and a final response (else the round is "
        "the last: there is nothing to judge)."
    )
    feedback: str | None = Field(
        default=None, description="The feedback sentence (or what the agent wrote instead)."
    )
    feedback_by: FeedbackBy | None = Field(default=None, description="Who wrote the feedback.")
    correct: bool | None = Field(
        default=None,
        description="The feedback says the final response is correct; None when it could "
        "not be read.",
    )
    step: str | None = Field(default=None, description="The step the feedback flags.")
    updated: str | None = Field(
        default=None, description="The updated answer written after this feedback, if any."
    )
    completion_tokens: int | None = Field(default=None, description="Tokens generated.")
    model_ms: float = Field(description="Time waiting for model services this round.")
    total_ms: float = Field(description="Wall time of the round.")


class ServiceUsage(Strict):
    calls: int = 0
    prompt_tokens: int | None = Field(
        default=None,
        description="Tokens of the prompts the service read, over its calls (a propose call's "
        "n candidates share one prompt, counted once); None when no call reported any.",
    )
    completion_tokens: int | None = Field(default=None, description="Tokens generated.")


class Usage(Strict):
    rationalyst: ServiceUsage = Field(default_factory=ServiceUsage)
    agent: ServiceUsage = Field(default_factory=ServiceUsage)
    scorer: ServiceUsage = Field(default_factory=ServiceUsage)
    reward: ServiceUsage = Field(default_factory=ServiceUsage)
    phases: dict[str, ServiceUsage] = Field(
        default_factory=dict,
        description="The same calls and tokens per phase of the strategy: `rationale`, "
        "`propose`, `score`, `answer` (the forced answer step), `rollout` (whole solutions).",
    )
    budget_tokens: int = Field(
        default=0,
        description="Tokens counted against `max_tokens_budget`: generated (all services) + "
        "scored (the scorer's and the reward model's prompt tokens); the prompts the agent "
        "and the rationalyst read are not counted.",
    )


NodeStatus = Literal["chosen", "kept", "pruned", "finished"]


class TreeNode(Strict):
    """One step of the search tree. The question is the (absent) root: depth-0 steps have
    parent None."""

    id: str = Field(description='"n0", "n1", ... in the order nodes were created.')
    parent: str | None = Field(description="The node this step follows; None at depth 0.")
    depth: int = Field(description="0-based step index.")
    text: str = Field(description="The step.")
    score: float | None = Field(default=None, description="The step scorer's score.")
    aggregate: float | None = Field(
        default=None, description="The path's score (ranks beams and solutions)."
    )
    status: NodeStatus = Field(
        description="chosen (on the answer's path), kept (a live beam), pruned, finished (a "
        "path that states an answer and is not the chosen one)."
    )
    rationale: str | None = Field(default=None, description="The rationale for its prefix.")
    answer: str | None = Field(default=None, description="The answer a finished node states.")
    timings_ms: float | None = Field(
        default=None, description="Wall time of the search step that decided the node."
    )
    warnings: list[str] = Field(
        default_factory=list, description="E.g. a service that failed at this node's step."
    )
    tokens: list[TokenLogprob] | None = Field(
        default=None,
        description="With `trace_tokens`: the step's tokens and their log-probabilities "
        "under the scorer in its last scoring (None when the scorer did not score it).",
    )


class Fallback(Strict):
    """A degradation: a service failed and the request continued with another heuristic."""

    step: int = Field(description="Step at which it happened.")
    service: Literal["rationalyst", "scorer", "reward"]
    from_heuristic: Heuristic
    to_heuristic: Heuristic
    reason: str


class Timings(Strict):
    total_ms: float = Field(description="Wall time of the whole search.")
    model_ms: float = Field(description="Sum of the steps' time waiting for model services.")
    overhead_ms: float = Field(description="total_ms - model_ms: time spent in the gateway.")


class ReasonResponse(Strict):
    """The solution, its answer and the trace of every step."""

    id: str | None = Field(default=None, description="The request id.")
    question: str
    answer: str | None = Field(description="Extracted final answer; None when none was stated.")
    steps: list[str] = Field(description="The chosen steps, in order.")
    finished: bool = Field(description="The last step states an answer (an end phrase).")
    finish: Finish = Field(description="How the search ended (`answer`, `forced_answer`, ...).")
    deadline_reached: bool = Field(
        default=False, description="The deadline passed; the steps are the best so far."
    )
    cancelled: bool = Field(
        default=False,
        description="Cancelled (POST /v1/reason/{id}/cancel); the steps are the best so far.",
    )
    answer_kind: AnswerKind = Field(description="The kind of answer expected.")
    answer_kind_source: AnswerKindSource = Field(
        description="`request` (answer_kind was given) or `detected` (from the question)."
    )
    few_shot_source: FewShotSource = Field(
        description="`default` (the built-in demos of answer_kind) or `request` (few_shot)."
    )
    few_shot_kind: AnswerKind | None = Field(
        description="The kind the demos' answers read as; None without demos or when they mix "
        "kinds."
    )
    repeats: int = Field(
        default=0,
        description="Candidates dropped in the whole search because they repeated a step of "
        "the trajectory (also those of a step abandoned for it).",
    )
    heuristic_requested: Heuristic
    heuristic_used: Heuristic = Field(
        description="The heuristic in use at the end (self_improve: `greedy`, one answer at a "
        "time, unscored)."
    )
    seed: int | None = Field(default=None, description="The seed used (reproduces the run).")
    fallbacks: list[Fallback] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    trace: list[StepTrace] = Field(
        default_factory=list, description="strategy step: every step (self_improve: empty)."
    )
    strategy: Strategy = Field(default=Strategy.step, description="The strategy that ran.")
    rounds: list[RoundTrace] = Field(
        default_factory=list,
        description="self_improve: every answer, its feedback and its update, in order.",
    )
    usage: Usage = Field(default_factory=Usage)
    timings: Timings
    tree: list[TreeNode] = Field(
        default_factory=list,
        description="Every node of the search (step: the chosen path and the pruned "
        "candidates of each step); the answer's path is `chosen`.",
    )
    budget_reached: bool = Field(
        default=False,
        description="max_tokens_budget stopped the search; the answer is the best so far.",
    )
    answers: dict[str, float] = Field(
        default_factory=dict,
        description="vote / weighted_vote: each normalized answer and its votes (or summed "
        "scores).",
    )


# --------------------------------------------------------------------------------------------
# POST /v1/select


class SelectRequest(Strict):
    """Rank caller-supplied candidate next steps of a trajectory."""

    question: Question = Field(description="The problem being solved.")
    steps: list[NonEmptyStr] = Field(
        default_factory=list, description="Steps chosen so far, oldest first."
    )
    candidates: list[NonEmptyStr] = Field(
        min_length=1, max_length=64, description="Candidate next steps to rank."
    )
    heuristic: Heuristic = Field(
        default=Heuristic.rationalyst,
        description="rationalyst, rationalyst_explicit (same as rationalyst here), likelihood "
        "or random.",
    )
    rationale: str | None = Field(
        default=None,
        description="Use this rationale instead of asking the rationalyst (rationalyst only).",
    )
    seed: int | None = Field(default=None, description="Seed of the `random` pick.")
    decay: float = Field(default=1.0, gt=0.0, le=1.0, description="Per-token weight decay**i.")
    few_shot: list[Demo] | None = Field(
        default=None,
        description="Worked examples in the scorer's context, used as given (default: the "
        "built-in demos of the answer kind).",
    )
    answer_kind: AnswerKind | None = Field(default=None, description=_ANSWER_KIND_HELP)
    strict: bool = Field(default=False, description="503 instead of a fallback heuristic.")
    max_rationale_tokens: int = Field(default=128, ge=1, le=1024)

    @field_validator("heuristic")
    @classmethod
    def _scoring_only(cls, v: Heuristic) -> Heuristic:
        if v not in SCORING_HEURISTICS:
            allowed = ", ".join(sorted(h.value for h in SCORING_HEURISTICS))
            raise ValueError(f"{v.value} does not rank candidates; use one of {allowed}")
        return v


class SelectResponse(Strict):
    id: str | None = None
    chosen: int = Field(description="Index of the best candidate (first on ties).")
    chosen_text: str
    scores: list[float | None] = Field(description="One score per candidate, in order.")
    candidates: list[CandidateTrace]
    rationale: str | None = None
    heuristic_requested: Heuristic
    heuristic_used: Heuristic
    seed: int | None = None
    answer_kind: AnswerKind
    answer_kind_source: AnswerKindSource
    few_shot_source: FewShotSource
    few_shot_kind: AnswerKind | None
    fallbacks: list[Fallback] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    timings: StageTimings


# --------------------------------------------------------------------------------------------
# POST /v1/verify


class VerifyRequest(Strict):
    """Check an attempted step-by-step solution: all correct, or where it first goes wrong."""

    task: NonEmptyStr = Field(
        description="Task name (`multistep_arithmetic`, `word_sorting`, `date_understanding`, "
        "...): it picks the verifier and tells the LLM verifier what the task is."
    )
    question: Question = Field(description="The question, as the task writes it.")
    solution: Question = Field(
        description='The attempt in TriPosT\'s format: one step per line, "(1) ...", nested '
        '"(3.1) ..." for word sorting, last "(Final response) So the answer is X."'
    )
    verifier: VerifierKind | None = Field(
        default=None,
        description="`scripted` or `llm`; default: scripted where the task has a scripted "
        "verifier, else llm.",
    )


class VerifyResponse(Verdict):
    """The verdict, and who gave it."""

    id: str | None = Field(default=None, description="The request id.")
    task: str = Field(description="The task's canonical name.")
    verifier: VerifierKind = Field(description="The verifier that judged.")
    model_output: str | None = Field(
        default=None, description="The LLM verifier's answer as it wrote it (llm only)."
    )
    elapsed_ms: float = Field(description="Time the verification took.")


# --------------------------------------------------------------------------------------------
# OpenAI-compatible chat completions (extras tolerated)


ReasoningFormat = Literal["reasoning_content", "reasoning", "think", "none"]
"""Where a chat completion puts the search (the steps, rationales and candidates)."""
ReasoningEffort = Literal["low", "medium", "high"]


class ChatStreamOptions(LenientRequest):
    include_usage: bool = Field(
        default=False, description="Send a last chunk with `usage` (and no choices)."
    )


class GatewayChatRequest(LenientRequest):
    """OpenAI chat request. The last user message is the question; extra body fields
    (`heuristic`, `n_candidates`, `max_steps`, ...) set the search options."""

    model: str = Field(
        description="The served model name (`rationalyst`), or a strategy's model id "
        "(`rationalyst-beam`, `rationalyst-best-of-n`, `rationalyst-vote`, "
        "`rationalyst-weighted-vote`)."
    )
    messages: list[OAChatMessage] = Field(min_length=1)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=1, description="Only 1 is supported.")
    max_tokens: int | None = Field(
        default=None, ge=1, description="As max_completion_tokens (the smaller one applies)."
    )
    max_completion_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Most tokens the search may generate, reasoning included: max_steps is "
        "lowered to fit (one step = n_candidates x max_step_tokens + max_rationale_tokens, one "
        "step kept for a forced answer; self_improve: max_rounds x max_round_tokens); 400 when "
        "not even one step fits.",
    )
    stop: str | list[str] | None = Field(
        default=None,
        description="Up to 4 strings: the answer (`content`) ends before the first of them, "
        "the search stops there and finish_reason is `stop`.",
    )
    stream_options: ChatStreamOptions | None = None
    reasoning_effort: ReasoningEffort | None = Field(
        default=None,
        description="Search budget preset: low (n_candidates 2, max_steps 6), medium (3, 15), "
        "high (6, 32); explicit n_candidates/max_steps win.",
    )
    reasoning_format: ReasoningFormat | None = Field(
        default=None,
        description="Where the search goes: `reasoning_content` (DeepSeek's field), "
        "`reasoning`, `think` (`<think>...</think>` before the answer in `content`) or `none` "
        "(the steps as content); default: the gateway's reasoning_format setting.",
    )
    # Gateway extras (extra_body in the openai client).
    heuristic: Heuristic | None = None
    n_candidates: int | None = Field(default=None, ge=1, le=16)
    max_steps: int | None = Field(default=None, ge=1, le=64)
    deadline_s: float | None = Field(default=None, gt=0.0, le=3600.0)
    strict: bool | None = None
    decay: float | None = Field(default=None, gt=0.0, le=1.0)
    max_step_tokens: int | None = Field(default=None, ge=1, le=1024)
    max_rationale_tokens: int | None = Field(default=None, ge=1, le=1024)
    few_shot: list[Demo] | None = None
    answer_kind: AnswerKind | None = None
    strategy: Strategy | None = None
    max_rounds: int | None = Field(default=None, ge=1, le=10)
    feedback: Literal["self", "verifier"] | None = None
    verifier: VerifierKind | None = None
    task: NonEmptyStr | None = None
    max_round_tokens: int | None = Field(default=None, ge=16, le=1024)
    beam_width: int | None = Field(default=None, ge=1, le=16)
    n_beams: int | None = Field(default=None, ge=1, le=16)
    aggregation: Aggregation | None = None
    max_tokens_budget: int | None = Field(default=None, ge=1)
    n_solutions: int | None = Field(
        default=None, ge=1, le=64, description="The `n` of /v1/reason (chat's own n is 1)."
    )


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    reasoning_content: str | None = Field(
        default=None, description="The search as text (reasoning_format reasoning_content)."
    )
    reasoning: str | None = Field(
        default=None, description="The search as text (reasoning_format reasoning)."
    )


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    """OpenAI chat completion plus the whole search trace in ``rationalyst``."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    rationalyst: ReasonResponse


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One streamed delta. Step chunks carry the step's trace in ``rationalyst_step``
    (self_improve: a chunk per round, without content, carries ``rationalyst_round``); the
    last chunk carries the whole response in ``rationalyst``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    rationalyst_step: StepTrace | None = None
    rationalyst_round: RoundTrace | None = None
    rationalyst: ReasonResponse | None = None
    usage: CompletionUsage | None = Field(
        default=None,
        description="With `stream_options.include_usage`: set on the last chunk (empty "
        "`choices`), null on the others.",
    )


class CancelResponse(Strict):
    """The answer of ``POST /v1/reason/{id}/cancel`` (and of a chat completion's cancel)."""

    id: str
    object: Literal["search.cancel"] = "search.cancel"
    status: Literal["cancelled", "already_cancelled"] = Field(
        description="cancelled: the search stops within its current model call and answers "
        "with the steps so far (`cancelled: true`); already_cancelled: a repeated cancel, "
        "a no-op."
    )
