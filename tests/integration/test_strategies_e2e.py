"""Every search strategy over real HTTP on the embedded SmolLM2-135M: a well-formed tree, the
answer's path chosen in it, usage per phase, node events in the stream, and the OpenAI client
choosing a strategy by model id and by extra body. Tiny budgets: the contract is checked,
never whether an answer is right."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have now?"
TINY = {"max_steps": 2, "max_step_tokens": 24, "heuristic": "likelihood", "seed": 3}
STATUSES = {"chosen", "kept", "pruned", "finished"}


@pytest.fixture(scope="module")
def client(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, timeout=300) as c:
        yield c


def check_tree(body: dict[str, Any]) -> None:
    tree = body["tree"]
    assert tree, body["warnings"]
    by_id = {n["id"]: n for n in tree}
    assert len(by_id) == len(tree)
    for node in tree:
        assert node["status"] in STATUSES
        if node["parent"] is None:
            assert node["depth"] == 0
        else:
            assert by_id[node["parent"]]["depth"] == node["depth"] - 1
    chosen = [n for n in tree if n["status"] == "chosen"]
    assert [n["text"] for n in chosen] == body["steps"]
    for parent, child in itertools.pairwise(chosen):
        assert child["parent"] == parent["id"]
    if body["finished"]:
        assert chosen[-1]["answer"] == body["answer"]


def test_beam_streams_node_events_and_answers_with_a_tree(client: httpx.Client) -> None:
    options = {**TINY, "strategy": "beam", "n_beams": 2, "beam_width": 1, "stream": True}
    events: list[tuple[str, dict[str, Any]]] = []
    with client.stream("POST", "/v1/reason", json={"question": QUESTION, **options}) as r:
        assert r.status_code == 200
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                assert event is not None
                events.append((event, json.loads(line.removeprefix("data: "))))
    assert events[-1][0] == "done", events[-1]
    done = events[-1][1]
    assert done["strategy"] == "beam"
    check_tree(done)
    nodes = [d for e, d in events if e == "node"]
    assert {n["id"] for n in nodes} == {n["id"] for n in done["tree"]}
    # At most n_beams paths survive each step; one scorer call per search step.
    for depth in range(TINY["max_steps"]):
        alive = [n for n in done["tree"] if n["depth"] == depth and n["status"] != "pruned"]
        assert len(alive) <= 2
    assert done["usage"]["phases"]["score"]["calls"] >= 1
    assert done["usage"]["budget_tokens"] > 0


@pytest.mark.parametrize("strategy", ["best_of_n", "vote", "weighted_vote"])
def test_solution_strategies_answer_with_a_tree(client: httpx.Client, strategy: str) -> None:
    r = client.post("/v1/reason", json={"question": QUESTION, **TINY, "strategy": strategy, "n": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == strategy
    check_tree(body)
    assert body["usage"]["phases"]["rollout"]["calls"] == 1
    scored = strategy != "vote"
    assert ("score" in body["usage"]["phases"]) == (scored and bool(body["tree"]))
    if strategy != "best_of_n" and body["answers"]:
        assert body["answer"] is not None


def test_openai_client_picks_strategies_by_model_id_and_extra_body(gateway_url: str) -> None:
    from openai import OpenAI

    oa = OpenAI(base_url=f"{gateway_url}/v1", api_key="unused", timeout=300)
    ids = [m.id for m in oa.models.list().data]
    assert {"rationalyst-beam", "rationalyst-best-of-n", "rationalyst-vote"} <= set(ids)
    messages = [{"role": "user", "content": QUESTION}]
    by_id = oa.chat.completions.create(
        model="rationalyst-best-of-n",
        messages=messages,  # type: ignore[arg-type]
        extra_body={**TINY, "n_solutions": 2},
    )
    trace = by_id.model_extra["rationalyst"]  # type: ignore[index]
    assert trace["strategy"] == "best_of_n" and by_id.model == "rationalyst-best-of-n"
    assert by_id.choices[0].message.content == "\n".join(trace["steps"])
    by_body = oa.chat.completions.create(
        model="rationalyst",
        messages=messages,  # type: ignore[arg-type]
        extra_body={**TINY, "strategy": "vote", "n_solutions": 2},
    )
    trace = by_body.model_extra["rationalyst"]  # type: ignore[index]
    assert trace["strategy"] == "vote"
    check_tree(trace)
    bad = httpx.post(
        f"{gateway_url}/v1/reason",
        json={"question": QUESTION, "strategy": "beam", "beam_width": 3, "n_beams": 2},
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "beam_width"
