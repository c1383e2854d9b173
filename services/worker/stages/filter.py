"""Filter: keep the rationales that make the following text more likely (REFERENCE.md 1.2).

For each triple the scorer's /v1/score gives the decayed sum of the log-probabilities of the
tokens of ``following`` (w_i = decay**i), once with the rationale and once without, in ONE
request:

    context        [system, user: preceding]            (the assistant turn follows)
    continuations  [following, following]
    given          ["<BOT>" + rationale + "<EOT>\\n", ""]  (conditioned on, never scored)

so S_with = log P(following | preceding, rationale) and S_without = log P(following |
preceding), both counting exactly the tokens of ``following``. The rationale opens the
assistant turn (as in the agent's explicit-supervision prompt) rather than closing the user
turn as in the original code: that way both texts share every token up to the rationale, the
model service computes that prefix once (packed, with the continuations after it), and the
line break after ``<EOT>`` makes ``following`` tokenize the same in both. A triple costs about
one forward pass. Keep when S_with - S_without >= tau (per-source overrides). Each shard's
rows are sorted by the difference; the stage merges them (a k-way merge, streamed) and splits
train/dev by a seeded draw.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

from services.worker.artifacts import StagePaths, atomic_open, iter_jsonl
from services.worker.inputs import RawRecord
from services.worker.stages.base import (
    Outcome,
    RecordFailure,
    ShardResult,
    Stage,
    StageContext,
    collect,
    map_records,
    record_id,
)
from shared.job_schemas import FilterOptions, JobKind
from shared.schemas import Aggregate, ChatMessage, ScoreRequest

BOT, EOT = "<BOT>", "<EOT>"


def triple_fields(data: dict[str, Any]) -> tuple[str, str, str]:
    """(preceding, rationale, following), stripped; RecordFailure when one is missing."""
    out = []
    for key in ("preceding", "rationale", "following"):
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            raise RecordFailure(f"triple has no non-empty {key!r}")
        out.append(value.strip())
    return out[0], out[1], out[2]


RATIONALE_SEPARATOR = "\n"
"""After ``<EOT>``: the assistant turn without a rationale starts after the chat template's
line break too, so ``following`` gets the same tokens with and without the rationale."""


def score_request(data: dict[str, Any], opts: FilterOptions) -> ScoreRequest:
    """The one /v1/score request of a triple: ``following`` with the rationale given (first)
    and without it (second)."""
    preceding, rationale, following = triple_fields(data)
    system = [ChatMessage(role="system", content=opts.system_prompt)] if opts.system_prompt else []
    return ScoreRequest(
        context=[*system, ChatMessage(role="user", content=preceding)],
        continuations=[following, following],
        given=[f"{BOT}{rationale}{EOT}{RATIONALE_SEPARATOR}", ""],
        decay=opts.decay,
        aggregate=Aggregate.decayed_sum,
        return_tokens=False,
    )


def _sort_key(row: dict[str, Any]) -> tuple[float, str]:
    return (-float(row["diff"]), str(row["id"]))


class FilterStage(Stage):
    kind = JobKind.filter
    options: FilterOptions

    def tau_for(self, source: str) -> float:
        return self.options.tau_by_source.get(source, self.options.tau)

    async def process(self, records: list[RawRecord], ctx: StageContext) -> ShardResult:
        scorer = ctx.runtime.scorer

        async def one(rec: RawRecord) -> Outcome:
            assert rec.data is not None
            rid = record_id(rec.data, rec.index, ctx.input.id_field)
            response = await scorer.score(score_request(rec.data, self.options))
            with_score, without_score = response.scores
            s_with, s_without = with_score.decayed_sum, without_score.decayed_sum
            diff = s_with - s_without
            if not math.isfinite(diff):
                raise RecordFailure(f"non-finite score difference {diff}")
            source = str(rec.data.get("source", ""))
            if diff < self.tau_for(source):
                return Outcome("dropped", reason="below_tau", record_id=rid)
            row = {
                **rec.data,
                "id": rid,
                "s_with": s_with,
                "s_without": s_without,
                "diff": diff,
                "following_tokens": with_score.num_tokens,
            }
            return Outcome("kept", rows={"output": [row]}, record_id=rid)

        concurrency = ctx.runtime.settings.request_concurrency
        outcomes = await map_records(records, ctx, one, concurrency=concurrency)
        result = collect(self.kind, ctx.shard, records, outcomes)
        result.streams["output"] = sorted(result.streams.get("output", []), key=_sort_key)
        return result

    def finish(
        self, paths: StagePaths, n_shards: int, shard_stats: list[dict[str, Any]]
    ) -> dict[str, Any]:
        opts = self.options
        n = sum(int(st["counts"].get("out", 0)) for st in shard_stats)
        k = round(n * opts.dev_fraction)
        if opts.dev_fraction > 0 and n >= 2:
            k = max(k, 1)
        dev = set(random.Random(opts.seed).sample(range(n), k)) if k else set()

        def rows() -> Iterator[dict[str, Any]]:
            parts = [
                iter_jsonl(paths.shard_stream(i, "output"))
                for i in range(n_shards)
                if paths.shard_stream(i, "output").exists()
            ]
            yield from heapq.merge(*parts, key=_sort_key)

        total, low, high = 0.0, math.inf, -math.inf
        counts = {"train": 0, "dev": 0}
        with ExitStack() as stack:
            out = stack.enter_context(atomic_open(paths.stream("output")))
            splits = {
                name: stack.enter_context(atomic_open(paths.stream(name)))
                for name in ("train", "dev")
            }
            for i, row in enumerate(rows()):
                split = "dev" if i in dev else "train"
                row["split"] = split
                line = json.dumps(row, ensure_ascii=False) + "\n"
                out.write(line)
                splits[split].write(line)
                counts[split] += 1
                d = float(row["diff"])
                total, low, high = total + d, min(low, d), max(high, d)
        return {
            "tau": opts.tau,
            "tau_by_source": opts.tau_by_source,
            "decay": opts.decay,
            "seed": opts.seed,
            "splits": counts,
            "diff": {
                "max": high if n else None,
                "min": low if n else None,
                "mean": total / n if n else None,
            },
        }

    def report(self, summary: dict[str, Any]) -> dict[str, Any]:
        keep = ("tau", "splits", "diff")
        return {**super().report(summary), **{k: summary[k] for k in keep if k in summary}}
