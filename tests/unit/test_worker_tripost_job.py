"""The ``tripost`` job: its stages and each one's options, the evaluation's questions, the
``tripost_eval`` stage on a fake model (first attempt vs final answer, reports, the job's
result), and repeated stages told apart in the job's status."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from gateway.testing import FakeModelService
from services.worker.artifacts import StagePaths, read_json
from services.worker.inputs import RawRecord
from services.worker.runner import JobRunner
from services.worker.settings import WorkerSettings
from services.worker.stages import build_stage
from services.worker.stages.base import StageContext
from services.worker.stages.tripost import task_items
from services.worker.stages.tripost_eval import eval_items
from shared.job_schemas import (
    InputSpec,
    JobKind,
    JobSpec,
    TrainTripostSpec,
    TripostCollectSpec,
    TripostEvalSpec,
    TripostSpec,
    job_stages,
    seen_and_unseen,
)
from shared.jobs_store import JobStore
from shared.tasks import get_task
from shared.tasks.base import TaskItem

pytestmark = pytest.mark.unit

ADAPTER: TypeAdapter[Any] = TypeAdapter(JobSpec)


def tripost(**fields: Any) -> TripostSpec:
    spec = ADAPTER.validate_python({"kind": "tripost", "task": "multistep_arithmetic", **fields})
    assert isinstance(spec, TripostSpec)
    return spec


def test_tripost_job_runs_base_gold_then_collect_train_eval_per_iteration() -> None:
    spec = tripost(iterations=2, items=8, seed=4)
    folders = [s.folder for s in job_stages(spec)]
    assert folders == [
        "tripost_eval-base", "train_tripost-gold", "tripost_eval-gold",
        "tripost_collect-1", "train_tripost-1", "tripost_eval-1",
        "tripost_collect-2", "train_tripost-2", "tripost_eval-2",
    ]  # fmt: skip
    assert [s.folder for s in job_stages(tripost(gold_sft=False, eval_base=False))] == [
        "tripost_collect-1", "train_tripost-1", "tripost_eval-1",
        "tripost_collect-2", "train_tripost-2", "tripost_eval-2",
        "tripost_collect-3", "train_tripost-3", "tripost_eval-3",
    ]  # fmt: skip
    stages = {s.folder: s for s in job_stages(spec)}
    opts = {f: build_stage(spec, s, "job-x").options for f, s in stages.items()}
    base, gold = opts["tripost_eval-base"], opts["train_tripost-gold"]
    assert isinstance(base, TripostEvalSpec) and base.model == "smollm2-135m-instruct"
    assert base.tasks == ["multistep_arithmetic_seen", "multistep_arithmetic_unseen"]
    assert base.seed == 5 and base.max_rounds == 10 and base.feedback == "self"
    assert isinstance(gold, TrainTripostSpec)
    assert (gold.base_model, gold.model_name) == ("smollm2-135m-instruct", "tripost-job-x-gold")
    assert gold.data.job == "job-x" and gold.data.path == "train_tripost-gold/gold.jsonl"
    assert gold.feedback_weight == 1.5 and gold.resolved()["max_length"] == 1024
    collect2 = opts["tripost_collect-2"]
    assert isinstance(collect2, TripostCollectSpec)
    assert collect2.model == "tripost-job-x-it1" and collect2.items == 8
    # every iteration collects on the same training questions, with fresh attempts
    collect1 = opts["tripost_collect-1"]
    assert isinstance(collect1, TripostCollectSpec)
    assert collect1.seed == collect2.seed == 4
    assert (collect1.attempt_seed(), collect2.attempt_seed()) == (5, 6)
    assert task_items(collect1) == task_items(collect2) == task_items(spec)
    train2 = opts["train_tripost-2"]
    assert isinstance(train2, TrainTripostSpec)
    assert train2.base_model == "tripost-job-x-it1" and train2.model_name == "tripost-job-x-it2"
    assert train2.data.path == "tripost_collect-2/output.jsonl"
    assert opts["tripost_eval-2"].model == "tripost-job-x-it2"  # type: ignore[attr-defined]
    named = tripost(model_name="mine", train={"max_steps": 3, "feedback_weight": 2.0})
    train = build_stage(named, job_stages(named)[1], "job-y").options
    assert isinstance(train, TrainTripostSpec)
    assert (train.model_name, train.max_steps, train.feedback_weight) == ("mine-gold", 3, 2.0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"iterations": 6}, "iterations"),
        ({"task": "date_understanding", "collect": {"improver": "scripted"}}, "collect.improver"),
        ({"model_name": "x" * 57}, "model_name"),
        ({"train": {"feedback_weight": -1}}, "feedback_weight"),
        ({"eval": {"max_rounds": 11}}, "max_rounds"),
        ({"collect": {"bogus": 1}}, "bogus"),
    ],
)
def test_tripost_spec_errors_name_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        tripost(**fields)
    assert message in str(info.value)


def test_tripost_seen_and_unseen_buckets_of_a_task() -> None:
    assert seen_and_unseen("word_sorting") == ["word_sorting_seen", "word_sorting_unseen"]
    assert seen_and_unseen("multistep_arithmetic_unseen")[0] == "multistep_arithmetic_seen"
    assert seen_and_unseen("date_understanding") == ["date_understanding"]


def test_tripost_eval_questions_are_never_training_questions() -> None:
    spec = tripost(items=30, seed=0, eval={"items": 6, "seed": 0})  # same seed on purpose
    opts = build_stage(spec, job_stages(spec)[0], "job-x").options
    assert isinstance(opts, TripostEvalSpec)
    train = {i.question for i in task_items(spec)}
    items = eval_items(opts, train)
    assert [i.task for i in items] == ["multistep_arithmetic_seen"] * 6 + [
        "multistep_arithmetic_unseen"
    ] * 6
    assert not {i.question for i in items} & train
    assert len(eval_items(opts)) == 12


# -- the tripost_eval stage on a fake model ---------------------------------------------------


def _question(prompt: str) -> str:
    return re.findall(r"^Q: (.*)$", prompt, re.MULTILINE)[-1]


class FakeLocalModels:
    def __init__(self, client: FakeModelService) -> None:
        self.client = client
        self.served: list[str] = []

    @contextlib.asynccontextmanager
    async def serve(self, model: str) -> AsyncIterator[FakeModelService]:
        self.served.append(model)
        yield self.client


def fake_model(items: list[TaskItem]) -> FakeModelService:
    """Right at once on the seen questions; on the unseen ones a wrong attempt whose own
    feedback finds the error and whose update is the gold rationale, but only for the
    first unseen question (the second stays wrong, its feedback says correct)."""
    by_question = {i.question: i for i in items}
    unseen = [i for i in items if i.task.endswith("unseen")]

    def gold(item: TaskItem) -> str:
        return "\n".join(item.rationale or [])

    def complete(req: Any) -> str:
        prompt = str(req.prompt)
        item = by_question[_question(prompt)]
        if item.task.endswith("_seen"):
            return f" {gold(item)}\nFeedback: The final response is also correct."
        lines = gold(item).splitlines()
        wrong = "\n".join([*lines[:-1], "(Final response) So the answer is 123456."])
        if prompt.endswith("Answer:"):
            if item is unseen[0]:
                return (
                    f' {wrong}\nFeedback: In step (Final response) the part "123456" is '
                    f"incorrect. This is because it is not the result.\nUpdated Answer: "
                    f"{gold(item)}"
                )
            return f" {wrong}\nFeedback: The final response is also correct."
        return " The final response is also correct."

    return FakeModelService("local", completion_text=complete)


async def test_tripost_eval_stage_scores_first_attempt_and_final_answer(tmp_path: Path) -> None:
    artifacts = tmp_path / "art"
    model = artifacts / "model"  # a folder a job may load: inside the data roots
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    spec = tripost(items=4, eval={"items": 2})
    stages = job_stages(spec)
    stage = build_stage(spec, stages[0], "job-t")
    opts = stage.options
    assert isinstance(opts, TripostEvalSpec)
    stage.options = opts.model_copy(update={"model": str(model)})
    planned = stage.planned_input(artifacts, "job-t")
    assert planned is not None and planned.paths is not None
    lines = Path(planned.paths[0]).read_text().splitlines()  # noqa: ASYNC240
    items = [TaskItem.model_validate(json.loads(line)) for line in lines]
    local = FakeLocalModels(fake_model(items))
    rt = SimpleNamespace(
        settings=WorkerSettings(artifacts_dir=artifacts, request_concurrency=2),
        local_models=local,
    )
    extras = await stage.prepare(rt)
    assert extras["few_shot"] == 2  # not a model trained on TriPosT's format
    folder = artifacts / "job-t" / stages[0].folder

    async def check() -> None:
        return None

    ctx = StageContext(
        job_id="job-t", stage_index=0, shard=0, runtime=rt,  # type: ignore[arg-type]
        input=InputSpec(paths=["x"], id_field="id"), extras=extras, check_active=check,
        folder=folder,
    )  # fmt: skip
    records = [RawRecord(i, item.model_dump(), None) for i, item in enumerate(items)]
    result = await stage.process(records, ctx)
    assert local.served == [str(model)]
    rows = {r["id"] + r["task"]: r for r in result.streams["output"]}
    assert len(rows) == 4
    seen = [r for r in rows.values() if r["task"].endswith("_seen")]
    assert all(r["first_correct"] and r["correct"] and r["rounds"] == 1 for r in seen)
    fixed, stuck = sorted(
        (r for r in rows.values() if r["task"].endswith("unseen")), key=lambda r: -r["rounds"]
    )
    assert (fixed["first_correct"], fixed["correct"], fixed["rounds"]) == (False, True, 2)
    assert fixed["trace"][0]["step"] == "Final response" and fixed["trace"][1]["correct"]
    assert (stuck["first_correct"], stuck["correct"], stuck["said_correct"]) == (False, False, True)
    paths = StagePaths(folder)
    paths.shards.mkdir(parents=True)
    JobRunner._write_shard(paths, 0, stage.streams, result, {"counts": dict(result.counts)})
    out = stage.finish(paths, 1, [read_json(paths.shard_done(0))])
    head = out["result"]
    assert head["label"] == "base" and head["iteration"] == 0
    unseen = head["tasks"]["multistep_arithmetic_unseen"]
    assert (unseen["n"], unseen["first_accuracy"], unseen["accuracy"]) == (2, 0.0, 0.5)
    assert head["tasks"]["multistep_arithmetic_seen"]["accuracy"] == 1.0
    job = out["job_result"]
    assert job["evaluated"] == ["base"] and job["accuracy"] == [head]
    report = (artifacts / "job-t" / "report.md").read_text()
    assert "| multistep_arithmetic_unseen | `base` | 2 | 0.0% |" in report
    assert (artifacts / "job-t" / "result.json").is_file()
    assert (folder / "report.md").is_file()


async def test_job_status_tells_repeated_stages_apart_and_shows_results() -> None:
    spec = tripost(iterations=1, eval_base=False)
    raw = {
        "id": "job-s", "kind": "tripost", "spec": spec.model_dump_json(), "state": "running",
        "created_at": "1.0", "stage_index": "2",
        "s2:result": json.dumps({"label": "gold"}), "result": json.dumps({"evaluated": ["gold"]}),
    }  # fmt: skip
    store = JobStore.__new__(JobStore)
    store.artifacts_dir = Path("/nonexistent")
    status = store._status(raw, [], {})
    assert [s.label for s in status.stages] == [
        "train_tripost-gold", "tripost_eval-gold", "tripost_collect-1", "train_tripost-1",
        "tripost_eval-1",
    ]  # fmt: skip
    assert status.stage is JobKind.tripost_collect
    assert status.stages[2].name.value == "tripost_collect"
    assert status.stages[1].result is None and status.result == {"evaluated": ["gold"]}
    assert status.stages[2].result == {"label": "gold"}
    assert get_task("multistep_arithmetic").name == "multistep_arithmetic_seen"


def test_train_tripost_reads_a_collection_jobs_samples(tmp_path: Path) -> None:
    from services.worker.inputs import InputError
    from services.worker.stages.train import training_input

    def submitted(job_id: str, spec: dict[str, Any], samples: str) -> None:
        folder = tmp_path / job_id
        folder.mkdir()
        (folder / "job.json").write_text(json.dumps({"id": job_id, "spec": json.dumps(spec)}))
        (folder / samples).parent.mkdir(parents=True)
        (folder / samples).write_text("{}\n")

    def train(**data: Any) -> TrainTripostSpec:
        spec = ADAPTER.validate_python({"kind": "train_tripost", "data": data})
        assert isinstance(spec, TrainTripostSpec)
        return spec

    collect = {"kind": "tripost_collect", "task": "word_sorting"}
    submitted("job-c", collect, "tripost_collect/output.jsonl")
    submitted("job-t", {"kind": "tripost", "task": "word_sorting", "iterations": 2},
              "tripost_collect-2/output.jsonl")  # fmt: skip
    second = "tripost_collect-2/output.jsonl"
    for data, rows in (
        ({"job": "job-c"}, "job-c/tripost_collect/output.jsonl"),
        ({"job": "job-t"}, f"job-t/{second}"),
        ({"job": "job-t", "path": second}, f"job-t/{second}"),
    ):
        assert training_input(train(**data), tmp_path).paths == [str(tmp_path / rows)]
    with pytest.raises(InputError, match="no training rows"):
        training_input(train(job="job-t", path="tripost_collect-1/output.jsonl"), tmp_path)
    with pytest.raises(ValidationError, match=r"data\.path goes with data\.job"):
        train(train=["a.jsonl"], path="x/y.jsonl")


def test_tripost_job_names_already_registered_are_refused_at_submit(tmp_path: Path) -> None:
    from shared.errors import InvalidRequest
    from shared.model_registry import ModelRegistry, RegisteredModel

    ModelRegistry(tmp_path).register(
        RegisteredModel(name="mine-it2", path="/m", base_model="b", method="full", job_id="job-old")
    )
    store = JobStore.__new__(JobStore)
    store.artifacts_dir = tmp_path
    store.check_tripost_names(tripost(model_name="mine", iterations=1), "job-new")
    with pytest.raises(InvalidRequest, match="mine-it2") as info:
        store.check_tripost_names(tripost(model_name="mine", iterations=2), "job-new")
    assert info.value.field == "model_name"


def test_the_largest_tripost_job_has_stages_the_worker_accepts() -> None:
    from services.worker.tasks import StageArgs

    stages = job_stages(tripost(iterations=5))
    assert len(stages) == 18
    assert StageArgs(job_id="job-x", stage=len(stages) - 1).stage == 17


async def test_tripost_collect_attempts_with_a_trained_model_without_examples(
    tmp_path: Path,
) -> None:
    from shared.model_registry import ModelRegistry, RegisteredModel

    artifacts = tmp_path / "art"
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    ModelRegistry(artifacts).register(
        RegisteredModel(name="tm", path=str(folder), base_model="b", kind="tripost", method="full")
    )
    spec = ADAPTER.validate_python(
        {"kind": "tripost_collect", "task": "multistep_arithmetic_seen", "items": 2,
         "model": "tm", "max_rounds": 2}
    )  # fmt: skip
    stage = build_stage(spec, JobKind.tripost_collect)
    items = task_items(spec)
    by_question = {i.question: i for i in items}
    prompts: list[str] = []

    def complete(req: Any) -> str:
        prompts.append(str(req.prompt))
        item = by_question[_question(str(req.prompt))]
        gold = "\n".join(item.rationale or [])
        return f" {gold}\nFeedback: The final response is also correct."

    local = FakeLocalModels(FakeModelService("local", completion_text=complete))
    rt = SimpleNamespace(
        settings=WorkerSettings(artifacts_dir=artifacts, request_concurrency=2),
        local_models=local,
    )
    extras = await stage.prepare(rt)
    assert extras["demos"] == [] and extras["model_path"] == str(folder)
    asked = build_stage(spec.model_copy(update={"few_shot": 2}), JobKind.tripost_collect)
    assert len((await asked.prepare(rt))["demos"]) == 2  # a number applies to every model

    async def check() -> None:
        return None

    ctx = StageContext(
        job_id="job-c", stage_index=0, shard=0, runtime=rt,  # type: ignore[arg-type]
        input=InputSpec(paths=["x"], id_field="id"), extras=extras, check_active=check,
    )  # fmt: skip
    records = [RawRecord(i, item.model_dump(), None) for i, item in enumerate(items)]
    result = await stage.process(records, ctx)
    assert local.served == [str(folder)]
    assert all(p.startswith("Q: ") and p.endswith("\nAnswer:") for p in prompts)  # zero-shot
    kinds = sorted(r["kind"] for r in result.streams["output"])
    assert kinds == ["gold", "gold", "non_improvement", "non_improvement"]
