"""SFT data: (preceding, rationale) rows as chat rows for TRL's SFTTrainer (REFERENCE.md 1.3):
``{"messages": [{"role": "user", "content": preceding}, {"role": "assistant", "content":
rationale}]}``; the loss then falls on the assistant turn only. Rows keep the filter's
train/dev split (rows without one go to train)."""

from __future__ import annotations

import json
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
    record_id,
)
from shared.job_schemas import JobKind, SftOptions


def chat_row(data: dict[str, Any], system: str | None) -> dict[str, Any]:
    preceding, rationale = data.get("preceding"), data.get("rationale")
    if not isinstance(preceding, str) or not preceding.strip():
        raise RecordFailure("row has no non-empty 'preceding'")
    if not isinstance(rationale, str) or not rationale.strip():
        raise RecordFailure("row has no non-empty 'rationale'")
    messages = [{"role": "system", "content": system}] if system else []
    messages += [
        {"role": "user", "content": preceding.strip()},
        {"role": "assistant", "content": rationale.strip()},
    ]
    return {"messages": messages}


class SftStage(Stage):
    kind = JobKind.sft_data
    options: SftOptions

    async def process(self, records: list[RawRecord], ctx: StageContext) -> ShardResult:
        outcomes: list[Outcome] = []
        for rec in records:
            if rec.data is None:
                outcomes.append(Outcome("failed", error_type="parse_error", error=rec.error))
                continue
            rid = record_id(rec.data, rec.index, ctx.input.id_field)
            try:
                row = chat_row(rec.data, self.options.system_prompt)
            except RecordFailure as exc:
                outcomes.append(
                    Outcome("failed", error_type="record_error", error=str(exc), record_id=rid)
                )
                continue
            split = "dev" if rec.data.get("split") == "dev" else "train"
            row = {"id": rid, "split": split, **row}
            outcomes.append(Outcome("kept", rows={"output": [row]}, record_id=rid))
        return collect(self.kind, ctx.shard, records, outcomes)

    def finish(
        self, paths: StagePaths, n_shards: int, shard_stats: list[dict[str, Any]]
    ) -> dict[str, Any]:
        super().finish(paths, n_shards, shard_stats)
        counts = {"train": 0, "dev": 0}
        with ExitStack() as stack:
            files = {
                name: stack.enter_context(atomic_open(paths.stream(name)))
                for name in ("train", "dev")
            }
            for row in iter_jsonl(paths.stream("output")):
                split = row.get("split", "train")
                files[split].write(
                    json.dumps({"messages": row["messages"]}, ensure_ascii=False) + "\n"
                )
                counts[split] += 1
        return {"splits": counts, "format": "chat messages (TRL SFTTrainer)"}
