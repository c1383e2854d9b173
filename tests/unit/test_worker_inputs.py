"""Streaming inputs: discovery, planning into shards, and reading exactly a shard's records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.worker import inputs
from services.worker.inputs import InputAccess, InputError, plan, read_shard
from shared.job_schemas import InputFormat, InputSpec

pytestmark = pytest.mark.unit


def all_records(
    spec: InputSpec, root: Path, shard_size: int, limit: int | None = None
) -> list[list[dict]]:
    access = InputAccess.under(root)
    p = plan(spec, shard_size, access, limit=limit)
    out = []
    for i, shard in enumerate(p.shards):
        recs = read_shard(shard, spec, i * shard_size, access)
        assert [r.index for r in recs] == list(range(i * shard_size, i * shard_size + len(recs)))
        out.append([r.data if r.data is not None else {"error": r.error} for r in recs])
    assert sum(len(s) for s in out) == p.records_total
    return out


def write_jsonl(path: Path, rows: list[object], blank_every: int = 0) -> None:
    with open(path, "w") as f:
        for i, row in enumerate(rows):
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
            if blank_every and i % blank_every == 0:
                f.write("\n")


def test_worker_jsonl_shards_cover_every_record_once(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"text": f"doc {i}"} for i in range(7)], blank_every=3)
    write_jsonl(tmp_path / "b.jsonl", [{"text": f"doc {i}"} for i in range(7, 12)])
    spec = InputSpec(paths=[str(tmp_path)])
    shards = all_records(spec, tmp_path, shard_size=5)
    assert [len(s) for s in shards] == [5, 5, 2]
    texts = [r["text"] for s in shards for r in s]
    assert texts == [f"doc {i}" for i in range(12)]
    assert {r["source"] for r in shards[0]} == {"a.jsonl"}


def test_worker_jsonl_bad_lines_are_records_with_errors(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "x.jsonl", [{"text": "ok"}, "{not json", "[1, 2]", {"text": "ok2"}])
    (shard,) = all_records(InputSpec(paths=[str(tmp_path / "x.jsonl")]), tmp_path, shard_size=10)
    assert shard[0]["text"] == "ok"
    assert "invalid JSON" in shard[1]["error"]
    assert "JSON object" in shard[2]["error"]
    assert shard[3]["text"] == "ok2"


def test_worker_limit_takes_the_first_records(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"text": str(i)} for i in range(10)])
    shards = all_records(
        InputSpec(paths=[str(tmp_path / "a.jsonl")]), tmp_path, shard_size=3, limit=4
    )
    assert [[r["text"] for r in s] for s in shards] == [["0", "1", "2"], ["3"]]


def test_worker_parquet_is_read_by_row_groups(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"body": [f"row {i}" for i in range(23)], "n": list(range(23))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=4)
    spec = InputSpec(paths=[str(tmp_path / "*.parquet")], text_field="body")
    shards = all_records(spec, tmp_path, shard_size=6)
    assert [len(s) for s in shards] == [6, 6, 6, 5]
    assert [r["n"] for s in shards for r in s] == list(range(23))


def test_worker_text_one_document_per_file_and_globs(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for i in range(3):
        (tmp_path / "sub" / f"d{i}.txt").write_text(f"document {i}")
    (tmp_path / "sub" / "skip.bin").write_text("not matched by the glob")
    spec = InputSpec(paths=[str(tmp_path / "**" / "*.txt")])
    shards = all_records(spec, tmp_path, shard_size=2)
    assert [r["text"] for s in shards for r in s] == ["document 0", "document 1", "document 2"]
    assert shards[0][0]["source"] == "d0.txt"


def test_worker_text_separator_streams_across_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inputs, "_CHUNK", 7)  # separators cut by chunk borders
    docs = [f"paragraph number {i} é" for i in range(9)]
    (tmp_path / "book.txt").write_text("\n\n".join(docs[:4]) + "\n\n\n\n" + "\n\n".join(docs[4:]))
    spec = InputSpec(paths=[str(tmp_path / "book.txt")], format=InputFormat.text, separator="\n\n")
    shards = all_records(spec, tmp_path, shard_size=4)
    assert [r["text"].strip() for s in shards for r in s] == docs


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: str(p / "missing.jsonl"), "does not exist"),
        (lambda p: str(p / "*.nothing"), "matched no files"),
        (str, "holds no"),
    ],
)
def test_worker_missing_input_is_an_input_error(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=message):
        plan(InputSpec(paths=[make(tmp_path)]), 10, InputAccess.under(tmp_path))
