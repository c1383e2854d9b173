"""Reward models end to end on the embedded SmolLM2, on CPU, over real Redis and HTTP:
hand-made rows in the layouts a prm_labels job writes (stepwise.jsonl, outcome.jsonl) -> a
train_prm or train_orm job -> the registry -> a model service in the reward role on it ->
/v1/reward -> the gateway's /v1/select with `heuristic: prm` or `orm`.

The PRM's job is killed with -9 after its first checkpoint and resumed by a new worker; the
ORM's runs straight through (resuming is the same code). Kept small for 2 cores: 3 (PRM) and
2 (ORM) optimizer steps of a dozen short rows."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.steps import solution_text
from tests.integration.conftest import RunningService
from tests.integration.test_training import trainer_processes
from tests.integration.worker_fixtures import JobsEnv, jobs_env, redis_server  # noqa: F401

pytestmark = pytest.mark.integration

PRM_NAME, ORM_NAME = "ci-prm", "ci-orm"
PRM_TRAIN = {"max_steps": 3, "batch_size": 4, "max_length": 96, "save_steps": 1,
             "learning_rate": 1e-4, "save_total_limit": 1}  # fmt: skip
ORM_TRAIN = {"max_steps": 2, "batch_size": 2, "max_length": 96, "learning_rate": 1e-4}
DEV_FRACTION = 0.34  # 2 of 6 problems held out


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


OUTCOME_PROBLEMS: list[tuple[str, list[tuple[list[str], bool]]]] = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", [
        (["Tom starts with 3 apples.", "He buys 4 more: 3 + 4 = 7.", "The answer is: 7"], True),
        (["He buys 4 more, so 3 * 4 = 12.", "The answer is: 12"], False),
    ]),
    ("A box holds 12 eggs and 5 are broken. How many eggs are whole?", [
        (["12 + 5 = 17 eggs.", "The answer is: 17"], False),
        (["The whole eggs are 12 - 5 = 7.", "The answer is: 7"], True),
    ]),
    ("What is 6 times 7?", [
        (["6 * 7 = 42.", "The answer is: 42"], True),
        (["6 * 7 = 48.", "The answer is: 48"], False),
    ]),
    ("Sara reads 10 pages a day. How many pages does she read in 3 days?", [
        (["In 3 days she reads 10 + 3 = 13 pages.", "The answer is: 13"], False),
        (["Each day is 10 pages.", "Three days: 10 * 3 = 30.", "The answer is: 30"], True),
    ]),
    ("What is half of 18?", [
        (["18 / 2 = 9.", "The answer is: 9"], True),
        (["18 / 2 = 6.", "The answer is: 6"], False),
    ]),
    ("A bus has 20 seats and 8 passengers. How many seats are empty?", [
        (["The bus has 20 seats.", "The answer is: 20"], False),
        (["20 - 8 = 12 seats are empty.", "The answer is: 12"], True),
    ]),
]  # fmt: skip
"""Six word problems, each with one right and one wrong solution (wrong operation, slip,
misreading), in either order."""


def outcome_rows() -> list[dict[str, Any]]:
    """``{id, prompt, completion, label}`` as prm_labels writes outcome.jsonl (the steps
    joined by newlines), plus one row whose label is no boolean, which training drops."""
    rows: list[dict[str, Any]] = [
        {"id": f"p{p}:{s}", "prompt": q, "completion": solution_text(steps), "label": good}
        for p, (q, solutions) in enumerate(OUTCOME_PROBLEMS)
        for s, (steps, good) in enumerate(solutions)
    ]
    rows.append({"id": "p0:2", "prompt": OUTCOME_PROBLEMS[0][0], "completion": "7",
                 "label": "yes"})  # fmt: skip
    return rows


def write_rows(tmp_path_factory: pytest.TempPathFactory, name: str, rows: list[Any]) -> Path:
    path = tmp_path_factory.mktemp("reward-data") / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@dataclass
class Trained:
    env: JobsEnv
    job_id: str
    status: dict[str, Any]
    stage_dir: Path
    model_name: str

    @property
    def result(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.stage_dir / "result.json").read_text())
        return result

    def log_tail(self) -> str:
        return (self.stage_dir / "train.log").read_text()[-3000:]


def train_spec(kind: str, data: Path, model_name: str, hp: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "data": {"train": [str(data)], "dev_fraction": DEV_FRACTION},
            "model_name": model_name, **hp}  # fmt: skip


@pytest.fixture(scope="module")
def prm(jobs_env: JobsEnv, tmp_path_factory: pytest.TempPathFactory) -> Trained:  # noqa: F811
    import redis

    redis.Redis.from_url(jobs_env.redis.url).flushall()
    data = write_rows(tmp_path_factory, "stepwise.jsonl", stepwise_rows())
    worker = jobs_env.start_worker()
    job_id = jobs_env.submit(train_spec("train_prm", data, PRM_NAME, PRM_TRAIN))
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
    trained = Trained(jobs_env, job_id, status, stage_dir, PRM_NAME)
    assert status["state"] == "succeeded", (status, trained.log_tail())
    return trained


@pytest.fixture(scope="module")
def orm(jobs_env: JobsEnv, tmp_path_factory: pytest.TempPathFactory) -> Trained:  # noqa: F811
    data = write_rows(tmp_path_factory, "outcome.jsonl", outcome_rows())
    if not any(w.popen.poll() is None for w in jobs_env.workers):  # else the PRM's serves it
        jobs_env.start_worker()
    job_id = jobs_env.submit(train_spec("train_orm", data, ORM_NAME, ORM_TRAIN))
    status = jobs_env.wait(job_id, timeout_s=600)
    trained = Trained(jobs_env, job_id, status, jobs_env.artifacts / job_id / "train_orm", ORM_NAME)
    assert status["state"] == "succeeded", (status, trained.log_tail())
    return trained


def check_registered(trained: Trained, kind: str) -> None:
    """The registry card of the job's model: its kind, its job, its reward.json; the
    result's reward config and metrics travel with it."""
    r = trained.env.http.get(f"/v1/registry/models/{trained.model_name}")
    assert r.status_code == 200, r.text
    card, result = r.json(), trained.result
    assert card["kind"] == kind and card["job_id"] == trained.job_id
    assert (Path(card["path"]) / "reward.json").is_file()
    assert card["data"]["reward"] == result["reward"]  # the step tag travels with the card
    assert card["metrics"] == result["metrics"]  # what `models list` shows


