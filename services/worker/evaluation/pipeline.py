"""From a corpus to a compared model in one command (``rationalyst pipeline``).

Against a running ensemble (``rationalyst up``: gateway, model services, worker, Redis):

1. a ``rationale_pipeline`` job on the corpus: prefilter -> extract (``auto`` by default: the
   embedded model gets ``boundary``) -> filter -> sft_data;
2. a ``train_rationalyst`` job on that job's rows (rows that open with the rationalyst role's
   serving prompt), registered under a name;
3. ``eval compare`` of the trained model against its base model on held-out step-selection
   items, reusing the ensemble's agent and scorer.

Each step's job id and numbers go to ``<out>/pipeline.json`` as soon as they are known, so a
rerun with the same ``--out`` reuses the jobs that succeeded (and the comparison resumes).
The counts at each stage (documents, boundaries asked, triples, kept, rows) and per-stage wall
times come from the job status the gateway serves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from services.worker.evaluation.common import write_json_atomic

PIPELINE_JSON = "pipeline.json"
TERMINAL = ("succeeded", "failed", "cancelled")

StatusHook = Callable[[str, dict[str, Any]], None]
"""Told ``(step, job status)`` after each poll of a job."""


class PipelineError(RuntimeError):
    """A job of the pipeline did not succeed (the message says which and why)."""


@dataclass
class PipelineSpec:
    """What ``rationalyst pipeline`` runs; see the command's options."""

    inputs: list[str]
    out_dir: Path
    gateway: str = "http://127.0.0.1:8100"
    api_key: str | None = None
    limit: int | None = None
    shard_size: int | None = None
    extract: dict[str, Any] = field(default_factory=lambda: {"mode": "auto"})
    filter: dict[str, Any] = field(default_factory=dict)
    model_name: str | None = None
    train: dict[str, Any] = field(default_factory=lambda: {"max_steps": 40})
    compare_tasks: list[str] = field(default_factory=lambda: ["multistep_arithmetic_seen"])
    compare_n: int = 50
    compare_k: int = 4
    seed: int = 0
    agent_url: str = "http://127.0.0.1:8102"
    scorer_url: str = "http://127.0.0.1:8103"
    base_model: str = "smollm2-135m-instruct"
    poll_s: float = 2.0

    def data_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "kind": "rationale_pipeline",
            "name": "pipeline: corpus to rationale rows",
            "input": {"paths": [str(Path(p).expanduser().absolute()) for p in self.inputs]},
            "extract": self.extract,
            "filter": self.filter,
        }
        if self.limit is not None:
            spec["limit"] = self.limit
        if self.shard_size is not None:
            spec["shard_size"] = self.shard_size
        return spec

    def train_spec(self, data_job: str) -> dict[str, Any]:
        spec = {
            "kind": "train_rationalyst",
            "name": "pipeline: rationalyst on the pipeline's rows",
            "data": {"job": data_job},
            "base_model": self.base_model,
            "seed": self.seed,
            **self.train,
        }
        if self.model_name:
            spec["model_name"] = self.model_name
        return spec


