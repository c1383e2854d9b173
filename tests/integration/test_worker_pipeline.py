"""Each job kind end to end: the job API over HTTP, real worker processes, Redis, and the real
model services on SmolLM2-135M (and the packaged all-MiniLM-L6-v2 for the prefilter).

The model is too small to extract good rationales, so the extraction checks are about
consistency (counts add up; every triple is cut from its input) rather than quality.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from services.model_server.prompts import system_prompt
from services.worker.prompts import EXTRACTION_EXAMPLES
from services.worker.stages.filter import score_request
from services.worker.text import parse_markup, similarity
from shared.clients import ModelServiceClient
from shared.job_schemas import FilterOptions
from shared.schemas import Role
from tests.integration.worker_fixtures import (  # noqa: F401
    SAMPLE_CORPUS,
    SHIPPED_CORPUS,
    JobsEnv,
    jobs,
    jobs_env,
    redis_server,
)

pytestmark = pytest.mark.integration

TRIPLES = [
    ("Jenny has 4 boxes of crayons with 8 crayons in each box.",
     "Multiply the boxes by the crayons in each box.", "She has 4 x 8 = 32 crayons."),
    ("A bus carries 42 passengers. At the first stop 9 people get off.",
     "Subtract the people who got off.", "Now 42 - 9 = 33 passengers are on the bus."),
    ("Milk spoils quickly when it is warm.", "So it must be kept somewhere cold.",
     "The refrigerator keeps food cold, so milk goes there."),
    ("Our bakery opens an hour later on Sundays.", "The reason is the baking routine.",
     "The ovens need forty minutes to heat up."),
    ("The temperature at 6 am was -3 degrees.", "It rises during the morning.",
     "By noon it had risen by 11 degrees to 8 degrees."),
    ("Paul runs 3 km every weekday.", "Five weekdays in a week.",
     "On weekdays he runs 5 x 3 = 15 km."),
]  # fmt: skip


def corpus() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SAMPLE_CORPUS.read_text().splitlines()]


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_triples(path: Path) -> Path:
    with open(path, "w") as f:
        for i, (p, r, fo) in enumerate(TRIPLES):
            row = {"id": f"t{i}", "preceding": p, "rationale": r, "following": fo,
                   "source": "math" if "x" in fo or "-" in fo else "web"}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    return path


def check_counts(stage: dict[str, Any]) -> None:
    c, p = stage["counts"], stage["progress"]
    assert stage["state"] == "succeeded"
    assert c["records_in"] == c["records_kept"] + c["records_dropped"] + c["records_failed"]
    assert p["records_done"] == p["records_total"] == c["records_in"]
    assert p["shards_done"] == p["shards_total"]


def test_worker_prefilter_keeps_reasoning_documents(jobs: JobsEnv) -> None:  # noqa: F811
    jobs.start_worker()
    job_id = jobs.submit(
        {"kind": "prefilter", "input": {"paths": [str(SAMPLE_CORPUS)]}, "shard_size": 10}
    )
    status = jobs.wait(job_id)
    assert status["state"] == "succeeded", status
    (stage,) = status["stages"]
    check_counts(stage)
    assert stage["counts"]["records_in"] == 36
    kept = lines(jobs.artifact(job_id, "prefilter/output.jsonl"))
    assert len(kept) == stage["counts"]["records_kept"]
    assert len({r["id"] for r in kept}) == len(kept)
    assert all(r["similarity"] >= 0.3 for r in kept)
    docs = corpus()
    kept_ids = {r["id"] for r in kept}
    rich = [d for d in docs if d["reasoning"]]
    plain = [d for d in docs if not d["reasoning"]]
    rate_rich = sum(d["id"] in kept_ids for d in rich) / len(rich)
    rate_plain = sum(d["id"] in kept_ids for d in plain) / len(plain)
    assert rate_rich > rate_plain, (rate_rich, rate_plain)
    summary = json.loads(jobs.artifact(job_id, "prefilter/summary.json"))
    hist = summary["similarity_histogram"]
    assert sum(hist["all"]) == 36 and sum(hist["kept"]) == len(kept)
    assert summary["reference_size"] > 0 and summary["reference_source"]


def test_worker_extract_triples_are_consistent_with_the_input(
    jobs: JobsEnv,  # noqa: F811
    model_services: dict[str, str],
    tmp_path: Path,
) -> None:
    example = EXTRACTION_EXAMPLES[0]
    docs = [
        {"id": "shown", "text": example.text, "source": "math"},
        *[d for d in corpus() if d["id"] in ("math-01", "chitchat-01")],
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    jobs.start_worker(agent_url=model_services["agent"])
    job_id = jobs.submit(
        {
            "kind": "extract",
            "mode": "insert",
            "input": {"paths": [str(path)]},
            "shard_size": 2,
            "max_tokens": 140,
            # one demo whose input is the first document: a model that copies its context
            # reproduces the demo's rationales for that document
            "few_shot": [{"text": example.text, "output": example.output}],
        }
    )
    status = jobs.wait(job_id)
    assert status["state"] == "succeeded", status
    (stage,) = status["stages"]
    check_counts(stage)
    c = stage["counts"]
    assert c["records_in"] == 3
    texts = {d["id"]: d["text"] for d in docs}
    documents = lines(jobs.artifact(job_id, "extract/documents.jsonl"))
    assert len(documents) == c["records_in"] - c["records_failed"]
    for doc in documents:
        assert doc["kept"] == (doc["similarity"] >= 0.9 and doc["triples"] > 0)
        markup = parse_markup(doc["output"])  # the real model's output, checked again here
        assert doc["similarity"] == pytest.approx(
            similarity(markup.text, texts[doc["id"]]), abs=1e-6
        )
        assert doc["rationales"] == len(markup.rationales)
    triples = lines(jobs.artifact(job_id, "extract/output.jsonl"))
    assert len(triples) == c["records_out"] == sum(d["triples"] for d in documents if d["kept"])
    for t in triples:
        text = texts[t["doc_id"]]
        assert text.startswith(t["preceding"] + t["following"])
        assert (
            t["preceding"] == text[: t["start"]] and t["following"] == text[t["start"] : t["end"]]
        )
        assert t["preceding"].strip() and t["rationale"].strip() and t["following"].strip()
        assert "<BOT>" not in t["rationale"] and "<EOT>" not in t["rationale"]


def test_worker_filter_scores_equal_direct_score_calls(
    jobs: JobsEnv,  # noqa: F811
    exact_scorer: str,
    tmp_path: Path,
) -> None:
    # Scores are compared to 1e-4 with later direct calls: a float32 scorer without the
    # prefix cache computes them the same way every time (bf16 passes of other shapes do not).
    path = write_triples(tmp_path / "triples.jsonl")
    jobs.start_worker(scorer_url=exact_scorer)
    job_id = jobs.submit(
        {
            "kind": "filter",
            "input": {"paths": [str(path)]},
            "shard_size": 3,
            "tau": -1000.0,
            "tau_by_source": {"web": 1000.0},
            "dev_fraction": 0.25,
            "seed": 7,
        }
    )
    status = jobs.wait(job_id)
    assert status["state"] == "succeeded", status
    (stage,) = status["stages"]
    check_counts(stage)
    rows = lines(jobs.artifact(job_id, "filter/output.jsonl"))
    by_id = {json.loads(line)["id"]: json.loads(line) for line in path.read_text().splitlines()}
    expected_kept = {i for i, r in by_id.items() if r["source"] != "web"}
    assert {r["id"] for r in rows} == expected_kept
    assert stage["counts"]["records_dropped"] == len(by_id) - len(expected_kept)
    diffs = [r["diff"] for r in rows]
    assert diffs == sorted(diffs, reverse=True)

    async def direct(row: dict[str, Any]) -> tuple[float, float, float, float]:
        """S_with and S_without from the filter's one request sent directly, and from two
        separate requests without the ``given`` form (the rationale's text opening the
        assistant turn, scored apart from ``following``)."""
        c = ModelServiceClient("scorer", exact_scorer, timeout=600)
        one = score_request(row, FilterOptions())
        assert one.given is not None
        with_req = one.model_copy(
            update={"given": None, "continuations": [one.given[0] + one.continuations[0]],
                    "return_tokens": True}
        )  # fmt: skip
        without_req = one.model_copy(update={"given": None, "continuations": [row["following"]]})
        try:
            both, a, b = await asyncio.gather(c.score(one), c.score(with_req), c.score(without_req))
        finally:
            await c.aclose()
        # the tokens of `following` are the last num_tokens of the with-rationale text
        n = b.scores[0].num_tokens
        assert both.scores[0].num_tokens == n
        assert a.scores[0].tokens is not None
        lps = [t.logprob for t in a.scores[0].tokens][-n:]
        s_with = sum(0.9**i * lp for i, lp in enumerate(lps))
        return (
            both.scores[0].decayed_sum, both.scores[1].decayed_sum, s_with,
            b.scores[0].decayed_sum,
        )  # fmt: skip

    for row in rows:
        s_with, s_without, apart_with, apart_without = asyncio.run(direct(by_id[row["id"]]))
        assert row["s_with"] == pytest.approx(s_with, abs=1e-4)
        assert row["s_without"] == pytest.approx(s_without, abs=1e-4)
        assert row["diff"] == pytest.approx(s_with - s_without, abs=2e-4)
        # the same quantities as separate passes, up to bf16 noise of a differently packed pass
        assert s_with == pytest.approx(apart_with, rel=0.03, abs=0.05)
        assert s_without == pytest.approx(apart_without, rel=0.03, abs=0.05)
    train = lines(jobs.artifact(job_id, "filter/train.jsonl"))
    dev = lines(jobs.artifact(job_id, "filter/dev.jsonl"))
    assert len(dev) == 1 and len(train) == len(rows) - 1
    assert {r["split"] for r in dev} == {"dev"}


def test_worker_rationale_pipeline_chains_four_stages(
    jobs: JobsEnv,  # noqa: F811
    model_services: dict[str, str],
) -> None:
    jobs.start_worker(agent_url=model_services["agent"], scorer_url=model_services["scorer"])
    job_id = jobs.submit(
        {
            "kind": "rationale_pipeline",
            "input": {"paths": [str(SAMPLE_CORPUS)]},
            "limit": 3,
            "shard_size": 2,
            "extract": {"max_tokens": 96, "min_similarity": 0.0},
            "filter": {"tau": -1000.0},
        }
    )
    status = jobs.wait(job_id)
    assert status["state"] == "succeeded", status
    prefilter, extract, filter_, sft = status["stages"]
    assert [s["name"] for s in status["stages"]] == ["prefilter", "extract", "filter", "sft_data"]
    for stage in status["stages"]:
        check_counts(stage)
    assert prefilter["counts"]["records_in"] == 3
    assert extract["progress"]["records_total"] == prefilter["counts"]["records_kept"]
    assert filter_["progress"]["records_total"] == extract["counts"]["records_out"]
    assert sft["progress"]["records_total"] == filter_["counts"]["records_kept"]
    assert sft["counts"]["records_kept"] == filter_["counts"]["records_kept"]
    names = {a["name"] for a in status["artifacts"]}
    assert {"sft_data/train.jsonl", "sft_data/dev.jsonl", "filter/train.jsonl"} <= names
    train = lines(jobs.artifact(job_id, "sft_data/train.jsonl"))
    dev = lines(jobs.artifact(job_id, "sft_data/dev.jsonl"))
    assert len(train) + len(dev) == sft["counts"]["records_kept"]
    for row in train + dev:
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]


def test_worker_boundary_pipeline_on_the_shipped_corpus_makes_training_rows(
    jobs: JobsEnv,  # noqa: F811
    model_services: dict[str, str],
) -> None:
    """The chain that insert mode breaks on the embedded model: boundary extraction on 10
    documents of the shipped corpus gives kept triples and SFT rows that open with the
    rationalyst's serving prompt."""
    jobs.start_worker(agent_url=model_services["agent"], scorer_url=model_services["scorer"])
    job_id = jobs.submit(
        {
            "kind": "rationale_pipeline",
            "input": {"paths": [str(SHIPPED_CORPUS)]},
            "limit": 10,
            "shard_size": 5,
            "extract": {"mode": "boundary", "max_boundaries_per_doc": 3},
        }
    )
    status = jobs.wait(job_id)
    assert status["state"] == "succeeded", status
    prefilter, extract, filter_, sft = status["stages"]
    for stage in status["stages"]:
        check_counts(stage)
    assert prefilter["counts"]["records_in"] == 10
    report = extract["report"]
    assert report["mode"] == "boundary"
    b = report["boundary"]
    assert b["documents"] == extract["counts"]["records_in"] - extract["counts"]["records_failed"]
    assert 0 < b["boundaries_asked"] <= 3 * b["documents"]
    dropped = sum(b["rationales_dropped"].values())
    assert b["triples"] == extract["counts"]["records_out"] == b["boundaries_asked"] - dropped
    assert filter_["counts"]["records_kept"] > 0, (extract, filter_)
    assert sft["counts"]["records_kept"] == filter_["counts"]["records_kept"]
    texts = {d["id"]: d["text"] for d in map(json.loads, SHIPPED_CORPUS.read_text().splitlines())}
    for t in lines(jobs.artifact(job_id, "extract/output.jsonl")):
        assert texts[t["doc_id"]].startswith(t["preceding"] + t["following"])
        assert t["rationale"].strip() and t["following"].strip() not in t["rationale"]
    rows = lines(jobs.artifact(job_id, "sft_data/train.jsonl"))
    rows += lines(jobs.artifact(job_id, "sft_data/dev.jsonl"))
    assert rows
    for row in rows:
        system, user, assistant = row["messages"]
        assert system == {"role": "system", "content": system_prompt(Role.rationalyst, None)}
        assert user["content"].startswith("Question: ") and assistant["content"]
