"""Print the README's settings tables from the settings classes (one source for both).

.venv/bin/python scripts/settings_table.py > /tmp/settings.md
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from gateway.settings import GatewaySettings
from services.model_server.settings import ModelServerSettings
from services.worker.settings import WorkerSettings

SERVICES: list[tuple[str, type[BaseSettings]]] = [
    ("Model service", ModelServerSettings),
    ("Gateway", GatewaySettings),
    ("Worker", WorkerSettings),
]


def env_names(cls: type[BaseSettings]) -> list[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return [(prefix + name).upper() for name in cls.model_fields]


def table(cls: type[BaseSettings]) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in cls.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "" if default is None else f"`{getattr(default, 'value', default)}`"
        if isinstance(default, SecretStr):
            shown = "(secret)"
        shown = shown.replace(str(Path.home()), "~")
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{(prefix + name).upper()}` | {shown} | {description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    for title, cls in SERVICES:
        print(f"### {title}\n\n{table(cls)}\n")
