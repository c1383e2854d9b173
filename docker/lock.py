"""Regenerate the images' pip constraints (docker/constraints/*.txt) from pyproject.toml.

    .venv/bin/python docker/lock.py            # all three
    .venv/bin/python docker/lock.py cpu        # one

Each image installs with ``uv pip install --constraint docker/constraints/<set>.txt``, so a
build resolves to exactly these versions whatever PyPI serves that day. Run this after
changing dependencies in pyproject.toml; tests/unit/test_deploy_images.py fails while a direct
dependency of an image is missing from its constraints or pinned outside pyproject's range.
Needs uv (in .venv) and PyPI; the CPU set also needs the CPU build of torch, found in
/opt/wheels where it exists, else on PyTorch's CPU index.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docker" / "constraints"
UV = Path(sys.executable).parent / "uv"

# Pins that are not in pyproject.toml: the engine and torch builds of each image family, pip
# (`rationalyst models pull` runs `pip download`) and hatchling (builds the project's wheel).
TORCH_CPU = "torch==2.13.0+cpu"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
VLLM = "vllm==0.32.0"


def job_api_requirements() -> tuple[str, ...]:
    """arq and redis as the worker extra names them: the gateway's job API needs only these two
    of the worker's dependencies (gateway/jobs.py -> shared/jobs_store.py)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    worker = project.get("optional-dependencies", {}).get("worker", [])
    found = tuple(r for r in worker if re.match(r"(arq|redis)\b", r))
    return found or ("arq", "redis")


@dataclass(frozen=True)
class LockSet:
    name: str
    python: str
    extras: tuple[str, ...]
    extra_requirements: tuple[str, ...]
    comment: str


SETS = {
    "gateway": LockSet(
        "gateway",
        "3.11",
        (),
        ("hatchling", *job_api_requirements()),
        "docker/gateway.Dockerfile (base dependencies and the job API's arq and redis, no torch)",
    ),
    "cpu": LockSet(
        "cpu",
        "3.11",
        ("model", "worker", "train", "eval"),
        (TORCH_CPU, "pip", "hatchling"),
        "docker/model-server.Dockerfile and docker/worker.Dockerfile (torch CPU build)",
    ),
    "gpu": LockSet(
        "gpu",
        "3.12",
        ("model", "worker", "train", "eval"),
        (VLLM, "pip", "hatchling"),
        "docker/model-server-gpu.Dockerfile and docker/worker-gpu.Dockerfile (CUDA torch, vLLM)",
    ),
}


def existing_extras(wanted: tuple[str, ...]) -> list[str]:
    """The extras of ``wanted`` that pyproject.toml defines (others are being added)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    defined = project.get("optional-dependencies", {})
    missing = [e for e in wanted if e not in defined]
    if missing:
        print(f"note: pyproject.toml has no extra {missing}; locking without it", file=sys.stderr)
    return [e for e in wanted if e in defined]


def lock(spec: LockSet) -> Path:
    target = OUT / f"{spec.name}.txt"
    with tempfile.TemporaryDirectory() as tmp:
        extra_in = Path(tmp) / "extra.in"
        extra_in.write_text("\n".join(spec.extra_requirements) + "\n")
        cmd = [
            str(UV), "pip", "compile", "--quiet", "--no-annotate",
            "--python-version", spec.python,
            "--python-platform", "x86_64-manylinux_2_28",
            "--custom-compile-command", f"python docker/lock.py {spec.name}",
            "--output-file", str(target),
            str(ROOT / "pyproject.toml"), str(extra_in),
        ]  # fmt: skip
        for extra in existing_extras(spec.extras):
            cmd += ["--extra", extra]
        if any("+cpu" in r for r in spec.extra_requirements):
            wheels = sorted(Path("/opt/wheels").glob("torch-2.13.0+cpu-*.whl"))
            if wheels:
                cmd += ["--find-links", "/opt/wheels"]
            else:
                cmd += ["--extra-index-url", TORCH_CPU_INDEX]
            cmd += ["--index-strategy", "unsafe-best-match"]
        subprocess.run(cmd, check=True, cwd=ROOT)
    # uv writes the temporary input's path into "via" comments and the header; keep the file
    # stable across runs by naming what it is for instead.
    text = target.read_text()
    header = f"# Pins for {spec.comment}.\n"
    target.write_text(header + text)
    return target


def main(names: list[str]) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in names or list(SETS):
        print(f"== {name}: {lock(SETS[name])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
