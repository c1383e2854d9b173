"""The comparison of two rationalysts (services.worker.evaluation.compare): the paired
difference statistic, model resolution, pairing of records, and the CLI's bad-input exits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.worker.evaluation.cli import app as eval_app
from services.worker.evaluation.compare import (
    CompareInputError,
    ModelNotFoundError,
    check_run_folders,
    paired_cells,
    resolve_model_folder,
    run_identities,
    selection_spec,
)
from services.worker.evaluation.runner import resolve_tasks
from services.worker.evaluation.selection import build_selection_plan
from services.worker.evaluation.spec import CompareSpec
from services.worker.evaluation.stats import mcnemar_exact_p, paired_difference
from shared.model_registry import ModelRegistry, RegisteredModel

pytestmark = pytest.mark.unit

TASK = "multistep_arithmetic_seen"


def width(base: list[bool], trained: list[bool]) -> float:
    d = paired_difference(base, trained)
    return d.ci_high - d.ci_low


# --------------------------------------------------------------------------------------------
# The statistic


def test_paired_difference_identical_runs_is_zero_with_ci_containing_zero() -> None:
    runs = [True, False, True, True, False, False, True, False] * 3
    d = paired_difference(runs, list(runs))
    assert d.n == 24
    assert d.diff == 0.0
    assert d.ci_low <= 0.0 <= d.ci_high
    assert d.trained_only == d.base_only == 0
    assert d.p_value == 1.0
    assert "paired bootstrap" in d.method


def test_paired_difference_trained_better_on_every_item_is_above_zero() -> None:
    d = paired_difference([False] * 20, [True] * 20)
    assert d.diff == 1.0
    assert d.ci_low > 0.0
    assert d.trained_only == 20 and d.base_only == 0
    assert d.p_value < 1e-5


def test_paired_difference_mostly_better_has_ci_above_zero() -> None:
    # 30 items: trained alone right on 12, base alone on 1, both right on 10, both wrong on 7.
    base = [False] * 12 + [True] + [True] * 10 + [False] * 7
    trained = [True] * 12 + [False] + [True] * 10 + [False] * 7
    d = paired_difference(base, trained)
    assert d.diff is not None and d.diff == pytest.approx(11 / 30)
    assert 0.0 < d.ci_low < d.diff < d.ci_high
    assert d.p_value < 0.01


def test_paired_difference_ci_is_wider_for_fewer_items() -> None:
    base = [True, False, True, False, True, False]
    trained = [True, True, False, False, True, True]
    few = width(base * 2, trained * 2)
    many = width(base * 20, trained * 20)
    assert few > many > 0
    assert (
        paired_difference(base * 2, trained * 2).diff
        == paired_difference(base * 20, trained * 20).diff
    )


def test_paired_difference_is_deterministic_for_a_seed() -> None:
    base = [True, False, False, True, False] * 4
    trained = [True, True, False, False, True] * 4
    assert paired_difference(base, trained, seed=3) == paired_difference(base, trained, seed=3)


def test_paired_difference_rejects_unpaired_inputs_and_handles_none() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([True, False], [True])
    empty = paired_difference([], [])
    assert empty.n == 0 and empty.diff is None and empty.ci_low <= 0 <= empty.ci_high


def test_mcnemar_exact_p_known_values() -> None:
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact_p(3, 3) == 1.0


# --------------------------------------------------------------------------------------------
# Model resolution


def model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def register(artifacts: Path, name: str, path: str) -> None:
    card = RegisteredModel(name=name, path=path, base_model="base", method="full", job_id="j1")
    ModelRegistry(artifacts).register(card)


def test_resolve_model_folder_path(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "m")
    resolved = resolve_model_folder(str(folder), artifacts_dir=tmp_path / "a")
    assert resolved.source == "folder" and resolved.path == folder.resolve()


def test_resolve_model_folder_registered_name(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    folder = model_folder(artifacts / "job-1" / "model")
    register(artifacts, "my-rationalyst", str(folder))
    register(artifacts, "relative-one", "job-1/model")
    resolved = resolve_model_folder("my-rationalyst", artifacts_dir=artifacts, cache=tmp_path)
    assert resolved.source == "registry" and resolved.path == folder.resolve()
    assert resolved.registered is not None and resolved.registered.job_id == "j1"
    relative = resolve_model_folder("relative-one", artifacts_dir=artifacts, cache=tmp_path)
    assert relative.path == folder.resolve()


def test_resolve_model_folder_cache_name(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "cache" / "some-model")
    resolved = resolve_model_folder(
        "some-model", artifacts_dir=tmp_path / "a", cache=tmp_path / "cache"
    )
    assert resolved.source == "cache" and resolved.path == folder.resolve()


def test_resolve_model_folder_unknown_name_lists_registered(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    register(artifacts, "known-one", str(model_folder(tmp_path / "m")))
    with pytest.raises(ModelNotFoundError, match=r"unknown model 'nope'.*known-one"):
        resolve_model_folder("nope", artifacts_dir=artifacts, cache=tmp_path / "cache")


def test_resolve_model_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a Hugging Face model folder"):
        resolve_model_folder(str(tmp_path / "not-a-model"), artifacts_dir=tmp_path)
    artifacts = tmp_path / "artifacts"
    register(artifacts, "gone", str(tmp_path / "deleted"))
    with pytest.raises(ModelNotFoundError, match="registered model 'gone' points at"):
        resolve_model_folder("gone", artifacts_dir=artifacts, cache=tmp_path / "cache")
    with pytest.raises(ModelNotFoundError, match="rationalyst models pull"):
        resolve_model_folder(
            "smollm2-135m-instruct", artifacts_dir=artifacts, cache=tmp_path / "cache"
        )


# --------------------------------------------------------------------------------------------
# Pairing and output folders


def test_paired_cells_leave_out_failed_and_fallback_items(tmp_path: Path) -> None:
    spec = CompareSpec(trained="t", tasks=[TASK], n=4, k=3, out_dir=tmp_path)
    base_model = resolve_model_folder(str(model_folder(tmp_path / "b")))
    plan = build_selection_plan(
        selection_spec(spec, "base", base_model, "http://x"), resolve_tasks(spec.tasks)
    )
    assert len(plan) == 4
    ok: dict[str, Any] = {"error": None, "fallbacks": 0, "heuristic_used": "rationalyst"}
    base = {j.key: {**ok, "correct": i % 2 == 0} for i, j in enumerate(plan)}
    trained = {j.key: {**ok, "correct": True} for j in plan}
    trained[plan[0].key] = {"error": "timeout: slow", "correct": False}
    trained[plan[1].key] = {**ok, "correct": True, "fallbacks": 1, "heuristic_used": "likelihood"}
    cells, overall = paired_cells(spec, plan, {"base": base, "trained": trained})
    assert [c.task for c in cells] == [TASK]
    assert overall.n == 2 and overall.unpaired == 2
    assert overall.base_correct == 1 and overall.trained_correct == 2
    assert overall.difference.diff == pytest.approx(0.5)


def test_check_run_folders_refuses_results_of_other_models(tmp_path: Path) -> None:
    spec = CompareSpec(trained="t", tasks=[TASK], out_dir=tmp_path / "out")
    models = {
        "base": resolve_model_folder(str(model_folder(tmp_path / "b"))),
        "trained": resolve_model_folder(str(model_folder(tmp_path / "t"))),
    }
    identities = run_identities(spec, models)
    check_run_folders(spec, identities)  # empty folder: fine
    (spec.out_dir / "trained").mkdir(parents=True)
    (spec.out_dir / "trained" / "models.json").write_text(json.dumps(identities["trained"]))
    check_run_folders(spec, identities)  # same models: resumes
    other = {**identities["trained"], "rationalyst": {"path": "/elsewhere", "weights": []}}
    (spec.out_dir / "trained" / "models.json").write_text(json.dumps(other))
    with pytest.raises(CompareInputError, match="other models"):
        check_run_folders(spec, identities)


def test_cli_compare_unknown_model_exits_2_before_starting(tmp_path: Path) -> None:
    base = model_folder(tmp_path / "base")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        eval_app,
        [
            "compare", "--trained", "no-such-model", "--base", str(base),
            "--artifacts-dir", str(tmp_path / "artifacts"), "--tasks", TASK, "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "unknown model 'no-such-model'" in result.output
    assert not (out / "logs").exists(), "no process was started"


def test_cli_compare_unknown_task_exits_2(tmp_path: Path) -> None:
    folder = str(model_folder(tmp_path / "m"))
    result = CliRunner().invoke(
        eval_app,
        ["compare", "--trained", folder, "--base", folder, "--tasks", "no_such_task",
         "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "out" / "logs").exists()
