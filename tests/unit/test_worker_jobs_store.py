"""The artifacts layout the job API serves from: names inside a job's folder only."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.worker.artifacts import atomic_open
from shared.errors import NotFound
from shared.jobs_store import artifact_path, list_artifacts, redacted_url

pytestmark = pytest.mark.unit


@pytest.fixture
def root(tmp_path: Path) -> Path:
    job = tmp_path / "job-1"
    (job / "filter" / "shards").mkdir(parents=True)
    (job / "filter" / "output.jsonl").write_text("{}\n")
    (job / "filter" / "shards" / "00000.output.jsonl").write_text("{}\n")
    (job / "filter" / "output.jsonl.tmp-1-abc").write_text("half")
    (tmp_path / "secret.txt").write_text("no")
    return tmp_path


def test_worker_artifacts_list_skips_temporary_files(root: Path) -> None:
    names = [a.name for a in list_artifacts(root, "job-1")]
    assert names == ["filter/output.jsonl", "filter/shards/00000.output.jsonl"]
    assert [a.name for a in list_artifacts(root, "job-1", include_shards=False)] == [
        "filter/output.jsonl"
    ]
    assert list_artifacts(root, "job-2") == []


@pytest.mark.parametrize(
    "name",
    ["../secret.txt", "filter/../../secret.txt", "/etc/passwd", "", "filter", "x\\..\\y",
     "filter/output.jsonl.tmp-1-abc", "filter/missing.jsonl"],
)  # fmt: skip
def test_worker_artifact_names_cannot_leave_the_job(root: Path, name: str) -> None:
    with pytest.raises(NotFound):
        artifact_path(root, "job-1", name)


@pytest.mark.parametrize("job_id", ["..", "../job-1", "Job-1", "a/b", ""])
def test_worker_job_ids_are_plain_names(root: Path, job_id: str) -> None:
    with pytest.raises(NotFound):
        artifact_path(root, job_id, "filter/output.jsonl")


def test_worker_artifacts_do_not_follow_symlinks_out_of_the_job(root: Path) -> None:
    job = root / "job-1" / "filter"
    (job / "escape.jsonl").symlink_to(root / "secret.txt")
    (root / "job-2" / "filter").mkdir(parents=True)
    (root / "job-2" / "filter" / "theirs.jsonl").write_text("{}\n")
    (job / "other-job").symlink_to(root / "job-2")
    for name in ("escape.jsonl", "other-job/filter/theirs.jsonl"):
        with pytest.raises(NotFound):
            artifact_path(root, "job-1", name)


def test_worker_uploads_are_no_job(root: Path) -> None:
    (root / "_files" / "file-abc").mkdir(parents=True)
    (root / "_files" / "file-abc" / "x.jsonl").write_text("{}\n")
    with pytest.raises(NotFound):
        artifact_path(root, "_files", "file-abc/x.jsonl")


def test_worker_artifact_path_finds_a_file(root: Path) -> None:
    path = artifact_path(root, "job-1", "filter/output.jsonl")
    assert path.read_text() == "{}\n"


def test_worker_atomic_write_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("new\n")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [target]


def test_worker_redis_credentials_are_redacted() -> None:
    assert redacted_url("redis://:s3cret@redis:6379/0") == "redis://***@redis:6379/0"
