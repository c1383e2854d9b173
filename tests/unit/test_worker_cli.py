"""`rationalyst models list`: the table a user reads to compare trained models."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from services.cli import app
from services.worker.cli import eval_summary
from shared.model_registry import RegisteredModel


def card(name: str, kind: str, metrics: dict[str, float | None]) -> dict[str, Any]:
    """A registry card as GET /v1/registry/models gives it."""
    return RegisteredModel.model_validate({
        "name": name, "path": f"/artifacts/job-{name}/model",
        "base_model": "smollm2-135m-instruct", "kind": kind, "method": "full",
        "job_id": f"job-{name}", "data": {"train": {"kept": 8}},
        "metrics": {"steps": 3.0, **metrics},
    }).model_dump(mode="json")  # fmt: skip


def cells(line: str, bar: str) -> list[str]:
    """The cells of one line of a rich table (``bar``: its header's or its body's)."""
    return [c.strip() for c in line.strip().strip(bar).split(bar)]


def test_worker_eval_summary_names_each_kinds_metric_before_and_after() -> None:
    lm = {"eval_loss_before": 1.3104, "eval_loss": 0.7702}
    assert eval_summary("rationalyst", lm) == "loss 1.310 → 0.770"
    assert eval_summary("tripost", {"eval_loss": 0.5}) == "loss 0.500"
    orm = {"solution_auroc_before": 0.625, "solution_auroc_after": 0.75,
           "solution_accuracy_before": 0.5, "solution_accuracy_after": 0.5}  # fmt: skip
    assert eval_summary("orm", orm) == "auroc 0.625 → 0.750"
    # held-out steps of one class: no AUROC, so the accuracy
    prm = {"step_auroc_before": None, "step_auroc_after": None,
           "step_accuracy_before": 0.25, "step_accuracy_after": 1.0}  # fmt: skip
    assert eval_summary("prm", prm) == "accuracy 0.250 → 1.000"
    # no held-out rows: nothing to show, and a reward model's card has no eval loss
    assert eval_summary("orm", {"solution_auroc_after": None}) == "-"
    assert eval_summary("prm", lm) == "-"
    assert eval_summary("rationalyst", {}) == "-"


def test_worker_models_list_shows_kind_and_eval_of_every_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models = [
        card("lm", "rationalyst", {"eval_loss_before": 1.31, "eval_loss": 0.77}),
        card("ci-orm", "orm", {"solution_auroc_before": 0.5, "solution_auroc_after": 0.75}),
        card("ci-prm", "prm", {}),
    ]
    calls: list[tuple[str, str]] = []

    def fake_call(gateway: str, api_key: str | None, method: str, path: str) -> httpx.Response:
        calls.append((method, path))
        return httpx.Response(200, json={"models": models})

    monkeypatch.setattr("services.worker.cli._call", fake_call)
    monkeypatch.setenv("COLUMNS", "250")  # rich folds cells to the terminal's width
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    assert calls == [("GET", "/v1/registry/models")]
    lines = result.output.splitlines()
    header = next(cells(line, "┃") for line in lines if line.startswith("┃"))
    assert header == ["name", "kind", "base", "method", "rows", "steps", "eval", "job", "path"]
    table = {
        row[0]: dict(zip(header, row, strict=True))
        for row in (cells(line, "│") for line in lines if line.startswith("│"))
    }
    assert list(table) == ["lm", "ci-orm", "ci-prm"]
    assert table["lm"]["kind"] == "rationalyst" and table["lm"]["eval"] == "loss 1.310 → 0.770"
    assert table["ci-orm"]["kind"] == "orm" and table["ci-orm"]["eval"] == "auroc 0.500 → 0.750"
    assert table["ci-prm"]["kind"] == "prm" and table["ci-prm"]["eval"] == "-"
    assert table["ci-orm"]["steps"] == "3" and table["ci-orm"]["job"] == "job-ci-orm"