def check_metrics(metrics: dict[str, Any], level: str) -> None:
    for key in ("accuracy", "f1", "auroc"):
        for when in ("before", "after"):
            value = metrics[f"{level}_{key}_{when}"]
            assert value is not None and 0.0 <= value <= 1.0, (key, when, metrics)


def start_reward_service(
    trained: Trained, model_service_factory: Callable[..., list[RunningService]]
) -> RunningService:
    (reward,) = model_service_factory(
        "reward",
        model=trained.model_name,
        env={"MODEL_SERVER_ARTIFACTS_DIR": str(trained.env.artifacts)},
    )
    return reward


def check_select_ranks_by(
    gateway_factory: Callable[..., str],
    reward_url: str,
    heuristic: str,
    sel: dict[str, Any],
    expected: list[float],
) -> None:
    """/v1/select with the reward heuristic asks only the reward service (the other URLs are
    never called) and picks the candidate it scores highest, with its scores."""
    unused = "http://127.0.0.1:9"
    gateway = gateway_factory(
        rationalyst_url=unused, agent_url=unused, scorer_url=unused, reward_url=reward_url
    )
    r = httpx.post(f"{gateway}/v1/select", json={**sel, "heuristic": heuristic}, timeout=120)
    assert r.status_code == 200, r.text
    chosen = r.json()
    assert chosen["scores"] == pytest.approx(expected, abs=1e-3)
    assert chosen["chosen"] == max(range(len(expected)), key=lambda i: expected[i])
    assert chosen["heuristic_used"] == heuristic and chosen["fallbacks"] == []


