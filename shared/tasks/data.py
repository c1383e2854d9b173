"""The data cache and `rationalyst data pull`: BIG-bench task files from the PyPI sdist.

The BIG-bench task JSON files ship inside the sdist of ``bigbench==1.0.0`` (358 MB). ``pull``
downloads it once with pip (the only network access, at install time, through the package
registry), streams through the tar without unpacking it, writes just the task files this project
uses under ``<data dir>/bigbench/<task>/task.json`` (sub-tasks in sub-folders, as in the sdist),
and deletes the sdist. Each file is published atomically; a second pull is a no-op.

The data dir is ``$RATIONALYST_DATA_DIR`` or ``~/.cache/rationalyst/data``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from shared.settings import default_cache_dir
from shared.tasks.base import DataMissingError

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "RATIONALYST_DATA_DIR"
BIGBENCH_REQUIREMENT = "bigbench==1.0.0"
SDIST_PREFIX = "bigbench/benchmark_tasks/"
"""Where task folders sit inside the sdist (after its top-level ``bigbench-1.0.0/``)."""

BIGBENCH_FILES: tuple[str, ...] = (
    "date_understanding/task.json",
    "elementary_math_qa/question_only/task.json",
    "logical_deduction/three_objects/task.json",
    "logical_deduction/five_objects/task.json",
    "logical_deduction/seven_objects/task.json",
    "navigate/task.json",
    "object_counting/task.json",
    "strategyqa/task.json",
    "tracking_shuffled_objects/three_objects/task.json",
    "tracking_shuffled_objects/five_objects/task.json",
    "tracking_shuffled_objects/seven_objects/task.json",
    "word_sorting/task.json",
)
"""Task files pulled, relative to ``benchmark_tasks/`` in the sdist and to the cache folder."""


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """``override``, else ``$RATIONALYST_DATA_DIR``, else ``~/.cache/rationalyst/data``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else default_cache_dir() / "data"


def bigbench_dir(override: str | os.PathLike[str] | None = None) -> Path:
    return data_dir(override) / "bigbench"


def missing_files(override: str | os.PathLike[str] | None = None) -> list[str]:
    """The task files not yet in the cache."""
    root = bigbench_dir(override)
    return [rel for rel in BIGBENCH_FILES if not (root / rel).is_file()]


def task_file(relative: str, override: str | os.PathLike[str] | None = None) -> Path:
    """The cached file, or :class:`DataMissingError` telling to run the pull."""
    path = bigbench_dir(override) / relative
    if not path.is_file():
        raise DataMissingError(
            f"BIG-bench task file {path} is missing; run `rationalyst data pull` to fetch the "
            f"task files (it downloads the {BIGBENCH_REQUIREMENT} sdist once, about 358 MB)"
        )
    return path


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One pull at a time per cache folder (parallel test workers, two terminals)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".pull.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def download_sdist(dest: Path) -> Path:
    """``pip download`` the bigbench sdist into ``dest`` (no dependencies, no build)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
        "--disable-pip-version-check", "-q", "-d", str(dest), BIGBENCH_REQUIREMENT,
    ]  # fmt: skip
    logger.info("downloading %s (about 358 MB) from the package index", BIGBENCH_REQUIREMENT)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pip download {BIGBENCH_REQUIREMENT} failed:\n{result.stderr[-2000:]}")
    found = sorted(dest.glob("bigbench-*.tar.gz"))
    if not found:
        raise RuntimeError(f"pip download left no bigbench sdist in {dest}")
    return found[0]


def extract_task_files(
    sdist: Path, root: Path, wanted: list[str], on_file: Callable[[str], None] | None = None
) -> list[str]:
    """Stream through the sdist's tar and write the ``wanted`` files under ``root``; returns
    those it did not find. Stops reading as soon as all are written."""
    left = set(wanted)
    with tarfile.open(sdist, mode="r|gz") as tar:
        for member in tar:
            if not left:
                break
            name = member.name
            cut = name.find(SDIST_PREFIX)
            if cut == -1 or not member.isfile():
                continue
            relative = name[cut + len(SDIST_PREFIX) :]
            if relative not in left:
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "wb", dir=target.parent, prefix=".part-", delete=False
            ) as out:
                shutil.copyfileobj(source, out, length=1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(out.name, target)
            left.discard(relative)
            if on_file is not None:
                on_file(relative)
    return sorted(left)


def pull(
    override: str | os.PathLike[str] | None = None,
    *,
    sdist: str | os.PathLike[str] | None = None,
    force: bool = False,
    on_file: Callable[[str], None] | None = None,
) -> Path:
    """Fetch the BIG-bench task files into the cache once; a no-op when all are there.

    ``sdist`` uses an already downloaded ``bigbench-1.0.0.tar.gz`` instead of downloading.
    Returns the ``bigbench`` cache folder.
    """
    root = bigbench_dir(override)
    with _locked(root):
        wanted = list(BIGBENCH_FILES) if force else missing_files(override)
        if not wanted:
            logger.info("BIG-bench task files already in %s", root)
            return root
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=root, prefix=".pull-") as tmp:
            archive = Path(sdist) if sdist else download_sdist(Path(tmp))
            downloaded = time.perf_counter()
            left = extract_task_files(archive, root, wanted, on_file)
        if left:
            raise RuntimeError(f"the bigbench sdist does not contain: {', '.join(left)}")
        logger.info(
            "BIG-bench task files in %s (download %.1fs, extract %.1fs)",
            root,
            downloaded - start,
            time.perf_counter() - downloaded,
        )
    return root
