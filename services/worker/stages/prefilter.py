"""Prefilter: keep documents whose embedding is close to the centroid of a reasoning reference
set (REFERENCE.md 1.2): normalize (lowercase, no punctuation, no stopwords), embed, cosine with
the centroid, keep when >= threshold and not longer than ``max_chars``."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from services.worker.artifacts import StagePaths
from services.worker.inputs import InputAccess, RawRecord
from services.worker.reference import load_reference
from services.worker.stages.base import (
    Outcome,
    RecordFailure,
    ShardResult,
    Stage,
    StageContext,
    collect,
    record_id,
    require_text,
)
from services.worker.text import normalize
from shared.job_schemas import JobKind, PrefilterOptions

HIST_EDGES: list[float] = [round(-1.0 + 0.05 * i, 2) for i in range(41)]
"""Fixed similarity bins (width 0.05 over [-1, 1]) so shard histograms add up."""


def histogram(values: list[float]) -> list[int]:
    counts, _ = np.histogram(np.asarray(values, dtype=float), bins=HIST_EDGES)
    return [int(c) for c in counts]


class PrefilterStage(Stage):
    kind = JobKind.prefilter
    options: PrefilterOptions

    def _model_name(self, default: str) -> str:
        return self.options.embedding_model or default

    async def prepare(self, runtime: Any) -> dict[str, Any]:
        """Embed the reference set once; its unit-length centroid goes into the plan."""
        opts = self.options
        embedder = await asyncio.to_thread(
            runtime.embedders.get, self._model_name(runtime.settings.embedding_model)
        )
        access = InputAccess.of_jobs(runtime.settings)
        ref = await asyncio.to_thread(load_reference, opts.reference, access)
        texts = [normalize(t) for t in ref.texts] if opts.normalize else list(ref.texts)
        vectors = await asyncio.to_thread(embedder.encode, texts, opts.batch_size)
        centroid = np.asarray(vectors, dtype=np.float64).mean(axis=0)
        norm = float(np.linalg.norm(centroid))
        if norm == 0.0:
            raise ValueError("the reference centroid is zero")
        return {
            "centroid": (centroid / norm).tolist(),
            "reference_source": ref.source,
            "reference_size": len(ref.texts),
            "embedding_model": str(embedder.path),
        }

    async def process(self, records: list[RawRecord], ctx: StageContext) -> ShardResult:
        opts = self.options
        field = ctx.input.text_field
        outcomes: list[Outcome] = []
        to_embed: list[tuple[int, str, dict[str, Any]]] = []
        for rec in records:
            if rec.data is None:
                outcomes.append(Outcome("failed", error_type="parse_error", error=rec.error))
                continue
            rid = record_id(rec.data, rec.index, ctx.input.id_field)
            try:
                text = require_text(rec.data, field)
            except RecordFailure as exc:
                outcomes.append(
                    Outcome("failed", error_type="record_error", error=str(exc), record_id=rid)
                )
                continue
            if len(text) > opts.max_chars:
                outcomes.append(Outcome("dropped", reason="too_long", record_id=rid))
                continue
            prepared = normalize(text) if opts.normalize else text
            if not prepared.strip():
                outcomes.append(Outcome("dropped", reason="empty", record_id=rid))
                continue
            row = {**rec.data, "id": rid, "text": text}
            to_embed.append((len(outcomes), prepared, row))
            outcomes.append(Outcome("dropped", record_id=rid))  # placeholder, decided below

        sims: list[float] = []
        if to_embed:
            await ctx.check_active()
            embedder = await asyncio.to_thread(
                ctx.runtime.embedders.get, self._model_name(ctx.runtime.settings.embedding_model)
            )
            vectors = await asyncio.to_thread(
                embedder.encode, [p for _, p, _ in to_embed], opts.batch_size
            )
            centroid = np.asarray(ctx.extras["centroid"], dtype=np.float64)
            sims = [float(x) for x in np.asarray(vectors, dtype=np.float64) @ centroid]
        kept_sims: list[float] = []
        for (pos, _, row), raw_sim in zip(to_embed, sims, strict=True):
            sim = round(raw_sim, 6)
            if sim >= opts.threshold:
                kept_sims.append(sim)
                outcomes[pos] = Outcome(
                    "kept", rows={"output": [{**row, "similarity": sim}]}, record_id=row["id"]
                )
            else:
                outcomes[pos] = Outcome("dropped", reason="below_threshold", record_id=row["id"])
        result = collect(self.kind, ctx.shard, records, outcomes)
        result.stats = {"hist_all": histogram(sims), "hist_kept": histogram(kept_sims)}
        return result

    def finish(
        self, paths: StagePaths, n_shards: int, shard_stats: list[dict[str, Any]]
    ) -> dict[str, Any]:
        super().finish(paths, n_shards, shard_stats)
        all_counts = np.zeros(len(HIST_EDGES) - 1, dtype=int)
        kept_counts = np.zeros(len(HIST_EDGES) - 1, dtype=int)
        for st in shard_stats:
            all_counts += np.asarray(st["stats"].get("hist_all", all_counts.tolist()))
            kept_counts += np.asarray(st["stats"].get("hist_kept", kept_counts.tolist()))
        return {
            "threshold": self.options.threshold,
            "max_chars": self.options.max_chars,
            "similarity_histogram": {
                "edges": HIST_EDGES,
                "all": all_counts.tolist(),
                "kept": kept_counts.tolist(),
            },
        }
