"""Process reward model end to end on the embedded SmolLM2, on CPU, over real Redis and HTTP:
hand-made stepwise rows (the prm_labels layout) -> a train_prm job (killed with -9 after its
first checkpoint, resumed by a new worker) -> the registry -> a model service in the reward
role on it -> /v1/reward -> the gateway's /v1/select with `heuristic: prm`.

Kept small for 2 cores: 3 optimizer steps of 4 short rows."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import RunningService
from tests.integration.test_training import trainer_processes
from tests.integration.worker_fixtures import JobsEnv, jobs_env, redis_server  # noqa: F401

pytestmark = pytest.mark.integration

MODEL_NAME = "ci-prm"
TRAIN = {"max_steps": 3, "batch_size": 4, "max_length": 96, "save_steps": 1,
         "learning_rate": 1e-4, "save_total_limit": 1}  # fmt: skip


def stepwise_rows() -> list[dict[str, Any]]:
    """Two solutions per problem: a right one (every step good) and one that goes wrong at
    its second step (labels from there on bad), as prm_labels writes them."""
    rows = []
    for p, (a, b) in enumerate([(2, 3), (4, 5), (6, 2), (7, 8), (3, 9), (5, 5)]):
        for s, c in enumerate((a + b, a + b + 2)):
            good = s == 0
            steps = [f"We add {a} and {b}.", f"{a} + {b} = {c}.", f"The answer is: {c}"]
            labels = [True, good, good]
            rows.append({
                "id": f"p{p}:{s}", "prompt": f"What is {a} + {b}?", "completions": steps,
                "labels": labels, "soft_labels": [1.0 if y else 0.0 for y in labels],
                "solution_correct": good, "rollouts_used": 6,
            })  # fmt: skip
    return rows


@dataclass
class Trained:
    env: JobsEnv
    job_id: str
    status: dict[str, Any]
    stage_dir: Path


@pytest.fixture(scope="module")
def trained(jobs_env: JobsEnv, tmp_path_factory: pytest.TempPathFactory) -> Trained:  # noqa: F811
    import redis

    redis.Redis.from_url(jobs_env.redis.url).flushall()
    data = tmp_path_factory.mktemp("prm-data") / "stepwise.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in stepwise_rows()))
    worker = jobs_env.start_worker()
    job_id = jobs_env.submit(
        {"kind": "train_prm", "data": {"train": [str(data)], "dev_fraction": 0.34},
         "model_name": MODEL_NAME, **TRAIN}
    )  # fmt: skip
    stage_dir = jobs_env.artifacts / job_id / "train_prm"
    first = stage_dir / "checkpoints" / "checkpoint-1" / "complete"
    status = jobs_env.wait(
        job_id,
        until=lambda s: first.exists() or s["state"] not in ("queued", "running"),
        timeout_s=600,
    )
    assert status["state"] == "running", (status, worker.tail())
    worker.kill9()
    deadline = time.monotonic() + 20
    while trainer_processes(stage_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert trainer_processes(stage_dir) == []
    jobs_env.start_worker()
    status = jobs_env.wait(job_id, timeout_s=900)
    assert status["state"] == "succeeded", (status, (stage_dir / "train.log").read_text()[-3000:])
    return Trained(jobs_env, job_id, status, stage_dir)


def test_train_prm_resumes_and_registers_a_prm_with_metrics(trained: Trained) -> None:
    t = trained.status["training"]
    assert t["step"] == TRAIN["max_steps"] and t["phase"] == "done"
    assert t["resumed_from_step"] is not None and t["resumed_from_step"] >= 1
    result = json.loads((trained.stage_dir / "result.json").read_text())
    m = result["metrics"]
    for key in ("step_accuracy", "step_f1", "step_auroc"):
        assert 0.0 <= m[f"{key}_before"] <= 1.0 and 0.0 <= m[f"{key}_after"] <= 1.0
    assert m["eval_labels"] == 12  # 2 of 6 problems held out, 2 solutions x 3 steps each
    assert result["data"]["dev_held_out_from_train"] is True
    assert result["reward"]["kind"] == "prm" and result["reward"]["label_mode"] == "hard"
    r = trained.env.http.get(f"/v1/registry/models/{MODEL_NAME}")
    assert r.status_code == 200, r.text
    card = r.json()
    assert card["kind"] == "prm" and card["job_id"] == trained.job_id
    assert (Path(card["path"]) / "reward.json").is_file()
    assert card["data"]["reward"] == result["reward"]  # the step tag travels with the card
    # a data job that is no prm_labels job is refused at submit, naming data.job
    bad = trained.env.http.post(
        "/v1/jobs", json={"kind": "train_prm", "data": {"job": trained.job_id}}
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "data.job"
    assert "prm_labels" in bad.json()["error"]["message"]
    missing = trained.env.http.post(
        "/v1/jobs", json={"kind": "train_orm", "data": {"job": "job-nope"}}
    )
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "data.job"


def test_reward_service_scores_steps_and_select_ranks_with_prm(
    trained: Trained,
    model_service_factory: Callable[..., list[RunningService]],
    gateway_factory: Callable[..., str],
) -> None:
    (reward,) = model_service_factory(
        "reward", model=MODEL_NAME, env={"MODEL_SERVER_ARTIFACTS_DIR": str(trained.env.artifacts)}
    )
    steps = ["We add 2 and 3."]
    candidates = ["2 + 3 = 5.", "2 + 3 = 7.", "The answer is: 9"]
    body = {"question": "What is 2 + 3?", "solutions": [[*steps, c] for c in candidates]}
    r = httpx.post(f"{reward.url}/v1/reward", json=body, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["kind"] == "prm" and len(out["results"]) == 3
    for res in out["results"]:
        assert len(res["step_scores"]) == 2 and all(0 <= s <= 1 for s in res["step_scores"])
        assert res["min"] == min(res["step_scores"]) and res["last"] == res["step_scores"][-1]
    long = {"question": "q", "solutions": [["ok"], ["ok", "seven " * 3000]]}
    r = httpx.post(f"{reward.url}/v1/reward", json=long, timeout=60)
    assert r.status_code == 422 and r.json()["error"]["field"] == "solutions[1][1]"
    # the gateway: heuristic prm asks only the reward service (the other URLs are never called)
    unused = "http://127.0.0.1:9"
    gateway = gateway_factory(
        rationalyst_url=unused, agent_url=unused, scorer_url=unused, reward_url=reward.url
    )
    sel = {"question": "What is 2 + 3?", "steps": steps, "candidates": candidates,
           "heuristic": "prm"}  # fmt: skip
    r = httpx.post(f"{gateway}/v1/select", json=sel, timeout=120)
    assert r.status_code == 200, r.text
    chosen = r.json()
    lasts = [res["last"] for res in out["results"]]
    assert chosen["scores"] == pytest.approx(lasts, abs=1e-3)
    assert chosen["chosen"] == max(range(3), key=lambda i: lasts[i])
    assert chosen["heuristic_used"] == "prm" and chosen["fallbacks"] == []
