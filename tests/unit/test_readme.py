"""The README documents every setting of every service, as the settings classes define it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _settings_table_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "settings_table", ROOT / "scripts" / "settings_table.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_settings_tables_match_the_settings_classes() -> None:
    module = _settings_table_module()
    readme = (ROOT / "README.md").read_text()
    for _, cls in module.SERVICES:
        assert module.table(cls) in readme, (
            f"README's {cls.__name__} table is stale: "
            "run `.venv/bin/python scripts/settings_table.py` and paste its output"
        )


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme
    assert "exec make test" in ci
