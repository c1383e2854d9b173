"""The gateway over real HTTP in front of three real model services (SmolLM2-135M on CPU).

The model is weak: these tests check the contract (steps, trace, scores, selection, streaming,
degradation, errors), never whether an answer is right. Budgets are small to keep CI fast.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from gateway.ensemble import free_port
from shared.answers import extract_answer
from shared.tasks.answers import parse_number

pytestmark = pytest.mark.integration

SMALL = {"max_steps": 2, "max_step_tokens": 40, "max_rationale_tokens": 32}
QUESTIONS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have now?",
    "A pen costs 2 dollars. How much do 4 pens cost?",
]
SCORING = {"rationalyst", "rationalyst_explicit", "likelihood"}


@pytest.fixture(scope="module")
def client(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, timeout=300) as c:
        yield c


def distinct(candidates: list[dict[str, Any]]) -> list[int]:
    return [i for i, c in enumerate(candidates) if c["duplicate_of"] is None and c["text"]]


def check_trace(body: dict[str, Any], heuristic: str) -> None:
    forced = body["finish"] == "forced_answer"  # one answer step beyond max_steps
    assert 1 <= len(body["steps"]) <= SMALL["max_steps"] + forced
    assert [t["forced_answer"] for t in body["trace"]][-1] == forced
    assert "answer" in body
    assert body["heuristic_requested"] == heuristic
    assert body["heuristic_used"] == heuristic, body["warnings"]
    assert body["fallbacks"] == []
    assert len(body["trace"]) == len(body["steps"])
    for step in body["trace"]:
        cands = step["candidates"]
        retried = step["retry_temperature"] is not None  # a second proposal, hotter
        assert len(cands) == (1 if heuristic == "greedy" else 3) * (1 + retried)
        assert step["step"] == cands[step["chosen"]]["text"] == body["steps"][step["index"]]
        assert step["chosen"] in distinct(cands)
        assert cands[step["chosen"]]["repeat_of"] is None
        originals = [i for i in distinct(cands) if cands[i]["repeat_of"] is None]
        if heuristic in SCORING and len(originals) > 1:
            scores = [cands[i]["score"] for i in originals]
            assert all(math.isfinite(s) for s in scores)
            assert cands[step["chosen"]]["score"] == max(scores)
            assert step["timings"]["score_ms"] > 0
        if heuristic in {"rationalyst", "rationalyst_explicit"}:
            assert step["rationale"] is not None
        else:
            assert step["rationale"] is None
        assert step["timings"]["propose_ms"] > 0
    assert body["timings"]["total_ms"] >= body["timings"]["model_ms"] > 0
    assert body["finished"] == ("answer is" in body["steps"][-1].lower())


@pytest.mark.parametrize(
    ("heuristic", "question"),
    [
        ("rationalyst", QUESTIONS[0]),
        ("rationalyst", QUESTIONS[1]),
        ("rationalyst_explicit", QUESTIONS[0]),
        ("likelihood", QUESTIONS[1]),
        ("random", QUESTIONS[0]),
        ("greedy", QUESTIONS[1]),
    ],
)
def test_reason_every_heuristic_returns_a_full_trace(
    client: httpx.Client, heuristic: str, question: str
) -> None:
    r = client.post(
        "/v1/reason", json={"question": question, "heuristic": heuristic, "seed": 5, **SMALL}
    )
    assert r.status_code == 200, r.text
    check_trace(r.json(), heuristic)
    usage = r.json()["usage"]
    retries = sum(t["retry_temperature"] is not None for t in r.json()["trace"])
    assert usage["agent"]["calls"] >= len(r.json()["steps"]) + retries
    assert usage["agent"]["completion_tokens"] > 0


@pytest.mark.parametrize(
    ("question", "kind", "heuristic"),
    [
        ("Bruno has 5 boxes with 3 shells in each box. How many shells are there in all?",
         "number", "rationalyst"),
        (QUESTIONS[1], "number", "greedy"),
        ("Sara had 10 candies and ate 4. How many candies are left?", "number", "greedy"),
        ("Is a mouse bigger than a horse?", "boolean", "greedy"),
    ],
)  # fmt: skip
def test_reason_picks_demos_by_answer_kind_and_always_answers(
    client: httpx.Client, question: str, kind: str, heuristic: str
) -> None:
    r = client.post(
        "/v1/reason",
        json={"question": question, "heuristic": heuristic, "seed": 3, **SMALL, "max_steps": 1},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["answer_kind"], body["answer_kind_source"]) == (kind, "detected")
    assert (body["few_shot_source"], body["few_shot_kind"]) == ("default", kind)
    assert body["answer"], body["steps"]
    assert body["finish"] in {"answer", "forced_answer"}
    assert body["finished"]
    if body["finish"] == "forced_answer":
        assert body["steps"][-1].startswith("The answer is:")
    stated = [extract_answer(c["text"]) for c in body["trace"][-1]["candidates"]]
    if kind == "number" and any(a is not None and parse_number(a) is not None for a in stated):
        # The answer-kind check: a numeric answer wins over one that is not a number.
        assert parse_number(body["answer"]) is not None, body["trace"][-1]


def test_reason_stream_sends_one_event_per_step_then_done(client: httpx.Client) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    with client.stream(
        "POST", "/v1/reason", json={"question": QUESTIONS[0], "stream": True, "seed": 2, **SMALL}
    ) as r:
        assert r.status_code == 200
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                assert event is not None
                events.append((event, json.loads(line.removeprefix("data: "))))
    kinds = [e for e, _ in events]
    assert kinds[-1] == "done"
    done = events[-1][1]
    assert [k for k in kinds if k != "node"] == ["step"] * len(done["steps"]) + ["done"]
    assert [d["step"] for e, d in events if e == "step"] == done["steps"]


def test_reason_self_improve_answers_with_its_rounds(client: httpx.Client) -> None:
    """TriPosT's self-improvement on the embedded model: with the task's worked examples it
    writes numbered steps and judges them itself; each round is in the trace."""
    body = {
        "question": "((3 + 4) - (2 * 5)) =",
        "strategy": "self_improve",
        "task": "multistep_arithmetic",
        "max_rounds": 2,
        "max_round_tokens": 200,
        "seed": 0,
    }
    r = client.post("/v1/reason", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["strategy"] == "self_improve" and out["trace"] == []
    assert 1 <= len(out["rounds"]) <= 2
    first = out["rounds"][0]
    assert first["index"] == 0 and first["answer"].strip()
    assert first["completion_tokens"] > 0 and first["model_ms"] > 0
    if first["parsed"]:  # it followed the format: the answer is its steps, judged by itself
        assert first["answer"].splitlines()[-1].startswith("(Final response)")
        assert first["feedback_by"] == "self"
    last = out["rounds"][-1]["answer"]
    assert out["steps"] == [x.strip() for x in last.splitlines() if x.strip()]
    assert out["usage"]["agent"]["calls"] >= 1


def test_select_ranks_given_candidates(client: httpx.Client) -> None:
    r = client.post(
        "/v1/select",
        json={
            "question": "What is 2 + 3?",
            "steps": ["We add 2 and 3."],
            "candidates": [
                "2 + 3 = 5. The answer is: 5",
                "The moon is made of cheese.",
                "2 + 3 = 5. The answer is: 5",
            ],
            "max_rationale_tokens": 48,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    scores = body["scores"]
    assert all(math.isfinite(s) for s in scores)
    assert scores[0] == scores[2]
    assert body["candidates"][2]["duplicate_of"] == 0
    assert body["chosen"] == max(range(3), key=lambda i: (scores[i], -i))
    assert body["rationale"]


def test_openai_client_completion_and_stream(gateway_url: str) -> None:
    from openai import OpenAI

    oa = OpenAI(base_url=f"{gateway_url}/v1", api_key="unused", timeout=300)
    assert oa.models.list().data[0].id == "rationalyst"
    messages = [{"role": "user", "content": QUESTIONS[1]}]
    done = oa.chat.completions.create(
        model="rationalyst", messages=messages, extra_body={**SMALL, "heuristic": "greedy"}
    )  # type: ignore[call-overload]
    trace = done.model_extra["rationalyst"]
    assert done.choices[0].message.content == "\n".join(trace["steps"])
    assert trace["trace"]
    stream = oa.chat.completions.create(
        model="rationalyst",
        messages=messages,
        stream=True,
        extra_body={**SMALL, "heuristic": "likelihood", "n_candidates": 2},
    )  # type: ignore[call-overload]
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = chunks[-1].model_extra["rationalyst"]
    assert text == "\n".join(final["steps"])
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"question": ""}, "question"),
        ({"question": "x" * 4001}, "question"),
        ({"question": "q", "n_candidates": 17}, "n_candidates"),
        ({"question": "q", "max_steps": 65}, "max_steps"),
        ({"question": "q", "heuristic": "oracle"}, "heuristic"),
        ({"question": "q", "surprise": True}, "surprise"),
    ],
)
def test_bad_input_is_422(client: httpx.Client, body: dict[str, Any], field: str) -> None:
    r = client.post("/v1/reason", json=body)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == field
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]


def test_malformed_json_is_422(client: httpx.Client) -> None:
    r = client.post("/v1/reason", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["type"] == "invalid_request"


def test_ready_and_metrics(client: httpx.Client) -> None:
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.text
    metrics = client.get("/metrics").text
    assert "gateway_searches_total" in metrics
    assert "gateway_stage_seconds_bucket" in metrics


def test_deadline_returns_best_so_far(client: httpx.Client) -> None:
    r = client.post(
        "/v1/reason",
        json={"question": QUESTIONS[0], "deadline_s": 1.0, "max_steps": 30, "max_step_tokens": 64},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["deadline_reached"] is True
    assert body["timings"]["total_ms"] < 10_000
    assert len(body["trace"]) == len(body["steps"])


def test_auth_requires_a_key(
    gateway_factory: Callable[..., str], model_services: dict[str, str]
) -> None:
    url = gateway_factory(
        api_keys="key-a,key-b",
        rationalyst_url=model_services["rationalyst"],
        agent_url=model_services["agent"],
        scorer_url=model_services["scorer"],
    )
    body = {"question": "q", "heuristic": "greedy", "max_steps": 1, "max_step_tokens": 8}
    missing = httpx.post(f"{url}/v1/reason", json=body, timeout=60)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "unauthorized"
    ok = httpx.post(
        f"{url}/v1/reason", json=body, headers={"Authorization": "Bearer key-b"}, timeout=60
    )
    assert ok.status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200


# -- degradation with real processes ------------------------------------------------------------


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_rationalyst_down_continues_as_likelihood(
    gateway_factory: Callable[..., str], model_services: dict[str, str]
) -> None:
    url = gateway_factory(
        rationalyst_url=dead_url(),
        agent_url=model_services["agent"],
        scorer_url=model_services["scorer"],
    )
    r = httpx.post(
        f"{url}/v1/reason",
        json={"question": QUESTIONS[0], **SMALL, "max_steps": 1, "n_candidates": 2},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["heuristic_used"] == "likelihood"
    assert body["fallbacks"][0]["service"] == "rationalyst"
    assert body["warnings"]
    ready = httpx.get(f"{url}/ready", timeout=30)
    assert ready.status_code == 503
    assert "rationalyst" in ready.json()["error"]["message"]


def test_agent_down_is_503(
    gateway_factory: Callable[..., str], model_services: dict[str, str]
) -> None:
    url = gateway_factory(
        rationalyst_url=model_services["rationalyst"],
        agent_url=dead_url(),
        scorer_url=model_services["scorer"],
    )
    r = httpx.post(f"{url}/v1/reason", json={"question": "q", **SMALL}, timeout=120)
    assert r.status_code == 503
    assert "agent" in r.json()["error"]["message"]


def test_killing_the_scorer_mid_run_falls_back_to_random_or_503_in_strict(
    gateway_factory: Callable[..., str],
    model_services: dict[str, str],
    model_service_factory: Callable[..., list[Any]],
) -> None:
    (scorer,) = model_service_factory("scorer")
    url = gateway_factory(
        rationalyst_url=model_services["rationalyst"],
        agent_url=model_services["agent"],
        scorer_url=scorer.url,
    )
    # Diverse candidates (high temperature, no demos), so that every step needs the scorer.
    body = {
        "question": "List the numbers from 1 to 20, one step per number.",
        "max_steps": 3,
        "n_candidates": 4,
        "temperature": 1.2,
        "max_step_tokens": 24,
        "max_rationale_tokens": 16,
        "few_shot": [],
        "stream": True,
    }
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("POST", f"{url}/v1/reason", json=body, timeout=300) as r:
        assert r.status_code == 200
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((str(event), json.loads(line.removeprefix("data: "))))
                if len(events) == 1:
                    scorer.kill()  # the first step is chosen; the scorer dies
    assert events[-1][0] == "done", events[-1]
    done = events[-1][1]
    later_choices = [s for s in done["trace"][1:] if len(distinct(s["candidates"])) > 1]
    if later_choices:  # (a later step with one distinct candidate needs no scorer)
        assert done["heuristic_used"] == "random"
        assert done["fallbacks"][0]["service"] == "scorer"
        assert any("scorer" in w for w in done["warnings"])
        assert all(s["heuristic"] == "random" for s in later_choices)

    ready = httpx.get(f"{url}/ready", timeout=30)
    assert ready.status_code == 503
    assert "scorer" in ready.json()["error"]["message"]
    one_step = {**body, "stream": False, "max_steps": 1}
    plain = httpx.post(f"{url}/v1/reason", json=one_step, timeout=300)
    assert plain.status_code == 200, plain.text
    if len(distinct(plain.json()["trace"][0]["candidates"])) > 1:
        assert plain.json()["heuristic_used"] == "random"
        assert plain.json()["fallbacks"][0]["service"] == "scorer"
    strict = httpx.post(f"{url}/v1/reason", json={**one_step, "strict": True}, timeout=300)
    assert strict.status_code == 503, strict.text
    assert "scorer" in strict.json()["error"]["message"]
    select = httpx.post(
        f"{url}/v1/select",
        json={"question": "q", "candidates": ["a", "b"], "heuristic": "likelihood", "strict": True},
        timeout=60,
    )
    assert select.status_code == 503
    assert "scorer" in select.json()["error"]["message"]
