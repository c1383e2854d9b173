"""Stages on fake model services (httpx MockTransport) and a fake embedder: counting, keep
rules, ordering, splits, and which failures fail a record and which abort the shard."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest

from services.worker.artifacts import StagePaths, iter_jsonl, write_json
from services.worker.inputs import RawRecord
from services.worker.settings import WorkerSettings
from services.worker.stages import build_stage
from services.worker.stages.base import JobStopped, StageContext
from shared.clients import ModelServiceClient
from shared.errors import ServiceUnavailable
from shared.job_schemas import InputSpec, JobKind

pytestmark = pytest.mark.unit

DOC = "Tom has 3 apples. He buys 5 more. Now he has 8 apples."
MARKED = "Tom has 3 apples. <BOT>He adds what he buys.<EOT> He buys 5 more. Now he has 8 apples."


def client(name: str, handler: Callable[[httpx.Request], httpx.Response]) -> ModelServiceClient:
    return ModelServiceClient(name, "http://fake", transport=httpx.MockTransport(handler))


def runtime(**kw: Any) -> Any:
    settings = WorkerSettings(request_concurrency=4)
    return SimpleNamespace(settings=settings, **kw)


def context(rt: Any, extras: dict[str, Any] | None = None, active: bool = True) -> StageContext:
    async def check() -> None:
        if not active:
            raise JobStopped("j")

    return StageContext(
        job_id="job-x",
        stage_index=0,
        shard=0,
        runtime=rt,
        input=InputSpec(paths=["x"]),
        extras=extras or {},
        check_active=check,
    )


def records(*rows: dict[str, Any] | None) -> list[RawRecord]:
    return [RawRecord(i, row, None if row else "invalid JSON") for i, row in enumerate(rows)]


def spec(kind: str, **options: Any) -> Any:
    from pydantic import TypeAdapter

    from shared.job_schemas import JobSpec

    return TypeAdapter(JobSpec).validate_python(
        {"kind": kind, "input": {"paths": ["x"]}, **options}
    )


def chat_reply(content: str) -> httpx.Response:
    return httpx.Response(
        200, json={"choices": [{"message": {"content": content}, "finish_reason": "stop"}]}
    )


async def test_worker_extract_counts_every_record() -> None:
    def agent(request: httpx.Request) -> httpx.Response:
        text = json.loads(request.content)["messages"][-1]["content"]
        if text == DOC:
            return chat_reply(MARKED)
        if text.startswith("copy badly"):
            return chat_reply("something else entirely <BOT>r<EOT> unrelated")
        if text.startswith("too long for the model"):
            return httpx.Response(
                422, json={"error": {"type": "invalid_request", "message": "prompt too long"}}
            )
        return chat_reply(text)  # a verbatim copy without rationales

    stage = build_stage(spec("extract", mode="insert"), JobKind.extract)
    rt = runtime(agent=client("agent", agent))
    recs = records(
        {"id": "d1", "text": DOC, "source": "web"},
        {"id": "d2", "text": "copy badly, please"},
        {"id": "d3", "text": "plain text without rationales"},
        {"id": "d4", "text": "too long for the model"},
        None,
        {"id": "d6", "body": "no text field"},
    )
    result = await stage.process(recs, context(rt))
    c = result.counts
    assert (c["in"], c["kept"], c["dropped"], c["failed"]) == (6, 1, 2, 3)
    assert c["in"] == c["kept"] + c["dropped"] + c["failed"]
    assert dict(result.drop_reasons) == {"low_similarity": 1, "no_rationale": 1}
    (triple,) = result.streams["output"]
    assert triple["id"] == "d1#0" and triple["source"] == "web"
    assert DOC.startswith(triple["preceding"] + triple["following"])
    assert triple["rationale"] == "He adds what he buys."
    assert [d["id"] for d in result.streams["documents"]] == ["d1", "d2", "d3"]
    assert {e.record_id for e in result.errors} == {"d4", "r0000004", "d6"}
    assert {e.type for e in result.errors} == {"invalid_request", "parse_error", "record_error"}


async def test_worker_model_service_down_aborts_the_shard() -> None:
    def agent(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    stage = build_stage(spec("extract", mode="insert"), JobKind.extract)
    rt = runtime(agent=ModelServiceClient("agent", "http://fake", connect_retries=0,
                                          transport=httpx.MockTransport(agent)))  # fmt: skip
    with pytest.raises(ServiceUnavailable, match="agent is unreachable"):
        await stage.process(records({"text": DOC}), context(rt))


async def test_worker_cancelled_job_stops_the_shard() -> None:
    stage = build_stage(spec("extract", mode="insert"), JobKind.extract)
    rt = runtime(agent=client("agent", lambda r: chat_reply(MARKED)))
    with pytest.raises(JobStopped):
        await stage.process(records({"text": DOC}), context(rt, active=False))


def score_reply(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    # one request per triple: the continuation with the rationale given, then without it
    assert len(body["continuations"]) == 2 and body["given"][1] == ""
    given = body["given"][0]
    # the rationale helps for triples whose rationale says "helps"
    s_with = -2.0 if given.startswith("<BOT>helps") else -5.0
    scores = []
    for s in (s_with, -4.0):
        scores.append({"score": s, "sum": s, "mean": s, "decayed_sum": s, "decayed_mean": s,
                       "num_tokens": 3})  # fmt: skip
    return httpx.Response(200, json={"scores": scores, "prompt_tokens": 10})


def triple(i: int, rationale: str, source: str = "web") -> dict[str, Any]:
    return {
        "id": f"t{i}",
        "preceding": f"Text {i}.",
        "rationale": rationale,
        "following": f"More {i}.",
        "source": source,
    }


async def test_worker_filter_keeps_helpful_rationales_sorted() -> None:
    stage = build_stage(spec("filter", tau_by_source={"strict": 5.0}), JobKind.filter)
    rt = runtime(scorer=client("scorer", score_reply))
    recs = records(
        triple(0, "hurts"), triple(1, "helps a lot"), triple(2, "helps", "strict"),
        {"id": "bad", "preceding": "x", "following": "y"},
    )  # fmt: skip
    result = await stage.process(recs, context(rt))
    assert (result.counts["kept"], result.counts["dropped"], result.counts["failed"]) == (1, 2, 1)
    (row,) = result.streams["output"]
    assert row["id"] == "t1" and row["diff"] == pytest.approx(2.0)
    assert row["s_with"] == -2.0 and row["s_without"] == -4.0


def test_worker_filter_scores_both_in_one_request_sharing_the_context() -> None:
    from services.worker.stages.filter import score_request
    from shared.job_schemas import FilterOptions

    req = score_request(triple(0, "Add them."), FilterOptions())
    assert req.continuations == ["More 0.", "More 0."]
    assert req.given == ["<BOT>Add them.<EOT>\n", ""]
    assert [m.role for m in req.context] == ["system", "user"]  # type: ignore[union-attr]
    assert req.context[-1].content == "Text 0."  # type: ignore[union-attr]


def test_worker_filter_finish_merges_sorted_and_splits(tmp_path: Path) -> None:
    stage = build_stage(spec("filter", dev_fraction=0.25, seed=3), JobKind.filter)
    paths = StagePaths(tmp_path)
    shard_rows = [[(0, 5.0), (1, 1.0)], [(2, 4.0), (3, 0.5)], [(4, 3.0)]]
    stats = []
    paths.shards.mkdir()
    for i, rows in enumerate(shard_rows):
        with open(paths.shard_stream(i, "output"), "w") as f:
            for rid, diff in rows:
                f.write(json.dumps({"id": f"t{rid}", "diff": diff}) + "\n")
        stats.append({"counts": {"out": len(rows)}})
    summary = stage.finish(paths, 3, stats)
    merged = list(iter_jsonl(paths.stream("output")))
    assert [r["diff"] for r in merged] == [5.0, 4.0, 3.0, 1.0, 0.5]
    assert summary["splits"] == {"train": 4, "dev": 1}
    dev = list(iter_jsonl(paths.stream("dev")))
    train = list(iter_jsonl(paths.stream("train")))
    assert len(dev) == 1 and len(train) == 4
    assert {r["id"] for r in dev + train} == {f"t{i}" for i in range(5)}
    again = StagePaths(tmp_path / "again")
    again.shards.mkdir(parents=True)
    for i in range(3):
        again.shard_stream(i, "output").write_bytes(paths.shard_stream(i, "output").read_bytes())
    stage.finish(again, 3, stats)
    assert list(iter_jsonl(again.stream("dev"))) == dev  # the seed fixes the split


async def test_worker_sft_rows_are_chat_messages(tmp_path: Path) -> None:
    stage = build_stage(spec("sft_data", system_prompt="Explain."), JobKind.sft_data)
    recs = records({**triple(0, "r0"), "split": "dev"}, triple(1, "r1"), {"preceding": "x"})
    result = await stage.process(recs, context(runtime()))
    assert result.counts["kept"] == 2 and result.counts["failed"] == 1
    row = result.streams["output"][0]
    assert row["split"] == "dev"
    assert row["messages"] == [
        {"role": "system", "content": "Explain."},
        {"role": "user", "content": "Text 0."},
        {"role": "assistant", "content": "r0"},
    ]
    paths = StagePaths(tmp_path)
    paths.shards.mkdir(parents=True)
    lines = "".join(json.dumps(r) + "\n" for r in result.streams["output"])
    paths.shard_stream(0, "output").write_text(lines)
    summary = stage.finish(paths, 1, [result.to_json()])
    assert summary["splits"] == {"train": 1, "dev": 1}
    (train_row,) = iter_jsonl(paths.stream("train"))
    assert set(train_row) == {"messages"}


class FakeEmbedder:
    """2-d embeddings: documents mentioning numbers point along x, others along y."""

    path = Path("/fake")

    def encode(self, texts: list[str], batch_size: int = 64) -> Any:
        return np.array(
            [[1.0, 0.0] if any(ch.isdigit() for ch in t) else [0.0, 1.0] for t in texts]
        )


async def test_worker_prefilter_keeps_close_documents(tmp_path: Path) -> None:
    stage = build_stage(spec("prefilter", threshold=0.5, max_chars=40), JobKind.prefilter)
    rt = runtime(embedders=SimpleNamespace(get=lambda name: FakeEmbedder()))
    recs = records(
        {"id": "a", "text": "3 + 4 = 7"},
        {"id": "b", "text": "sunny weather"},
        {"id": "c", "text": "x" * 41},
        {"id": "d", "text": "the and of"},
        {"id": "e"},
    )
    result = await stage.process(recs, context(rt, extras={"centroid": [1.0, 0.0]}))
    assert [r["id"] for r in result.streams["output"]] == ["a"]
    assert result.streams["output"][0]["similarity"] == 1.0
    assert dict(result.drop_reasons) == {"below_threshold": 1, "too_long": 1, "empty": 1}
    assert result.counts["failed"] == 1
    assert sum(result.stats["hist_all"]) == 2 and sum(result.stats["hist_kept"]) == 1
    paths = StagePaths(tmp_path)
    paths.shards.mkdir(parents=True)
    paths.shard_stream(0, "output").write_text(json.dumps(result.streams["output"][0]) + "\n")
    write_json(paths.shard_done(0), result.to_json())
    summary = stage.finish(paths, 1, [result.to_json()])
    assert sum(summary["similarity_histogram"]["all"]) == 2


async def test_worker_sft_rows_open_with_the_rationalyst_serving_prompt() -> None:
    from services.model_server.prompts import system_prompt
    from shared.schemas import Role

    stage = build_stage(spec("sft_data"), JobKind.sft_data)
    result = await stage.process(records(triple(0, "r0")), context(runtime()))
    (row,) = result.streams["output"]
    served = system_prompt(Role.rationalyst, None)
    assert served and row["messages"][0] == {"role": "system", "content": served}
    none = build_stage(spec("sft_data", system_prompt=None), JobKind.sft_data)
    (bare,) = (await none.process(records(triple(0, "r0")), context(runtime()))).streams["output"]
    assert [m["role"] for m in bare["messages"]] == ["user", "assistant"]
