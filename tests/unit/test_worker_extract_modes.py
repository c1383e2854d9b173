"""The extract stage's boundary mode and auto mode on fake model services: which boundaries
are asked within the budget, what is dropped and why, the probe that picks the mode, and the
report of a model that cannot follow the insert prompt."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.worker.artifacts import StagePaths
from services.worker.prompts import EXTRACTION_EXAMPLES
from services.worker.settings import WorkerSettings
from services.worker.stages import build_stage
from services.worker.text import boundaries
from shared.clients import ModelServiceClient
from shared.job_schemas import JobKind
from tests.unit.test_worker_stages import chat_reply, client, context, records, runtime, spec

pytestmark = pytest.mark.unit

DOC = (
    "Tom has 3 apples. He buys 5 more apples. Then he eats 2 of them. "
    "He gives 1 to Ann. How many are left? He has 3 + 5 - 2 - 1 = 5 apples."
)
SENTENCES = [DOC[b.start : b.end] for b in boundaries(DOC)]
LOSSES = {  # the scorer's mean loss of each next sentence without a rationale
    "He buys 5 more apples.": 2.0,
    "Then he eats 2 of them.": 0.2,
    "He gives 1 to Ann.": 3.0,
    "How many are left?": 1.0,
    "He has 3 + 5 - 2 - 1 = 5 apples.": 4.0,
}


def next_sentence(request: httpx.Request) -> str:
    user = json.loads(request.content)["messages"][-1]["content"]
    return user.split("Next sentence: ", 1)[1].split("\n", 1)[0]


def scorer(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    assert body["aggregate"] == "mean" and len(body["continuations"]) == 1
    assert [m["role"] for m in body["context"]] == ["system", "user"]
    m = -LOSSES[body["continuations"][0]]
    score = {"score": m, "sum": m, "mean": m, "decayed_sum": m, "decayed_mean": m, "num_tokens": 4}
    return httpx.Response(200, json={"scores": [score], "prompt_tokens": 9})


def thinker(request: httpx.Request) -> httpx.Response:
    """An agent that answers with a thought naming the next sentence's first word."""
    return chat_reply(f"Thought: think about '{next_sentence(request).split()[0]}' next.")


async def test_worker_boundary_asks_where_the_scorer_predicts_worst_within_the_budget() -> None:
    stage = build_stage(
        spec("extract", mode="boundary", max_boundaries_per_doc=2, min_following_loss=0.5),
        JobKind.extract,
    )
    asked: list[str] = []

    def agent(request: httpx.Request) -> httpx.Response:
        asked.append(next_sentence(request))
        return thinker(request)

    rt = runtime(agent=client("agent", agent), scorer=client("scorer", scorer))
    result = await stage.process(records({"id": "d", "text": DOC, "source": "math"}), context(rt))
    assert result.counts["kept"] == 1 and result.counts["dropped"] == 0
    rows = result.streams["output"]
    # the two highest losses, in document order; 0.2 is below min_following_loss
    assert [r["following"] for r in rows] == ["He gives 1 to Ann.", SENTENCES[-1]]
    assert sorted(asked) == sorted(r["following"] for r in rows)
    for r in rows:
        assert DOC.startswith(r["preceding"] + r["following"])
        assert r["preceding"] == DOC[: r["start"]] and r["following"] == DOC[r["start"] : r["end"]]
        assert r["mode"] == "boundary" and r["source"] == "math"
        assert r["rationale"].startswith("think about")  # the label is stripped
        assert r["following_loss"] == LOSSES[r["following"]]
    (doc,) = result.streams["documents"]
    assert doc["boundaries"] == 5 and doc["asked"] == [2, 4]
    assert doc["skipped"] == {"predicted_well": 1, "budget": 2}
    assert result.stats["boundaries"] == 5 and result.stats["boundaries_asked"] == 2


async def test_worker_boundary_selection_first_needs_no_scorer() -> None:
    stage = build_stage(
        spec("extract", mode="boundary", boundary_selection="first", max_boundaries_per_doc=3),
        JobKind.extract,
    )

    def no_scorer(request: httpx.Request) -> httpx.Response:
        raise AssertionError("selection 'first' must not call the scorer")

    rt = runtime(agent=client("agent", thinker), scorer=client("scorer", no_scorer))
    result = await stage.process(records({"id": "d", "text": DOC}), context(rt))
    assert [r["index"] for r in result.streams["output"]] == [0, 1, 2]
    assert result.streams["documents"][0]["skipped"] == {"budget": 2}


