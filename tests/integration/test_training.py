"""Training a rationalyst end to end on the embedded SmolLM2, on CPU, over real Redis and HTTP:
sft_data job -> train_rationalyst job (killed with -9 mid-training, resumed from its last
checkpoint by a new worker) -> the registry -> a model service on the trained model ->
the gateway's loop with it as the rationalyst. Bad specs are refused at submit or fail at once.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.ensemble import PROJECT_ROOT
from tests.integration.conftest import RunningService
from tests.integration.worker_fixtures import JobsEnv, jobs, jobs_env, redis_server  # noqa: F401

pytestmark = pytest.mark.integration

RATIONALES = PROJECT_ROOT / "services" / "worker" / "sample_corpus" / "rationales.jsonl"
MODEL_NAME = "ci-rationalyst"
# Small enough for 2 CPU cores: 6 optimizer steps of 4 rows, a checkpoint every 2 steps.
TRAIN = {
    "max_steps": 6,
    "batch_size": 4,
    "max_length": 160,
    "save_steps": 2,
    "eval_steps": 6,
    "learning_rate": 2e-4,
}


@dataclass
class Trained:
    env: JobsEnv
    job_id: str
    status: dict[str, Any]
    killed_at_step: int
    stage_dir: Path


def trainer_processes(stage_dir: Path) -> list[str]:
    out = subprocess.run(
        ["pgrep", "-af", f"services.worker.training {stage_dir}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


@pytest.fixture(scope="module")
def trained(jobs_env: JobsEnv) -> Trained:  # noqa: F811
    """One training run, killed with -9 after its first checkpoint and resumed."""
    import redis

    redis.Redis.from_url(jobs_env.redis.url).flushall()
    worker = jobs_env.start_worker()
    sft = jobs_env.submit({"kind": "sft_data", "input": {"paths": [str(RATIONALES)]}, "limit": 100})
    assert jobs_env.wait(sft)["state"] == "succeeded"
    job_id = jobs_env.submit(
        {"kind": "train_rationalyst", "data": {"job": sft}, "model_name": MODEL_NAME, **TRAIN}
    )
    stage_dir = jobs_env.artifacts / job_id / "train_rationalyst"
    first_checkpoint = stage_dir / "checkpoints" / "checkpoint-2" / "complete"
    status = jobs_env.wait(
        job_id,
        until=lambda s: first_checkpoint.exists() or s["state"] not in ("queued", "running"),
        timeout_s=900,
    )
    assert status["state"] == "running", status
    killed_at = status["training"]["step"] if status["training"] else 0
    worker.kill9()
    deadline = time.monotonic() + 20  # the kernel takes the trainer down with its worker
    while trainer_processes(stage_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert trainer_processes(stage_dir) == []
    jobs_env.start_worker()
    status = jobs_env.wait(job_id, timeout_s=1200)
    assert status["state"] == "succeeded", (status, (stage_dir / "train.log").read_text()[-3000:])
    return Trained(jobs_env, job_id, status, killed_at, stage_dir)


def test_train_resumes_from_the_last_checkpoint_after_kill9(trained: Trained) -> None:
    t = trained.status["training"]
    assert t["step"] == TRAIN["max_steps"] and t["max_steps"] == TRAIN["max_steps"]
    assert t["phase"] == "done"
    assert t["resumed_from_step"] is not None and t["resumed_from_step"] >= 2
    result = json.loads((trained.stage_dir / "result.json").read_text())
    assert result["resumed_from_step"] == t["resumed_from_step"]
    # not restarted from scratch: step 1 was trained (and logged) once, by the first run
    log = [
        json.loads(line)
        for line in (trained.stage_dir / "log_history.jsonl").read_text().splitlines()
    ]
    assert [e["step"] for e in log if "loss" in e].count(1) == 1
    assert max(e["step"] for e in log) == TRAIN["max_steps"]


def test_train_loss_decreases(trained: Trained) -> None:
    result = json.loads((trained.stage_dir / "result.json").read_text())
    m = result["metrics"]
    assert m["eval_loss"] < m["eval_loss_before"], m
    assert m["last_loss"] < m["first_loss"], m
    report = result["data"]
    assert report["train"]["kept"] > 50 and report["train"]["dropped_total"] == 0
    assert report["dev"]["kept"] > 0 and report["dev_held_out_from_train"] is False
    assert report["expects_bos"] is True


def test_train_registers_the_model_in_the_api(trained: Trained) -> None:
    r = trained.env.http.get("/v1/registry/models")
    assert r.status_code == 200, r.text
    (card,) = [m for m in r.json()["models"] if m["name"] == MODEL_NAME]
    assert card["job_id"] == trained.job_id and card["base_model"] == "smollm2-135m-instruct"
    assert card["method"] == "full" and card["metrics"]["steps"] == TRAIN["max_steps"]
    assert card["data"]["train"]["kept"] > 50 and card["data"]["source"] == {
        "job": card["data"]["source"]["job"],
        "dev_fraction": 0.05,
    }
    assert trained.status["counts"]["records_in"] == card["data"]["train"]["rows"]
    assert (Path(card["path"]) / "config.json").is_file()
    assert trained.env.http.get(f"/v1/registry/models/{MODEL_NAME}").json() == card
    # the name is taken now: a second job asking for it is refused at submit
    again = trained.env.http.post(
        "/v1/jobs",
        json={
            "kind": "train_rationalyst",
            "data": {"job": card["data"]["source"]["job"]},  # valid data: only the name clashes
            "model_name": MODEL_NAME,
        },
    )
    assert again.status_code == 422 and again.json()["error"]["field"] == "model_name"


def test_trained_model_serves_rationales_and_runs_the_gateway_loop(
    trained: Trained,
    model_service_factory: Callable[..., list[RunningService]],
    model_services: dict[str, str],
    gateway_factory: Callable[..., str],
) -> None:
    (service,) = model_service_factory(
        "rationalyst",
        model=MODEL_NAME,
        env={"MODEL_SERVER_ARTIFACTS_DIR": str(trained.env.artifacts)},
    )
    ready = httpx.get(f"{service.url}/ready", timeout=10).json()
    assert MODEL_NAME in json.dumps(ready) or str(trained.stage_dir) in json.dumps(ready)
    body = {"question": "((3 + 4) * (2 - 5)) =", "steps": [], "max_tokens": 40}
    r = httpx.post(f"{service.url}/v1/rationale", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["rationale"].strip()
    gateway = gateway_factory(
        rationalyst_url=service.url,
        agent_url=model_services["agent"],
        scorer_url=model_services["scorer"],
    )
    r = httpx.post(
        f"{gateway}/v1/reason",
        json={"question": "What is 2 + 3?", "max_steps": 2, "n_candidates": 2, "seed": 0},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["heuristic_used"] == "rationalyst" and not out["fallbacks"]
    assert out["trace"][0]["rationale"].strip()


def test_train_spec_errors_are_refused_or_fail_at_once(jobs: JobsEnv, tmp_path: Path) -> None:  # noqa: F811
    r = jobs.http.post("/v1/jobs", json={"kind": "train_rationalyst", "data": {"job": "job-nope"}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "data.job"
    r = jobs.http.post(
        "/v1/jobs",
        json={"kind": "train_rationalyst", "data": {"train": ["/x"]}, "learning_rate": 0},
    )
    assert r.status_code == 422 and "learning_rate" in r.json()["error"]["field"]
    # rows with no usable rationale: the job fails at once with the counts, without retries
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join(
            json.dumps({"preceding": "Question: 1 + 1 =", "rationale": " "}) for _ in range(3)
        )
    )
    jobs.start_worker()
    failed = jobs.submit({"kind": "train_rationalyst", "data": {"train": [str(bad)]}})
    status = jobs.wait(failed, timeout_s=300)
    assert status["state"] == "failed"
    assert "no usable training rows" in status["error"] and "no_rationale" in status["error"]
    assert not any(e["type"] == "attempt_failed" for e in status["errors"])
    missing = jobs.submit(
        {"kind": "train_rationalyst", "data": {"train": [str(tmp_path / "none.jsonl")]}}
    )
    status = jobs.wait(missing, timeout_s=120)
    assert status["state"] == "failed" and "none.jsonl" in status["error"]


def test_lora_training_exports_a_merged_model(model_path: Path, tmp_path: Path) -> None:
    """method=lora: peft adapters trained, merged on export into a plain model folder."""
    from transformers import AutoModelForCausalLM

    from services.worker.training import TrainPaths
    from services.worker.training.run import train
    from shared.files import write_json
    from shared.job_schemas import TrainRationalystSpec

    spec = TrainRationalystSpec.model_validate(
        {
            "kind": "train_rationalyst",
            "data": {"train": [str(RATIONALES)], "dev_fraction": 0.1},
            "method": "lora",
            "limit": 24,
            "max_steps": 2,
            "batch_size": 4,
            "max_length": 128,
            "learning_rate": 1e-3,
        }
    )
    paths = TrainPaths(tmp_path / "train")
    paths.root.mkdir()
    write_json(
        paths.request,
        {
            "spec": spec.model_dump(mode="json"),
            "train_files": [str(RATIONALES)],
            "dev_files": [],
            "data_roots": [str(RATIONALES.parent)],
            "base_model_path": str(model_path),
        },
    )
    assert train(paths) == 0
    result = json.loads(paths.result.read_text())
    assert result["metrics"]["steps"] == 2
    assert result["data"]["dev_held_out_from_train"] is True
    assert not list(paths.model.glob("adapter_*"))  # merged, not an adapter folder
    merged = AutoModelForCausalLM.from_pretrained(paths.model)
    base = AutoModelForCausalLM.from_pretrained(model_path)
    assert not any("lora" in name for name in merged.state_dict())
    changed = [
        name
        for name, tensor in merged.state_dict().items()
        if not (tensor == base.state_dict()[name]).all()
    ]
    assert changed  # the adapters' update is in the weights
    assert train(paths) == 0  # a finished run is not redone
