"""Per-example results as JSONL: crash-safe appends, deduplicated reads.

Every record is one line written with a single ``write`` on an ``O_APPEND`` descriptor and
fsynced, so a killed run leaves whole lines plus at most one torn last line. Reading skips lines
that do not parse and keeps the last record of each key, so a resumed run can append freely.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class JsonlStore:
    """Append-only JSONL file of records that carry a ``key`` field."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # A torn last line (killed mid-write) must not swallow the next record.
        size = os.fstat(self._fd).st_size
        if size:
            with self.path.open("rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(self._fd, b"\n")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JsonlStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line, durably."""
        if self._fd is None:
            raise RuntimeError("store is not open")
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
        written = os.write(self._fd, line)
        if written != len(line):  # pragma: no cover - regular files write fully
            raise OSError(f"short write to {self.path}")
        os.fsync(self._fd)

    def read(self) -> dict[str, dict[str, Any]]:
        """Records by key, the last one of each key winning; torn or foreign lines skipped."""
        records: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return records
        skipped = 0
        with self.path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    skipped += 1
                    continue
                if isinstance(row, dict) and isinstance(row.get("key"), str):
                    records[row["key"]] = row
                else:
                    skipped += 1
        if skipped:
            logger.warning("%s: skipped %d unreadable lines", self.path, skipped)
        return records
