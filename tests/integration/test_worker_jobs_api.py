"""The job API over real HTTP on a real Redis, with real worker processes (no model needed):
bad specs, unknown jobs, listing, cancel, Redis down, artifacts, bad input files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from shared.prompts import RATIONALYST_SYSTEM_PROMPT
from tests.integration.worker_fixtures import JobsEnv, jobs, jobs_env, redis_server  # noqa: F401

pytestmark = pytest.mark.integration


def triples_file(path: Path, n: int, *, bad_lines: int = 0) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            row = {"id": f"t{i}", "preceding": f"Before {i}.", "rationale": f"Why {i}.",
                   "following": f"After {i}.", "source": "test",
                   "split": "dev" if i == 0 else "train"}  # fmt: skip
            f.write(json.dumps(row) + "\n")
        for _ in range(bad_lines):
            f.write("{this is not json\n")
    return path


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "prefilter", "input": {"paths": ["/x"]}, "treshold": 0.3}, "prefilter.treshold"),
        ({"kind": "prefilter", "input": {"paths": ["/x"]}, "threshold": 3}, "prefilter.threshold"),
        ({"kind": "filter", "input": {"paths": ["/x"]}, "decay": 0}, "filter.decay"),
        ({"kind": "filter", "input": {"paths": []}}, "filter.input.paths"),
        ({"kind": "extract"}, "extract.input"),
        (
            {
                "kind": "rationale_pipeline",
                "input": {"paths": ["/x"]},
                "extract": {"max_tokens": 0},
            },
            "rationale_pipeline.extract.max_tokens",
        ),
        ({"kind": "translate", "input": {"paths": ["/x"]}}, "kind"),
        ({"input": {"paths": ["/x"]}}, "kind"),
    ],
)
def test_worker_api_bad_spec_is_422_naming_the_field(
    jobs: JobsEnv,  # noqa: F811
    body: dict[str, Any],
    field: str,
) -> None:
    r = jobs.http.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request"
    if field == "kind":  # the union's tag: the error sits on the body and names `kind`
        assert "'kind'" in err["message"], err
    else:
        assert err["field"] == field, err
        assert err["message"].startswith(field), err
    assert jobs.http.get("/v1/jobs").json()["jobs"] == []  # nothing was created


def test_worker_api_unknown_job_is_404(jobs: JobsEnv) -> None:  # noqa: F811
    for path in ("/v1/jobs/job-nope", "/v1/jobs/job-nope/artifacts", "/v1/jobs/..%2Fetc"):
        r = jobs.http.get(path)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["type"] == "not_found"
    assert jobs.http.post("/v1/jobs/job-nope/cancel").status_code == 404


def test_worker_api_lists_and_cancels_queued_jobs(jobs: JobsEnv, tmp_path: Path) -> None:  # noqa: F811
    spec = {"kind": "sft_data", "input": {"paths": [str(triples_file(tmp_path / "t.jsonl", 2))]}}
    first, second = jobs.submit(spec), jobs.submit({**spec, "name": "second"})
    listed = jobs.http.get("/v1/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [second, first]
    assert listed[0]["name"] == "second" and listed[0]["state"] == "queued"
    r = jobs.http.post(f"/v1/jobs/{first}/cancel")
    assert r.status_code == 200
    assert r.json()["state"] == "cancelled"
    assert jobs.http.post(f"/v1/jobs/{first}/cancel").json()["state"] == "cancelled"
    queued = jobs.http.get("/v1/jobs", params={"state": "queued"}).json()["jobs"]
    assert [j["id"] for j in queued] == [second]


def test_worker_api_redis_down_is_503(jobs: JobsEnv, tmp_path: Path) -> None:  # noqa: F811
    spec = {"kind": "sft_data", "input": {"paths": [str(tmp_path)]}}
    job_id = jobs.submit(spec)
    jobs.redis.stop()
    try:
        for method, path, body in (
            ("POST", "/v1/jobs", spec),
            ("GET", "/v1/jobs", None),
            ("GET", f"/v1/jobs/{job_id}", None),
            ("POST", f"/v1/jobs/{job_id}/cancel", None),
        ):
            start = time.monotonic()
            r = jobs.http.request(method, path, json=body)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["error"]["type"] == "service_unavailable"
            assert "Redis" in r.json()["error"]["message"]
            assert time.monotonic() - start < 15
    finally:
        jobs.redis.start()
    assert jobs.http.get("/v1/jobs").status_code == 200


def test_worker_missing_input_fails_at_once(jobs: JobsEnv, tmp_path: Path) -> None:  # noqa: F811
    jobs.start_worker()
    job_id = jobs.submit({"kind": "sft_data", "input": {"paths": [str(tmp_path / "nope.jsonl")]}})
    status = jobs.wait(job_id, timeout_s=120)
    assert status["state"] == "failed"
    assert "does not exist" in status["error"] and "nope.jsonl" in status["error"]
    assert status["stages"][0]["state"] == "failed"


def test_worker_sft_job_artifacts_and_bad_records(jobs: JobsEnv, tmp_path: Path) -> None:  # noqa: F811
    jobs.start_worker()
    path = triples_file(tmp_path / "t.jsonl", 9, bad_lines=2)
    job_id = jobs.submit({"kind": "sft_data", "input": {"paths": [str(path)]}, "shard_size": 4})
    status = jobs.wait(job_id, timeout_s=120)
    assert status["state"] == "succeeded", status
    stage = status["stages"][0]
    assert stage["progress"] == {"shards_done": 3, "shards_total": 3, "records_done": 11,
                                 "records_total": 11, "rollouts_done": None}  # fmt: skip
    c = stage["counts"]
    assert (c["records_in"], c["records_kept"], c["records_failed"]) == (11, 9, 2)
    assert status["errors_total"] == 2
    assert {e["type"] for e in status["errors"]} == {"parse_error"}
    assert status["timings"]["running_s"] > 0
    names = {a["name"] for a in jobs.http.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]}
    assert {"sft_data/train.jsonl", "sft_data/dev.jsonl", "sft_data/summary.json"} <= names
    assert "sft_data/shards/00000.output.jsonl" in names
    train = [
        json.loads(line) for line in jobs.artifact(job_id, "sft_data/train.jsonl").splitlines()
    ]
    dev = [json.loads(line) for line in jobs.artifact(job_id, "sft_data/dev.jsonl").splitlines()]
    assert len(train) == 8 and len(dev) == 1
    assert dev[0]["messages"] == [
        {"role": "system", "content": RATIONALYST_SYSTEM_PROMPT},  # what the role serves with
        {"role": "user", "content": "Before 0."},
        {"role": "assistant", "content": "Why 0."},
    ]
    for bad in (
        "../../../etc/passwd",
        "%2E%2E/%2E%2E/etc/passwd",
        "sft_data/../../x",
        "/etc/passwd",
    ):
        r = jobs.http.get(f"/v1/jobs/{job_id}/artifacts/{bad}")
        assert r.status_code == 404, (bad, r.status_code)


def test_worker_cli_submit_watch_list_fetch_cancel(jobs: JobsEnv, tmp_path: Path) -> None:  # noqa: F811
    from typer.testing import CliRunner

    from services.worker.cli import jobs_app

    jobs.start_worker()
    path = triples_file(tmp_path / "t.jsonl", 5)
    cli = CliRunner()
    url = ["--url", jobs.api_url]
    r = cli.invoke(
        jobs_app,
        ["submit", "--kind", "sft_data", "-i", str(path), "--set", "shard_size=2", "--watch", *url],
    )
    assert r.exit_code == 0, r.output
    job_id = r.stdout.splitlines()[0].strip()
    assert jobs.status(job_id)["state"] == "succeeded"
    r = cli.invoke(jobs_app, ["list", *url])
    assert r.exit_code == 0 and job_id in r.stdout
    r = cli.invoke(jobs_app, ["fetch", job_id, "--out", str(tmp_path / "out"), *url])
    assert r.exit_code == 0, r.output
    train = tmp_path / "out" / job_id / "sft_data" / "train.jsonl"
    assert len(train.read_text().splitlines()) == 4
    assert not (tmp_path / "out" / job_id / "sft_data" / "shards").exists()
    r = cli.invoke(jobs_app, ["cancel", job_id, *url])
    assert r.exit_code == 1 and "conflict" in r.output  # it has already succeeded
    r = cli.invoke(jobs_app, ["submit", "--kind", "sft_data", "--set", "limit=0", "-i", "x", *url])
    assert r.exit_code == 1 and "limit" in r.output


def test_worker_job_reads_an_uploaded_file_by_id(jobs: JobsEnv, tmp_path: Path) -> None:  # noqa: F811
    path = triples_file(tmp_path / "t.jsonl", 3)
    file_id = jobs.upload("triples.jsonl", path.read_bytes())
    assert jobs.http.get(f"/v1/files/{file_id}").json()["bytes"] == path.stat().st_size
    jobs.start_worker()
    job_id = jobs.submit({"kind": "sft_data", "input": {"file_id": file_id}})
    status = jobs.wait(job_id, timeout_s=120)
    assert status["state"] == "succeeded", status
    assert status["stages"][0]["counts"]["records_kept"] == 3
    train = jobs.artifact(job_id, "sft_data/train.jsonl").splitlines()
    assert len(train) == 2 and json.loads(train[0])["messages"][1]["content"] == "Before 1."
    # once deleted, a job naming it is refused at submit
    assert jobs.http.delete(f"/v1/files/{file_id}").status_code == 200
    r = jobs.http.post("/v1/jobs", json={"kind": "sft_data", "input": {"file_id": file_id}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "input.file_id"


def test_worker_api_refuses_inputs_outside_the_data_roots(jobs: JobsEnv, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "escape.jsonl").symlink_to("/etc/hostname")
    for paths in (["/etc/passwd"], ["../../etc/passwd"], [str(tmp_path / "escape.jsonl")],
                  ["/e*/passwd"]):  # fmt: skip
        r = jobs.http.post("/v1/jobs", json={"kind": "sft_data", "input": {"paths": paths}})
        assert r.status_code == 422, (paths, r.text)
        assert r.json()["error"]["field"] == "input.paths"
    assert jobs.http.get("/v1/jobs").json()["jobs"] == []


def test_worker_refuses_an_input_swapped_for_a_symlink_after_submit(
    jobs: JobsEnv,  # noqa: F811
    tmp_path: Path,
) -> None:
    path = triples_file(tmp_path / "t.jsonl", 2)
    job_id = jobs.submit({"kind": "sft_data", "input": {"paths": [str(path)]}})  # no worker yet
    path.unlink()
    path.symlink_to("/etc/hostname")
    jobs.start_worker()
    status = jobs.wait(job_id, timeout_s=120)
    assert status["state"] == "failed"
    assert "outside the data roots" in status["error"], status["error"]
