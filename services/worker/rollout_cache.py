"""Rollouts kept on disk, keyed by everything that determines them, so that a shard run again
(its worker killed, the job resumed) or a job submitted again does not ask the agent twice.

The key is a hash of the agent's model, the prompt's parts (question, demos, prefix steps) and
the sampling (n, seed, temperature, step limits): with a seed, the same key gives the same
completions, so a stored answer is exactly what the agent would say again. Files live under
``<artifacts>/_rollouts/``, one append-only JSONL per first two hex digits of the key; each
answer is appended (and flushed) as soon as it arrives, so a worker killed with ``kill -9``
loses at most the line it was writing, which a reader skips.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CACHE_FOLDER = "_rollouts"


def rollout_key(**parts: Any) -> str:
    """The cache key of one rollout request (its parts as JSON, hashed)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class RolloutCache:
    """Stored rollout answers (lists of completion dicts) by key. One per shard run; not
    shared between threads (the worker's event loop only)."""

    def __init__(self, artifacts_dir: Path) -> None:
        self.folder = Path(artifacts_dir).expanduser() / CACHE_FOLDER
        self._buckets: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def _path(self, key: str) -> Path:
        return self.folder / f"{key[:2]}.jsonl"

    def _bucket(self, key: str) -> dict[str, list[dict[str, Any]]]:
        name = key[:2]
        if name not in self._buckets:
            entries: dict[str, list[dict[str, Any]]] = {}
            path = self._path(key)
            if path.is_file():
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        try:
                            row = json.loads(line)
                            entries[str(row["key"])] = list(row["completions"])
                        except (ValueError, KeyError, TypeError):
                            continue  # a line cut short by a killed writer
            self._buckets[name] = entries
        return self._buckets[name]

    def get(self, key: str) -> list[dict[str, Any]] | None:
        return self._bucket(key).get(key)

    def put(self, key: str, completions: list[dict[str, Any]]) -> None:
        bucket = self._bucket(key)
        bucket[key] = completions
        self.folder.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"key": key, "completions": completions}, ensure_ascii=False) + "\n"
        # One write of a whole line in append mode: concurrent writers never interleave
        # within a line; a line cut short by a kill is skipped when read.
        fd = os.open(self._path(key), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
