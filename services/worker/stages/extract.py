"""Extract: the agent copies each document with implicit rationales inserted as
``<BOT>...<EOT>`` (temperature 0, OpenAI-compatible /v1/chat/completions); an output whose text
without rationales is at least ``min_similarity`` similar to the document is kept and cut into
(preceding, rationale, following) triples taken from the original document."""

from __future__ import annotations

from typing import Any

from services.worker.inputs import RawRecord
from services.worker.prompts import extraction_messages
from services.worker.stages.base import (
    Outcome,
    ShardResult,
    Stage,
    StageContext,
    collect,
    map_records,
    record_id,
    require_text,
)
from services.worker.text import parse_markup, similarity, triples
from shared.job_schemas import ExtractOptions, JobKind


class ExtractStage(Stage):
    kind = JobKind.extract
    streams = ("output", "documents")
    options: ExtractOptions

    async def extract_one(self, text: str, ctx: StageContext) -> dict[str, Any]:
        """One chat completion; returns the response body."""
        opts = self.options
        body = {
            "messages": extraction_messages(
                text, system=opts.system_prompt, examples=opts.few_shot
            ),
            "temperature": 0.0,
            "max_tokens": opts.max_tokens,
        }
        response = await ctx.runtime.agent.request("POST", "/v1/chat/completions", json=body)
        data: dict[str, Any] = response.json()
        return data

    async def process(self, records: list[RawRecord], ctx: StageContext) -> ShardResult:
        opts = self.options
        field = ctx.input.text_field

        async def one(rec: RawRecord) -> Outcome:
            assert rec.data is not None
            rid = record_id(rec.data, rec.index, ctx.input.id_field)
            text = require_text(rec.data, field)
            if not text.strip():
                return Outcome("dropped", reason="empty", record_id=rid)
            if len(text) > opts.max_input_chars:
                return Outcome("dropped", reason="too_long", record_id=rid)
            data = await self.extract_one(text, ctx)
            try:
                choice = data["choices"][0]
                output = str(choice["message"]["content"] or "")
            except (KeyError, IndexError, TypeError) as exc:
                return Outcome(
                    "failed",
                    error_type="parse_error",
                    error=f"unexpected chat completion: {exc!r}",
                    record_id=rid,
                )
            markup = parse_markup(output)
            sim = round(similarity(markup.text, text), 6)
            found = triples(text, markup) if sim >= opts.min_similarity else []
            source = str(rec.data.get("source", ""))
            rows = [
                {
                    "id": f"{rid}#{j}",
                    "doc_id": rid,
                    "index": j,
                    "preceding": t.preceding,
                    "rationale": t.rationale,
                    "following": t.following,
                    "source": source,
                    "start": t.start,
                    "end": t.end,
                }
                for j, t in enumerate(found)
            ]
            doc = {
                "id": rid,
                "source": source,
                "similarity": sim,
                "rationales": len(markup.rationales),
                "triples": len(rows),
                "finish_reason": choice.get("finish_reason"),
                "output": output,
            }
            if sim < opts.min_similarity:
                status, reason = "dropped", "low_similarity"
            elif not rows:
                status, reason = "dropped", "no_rationale"
            else:
                status, reason = "kept", None
            doc["kept"] = status == "kept"
            return Outcome(
                status,  # type: ignore[arg-type]
                rows={"output": rows, "documents": [doc]},
                reason=reason,
                record_id=rid,
            )

        outcomes = await map_records(
            records, ctx, one, concurrency=ctx.runtime.settings.request_concurrency
        )
        return collect(self.kind, ctx.shard, records, outcomes)