class JobsClient:
    """The gateway's job and registry API, synchronously."""

    def __init__(self, gateway: str, api_key: str | None, *, timeout_s: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=gateway.rstrip("/"), headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                message = f"{err['type']}: {err['message']}"
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise PipelineError(f"{method} {path}: HTTP {response.status_code} {message}")
        data: dict[str, Any] = response.json()
        return data

    def submit(self, spec: dict[str, Any]) -> str:
        return str(self._json("POST", "/v1/jobs", json=spec)["id"])

    def status(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def wait(
        self, step: str, job_id: str, *, poll_s: float, on_status: StatusHook | None
    ) -> dict[str, Any]:
        """Poll until the job ends; PipelineError unless it succeeded."""
        while True:
            status = self.status(job_id)
            if on_status is not None:
                on_status(step, status)
            if status["state"] in TERMINAL:
                break
            time.sleep(poll_s)
        if status["state"] != "succeeded":
            why = status.get("error") or status["state"]
            raise PipelineError(f"{step} job {job_id} {status['state']}: {why}")
        return status

    def model(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/registry/models/{name}")


def _stage(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in status["stages"] if s["name"] == name)


def stage_table(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Per stage of a job: records in / kept / dropped / failed / out, wall time and rate."""
    rows = []
    for st in status["stages"]:
        c = st["counts"]
        wall = None
        if st.get("started_at") and st.get("finished_at"):
            wall = float(st["finished_at"]) - float(st["started_at"])
        rows.append(
            {
                "stage": st["name"],
                "in": c["records_in"],
                "kept": c["records_kept"],
                "dropped": c["records_dropped"],
                "failed": c["records_failed"],
                "out": c["records_out"],
                "wall_s": wall,
                "per_min": (60.0 * c["records_in"] / wall) if wall else None,
                "busy_s": st.get("busy_s"),
                "report": st.get("report") or {},
            }
        )
    return rows


def data_counts(status: dict[str, Any]) -> dict[str, Any]:
    """The counts a reader of the pipeline wants, from a rationale_pipeline job's status:
    documents in and kept by the prefilter, the extraction mode, boundaries asked, triples,
    rationales dropped by reason, triples kept by the filter, SFT rows."""
    prefilter, extract = _stage(status, "prefilter"), _stage(status, "extract")
    filt, sft = _stage(status, "filter"), _stage(status, "sft_data")
    report = extract.get("report") or {}
    boundary = report.get("boundary") or {}
    splits = (sft.get("report") or {}).get("splits") or (filt.get("report") or {}).get("splits")
    return {
        "documents": prefilter["counts"]["records_in"],
        "documents_prefiltered": prefilter["counts"]["records_kept"],
        "extract_mode": report.get("mode"),
        "extract_mode_requested": report.get("mode_requested"),
        "probe": report.get("probe"),
        "documents_with_triples": extract["counts"]["records_kept"],
        "boundaries": boundary.get("boundaries"),
        "boundaries_asked": boundary.get("boundaries_asked"),
        "boundaries_skipped": boundary.get("boundaries_skipped"),
        "rationales_dropped": boundary.get("rationales_dropped"),
        "triples": extract["counts"]["records_out"],
        "kept": filt["counts"]["records_kept"],
        "rows": sft["counts"]["records_kept"],
        "rows_by_split": splits,
        "extract_drop_reasons": report.get("drop_reasons"),
        "warnings": report.get("warnings", []),
        "filter_diff": (filt.get("report") or {}).get("diff"),
    }


@dataclass
class PipelineResult:
    state: dict[str, Any]
    """What ``pipeline.json`` holds."""
    compare: Any = None
    """The :class:`~services.worker.evaluation.compare.CompareResult`, when it ran."""


def run_pipeline(
    spec: PipelineSpec,
    *,
    on_status: StatusHook | None = None,
    on_step: Callable[[str, dict[str, Any]], None] | None = None,
    compare_progress: Any = None,
    compare_status: Any = None,
) -> PipelineResult:
    """Run the three steps (see the module docstring). ``on_step(name, state)`` is told after
    each step; the comparison's own hooks are passed through."""
    from services.worker.evaluation.compare import run_compare
    from services.worker.evaluation.spec import CompareSpec

    spec.out_dir.mkdir(parents=True, exist_ok=True)
    path = spec.out_dir / PIPELINE_JSON
    state: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def save() -> None:
        write_json_atomic(path, state)

    client = JobsClient(spec.gateway, spec.api_key)
    try:
        # 1. corpus -> rows
        data = state.get("data", {})
        job_id = data.get("job")
        if job_id is None or client.status(job_id)["state"] != "succeeded":
            job_id = client.submit(spec.data_spec())
            state["data"] = {"job": job_id, "spec": spec.data_spec()}
            save()
        status = client.wait("rationale_pipeline", job_id, poll_s=spec.poll_s, on_status=on_status)
        state["data"].update(counts=data_counts(status), stages=stage_table(status))
        state["data"]["running_s"] = status["timings"]["running_s"]
        save()
        if on_step is not None:
            on_step("data", state)
        if not state["data"]["counts"]["rows"]:
            raise PipelineError(
                f"rationale_pipeline job {job_id} produced no training rows "
                f"(counts: {state['data']['counts']})"
            )

        # 2. rows -> trained model
        train = state.get("train", {})
        train_id = train.get("job")
        if train_id is None or client.status(train_id)["state"] != "succeeded":
            train_id = client.submit(spec.train_spec(job_id))
            state["train"] = {"job": train_id, "spec": spec.train_spec(job_id)}
            save()
        status = client.wait("train_rationalyst", train_id, poll_s=spec.poll_s,
                             on_status=on_status)  # fmt: skip
        name = spec.model_name or f"rationalyst-{train_id}"
        card = client.model(name)
        state["train"].update(
            model=name,
            path=card["path"],
            metrics=card.get("metrics", {}),
            data=card.get("data", {}),
            running_s=status["timings"]["running_s"],
        )
        save()
        if on_step is not None:
            on_step("train", state)

        # 3. trained vs base
        compare_spec = CompareSpec(
            trained=card["path"],
            base=spec.base_model,
            tasks=spec.compare_tasks,
            n=spec.compare_n,
            k=spec.compare_k,
            seed=spec.seed,
            out_dir=spec.out_dir / "compare",
            agent_url=spec.agent_url,
            scorer_url=spec.scorer_url,
        )
        started = time.monotonic()
        result = run_compare(compare_spec, progress=compare_progress, on_status=compare_status)
        overall = result.overall
        state["compare"] = {
            "out_dir": str(compare_spec.out_dir),
            "tasks": spec.compare_tasks,
            "n": overall.n,
            "k": spec.compare_k,
            "base_accuracy": overall.base_accuracy,
            "base_ci": [overall.base_ci_low, overall.base_ci_high],
            "trained_accuracy": overall.trained_accuracy,
            "trained_ci": [overall.trained_ci_low, overall.trained_ci_high],
            "difference": overall.difference.diff,
            "difference_ci": [overall.difference.ci_low, overall.difference.ci_high],
            "trained_only": overall.difference.trained_only,
            "base_only": overall.difference.base_only,
            "mcnemar_p": overall.difference.p_value,
            "unpaired": overall.unpaired,
            "errors": result.errors,
            "wall_s": time.monotonic() - started,
        }
        save()
        if on_step is not None:
            on_step("compare", state)
        return PipelineResult(state, result)
    finally:
        client.close()
