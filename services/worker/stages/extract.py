"""Extract: implicit rationales from documents, as (preceding, rationale, following) triples.

Two modes (``extract.mode``):

``insert`` (the paper's)
    The agent copies each document with rationales inserted as ``<BOT>...<EOT>`` (temperature
    0, OpenAI-compatible /v1/chat/completions); an output whose text without rationales is at
    least ``min_similarity`` similar to the document is kept and cut into triples taken from
    the original document. A model that cannot follow the markup yields nothing: the stage's
    report counts the documents without markup and suggests ``boundary``.
``boundary``
    The document is cut into sentences (one splitter, :mod:`shared.sentences`). At each chosen
    boundary the agent is asked, with worked examples, for the one thought that leads from the
    text so far to the next sentence; the answer is the rationale of the triple (text so far,
    answer, next sentence) by construction, so no alignment can fail. An empty answer, or one
    that repeats the next sentence or a sentence before, is dropped and counted. At most
    ``max_boundaries_per_doc`` boundaries are asked; with selection ``loss`` they are those
    whose next sentence the scorer predicts worst without a rationale (the filter would drop
    the others anyway). All boundaries of a document go to the agent at once.
``auto``
    When the stage is planned, the agent is probed once with a worked example of ``insert``:
    ``insert`` when it reproduces the markup, ``boundary`` otherwise. The plan records the
    probe, and the stage's report says which mode was used.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from services.worker.artifacts import StagePaths
from services.worker.inputs import RawRecord
from services.worker.prompts import (
    EXTRACTION_EXAMPLES,
    boundary_messages,
    extraction_messages,
)
from services.worker.stages.base import (
    Outcome,
    RecordFailure,
    ShardResult,
    Stage,
    StageContext,
    collect,
    map_records,
    record_id,
    require_text,
)
from services.worker.text import (
    Boundary,
    clean_rationale,
    parse_markup,
    repeats,
    similarity,
    triples,
)
from shared.clients import ModelServiceClient
from shared.job_schemas import (
    DEFAULT_SCORING_SYSTEM_PROMPT,
    BoundarySelection,
    ExtractMode,
    ExtractOptions,
    JobKind,
)
from shared.schemas import Aggregate, ChatMessage, ScoreRequest
from shared.sentences import sentence_spans

PROBE_MAX_TOKENS = 256


def _completion_text(data: dict[str, Any]) -> tuple[str, str | None]:
    """(content, finish_reason) of a chat completion; RecordFailure when it has neither."""
    try:
        choice = data["choices"][0]
        return str(choice["message"]["content"] or ""), choice.get("finish_reason")
    except (KeyError, IndexError, TypeError) as exc:
        raise RecordFailure(f"unexpected chat completion: {exc!r}") from exc


async def chat(
    agent: ModelServiceClient, messages: list[dict[str, str]], max_tokens: int
) -> tuple[str, str | None]:
    """One greedy chat completion: (content, finish_reason)."""
    body = {"messages": messages, "temperature": 0.0, "max_tokens": max_tokens}
    response = await agent.request("POST", "/v1/chat/completions", json=body)
    return _completion_text(response.json())


async def probe_markup(agent: ModelServiceClient, opts: ExtractOptions) -> dict[str, Any]:
    """Ask the agent to mark up a worked example it is not shown the answer of (the first
    example; the others are the demos) and check the result: at least one rationale, and a
    copy at least ``min_similarity`` close to the example's text."""
    examples = list(EXTRACTION_EXAMPLES if opts.few_shot is None else opts.few_shot)
    if len(examples) >= 2:
        probe, demos = examples[0], examples[1:]
    else:
        probe, demos = EXTRACTION_EXAMPLES[0], examples
    messages = extraction_messages(probe.text, system=opts.system_prompt, examples=demos)
    output, finish = await chat(agent, messages, min(opts.max_tokens, PROBE_MAX_TOKENS))
    markup = parse_markup(output)
    sim = round(similarity(markup.text, probe.text), 6)
    found = triples(probe.text, markup) if sim >= opts.min_similarity else []
    return {
        "follows_markup": bool(found),
        "rationales": len(markup.rationales),
        "similarity": sim,
        "finish_reason": finish,
        "output": output[:500],
    }


