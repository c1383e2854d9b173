"""POST /v1/verify over real HTTP: the scripted verifier, and the LLM verifier on one real
model service (SmolLM2-135M on CPU), whose answers are rarely in the asked-for shape: the
test checks the contract (a verdict, never a crash), not the verdict."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from gateway.ensemble import free_port
from shared.tasks import arithmetic

pytestmark = pytest.mark.integration

EXPR = "((2 + 3) * (4 - 6))"
DATE = {
    "task": "date_understanding",
    "question": "Today is 3/5/2021. What is the date tomorrow in MM/DD/YYYY?",
    "solution": "(1) Tomorrow is one day after 03/05/2021, so it is 03/06/2021.\n"
    "(Final response) So the answer is 03/06/2021.",
}


def test_verify_scripted_and_llm_verdicts_over_http(
    gateway_factory: Callable[..., str], model_service_factory: Callable[..., list]
) -> None:
    (scorer,) = model_service_factory("scorer")
    dead = f"http://127.0.0.1:{free_port()}"
    url = gateway_factory(
        rationalyst_url=dead, agent_url=dead, scorer_url=scorer.url, verifier_max_tokens=48
    )
    with httpx.Client(base_url=url, timeout=300) as client:
        lines = arithmetic.rationale(EXPR)
        lines[2] = lines[2].replace("= -2.", "= 2.")
        r = client.post(
            "/v1/verify",
            json={
                "task": "multistep_arithmetic",
                "question": arithmetic.question_text(EXPR),
                "solution": "\n".join(lines),
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["step"] == "3" and r.json()["verifier"] == "scripted"

        r = client.post("/v1/verify", json=DATE)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["verifier"] == "llm"
        assert body["model_output"]
        if body["unparseable"]:
            assert body["feedback"] == "[ERROR]"
        else:
            assert body["feedback"].endswith(".")


def test_verify_llm_verifier_down_is_503(gateway_factory: Callable[..., str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    url = gateway_factory(rationalyst_url=dead, agent_url=dead, scorer_url=dead, connect_retries=0)
    r = httpx.post(f"{url}/v1/verify", json=DATE, timeout=60)
    assert r.status_code == 503
    assert r.json()["error"]["message"].startswith("llm verifier (scorer service): ")
