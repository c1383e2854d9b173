"""Where jobs may read their inputs: the data roots.

A job names its inputs as paths (files, folders, glob patterns) or as ids of uploaded files.
A path is accepted only when it lies inside one of the configured data roots (the setting
``data_dirs``; by default the artifacts root and the sample data shipped with the project):

* a relative path is taken relative to the *first* data root;
* ``..`` is refused anywhere in a path, whatever it would resolve to;
* symlinks are followed before the check, so a link inside a root that points out of it is
  outside;
* a glob pattern is checked on its literal part (the folders before the first component with
  ``*``, ``?`` or ``[``): ``/data/*.jsonl`` is inside ``/data``, ``/da*/x.jsonl`` is not, since
  it could match outside. Every file a pattern or a folder yields is checked again.

The gateway applies the rule when a job is submitted (a 422 naming the field); the worker
applies it again when it plans a stage, and :meth:`DataRoots.open` checks the file actually
opened, right before reading: a file swapped for a symlink after the submit is not read.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The folder holding the ``shared`` package: a source checkout, or site-packages."""

SAMPLE_DATA_DIRS: tuple[Path, ...] = (PROJECT_ROOT / "services" / "worker" / "sample_corpus",)
"""Data shipped with the project that the README's job examples read."""


def default_data_dirs(artifacts_dir: Path) -> list[Path]:
    """The data roots when ``data_dirs`` is not set: the artifacts root, then the samples."""
    return [Path(artifacts_dir).expanduser(), *SAMPLE_DATA_DIRS]


class OutsideDataRoots(ValueError):
    """A path that a job may not read; the message says why, for an error naming the field."""


def literal_part(path: Path) -> tuple[Path, str | None]:
    """``/data/x/*/y.jsonl`` -> (``/data/x``, ``*/y.jsonl``); a path without glob magic ->
    (path, None)."""
    parts = path.parts
    for i, part in enumerate(parts):
        if glob.has_magic(part):
            return Path(*parts[:i]), "/".join(parts[i:])
    return path, None


def _real(path: Path) -> Path | None:
    """``path`` with every symlink of its existing part resolved; None for a symlink loop."""
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError):
        return None


@dataclass(frozen=True)
class DataRoots:
    """An ordered set of folders that job inputs must lie in (see the module's rule)."""

    dirs: tuple[Path, ...]

    def __post_init__(self) -> None:
        if not self.dirs:
            raise ValueError("at least one data root is needed")

    @classmethod
    def of(cls, dirs: Iterable[Path | str]) -> DataRoots:
        """Absolute, user-expanded, normalized roots, duplicates dropped (order kept)."""
        out: dict[Path, None] = {}
        for d in dirs:
            out[Path(os.path.normpath(Path(d).expanduser().absolute()))] = None
        return cls(tuple(out))

    def __add__(self, other: DataRoots) -> DataRoots:
        return DataRoots.of([*self.dirs, *other.dirs])

    def describe(self) -> str:
        return ", ".join(str(d) for d in self.dirs)

    def contains(self, path: Path) -> bool:
        """Is ``path`` (symlinks resolved) one of the roots or inside one?"""
        real = _real(path)
        if real is None:
            return False
        for root in self.dirs:
            real_root = _real(root)
            if real_root is not None and real.is_relative_to(real_root):
                return True
        return False

    def resolve(self, raw: str) -> Path:
        """The absolute path (or glob pattern) that ``raw`` names, normalized; raises
        :class:`OutsideDataRoots` when it is, or could match, anything outside the roots."""
        if not raw or "\x00" in raw:
            raise OutsideDataRoots(f"{raw!r} is not a path")
        path = Path(raw).expanduser()
        if ".." in path.parts:
            raise OutsideDataRoots(
                f"{raw!r}: '..' is not allowed; jobs read only inside the data roots "
                f"{self.describe()}"
            )
        if not path.is_absolute():
            path = self.dirs[0] / path
        path = Path(os.path.normpath(path))
        literal, pattern = literal_part(path)
        if not self.contains(literal):
            if pattern is not None:
                why = f"could match files outside the data roots (it searches {literal})"
            else:
                why = "lies outside the data roots" + _how(literal, _real(literal))
            raise OutsideDataRoots(f"{raw!r} {why}; jobs read only inside {self.describe()}")
        return path

    def check(self, path: Path, *, name: str | None = None) -> Path:
        """``path`` with symlinks resolved, or :class:`OutsideDataRoots`."""
        real = _real(path)
        if real is None or not self.contains(real):
            raise OutsideDataRoots(
                f"{name or path} lies outside the data roots{_how(path, real)}; jobs read only "
                f"inside {self.describe()}"
            )
        return real

    def open(self, path: str | Path) -> BinaryIO:
        """Open a regular file for reading, after checking that the file actually opened (not
        the name, which may have been swapped for a symlink) lies inside the roots."""
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)  # O_NONBLOCK: a FIFO planted in a root must not hang us
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OutsideDataRoots(f"{path} is not a regular file")
            real = _opened_path(fd, Path(path), st)
            if real is None or not self.contains(real):
                raise OutsideDataRoots(
                    f"{path} lies outside the data roots{_how(Path(path), real)}; jobs read "
                    f"only inside {self.describe()}"
                )
            if hasattr(os, "O_NONBLOCK"):
                os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise


def _how(path: Path, real: Path | None) -> str:
    """How a path got out: through a symlink (the target is not shown: it may be private)."""
    return " (through a symlink)" if real is None or real != path else ""


def _opened_path(fd: int, path: Path, st: os.stat_result) -> Path | None:
    """The real path of an open file: /proc's link where there is one (Linux), else the
    resolved name if it is still the same file."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass
    real = _real(path)
    if real is None:
        return None
    try:
        now = os.stat(real)
    except OSError:
        return None
    return real if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) else None
