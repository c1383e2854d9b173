"""POST /v1/rollout on a scripted fake engine: steps, answers, batching, seeds, limits; and the
shared step rule the gateway's loop uses too."""

from __future__ import annotations

import re
from typing import Any

import pytest

from services.model_server.app import create_app
from services.model_server.engines.base import Completion, SamplingParams, encode
from services.model_server.rollout import step_seed
from services.model_server.settings import ModelServerSettings
from shared.schemas import Role
from shared.steps import ends_solution, is_finished, solution_answer, solution_text, step_text
from tests.unit.conftest import FakeEngine

pytestmark = pytest.mark.unit

QUESTION = "What is 3 + 4?"


class StepEngine(FakeEngine):
    """Writes step k of a solution as "  Step k.  " (padded: the step rule strips it; the
    first step of sample i says "Step 0 of row i.") and, at step ``answer_at``, "The answer
    is: <7 + row>", the row read back from the prompt, so each completion must continue its
    own steps. It reads k from the prompt: the number of assistant turns after the
    question's user turn. ``empty_at`` makes that step an empty turn."""

    def __init__(self, tokenizer: Any, answer_at: int = 3, empty_at: int | None = None) -> None:
        super().__init__(tokenizer)
        self.answer_at = answer_at
        self.empty_at = empty_at
        self.prompts: list[str] = []

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> list[Completion]:
        self.calls.append(("generate", params))
        if self.fail:
            raise self.fail
        prompt = self.tokenizer.decode(prompt_ids)
        self.prompts.append(prompt)
        after_question = prompt.split(QUESTION, 1)[1]
        k = after_question.count("<|im_start|>assistant") - 1  # the opened turn is not a step
        rows = re.findall(r"Step 0 of row (\d+)", after_question)
        out = []
        for i in range(params.n):
            row = int(rows[0]) if rows else i
            if k == self.empty_at:
                text = "   "
            elif k == self.answer_at:
                text = f" The answer is: {7 + row}\n"
            elif k == 0:
                text = f"  Step 0 of row {i}.  "
            else:
                text = f"  Step {k}.  "
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            out.append(Completion(text, ids, [-0.5] * len(ids), "stop"))
        return out


def settings(**kw: Any) -> ModelServerSettings:
    return ModelServerSettings(role=Role.agent, max_n=8, max_tokens_limit=64, **kw)


async def post(asgi_client: Any, engine: FakeEngine, body: dict[str, Any], **kw: Any) -> Any:
    async with asgi_client(create_app(settings(**kw), engine=engine)) as client:
        return await client.post("/v1/rollout", json=body)


async def test_completions_are_split_into_steps_with_their_answer(
    tokenizer: Any, asgi_client: Any
) -> None:
    engine = StepEngine(tokenizer)
    r = await post(asgi_client, engine, {"question": QUESTION, "n": 3, "max_step_tokens": 32})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("rollout-")
    completions = body["completions"]
    assert len(completions) == 3
    for i, c in enumerate(completions):
        expected = [f"Step 0 of row {i}.", "Step 1.", "Step 2.", f"The answer is: {7 + i}"]
        assert c["steps"] == expected
        assert c["answer"] == str(7 + i)
        assert c["finished"] is True
        assert c["completion_tokens"] > 0
    usage = body["usage"]
    assert usage["completion_tokens"] == sum(c["completion_tokens"] for c in completions)
    assert usage["prompt_tokens"] > 0


async def test_first_step_is_one_batched_call_then_one_call_per_completion_and_step(
    tokenizer: Any, asgi_client: Any
) -> None:
    engine = StepEngine(tokenizer, answer_at=2)
    r = await post(asgi_client, engine, {"question": QUESTION, "n": 4, "seed": 11})
    assert r.status_code == 200, r.text
    params = [p for kind, p in engine.calls if kind == "generate"]
    assert params[0].n == 4 and params[0].seed == 11
    later = params[1:]
    assert len(later) == 4 * 2  # steps 1 and 2 of each of the 4 completions
    assert all(p.n == 1 for p in later)
    expected = {step_seed(11, i, k) for i in range(4) for k in (1, 2)}
    assert {p.seed for p in later} == expected
    assert len(expected) == 8  # every (completion, step) samples with its own seed
    # max_step_tokens defaults to 96, lowered to the service's max_tokens_limit (64)
    assert all(p.max_tokens == 64 for p in params)
    assert all(p.temperature == pytest.approx(0.7) for p in params)


async def test_the_given_steps_are_the_prefix_and_are_not_returned(
    tokenizer: Any, asgi_client: Any
) -> None:
    engine = StepEngine(tokenizer)
    body = {"question": QUESTION, "steps": ["Step 0.", "Step 1."], "n": 2}
    r = await post(asgi_client, engine, body)
    assert r.status_code == 200, r.text
    for c in r.json()["completions"]:
        assert c["steps"][0] == "Step 2."  # continues after the given steps
        assert c["steps"][-1].startswith("The answer is:")
    # every prompt holds the given steps as assistant turns, after the question
    first = engine.prompts[0].split(QUESTION, 1)[1]
    assert "Step 0.<|im_end|>" in first and "Step 1.<|im_end|>" in first


async def test_a_prefix_that_states_the_answer_needs_no_generation(
    tokenizer: Any, asgi_client: Any
) -> None:
    engine = StepEngine(tokenizer)
    body = {"question": QUESTION, "steps": ["3 + 4 = 7.", "The answer is: 7"], "n": 3}
    r = await post(asgi_client, engine, body)
    assert r.status_code == 200, r.text
    assert engine.calls == []
    completions = r.json()["completions"]
    assert [c["steps"] for c in completions] == [[], [], []]
    assert {c["answer"] for c in completions} == {"7"}
    assert all(c["finished"] for c in completions)


