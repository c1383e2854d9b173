"""strategy self_improve on fake model services: the attempt / feedback / update rounds, their
end (own feedback correct, max_rounds, unreadable text), the verifier in the loop, the
request's errors, streaming, and the loop on its own as the worker runs it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.self_improve import Generation, SelfImprovement
from gateway.settings import GatewaySettings
from gateway.testing import FakeModelService, fake_upstreams
from shared.openai_schemas import CompletionRequest
from shared.tasks import get_task

pytestmark = pytest.mark.unit

WRONG = "(1) 2 + 3 = 6.\n(Final response) So the answer is 6."
RIGHT = "(1) 2 + 3 = 5.\n(Final response) So the answer is 5."
ERROR = 'In step (1) the part "2 + 3 = 6" is incorrect. This is because 2 + 3 is 5.'
CORRECT = "Step (1) is correct. The final response is also correct."


def scripted_agent(script: Callable[[str], str]) -> FakeModelService:
    """An agent whose completion depends on where the prompt ends."""
    return FakeModelService("agent", completion_text=lambda req: script(str(req.prompt)))


def trained_model(prompt: str) -> str:
    """A model trained on TriPosT samples: attempt + feedback + update in one generation, and
    a correct feedback on its update."""
    if prompt.endswith("Answer:"):
        return f" {WRONG}\nFeedback: {ERROR}\nUpdated Answer: {RIGHT}"
    assert prompt.endswith(f"Answer: {RIGHT}\nFeedback:"), prompt
    return f" {CORRECT}"


@contextlib.asynccontextmanager
async def served(agent: FakeModelService, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(GatewaySettings(**settings), clients=fake_upstreams(agent=agent))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def body(**extra: Any) -> dict[str, Any]:
    return {"question": "2 + 3 =", "strategy": "self_improve", "few_shot": [], **extra}


async def test_self_improve_rounds_until_its_own_feedback_says_correct() -> None:
    agent = scripted_agent(trained_model)
    async with served(agent) as client:
        r = await client.post("/v1/reason", json=body(seed=3))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["strategy"] == "self_improve" and out["trace"] == []
    assert out["steps"] == RIGHT.splitlines() and out["answer"] == "5" and out["finished"]
    first, second = out["rounds"]
    assert (first["answer"], first["feedback"], first["updated"]) == (WRONG, ERROR, RIGHT)
    assert (first["correct"], first["step"], first["feedback_by"]) == (False, "1", "self")
    assert (second["answer"], second["correct"], second["updated"]) == (RIGHT, True, None)
    # two generations: the first held attempt, feedback and update
    prompts = [req.prompt for req in agent.requests("complete")]
    assert prompts == ["Q: 2 + 3 =\nAnswer:", f"Q: 2 + 3 =\nAnswer: {RIGHT}\nFeedback:"]
    requests: list[CompletionRequest] = agent.requests("complete")
    assert [q.seed for q in requests] == [3, 4] and requests[0].temperature == 0.0
    assert requests[0].stop == ["\nQ:"]
    assert out["usage"]["agent"]["calls"] == 2 and out["heuristic_used"] == "greedy"


async def test_self_improve_stops_after_max_rounds_with_the_last_answer() -> None:
    def never_satisfied(prompt: str) -> str:
        if prompt.endswith("Updated Answer:"):
            n = prompt.count("Q:")
            return f" (1) 2 + 3 = {n + 6}.\n(Final response) So the answer is {n + 6}."
        if prompt.endswith("Feedback:"):
            return f" {ERROR}"
        return f" {WRONG}"

    async with served(scripted_agent(never_satisfied)) as client:
        r = await client.post("/v1/reason", json=body(max_rounds=3))
    out = r.json()
    assert r.status_code == 200, r.text
    assert len(out["rounds"]) == 3 and all(not x["correct"] for x in out["rounds"])
    assert out["rounds"][-1]["updated"] is None  # no update after the last judged answer
    assert out["answer"] == "7"  # the last answer written stands


@pytest.mark.parametrize(
    ("script", "warning", "n_rounds"),
    [
        (lambda p: " I think it is 5.", "no numbered steps", 1),
        (lambda p: f" {WRONG}\nFeedback: looks fine to me", "feedback of round 0", 1),
        (
            lambda p: f" {WRONG}\nFeedback: {ERROR}\nUpdated Answer: five",
            "update of round 0",
            1,
        ),
    ],
)
async def test_self_improve_stops_on_text_it_cannot_read(
    script: Callable[[str], str], warning: str, n_rounds: int
) -> None:
    async with served(scripted_agent(script)) as client:
        r = await client.post("/v1/reason", json=body())
    out = r.json()
    assert r.status_code == 200, r.text
    assert len(out["rounds"]) == n_rounds
    assert any(warning in w for w in out["warnings"]), out["warnings"]


async def test_self_improve_with_the_scripted_verifier_in_the_loop() -> None:
    (item,) = get_task("multistep_arithmetic_seen").items(1, seed=5)
    assert item.rationale is not None
    gold = "\n".join(item.rationale)
    wrong = "\n".join([*gold.splitlines()[:-1], "(Final response) So the answer is 123456."])

    def model(prompt: str) -> str:
        if prompt.endswith("Updated Answer:"):
            assert "In step (Final response)" in prompt  # the verifier's feedback, not its own
            return f" {gold}"
        # its own feedback would say correct: it must not be used
        return f" {wrong}\nFeedback: {CORRECT}"

    agent = scripted_agent(model)
    async with served(agent) as client:
        r = await client.post(
            "/v1/reason",
            json=body(question=item.question, feedback="verifier", task="multistep_arithmetic"),
        )
    out = r.json()
    assert r.status_code == 200, r.text
    first, second = out["rounds"]
    assert first["feedback_by"] == "scripted" and first["step"] == "Final response"
    assert second["correct"] is True and out["answer"] == item.answer


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"task": "no_such_task"}, "task"),
        (
            {"feedback": "verifier", "verifier": "scripted", "task": "date_understanding"},
            "verifier",
        ),
        ({"feedback": "verifier", "verifier": "scripted"}, "task"),
        ({"max_rounds": 11}, "max_rounds"),
        ({"strategy": "dfs"}, "strategy"),
    ],
)
async def test_self_improve_bad_options_are_422_naming_the_field(
    extra: dict[str, Any], field: str
) -> None:
    async with served(scripted_agent(trained_model)) as client:
        r = await client.post("/v1/reason", json=body(**extra))
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]["field"]


async def test_self_improve_stream_sends_one_event_per_round() -> None:
    async with served(scripted_agent(trained_model)) as client:
        r = await client.post("/v1/reason", json=body(stream=True))
        chat = await client.post(
            "/v1/chat/completions",
            json={
                "model": "rationalyst",
                "messages": [{"role": "user", "content": "2 + 3 ="}],
                "strategy": "self_improve",
                "few_shot": [],
                "stream": True,
            },
        )
    events = [block.split("\n")[0] for block in r.text.strip().split("\n\n")]
    assert events == ["event: round", "event: round", "event: done"]
    chunks = [json.loads(line[6:]) for line in chat.text.splitlines() if line.startswith("data: {")]
    assert sum(1 for c in chunks if c.get("rationalyst_round")) == 2
    assert chunks[-1]["choices"][0]["delta"]["content"] == "\n".join(RIGHT.splitlines())


async def test_self_improve_default_demos_are_the_tasks_gold_rationales() -> None:
    agent = scripted_agent(trained_model)
    async with served(agent) as client:
        r = await client.post(
            "/v1/reason",
            json={"question": "2 + 3 =", "strategy": "self_improve", "task": "word_sorting"},
        )
    assert r.status_code == 200, r.text
    prompt = agent.requests("complete")[0].prompt
    assert prompt.count("\nAnswer: (1)") == 2 and "The final response is also correct." in prompt
    assert prompt.endswith("\n\nQ: 2 + 3 =\nAnswer:")


async def test_self_improve_asks_again_for_an_update_the_token_limit_cut() -> None:
    prompts: list[str] = []

    async def generate(text: str) -> Generation:
        prompts.append(text)
        if text.endswith("Updated Answer:"):
            return Generation(f" {RIGHT}")
        if text.endswith("Answer:"):  # attempt, feedback and the start of an update: cut
            cut = f" {WRONG}\nFeedback: {ERROR}\nUpdated Answer: (1) 2 +"
            return Generation(cut, 9, None, "length")
        return Generation(f" {CORRECT}")

    loop = SelfImprovement("2 + 3 =", generate)
    rounds = [r async for r in loop.run()]
    assert [r.updated for r in rounds] == [RIGHT, None] and loop.answer == RIGHT
    assert prompts[1].endswith(f"Feedback: {ERROR}\nUpdated Answer:")


async def test_self_improvement_loop_runs_on_any_generator() -> None:
    prompts: list[str] = []

    async def generate(text: str) -> Generation:
        prompts.append(text)
        return Generation(trained_model(text), completion_tokens=7)

    loop = SelfImprovement("2 + 3 =", generate, max_rounds=10)
    rounds = [r async for r in loop.run()]
    assert [r.index for r in rounds] == [0, 1] and loop.answer == RIGHT
    assert loop.completion_tokens == 14 and len(prompts) == 2
