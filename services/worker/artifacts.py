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
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from shared.job_schemas import JobKind
from shared.jobs_store import stage_dir


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write ``path`` through a temp file in the same folder; it appears only when complete.

    On an exception the temp file is removed and ``path`` is untouched. Two writers racing on
    the same path both succeed; the last ``os.replace`` wins (deterministic outputs make that
    harmless).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    encoding = None if "b" in mode else "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


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