async def test_max_steps_and_empty_turns_end_a_completion_unfinished(
    tokenizer: Any, asgi_client: Any
) -> None:
    engine = StepEngine(tokenizer, answer_at=10)
    r = await post(asgi_client, engine, {"question": QUESTION, "max_steps": 2, "n": 2})
    assert r.status_code == 200, r.text
    for c in r.json()["completions"]:
        assert c["steps"][1:] == ["Step 1."]
        assert (c["finished"], c["answer"]) == (False, None)

    engine = StepEngine(tokenizer, empty_at=1)
    r = await post(asgi_client, engine, {"question": QUESTION})
    assert r.status_code == 200, r.text
    (c,) = r.json()["completions"]
    assert c["steps"] == ["Step 0 of row 0."]
    assert c["finished"] is False


async def test_a_full_context_stops_a_completion(tokenizer: Any, asgi_client: Any) -> None:
    probe = StepEngine(tokenizer)
    await post(asgi_client, probe, {"question": QUESTION, "max_steps": 1})
    first_prompt = len(encode(tokenizer, probe.prompts[0])[0])
    engine = StepEngine(tokenizer, answer_at=50)
    engine.max_model_len = first_prompt + 30  # room for a few steps only
    r = await post(asgi_client, engine, {"question": QUESTION, "max_steps": 20})
    assert r.status_code == 200, r.text
    (c,) = r.json()["completions"]
    assert 1 <= len(c["steps"]) < 20
    assert c["finished"] is False
    params = [p for kind, p in engine.calls if kind == "generate"]
    # each call's max_tokens leaves the prompt room in the context
    assert all(p.max_tokens <= 30 for p in params[1:])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"question": QUESTION, "n": 9}, "n"),  # over the service's max_n (8)
        ({"question": QUESTION, "n": 0}, "n"),
        ({"question": QUESTION, "n": 65}, "n"),
        ({"question": QUESTION, "max_step_tokens": 65}, "max_step_tokens"),  # over the limit
        ({"question": QUESTION, "max_steps": 0}, "max_steps"),
        ({"question": QUESTION, "max_steps": 65}, "max_steps"),
        ({"question": QUESTION, "temperature": 2.5}, "temperature"),
        ({"question": QUESTION, "top_p": 0}, "top_p"),
        ({"question": ""}, "question"),
        ({"question": QUESTION, "steps": ["ok", ""]}, "steps[1]"),
        ({"question": QUESTION, "answer_kind": "colour"}, "answer_kind"),
        ({"question": QUESTION, "few_shot": [{"question": "q", "steps": []}]}, "few_shot[0].steps"),
        ({"question": QUESTION, "bogus": True}, "bogus"),
    ],
)
async def test_bad_input_is_422_naming_the_field(
    tokenizer: Any, asgi_client: Any, body: dict[str, Any], field: str
) -> None:
    engine = StepEngine(tokenizer)
    r = await post(asgi_client, engine, body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert engine.calls == []


async def test_a_prompt_longer_than_the_context_is_422_on_steps(
    tokenizer: Any, asgi_client: Any
) -> None:
    engine = StepEngine(tokenizer)
    engine.max_model_len = 64
    r = await post(asgi_client, engine, {"question": QUESTION, "steps": ["long step " * 40]})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "steps"


async def test_engine_failure_is_503_and_timeout_504(tokenizer: Any, asgi_client: Any) -> None:
    engine = StepEngine(tokenizer)
    engine.fail = RuntimeError("boom")
    r = await post(asgi_client, engine, {"question": QUESTION, "n": 2})
    assert r.status_code == 503
    assert "boom" in r.json()["error"]["message"]

    import asyncio

    class Slow(StepEngine):
        async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Any:
            await asyncio.sleep(10)

    r = await post(asgi_client, Slow(tokenizer), {"question": QUESTION}, request_timeout_s=0.05)
    assert r.status_code == 504


async def test_few_shot_and_answer_kind_choose_the_demos(tokenizer: Any, asgi_client: Any) -> None:
    engine = StepEngine(tokenizer, answer_at=0)
    demo = {"question": "What is 1 + 1?", "steps": ["1 + 1 = 2.", "The answer is: 2"]}
    r = await post(asgi_client, engine, {"question": QUESTION, "few_shot": [demo]})
    assert r.status_code == 200
    assert "What is 1 + 1?" in engine.prompts[0]
    assert "baker" not in engine.prompts[0]  # not the default numeric demos

    engine = StepEngine(tokenizer, answer_at=0)
    r = await post(asgi_client, engine, {"question": QUESTION, "answer_kind": "boolean"})
    assert r.status_code == 200
    assert "tomato" in engine.prompts[0]  # the yes/no demos, not the detected numeric ones


def test_step_rule() -> None:
    assert step_text("  The sum is 7.\n") == "The sum is 7."
    assert step_text(" \n ") == ""
    assert ends_solution("So the answer is: 7.")
    assert ends_solution("Hence \\boxed{7}")
    assert not ends_solution("3 + 4 = 7.")
    assert solution_text(["a", "b"]) == "a\nb"
    assert solution_answer(["3 + 4 = 7.", "The answer is: 7."]) == "7"
    assert solution_answer(["3 + 4 = 7."]) is None
    assert is_finished(["x", "The answer is 7"]) and not is_finished([])


def test_step_seeds_are_fixed_and_distinct() -> None:
    assert step_seed(None, 0, 1) is None
    assert step_seed(5, 2, 3) == step_seed(5, 2, 3)
    seeds = {step_seed(5, i, k) for i in range(8) for k in range(1, 9)}
    assert len(seeds) == 64
    assert all(0 <= s < 2**31 for s in seeds if s is not None)
