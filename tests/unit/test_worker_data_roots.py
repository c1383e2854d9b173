"""Jobs read only inside their data roots: traversal, symlink and glob escapes are refused at
submit (the gateway's check) and again by the worker, which checks each file it opens."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from services.worker.inputs import InputAccess, InputError, plan, read_shard
from shared.data_roots import DataRoots, OutsideDataRoots, default_data_dirs
from shared.file_store import FileStore
from shared.job_schemas import InputSpec
from shared.jobs_store import JobStore, JobStoreSettings, connect

pytestmark = pytest.mark.unit


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``root/`` (the data root) with a.jsonl and a folder; ``outside/`` beside it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "docs").mkdir(parents=True)
    outside.mkdir()
    (root / "a.jsonl").write_text('{"text": "inside"}\n')
    (root / "docs" / "b.jsonl").write_text('{"text": "inside too"}\n')
    (outside / "secret.jsonl").write_text('{"text": "secret"}\n')
    return tmp_path


def roots(tree: Path) -> DataRoots:
    return DataRoots.of([tree / "root"])


def texts(spec: InputSpec, access: InputAccess) -> list[str]:
    p = plan(spec, 10, access)
    return [
        str((r.data or {}).get("text")) for s in p.shards for r in read_shard(s, spec, 0, access)
    ]


# -- the rule (shared by gateway and worker) ---------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("{root}/a.jsonl", "{root}/a.jsonl"),
        ("a.jsonl", "{root}/a.jsonl"),  # relative: to the first root
        ("docs/*.jsonl", "{root}/docs/*.jsonl"),
        ("{root}/**/*.jsonl", "{root}/**/*.jsonl"),
        ("{root}/./docs//b.jsonl", "{root}/docs/b.jsonl"),
        ("{root}/not-yet-there.jsonl", "{root}/not-yet-there.jsonl"),
        ("{root}", "{root}"),
    ],
)
def test_worker_data_roots_accept_paths_inside(tree: Path, raw: str, expected: str) -> None:
    root = str(tree / "root")
    assert roots(tree).resolve(raw.format(root=root)) == Path(expected.format(root=root))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("{tree}/outside/secret.jsonl", "outside the data roots"),
        ("/etc/passwd", "outside the data roots"),
        ("../outside/secret.jsonl", "'..'"),
        ("{tree}/root/../outside/secret.jsonl", "'..'"),
        ("{tree}/root/docs/../a.jsonl", "'..'"),  # inside, but '..' is refused outright
        ("{tree}/ro*/a.jsonl", "could match files outside"),
        ("{tree}/*/secret.jsonl", "could match files outside"),
        ("/**/secret.jsonl", "could match files outside"),
        ("{tree}/root\x00/a.jsonl", "not a path"),
    ],
)
def test_worker_data_roots_refuse_paths_outside(tree: Path, raw: str, why: str) -> None:
    with pytest.raises(OutsideDataRoots, match=why):
        roots(tree).resolve(raw.format(tree=tree))


def test_worker_data_roots_follow_symlinks(tree: Path) -> None:
    root = tree / "root"
    (root / "link.jsonl").symlink_to(tree / "outside" / "secret.jsonl")
    (root / "linked-dir").symlink_to(tree / "outside")
    (root / "inner.jsonl").symlink_to(root / "a.jsonl")
    for raw in ("link.jsonl", "linked-dir", "linked-dir/secret.jsonl", "linked-dir/*.jsonl"):
        with pytest.raises(OutsideDataRoots, match="outside the data roots"):
            roots(tree).resolve(raw)
    assert roots(tree).resolve("inner.jsonl") == root / "inner.jsonl"  # a link kept inside


def test_worker_data_roots_default_to_artifacts_and_shipped_samples(tmp_path: Path) -> None:
    dirs = JobStoreSettings(artifacts_dir=tmp_path).data_roots().dirs
    assert dirs == DataRoots.of(default_data_dirs(tmp_path)).dirs
    assert dirs[0] == tmp_path
    sample = dirs[1] / "corpus.jsonl"
    assert sample.is_file()  # what the README's job examples read
    assert DataRoots(dirs).resolve(str(sample)) == sample


def test_worker_data_dirs_setting_takes_commas_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_DATA_DIRS", "/data, /artifacts")
    from services.worker.settings import WorkerSettings

    assert WorkerSettings().data_roots().dirs == (Path("/data"), Path("/artifacts"))
    monkeypatch.setenv("WORKER_DATA_DIRS", '["/a,b"]')
    assert WorkerSettings().data_roots().dirs == (Path("/a,b"),)
    monkeypatch.setenv("WORKER_DATA_DIRS", "")
    assert WorkerSettings().data_dirs is None  # empty: the default


# -- the worker: discovery, and the check as each file is opened ----------------------------


def test_worker_reads_inputs_inside_the_roots(tree: Path) -> None:
    access = InputAccess(roots(tree))
    assert texts(InputSpec(paths=["a.jsonl"]), access) == ["inside"]
    assert texts(InputSpec(paths=[str(tree / "root")]), access) == ["inside", "inside too"]


@pytest.mark.parametrize(
    ("link", "raw"),
    [
        ("link.jsonl", "link.jsonl"),  # found at discovery through the folder it is in...
        ("docs/link.jsonl", "docs"),  # ... walked by a folder ...
        ("docs/sub", "docs/*/*.jsonl"),  # ... or matched by a glob through a linked folder
    ],
)
def test_worker_symlink_out_of_a_root_is_an_input_error(tree: Path, link: str, raw: str) -> None:
    target = tree / "outside" / ("secret.jsonl" if link.endswith(".jsonl") else "")
    (tree / "root" / link).symlink_to(target)
    with pytest.raises(InputError, match="outside the data roots"):
        plan(InputSpec(paths=[raw]), 10, InputAccess(roots(tree)))


def test_worker_glob_escape_is_an_input_error(tree: Path) -> None:
    with pytest.raises(InputError, match=r"input.paths: .* could match files outside"):
        plan(InputSpec(paths=[str(tree / "*" / "*.jsonl")]), 10, InputAccess(roots(tree)))


def test_worker_file_swapped_for_a_symlink_after_planning_is_not_read(tree: Path) -> None:
    access = InputAccess(roots(tree))
    spec = InputSpec(paths=["a.jsonl"])
    p = plan(spec, 10, access)
    target = tree / "root" / "a.jsonl"
    target.unlink()
    target.symlink_to(tree / "outside" / "secret.jsonl")
    with pytest.raises(InputError, match="outside the data roots"):
        read_shard(p.shards[0], spec, 0, access)


def test_worker_a_fifo_in_a_root_is_refused_without_blocking(tree: Path) -> None:
    access = InputAccess(roots(tree))
    fifo = tree / "root" / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        plan(InputSpec(paths=[str(fifo)]), 10, access)
    spec = InputSpec(paths=["a.jsonl"])
    p = plan(spec, 10, access)
    (tree / "root" / "a.jsonl").unlink()
    os.mkfifo(tree / "root" / "a.jsonl")  # swapped after planning: opening must not hang
    with pytest.raises(InputError, match="not a regular file"):
        read_shard(p.shards[0], spec, 0, access)


def test_worker_reads_uploaded_files_by_id(tree: Path) -> None:
    import io

    files = FileStore(tree / "artifacts")
    upload = files.create(
        io.BytesIO(b'{"text": "uploaded"}\n'),
        filename="u.jsonl",
        purpose="user_data",
        max_bytes=100,
    )
    access = InputAccess(roots(tree), files)  # the uploads need not lie in a data root
    assert texts(InputSpec(file_id=upload.id), access) == ["uploaded"]
    records = read_shard(plan(InputSpec(file_ids=[upload.id]), 10, access).shards[0],
                         InputSpec(file_ids=[upload.id]), 0, access)  # fmt: skip
    assert records[0].data == {"text": "uploaded", "source": "u.jsonl"}
    files.delete(upload.id)
    with pytest.raises(InputError, match="does not exist"):
        plan(InputSpec(file_id=upload.id), 10, access)
    with pytest.raises(InputError, match="cannot be read here"):
        plan(InputSpec(file_id=upload.id), 10, InputAccess(roots(tree)))


# -- the gateway's check at submit ------------------------------------------------------------


def store(tree: Path) -> JobStore:
    """A store whose Redis is never reached (the input check comes first)."""
    settings = JobStoreSettings(redis_url="redis://127.0.0.1:1/0", artifacts_dir=tree / "art")
    return JobStore(connect(settings), settings.artifacts_dir, data_roots=roots(tree))


def job(kind: str = "sft_data", **fields: object) -> object:
    from pydantic import TypeAdapter

    from shared.job_schemas import JobSpec

    return TypeAdapter(JobSpec).validate_python({"kind": kind, **fields})


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"input": {"paths": ["a.jsonl", "../outside/secret.jsonl"]}}, "input.paths"),
        ({"input": {"paths": ["/etc/passwd"]}}, "input.paths"),
        ({"input": {"paths": ["{tree}/*/secret.jsonl"]}}, "input.paths"),
        ({"input": {"file_id": "file-0123456789abcdef01234567"}}, "input.file_id"),
        ({"input": {"paths": ["a.jsonl"], "file_ids": ["file-abc", "file-def"]}},
         "input.file_ids[0]"),
        ({"kind": "prefilter", "input": {"paths": ["a.jsonl"]},
          "reference": {"input": {"paths": ["/etc"]}}}, "reference.input.paths"),
        ({"kind": "rationale_pipeline", "input": {"paths": ["a.jsonl"]},
          "prefilter": {"reference": {"input": {"paths": ["/etc"]}}}},
         "prefilter.reference.input.paths"),
        ({"kind": "train_rationalyst", "data": {"train": ["/etc/passwd"]}}, "data.train"),
        ({"kind": "train_rationalyst", "data": {"train": ["a.jsonl"], "dev": ["../x"]}},
         "data.dev"),
        ({"kind": "train_rationalyst", "data": {"train": ["a.jsonl"]}, "base_model": "/etc"},
         "base_model"),
        ({"kind": "tripost", "task": "word_sorting", "base_model": "{tree}/outside"},
         "base_model"),
        ({"kind": "tripost_collect", "task": "word_sorting", "model": "~/.ssh"}, "model"),
    ],
)  # fmt: skip
def test_worker_submit_refuses_inputs_outside_naming_the_field(
    tree: Path, spec: dict[str, object], field: str
) -> None:
    from shared.errors import InvalidRequest

    body = json.loads(json.dumps(spec).replace("{tree}", str(tree)))
    with pytest.raises(InvalidRequest) as caught:
        store(tree).check_inputs(job(**{"kind": "sft_data", **body}))
    assert caught.value.field == field
    assert caught.value.message.startswith(field)


def test_worker_submit_accepts_inputs_inside_and_uploaded_files(tree: Path) -> None:
    import io

    s = store(tree)
    upload = s.files.create(io.BytesIO(b"{}\n"), filename="x.jsonl", purpose="p", max_bytes=9)
    s.check_inputs(job(input={"paths": ["a.jsonl", "docs/*.jsonl"], "file_id": upload.id}))
    s.check_inputs(job("train_rationalyst", data={"train": [str(tree / "root" / "a.jsonl")]}))
    inside = str(tree / "root" / "docs")
    s.check_inputs(job("train_rationalyst", data={"train": ["a.jsonl"]}, base_model=inside))
    s.check_inputs(job("train_rationalyst", data={"train": ["a.jsonl"]}, base_model="my-model"))


def test_worker_resolves_model_folders_only_inside_the_roots(tree: Path) -> None:
    from services.model_server.models import resolve_model
    from shared.errors import InvalidRequest

    for folder in (tree / "root" / "model", tree / "outside" / "model"):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    inside = str(tree / "root" / "model")
    assert resolve_model(inside, folder_roots=roots(tree), allow_hub=False) == inside
    for named in (str(tree / "outside" / "model"), f"{tree}/root/../outside/model", "/etc"):
        with pytest.raises(InvalidRequest, match="outside the folders a job may load models"):
            resolve_model(named, folder_roots=roots(tree), allow_hub=False)


def test_worker_stages_read_where_their_inputs_come_from(tmp_path: Path) -> None:
    """Stage 0 reads the job's own inputs (data roots, uploads); later stages and a training
    job's data.job read only under the artifacts root, where the worker wrote them."""
    from types import SimpleNamespace

    from services.worker.runner import JobRunner
    from services.worker.settings import WorkerSettings

    settings = WorkerSettings(artifacts_dir=tmp_path / "art", data_dirs=[tmp_path / "data"])
    runner = JobRunner(SimpleNamespace(settings=settings, store=None))  # type: ignore[arg-type]
    own = runner.input_access(job(input={"paths": ["x"]}), 0)
    assert own.roots.dirs == (tmp_path / "data",) and own.files is not None
    assert own.readable.dirs == (tmp_path / "data", tmp_path / "art" / "_files")
    for spec, k in ((job("rationale_pipeline", input={"paths": ["x"]}), 1),
                    (job("train_rationalyst", data={"job": "job-1"}), 0)):  # fmt: skip
        access = runner.input_access(spec, k)
        assert access.roots.dirs == (tmp_path / "art",) and access.files is None
    training = runner.input_access(job("train_rationalyst", data={"train": ["a.jsonl"]}), 0)
    assert training.roots.dirs == (tmp_path / "data",)


def test_worker_training_files_are_resolved_and_checked(tree: Path) -> None:
    from services.worker.settings import WorkerSettings
    from services.worker.stages import build_stage
    from shared.job_schemas import JobKind

    settings = WorkerSettings(artifacts_dir=tree / "art", data_dirs=[tree / "root"])
    (tree / "root" / "link.jsonl").symlink_to(tree / "root" / "a.jsonl")

    def files(**data: object) -> dict[str, object]:
        stage = build_stage(job("train_rationalyst", data=data), JobKind.train_rationalyst)
        return stage._files(settings)  # type: ignore[attr-defined,no-any-return]

    got = files(train=["link.jsonl"], dev=["docs"])
    assert got == {
        "train_files": [str(tree / "root" / "a.jsonl")],
        "dev_files": [str(tree / "root" / "docs" / "b.jsonl")],
    }
    with pytest.raises(InputError, match=r"^data.dev: .*outside the data roots"):
        files(train=["a.jsonl"], dev=[str(tree / "outside" / "secret.jsonl")])
