"""``rationalyst eval compare`` end to end: real model services and gateways as subprocesses,
real HTTP, the embedded model as base and a registered copy of it as the "trained" model.

Identical weights and greedy rationales must give identical runs: a difference of exactly 0.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.worker.evaluation.cli import app as eval_app
from shared.model_registry import ModelRegistry, RegisteredModel

pytestmark = pytest.mark.integration

TASK = "multistep_arithmetic_seen"
# Four model processes share the machine: one torch thread each (as in conftest.py).
SERVICE_ENV = {"MODEL_SERVER_THREADS": os.environ.get("MODEL_SERVER_THREADS", "1")}


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (the started services name their model)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry.name))
    return pids


def test_eval_compare_identical_models_differ_by_zero(model_path: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    copy = shutil.copytree(model_path, artifacts / "job-copy" / "model")
    ModelRegistry(artifacts).register(
        RegisteredModel(
            name="copy-rationalyst", path=str(copy), base_model=str(model_path), method="full"
        )
    )
    out = tmp_path / "compare"
    args = [
        "compare", "--trained", "copy-rationalyst", "--base", str(model_path),
        "--artifacts-dir", str(artifacts), "--tasks", TASK, "--n", "4", "--k", "3",
        "--shots", "1", "--concurrency", "1", "--seed", "0", "--out", str(out),
        "--ready-timeout", "300",
    ]  # fmt: skip
    result = CliRunner().invoke(eval_app, args, env=SERVICE_ENV)
    assert result.exit_code == 0, result.output
    assert "Δ trained−base" in result.output or "trained" in result.output

    for rel in ("compare.json", "compare.md", "logs"):
        assert (out / rel).exists(), rel
    for run in ("base", "trained"):
        for rel in ("results.jsonl", "summary.json", "report.md", "spec.json", "models.json"):
            assert (out / run / rel).is_file(), f"{run}/{rel}"

    data = json.loads((out / "compare.json").read_text())
    assert data["models"]["trained"]["source"] == "registry"
    assert data["models"]["trained"]["path"] == str(Path(copy).resolve())
    base_cells, trained_cells = data["runs"]["base"]["summary"], data["runs"]["trained"]["summary"]
    assert [c["n"] for c in base_cells] == [c["n"] for c in trained_cells] == [4]
    assert data["n"] == 4 and data["overall"]["unpaired"] == 0
    diff = data["difference"]
    assert diff["diff"] == 0.0
    assert diff["ci_low"] <= 0.0 <= diff["ci_high"]
    assert diff["trained_only"] == diff["base_only"] == 0

    # Same items, same greedy rationales, same choices.
    def records(run: str) -> dict[str, dict[str, object]]:
        lines = (out / run / "results.jsonl").read_text().splitlines()
        return {r["key"]: r for r in map(json.loads, lines)}

    base, trained = records("base"), records("trained")
    assert base.keys() == trained.keys() and len(base) == 4
    for key, b in base.items():
        t = trained[key]
        assert b["error"] is None and t["error"] is None
        assert b["rationale"] and b["rationale"] == t["rationale"]
        assert b["chosen"] == t["chosen"]

    report = (out / "compare.md").read_text()
    assert "no significant difference" in report
    assert not processes_mentioning(str(copy)), "the trained rationalyst service still runs"


def test_eval_compare_process_that_fails_to_start(tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # a folder, but no model transformers can load
    out = tmp_path / "compare"
    args = [
        "compare", "--trained", str(broken), "--base", str(broken), "--tasks", TASK,
        "--n", "2", "--k", "3", "--out", str(out), "--ready-timeout", "120",
    ]  # fmt: skip
    result = CliRunner().invoke(eval_app, args, env=SERVICE_ENV)
    assert result.exit_code == 1, result.output
    assert "failed to start" in result.output
    assert "failed to load" in result.output or "exited with code" in result.output
    assert (out / "logs" / "rationalyst-trained.log").is_file()
    assert not processes_mentioning(str(broken))
    assert not os.path.exists(out / "compare.json")
