"""Files a job writes: atomic (temp file + fsync + os.replace) and at deterministic paths, so a
file is either absent or complete, and writing it twice gives the same file once.

Layout of one stage of one job (under ``<artifacts root>/<job id>/<stage>/``)::

    plan.json                 the shards: which input records each one reads
    shards/00000.output.jsonl one file per shard and output stream
    shards/00000.done.json    the shard's counts and sampled errors; written last, so its
                              presence means the shard is done
    output.jsonl ...          merged from the shard files in shard order
    summary.json              counts and stage-specific statistics
    done.json                 written last: the stage is finished
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.files import atomic_open, read_json, write_json, write_jsonl
from shared.job_schemas import JobKind
from shared.jobs_store import stage_dir

__all__ = [
    "StagePaths",
    "atomic_open",
    "iter_jsonl",
    "read_json",
    "remove_temporaries",
    "write_json",
    "write_jsonl",
]


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def remove_temporaries(folder: Path) -> None:
    """Temp files left by a killed writer (harmless, but they would clutter listings)."""
    if folder.is_dir():
        for p in folder.glob("*.tmp-*"):
            with contextlib.suppress(OSError):
                p.unlink()


@dataclass(frozen=True)
class StagePaths:
    """Where one stage of one job keeps its files."""

    root: Path

    @classmethod
    def of(cls, artifacts_dir: Path, job_id: str, stage: JobKind) -> StagePaths:
        return cls(stage_dir(artifacts_dir, job_id, stage))

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    def shard_stream(self, shard: int, stream: str) -> Path:
        return self.shards / f"{shard:05d}.{stream}.jsonl"

    def shard_done(self, shard: int) -> Path:
        return self.shards / f"{shard:05d}.done.json"

    def stream(self, stream: str) -> Path:
        return self.root / f"{stream}.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def done(self) -> Path:
        return self.root / "done.json"