def _sum_counters(stats: list[dict[str, Any]], key: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for st in stats:
        total.update({k: int(v) for k, v in st.get(key, {}).items()})
    return dict(total)


class ExtractStage(Stage):
    kind = JobKind.extract
    streams = ("output", "documents")
    options: ExtractOptions

    async def prepare(self, runtime: Any) -> dict[str, Any]:
        """Resolve the mode once for every shard (``auto``: probe the agent)."""
        opts = self.options
        if opts.mode is not ExtractMode.auto:
            return {"mode": opts.mode.value, "mode_requested": opts.mode.value}
        probe = await probe_markup(runtime.agent, opts)
        mode = ExtractMode.insert if probe["follows_markup"] else ExtractMode.boundary
        return {"mode": mode.value, "mode_requested": ExtractMode.auto.value, "probe": probe}

    async def process(self, records: list[RawRecord], ctx: StageContext) -> ShardResult:
        if "mode" not in ctx.extras:  # a shard run without its plan (tests, tools)
            ctx.extras.update(await self.prepare(ctx.runtime))
        mode = ExtractMode(ctx.extras["mode"])
        if mode is ExtractMode.insert:
            return await self.process_insert(records, ctx)
        return await self.process_boundary(records, ctx)

    # -- insert ----------------------------------------------------------------------------

    async def process_insert(self, records: list[RawRecord], ctx: StageContext) -> ShardResult:
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
            messages = extraction_messages(text, system=opts.system_prompt, examples=opts.few_shot)
            output, finish = await chat(ctx.runtime.agent, messages, opts.max_tokens)
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
                    "mode": ExtractMode.insert.value,
                }
                for j, t in enumerate(found)
            ]
            doc = {
                "id": rid,
                "source": source,
                "mode": ExtractMode.insert.value,
                "similarity": sim,
                "rationales": len(markup.rationales),
                "triples": len(rows),
                "finish_reason": finish,
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
        result = collect(self.kind, ctx.shard, records, outcomes)
        docs = result.streams.get("documents", [])
        result.stats = {
            "mode": ExtractMode.insert.value,
            "documents_answered": len(docs),
            "no_markup": sum(1 for d in docs if d["rationales"] == 0),
        }
        return result

    # -- boundary --------------------------------------------------------------------------

    def _scoring_system(self) -> str:
        system = self.options.scoring_system_prompt
        return DEFAULT_SCORING_SYSTEM_PROMPT if system is None else system

    async def following_loss(
        self, scorer: ModelServiceClient, preceding: str, following: str
    ) -> float:
        """Mean loss per token (nats) of the next sentence without a rationale, in the
        filter's context: [system, user: text so far] -> assistant: next sentence."""
        system = self._scoring_system()
        context = [ChatMessage(role="system", content=system)] if system else []
        context.append(ChatMessage(role="user", content=preceding.strip()))
        req = ScoreRequest(
            context=context,
            continuations=[following.strip()],
            aggregate=Aggregate.mean,
            return_tokens=False,
        )
        response = await scorer.score(req)
        return -float(response.scores[0].mean)

    async def select(
        self,
        text: str,
        candidates: list[Boundary],
        ctx: StageContext,
        limit: asyncio.Semaphore,
    ) -> tuple[list[Boundary], dict[int, float], Counter[str]]:
        """The boundaries to ask at (in document order), the loss of each scored one, and
        why the others were skipped."""
        opts = self.options
        budget = opts.max_boundaries_per_doc
        skipped: Counter[str] = Counter()
        if opts.boundary_selection is BoundarySelection.first:
            if len(candidates) > budget:
                skipped["budget"] = len(candidates) - budget
            return candidates[:budget], {}, skipped

        async def loss(b: Boundary) -> float:
            async with limit:
                await ctx.check_active()
                return await self.following_loss(
                    ctx.runtime.scorer, text[: b.start], text[b.start : b.end]
                )

        values = await asyncio.gather(*(loss(b) for b in candidates))
        losses = {b.index: round(v, 6) for b, v in zip(candidates, values, strict=True)}
        eligible = [b for b in candidates if losses[b.index] > opts.min_following_loss]
        if len(eligible) < len(candidates):
            skipped["predicted_well"] = len(candidates) - len(eligible)
        ranked = sorted(eligible, key=lambda b: (-losses[b.index], b.index))
        if len(ranked) > budget:
            skipped["budget"] = len(ranked) - budget
        chosen = sorted(ranked[:budget], key=lambda b: b.index)
        return chosen, losses, skipped

    async def process_boundary(self, records: list[RawRecord], ctx: StageContext) -> ShardResult:
        opts = self.options
        field = ctx.input.text_field
        # model-service requests in flight for the whole shard, whatever document they serve
        limit = asyncio.Semaphore(ctx.runtime.settings.request_concurrency)

        async def ask(text: str, b: Boundary) -> tuple[str, str | None]:
            messages = boundary_messages(
                text[: b.start],
                text[b.start : b.end],
                system=opts.boundary_system_prompt,
                examples=opts.boundary_examples,
            )
            async with limit:
                await ctx.check_active()
                return await chat(ctx.runtime.agent, messages, opts.boundary_max_tokens)

        async def one(rec: RawRecord) -> Outcome:
            assert rec.data is not None
            rid = record_id(rec.data, rec.index, ctx.input.id_field)
            text = require_text(rec.data, field)
            if not text.strip():
                return Outcome("dropped", reason="empty", record_id=rid)
            if len(text) > opts.max_input_chars:
                return Outcome("dropped", reason="too_long", record_id=rid)
            source = str(rec.data.get("source", ""))
            spans = sentence_spans(text)
            candidates = [Boundary(i, a, b) for i, (a, b) in enumerate(spans[1:])]
            doc: dict[str, Any] = {
                "id": rid,
                "source": source,
                "mode": ExtractMode.boundary.value,
                "sentences": len(spans),
                "boundaries": len(candidates),
            }
            if not candidates:
                doc.update(asked=[], skipped={}, dropped={}, triples=0, kept=False)
                return Outcome(
                    "dropped", rows={"documents": [doc]}, reason="no_boundary", record_id=rid
                )
            chosen, losses, skipped = await self.select(text, candidates, ctx, limit)
            answers = await asyncio.gather(*(ask(text, b) for b in chosen))
            rows: list[dict[str, Any]] = []
            dropped: Counter[str] = Counter()
            for b, (answer, finish) in zip(chosen, answers, strict=True):
                preceding, following = text[: b.start], text[b.start : b.end]
                rationale = clean_rationale(answer, truncated=finish == "length")
                before = [text[a:e] for a, e in spans[: b.index + 1]]
                if not rationale:
                    dropped["empty"] += 1
                elif repeats(rationale, following, max_similarity=opts.max_repeat_similarity):
                    dropped["repeats_following"] += 1
                elif any(
                    repeats(rationale, s, max_similarity=opts.max_repeat_similarity) for s in before
                ):
                    dropped["repeats_preceding"] += 1
                else:
                    rows.append(
                        {
                            "id": f"{rid}#{b.index}",
                            "doc_id": rid,
                            "index": b.index,
                            "preceding": preceding,
                            "rationale": rationale,
                            "following": following,
                            "source": source,
                            "start": b.start,
                            "end": b.end,
                            "mode": ExtractMode.boundary.value,
                            "following_loss": losses.get(b.index),
                        }
                    )
            doc.update(
                asked=[b.index for b in chosen],
                skipped=dict(skipped),
                dropped=dict(dropped),
                triples=len(rows),
                kept=bool(rows),
            )
            return Outcome(
                "kept" if rows else "dropped",
                rows={"output": rows, "documents": [doc]},
                reason=None if rows else "no_rationale",
                record_id=rid,
            )

        outcomes = await map_records(
            records, ctx, one, concurrency=ctx.runtime.settings.request_concurrency
        )
        result = collect(self.kind, ctx.shard, records, outcomes)
        docs = result.streams.get("documents", [])
        skipped: Counter[str] = Counter()
        dropped: Counter[str] = Counter()
        for d in docs:
            skipped.update(d["skipped"])
            dropped.update(d["dropped"])
        result.stats = {
            "mode": ExtractMode.boundary.value,
            "documents_answered": len(docs),
            "boundaries": sum(d["boundaries"] for d in docs),
            "boundaries_asked": sum(len(d["asked"]) for d in docs),
            "boundaries_skipped": dict(skipped),
            "rationales_dropped": dict(dropped),
        }
        return result

    # -- merge -----------------------------------------------------------------------------

    def finish(
        self, paths: StagePaths, n_shards: int, shard_stats: list[dict[str, Any]]
    ) -> dict[str, Any]:
        super().finish(paths, n_shards, shard_stats)
        stats = [st.get("stats", {}) for st in shard_stats]
        triples_out = sum(int(st["counts"].get("out", 0)) for st in shard_stats)
        answered = sum(int(st.get("documents_answered", 0)) for st in stats)
        modes = sorted({str(st["mode"]) for st in stats if st.get("mode")})
        out: dict[str, Any] = {"triples": triples_out, "warnings": []}
        if ExtractMode.boundary.value in modes:
            asked = sum(int(st.get("boundaries_asked", 0)) for st in stats)
            dropped = _sum_counters(stats, "rationales_dropped")
            out["boundary"] = {
                "documents": answered,
                "boundaries": sum(int(st.get("boundaries", 0)) for st in stats),
                "boundaries_asked": asked,
                "boundaries_skipped": _sum_counters(stats, "boundaries_skipped"),
                "rationales_dropped": dropped,
                "triples": triples_out,
            }
        if ExtractMode.insert.value in modes:
            no_markup = sum(int(st.get("no_markup", 0)) for st in stats)
            out["insert"] = {"documents": answered, "no_markup": no_markup}
            if no_markup:
                out["warnings"].append(
                    f"{no_markup} of {answered} documents produced no <BOT>...<EOT> markup: "
                    "the agent does not follow the insert prompt; set extract.mode to "
                    "'boundary' (any model can follow it) or 'auto'"
                )
        return out

    def report(self, summary: dict[str, Any]) -> dict[str, Any]:
        keep = ("mode", "mode_requested", "probe", "boundary", "insert", "warnings", "triples")
        out = {key: summary[key] for key in keep if key in summary}
        if isinstance(out.get("probe"), dict):
            out["probe"] = {k: v for k, v in out["probe"].items() if k != "output"}
        return {**super().report(summary), **out}
