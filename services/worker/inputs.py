"""Inputs of any size, read as streams: JSONL, Parquet (by row groups), plain text (one document
per file, or split on a separator), from files, directories and globs.

Planning walks the inputs once without parsing records (JSONL: line starts; text: separator
positions; Parquet: row counts from the footer) and cuts them into shards of N records, each a
list of :class:`Segment` (file, first record, count, byte offset). A shard then reads only its
own records: it seeks to its byte offset (JSONL, text) or reads only the row groups that hold
its rows (Parquet).
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.job_schemas import InputFormat, InputSpec

logger = logging.getLogger(__name__)

KNOWN_SUFFIXES: dict[str, InputFormat] = {
    ".jsonl": InputFormat.jsonl,
    ".ndjson": InputFormat.jsonl,
    ".parquet": InputFormat.parquet,
    ".txt": InputFormat.text,
    ".md": InputFormat.text,
}
_CHUNK = 1 << 20


class InputError(Exception):
    """The job's input is missing or unreadable: the job fails at once, without retries."""


@dataclass(frozen=True)
class SourceFile:
    path: Path
    format: InputFormat


@dataclass(frozen=True)
class Segment:
    """``count`` consecutive records of one file, starting at record ``first`` of the file
    (JSONL/text: at byte ``offset``)."""

    path: str
    format: InputFormat
    first: int
    count: int
    offset: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Segment:
        return cls(
            path=d["path"],
            format=InputFormat(d["format"]),
            first=int(d["first"]),
            count=int(d["count"]),
            offset=int(d.get("offset", 0)),
        )


@dataclass
class Plan:
    shards: list[list[Segment]]
    records_total: int
    files: list[str]


@dataclass
class RawRecord:
    """One input record: its position in the stage's input, its fields, or why it is bad."""

    index: int
    data: dict[str, Any] | None
    error: str | None = None


# --------------------------------------------------------------------------------------------
# Discovery


def _format_of(path: Path, fmt: InputFormat) -> InputFormat:
    if fmt is not InputFormat.auto:
        return fmt
    return KNOWN_SUFFIXES.get(path.suffix.lower(), InputFormat.text)


def discover(spec: InputSpec) -> list[SourceFile]:
    """Every input file, in a deterministic order. Raises InputError naming what is missing."""
    found: list[Path] = []
    for raw in spec.paths:
        expanded = str(Path(raw).expanduser())
        if glob.has_magic(expanded):
            matches = sorted(Path(p) for p in glob.glob(expanded, recursive=True))
            files = [p for p in matches if p.is_file()]
            if not files:
                raise InputError(f"input pattern {raw!r} matched no files")
            found += files
        else:
            path = Path(expanded)
            if path.is_dir():
                files = sorted(
                    p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in KNOWN_SUFFIXES
                )
                if not files:
                    raise InputError(
                        f"input folder {raw!r} holds no .jsonl, .ndjson, .parquet, .txt or "
                        ".md files"
                    )
                found += files
            elif path.is_file():
                found.append(path)
            else:
                raise InputError(f"input {raw!r} does not exist")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return [SourceFile(p, _format_of(p, spec.format)) for p in unique]


# --------------------------------------------------------------------------------------------
# Counting (planning)


def _jsonl_starts(path: Path) -> Iterator[int]:
    """Byte offset of each non-blank line."""
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield offset
            offset += len(line)


def _separated_starts(path: Path, separator: str) -> Iterator[int]:
    """Byte offset of each non-blank piece between separators (streamed in 1 MiB chunks)."""
    sep = separator.encode()
    with open(path, "rb") as f:
        buf = b""
        buf_start = 0  # file offset of buf[0]
        piece_start = 0
        while True:
            chunk = f.read(_CHUNK)
            buf += chunk
            search_from = 0
            while True:
                at = buf.find(sep, search_from)
                if at < 0:
                    break
                if buf[piece_start - buf_start : at].strip():
                    yield piece_start
                piece_start = buf_start + at + len(sep)
                search_from = at + len(sep)
            if not chunk:
                if buf[piece_start - buf_start :].strip():
                    yield piece_start
                return
            # keep the current piece (a separator cut by the chunk border is found next round)
            keep_from = piece_start - buf_start
            buf = buf[keep_from:]
            buf_start += keep_from


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception as exc:
        raise InputError(f"cannot read Parquet file {path}: {exc}") from exc


def _record_starts(src: SourceFile, spec: InputSpec) -> Iterator[int]:
    """One offset per record of the file (Parquet: the row number)."""
    if src.format is InputFormat.jsonl:
        yield from _jsonl_starts(src.path)
    elif src.format is InputFormat.parquet:
        yield from range(_parquet_rows(src.path))
    elif spec.separator is None:
        yield 0
    else:
        yield from _separated_starts(src.path, spec.separator)