async def test_worker_boundary_sends_a_documents_boundaries_concurrently() -> None:
    stage = build_stage(
        spec("extract", mode="boundary", boundary_selection="first"), JobKind.extract
    )
    in_flight, most = 0, 0
    all_there = asyncio.Event()

    async def agent(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        if most == len(SENTENCES):
            all_there.set()
        await asyncio.wait_for(all_there.wait(), timeout=5)
        in_flight -= 1
        return thinker(request)

    rt = runtime(agent=ModelServiceClient("agent", "http://fake",
                                          transport=httpx.MockTransport(agent)))  # fmt: skip
    rt.settings = WorkerSettings(request_concurrency=8)
    result = await stage.process(records({"id": "d", "text": DOC}), context(rt))
    assert most == len(SENTENCES) == 5
    assert result.counts["kept"] == 1


async def test_worker_boundary_drops_empty_and_repeated_answers_and_counts_them() -> None:
    stage = build_stage(
        spec("extract", mode="boundary", boundary_selection="first"), JobKind.extract
    )

    def agent(request: httpx.Request) -> httpx.Response:
        following = next_sentence(request)
        if following == "He buys 5 more apples.":
            return chat_reply("   ")  # empty
        if following == "Then he eats 2 of them.":
            return chat_reply(f'"{following.upper()}"')  # the next sentence again
        if following == "He gives 1 to Ann.":
            return chat_reply("Tom has 3 apples")  # a sentence of the text so far
        return chat_reply("Count what is left after each change.\n\nAnd more text.")

    rt = runtime(agent=client("agent", agent))
    recs = records(
        {"id": "d", "text": DOC},
        {"id": "one", "text": "Just one sentence without a boundary."},
        {"id": "two", "text": "Tom has 3 apples. He buys 5 more apples."},
        {"id": "e", "text": "  "},
    )
    result = await stage.process(recs, context(rt))
    c = result.counts
    assert (c["in"], c["kept"], c["dropped"], c["failed"]) == (4, 1, 3, 0)
    assert dict(result.drop_reasons) == {"no_boundary": 1, "no_rationale": 1, "empty": 1}
    assert [r["rationale"] for r in result.streams["output"]] == [
        "Count what is left after each change.",
        "Count what is left after each change.",
    ]
    assert result.stats["rationales_dropped"] == {
        "empty": 2, "repeats_following": 1, "repeats_preceding": 1,
    }  # fmt: skip
    docs = {d["id"]: d for d in result.streams["documents"]}
    assert docs["one"]["boundaries"] == 0 and docs["one"]["kept"] is False
    assert docs["two"]["dropped"] == {"empty": 1}


def marking_agent(request: httpx.Request) -> httpx.Response:
    """An agent that follows the insert prompt: it marks up the probe's text."""
    text = json.loads(request.content)["messages"][-1]["content"]
    sentences = text.split(". ")
    return chat_reply(". <BOT>Go on.<EOT> ".join(sentences))


def copying_agent(request: httpx.Request) -> httpx.Response:
    """An agent that cannot: it copies the text without markup."""
    return chat_reply(json.loads(request.content)["messages"][-1]["content"])


@pytest.mark.parametrize(
    ("agent", "expected"), [(marking_agent, "insert"), (copying_agent, "boundary")]
)
async def test_worker_auto_mode_probes_the_agent_once(agent: Any, expected: str) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body["messages"][-1]["content"])
        return agent(request)  # type: ignore[no-any-return]

    stage = build_stage(spec("extract"), JobKind.extract)
    extras = await stage.prepare(runtime(agent=client("agent", handler)))
    assert extras["mode"] == expected and extras["mode_requested"] == "auto"
    assert extras["probe"]["follows_markup"] is (expected == "insert")
    # the probe is the first worked example, which the agent is not shown the answer of
    assert seen == [EXTRACTION_EXAMPLES[0].text]
    fixed = await build_stage(spec("extract", mode="boundary"), JobKind.extract).prepare(None)
    assert fixed == {"mode": "boundary", "mode_requested": "boundary"}


async def test_worker_insert_on_a_model_without_markup_reports_it(tmp_path: Path) -> None:
    stage = build_stage(spec("extract", mode="insert"), JobKind.extract)
    rt = runtime(agent=client("agent", copying_agent))
    result = await stage.process(
        records({"id": "a", "text": DOC}, {"id": "b", "text": "Two. Sentences."}),
        context(rt, extras={"mode": "insert"}),
    )
    assert dict(result.drop_reasons) == {"no_rationale": 2}
    assert result.stats["no_markup"] == 2
    paths = StagePaths(tmp_path)
    paths.shards.mkdir(parents=True)
    summary = stage.finish(paths, 1, [result.to_json()])
    assert summary["insert"] == {"documents": 2, "no_markup": 2}
    (warning,) = summary["warnings"]
    assert "2 of 2 documents produced no <BOT>...<EOT> markup" in warning
    assert "'boundary'" in warning
    report = stage.report({**summary, "drop_reasons": {"no_rationale": 2}, "mode": "insert"})
    assert report["mode"] == "insert" and report["warnings"] == [warning]


def test_worker_jobs_watch_shows_the_extract_report() -> None:
    from services.worker.cli import _report_lines

    report = {
        "mode": "boundary", "mode_requested": "auto", "drop_reasons": {"no_boundary": 1},
        "boundary": {"boundaries": 9, "boundaries_asked": 6, "triples": 4,
                     "rationales_dropped": {"empty": 2}},
        "warnings": ["3 of 3 documents produced no <BOT>...<EOT> markup"],
    }  # fmt: skip
    lines = _report_lines({"name": "extract", "report": report})
    assert lines[0].startswith("mode boundary (chosen by auto): 6 of 9 boundaries asked")
    assert "dropped {'no_boundary': 1}" in lines and lines[-1].startswith("warning: 3 of 3")
    assert _report_lines({"name": "sft_data", "report": {"drop_reasons": {}}}) == []
