"""Prometheus metrics of the model service (one registry per app)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.model_server.engines.base import Completion
from shared.http import HttpMetrics


class ModelMetrics(HttpMetrics):
    def __init__(self) -> None:
        super().__init__("model_server")
        self.tokens = Counter(
            "model_server_tokens_total",
            "Tokens processed, by kind (prompt, completion, scored).",
            ["kind"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "model_server_batch_size",
            "Rows per engine batch, by operation (generate, score).",
            ["op"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.engine_tokens = Counter(
            "model_server_engine_tokens_total",
            "Tokens the engine computed, counted as it computes them (decode: one per row per "
            "step), so work for requests that were later cancelled shows here too.",
            ["kind"],
            registry=self.registry,
        )
        self.prefix_tokens = Counter(
            "model_server_prefix_cache_tokens_total",
            "Prompt tokens not recomputed: their KV came from the prefix cache, by operation.",
            ["op"],
            registry=self.registry,
        )
        self.engine_seconds = Histogram(
            "model_server_engine_seconds",
            "Time inside the engine per request, by operation.",
            ["op"],
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )

    def on_work(self, kind: str, tokens: int) -> None:
        """Engine hook: tokens just computed (``decode``: one per row per decode step)."""
        self.engine_tokens.labels(kind).inc(tokens)

    def on_prefix(self, op: str, tokens: int) -> None:
        """Engine hook: prompt tokens whose KV came from the prefix cache."""
        self.prefix_tokens.labels(op).inc(tokens)

    def on_batch(self, op: str, rows: int) -> None:
        """Engine hook: one executed batch."""
        self.batch_size.labels(op).observe(rows)

    def observe_generation(
        self, prompt_ids: list[int], outs: list[Completion], secs: float
    ) -> None:
        self.tokens.labels("prompt").inc(len(prompt_ids))
        self.tokens.labels("completion").inc(sum(len(o.token_ids) for o in outs))
        self.engine_seconds.labels("generate").observe(secs)

    def observe_score(self, continuations: int, processed: int, secs: float) -> None:
        self.tokens.labels("scored").inc(processed)
        self.engine_seconds.labels("score").observe(secs)