def test_train_prm_resumes_and_registers_a_prm_with_metrics(prm: Trained) -> None:
    t = prm.status["training"]
    assert t["step"] == PRM_TRAIN["max_steps"] and t["phase"] == "done"
    assert t["resumed_from_step"] is not None and t["resumed_from_step"] >= 1
    result = prm.result
    check_metrics(result["metrics"], "step")
    assert result["metrics"]["eval_labels"] == 12  # 2 problems x 2 solutions x 3 steps
    assert result["data"]["dev_held_out_from_train"] is True
    assert result["reward"]["kind"] == "prm" and result["reward"]["label_mode"] == "hard"
    check_registered(prm, "prm")
    # a data job that is no prm_labels job is refused at submit, naming data.job
    bad = prm.env.http.post("/v1/jobs", json={"kind": "train_prm", "data": {"job": prm.job_id}})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "data.job"
    assert "prm_labels" in bad.json()["error"]["message"]
    missing = prm.env.http.post("/v1/jobs", json={"kind": "train_orm", "data": {"job": "job-nope"}})
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "data.job"


def test_train_orm_registers_an_orm_with_solution_metrics(orm: Trained) -> None:
    t = orm.status["training"]
    assert t["step"] == ORM_TRAIN["max_steps"] and t["phase"] == "done"
    result = orm.result
    check_metrics(result["metrics"], "solution")
    assert result["metrics"]["eval_labels"] == 4  # 2 problems x 2 solutions, one label each
    data = result["data"]
    assert data["dev_held_out_from_train"] is True
    assert data["train"]["kept"] + data["dev"]["kept"] == 12
    dropped = [data[side]["dropped"] for side in ("train", "dev") if data[side]["dropped"]]
    assert dropped == [{"bad_row": 1}]  # the row labelled "yes"
    assert result["reward"]["kind"] == "orm" and result["reward"]["num_labels"] == 1
    assert result["reward"]["label_mode"] is None
    check_registered(orm, "orm")


def test_reward_service_scores_steps_and_select_ranks_with_prm(
    prm: Trained,
    model_service_factory: Callable[..., list[RunningService]],
    gateway_factory: Callable[..., str],
) -> None:
    reward = start_reward_service(prm, model_service_factory)
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
    sel = {"question": "What is 2 + 3?", "steps": steps, "candidates": candidates}
    lasts = [res["last"] for res in out["results"]]
    check_select_ranks_by(gateway_factory, reward.url, "prm", sel, lasts)


def test_reward_service_scores_solutions_and_select_ranks_with_orm(
    orm: Trained,
    model_service_factory: Callable[..., list[RunningService]],
    gateway_factory: Callable[..., str],
) -> None:
    reward = start_reward_service(orm, model_service_factory)
    question = "Lena has 9 stickers and gives away 4. How many stickers does she have left?"
    steps = ["She gives away 4 of her 9 stickers."]
    candidates = [
        "9 - 4 = 5 stickers are left.",
        "9 + 4 = 13 stickers are left.",
        "The answer is: 4",
    ]
    body = {"question": question, "solutions": [[*steps, c] for c in candidates]}
    r = httpx.post(f"{reward.url}/v1/reward", json=body, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["kind"] == "orm" and len(out["results"]) == 3
    for res in out["results"]:  # one outcome score per solution, in all four aggregates
        assert res["step_scores"] == [] and 0 <= res["last"] <= 1
        assert res["min"] == res["prod"] == res["mean"] == res["last"]
    assert out["usage"]["prompt_tokens"] > 0
    long = {"question": "q", "solutions": [["ok"], ["ok", "seven " * 3000]]}
    r = httpx.post(f"{reward.url}/v1/reward", json=long, timeout=60)
    assert r.status_code == 422 and r.json()["error"]["field"] == "solutions[1]"
    sel = {"question": question, "steps": steps, "candidates": candidates}
    outcome = [res["last"] for res in out["results"]]
    check_select_ranks_by(gateway_factory, reward.url, "orm", sel, outcome)