def plan(spec: InputSpec, shard_size: int, *, limit: int | None = None) -> Plan:
    """Cut the inputs into shards of ``shard_size`` records (the last may be shorter)."""
    sources = discover(spec)
    shards: list[list[Segment]] = []
    total = 0
    for src in sources:
        seg: Segment | None = None
        try:
            for first, offset in enumerate(_record_starts(src, spec)):
                if limit is not None and total >= limit:
                    break
                if total % shard_size == 0:
                    if seg is not None:
                        shards[-1].append(seg)
                    shards.append([])
                    seg = None
                if seg is None:
                    seg = Segment(str(src.path), src.format, first, 0, offset)
                seg = Segment(seg.path, seg.format, seg.first, seg.count + 1, seg.offset)
                total += 1
        except OSError as exc:
            raise InputError(f"cannot read input {src.path}: {exc}") from exc
        if seg is not None:
            shards[-1].append(seg)
        if limit is not None and total >= limit:
            break
    return Plan(shards=shards, records_total=total, files=[str(s.path) for s in sources])


# --------------------------------------------------------------------------------------------
# Reading a shard


def _as_record(index: int, line: str | bytes) -> RawRecord:
    try:
        data = json.loads(line)
    except ValueError as exc:
        return RawRecord(index, None, f"invalid JSON: {exc}")
    if not isinstance(data, dict):
        return RawRecord(index, None, f"expected a JSON object, got {type(data).__name__}")
    return RawRecord(index, data)


def _read_jsonl(seg: Segment, start_index: int) -> Iterator[RawRecord]:
    with open(seg.path, "rb") as f:
        f.seek(seg.offset)
        n = 0
        for line in f:
            if n >= seg.count:
                break
            if not line.strip():
                continue
            yield _as_record(start_index + n, line)
            n += 1


def _read_parquet(seg: Segment, start_index: int, batch_rows: int = 1024) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(seg.path)
    meta = pf.metadata
    wanted: list[int] = []
    row = 0
    skip = 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if row + n > seg.first and row < seg.first + seg.count:
            if not wanted:
                skip = seg.first - row
            wanted.append(g)
        row += n
    produced = 0
    for batch in pf.iter_batches(batch_size=batch_rows, row_groups=wanted):
        rows = batch.to_pylist()
        if skip:
            dropped = min(skip, len(rows))
            rows = rows[dropped:]
            skip -= dropped
        for data in rows:
            if produced >= seg.count:
                return
            yield RawRecord(start_index + produced, dict(data))
            produced += 1


def _read_text(seg: Segment, start_index: int, separator: str | None) -> Iterator[RawRecord]:
    source = Path(seg.path).name
    if separator is None:
        try:
            text = Path(seg.path).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            yield RawRecord(start_index, None, f"not UTF-8 text: {exc}")
            return
        yield RawRecord(start_index, {"text": text, "source": source})
        return
    sep = separator.encode()
    produced = 0
    with open(seg.path, "rb") as f:
        f.seek(seg.offset)
        buf = b""
        eof = False
        while produced < seg.count:
            at = buf.find(sep)
            if at < 0 and not eof:
                chunk = f.read(_CHUNK)
                eof = not chunk
                buf += chunk
                continue
            piece, buf = (buf[:at], buf[at + len(sep) :]) if at >= 0 else (buf, b"")
            if piece.strip():
                try:
                    text = piece.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield RawRecord(start_index + produced, None, f"not UTF-8 text: {exc}")
                else:
                    yield RawRecord(start_index + produced, {"text": text, "source": source})
                produced += 1
            if at < 0 and eof:
                return


def read_shard(segments: list[Segment], spec: InputSpec, start_index: int) -> list[RawRecord]:
    """The records of one shard; ``start_index`` is the position of its first record in the
    stage's input. JSONL/Parquet records without a ``source`` get their file's name."""
    out: list[RawRecord] = []
    index = start_index
    for seg in segments:
        if seg.format is InputFormat.jsonl:
            records: Iterator[RawRecord] = _read_jsonl(seg, index)
        elif seg.format is InputFormat.parquet:
            records = _read_parquet(seg, index)
        else:
            records = _read_text(seg, index, spec.separator)
        for rec in records:
            if rec.data is not None and seg.format is not InputFormat.text:
                rec.data.setdefault("source", Path(seg.path).name)
            out.append(rec)
        index += seg.count
    return out


def plan_to_json(p: Plan, shard_size: int) -> dict[str, Any]:
    return {
        "shard_size": shard_size,
        "records_total": p.records_total,
        "files": p.files,
        "shards": [[s.to_json() for s in shard] for shard in p.shards],
    }


def shards_from_json(d: dict[str, Any]) -> list[list[Segment]]:
    return [[Segment.from_json(s) for s in shard] for shard in d["shards"]]
