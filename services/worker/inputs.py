"""Inputs of any size, read as streams: JSONL, Parquet (by row groups), plain text (one document
per file, or split on a separator), from files, directories and globs.

Planning walks the inputs once without parsing records (JSONL: line starts; text: separator
positions; Parquet: row counts from the footer) and cuts them into shards of N records, each a
list of :class:`Segment` (file, first record, count, byte offset). A shard then reads only its
own records: it seeks to its byte offset (JSONL, text) or reads only the row groups that hold
its rows (Parquet).

Every file is read through :class:`InputAccess`: named paths must lie inside the data roots
(:mod:`shared.data_roots`), uploaded files are found by id, and each file is checked again as
it is opened, right before reading.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from shared.data_roots import DataRoots, OutsideDataRoots, literal_part
from shared.errors import NotFound
from shared.file_store import FileStore
from shared.job_schemas import InputFormat, InputSpec
from shared.jobs_store import JobStoreSettings

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
class InputAccess:
    """What a stage may read: paths inside ``roots``, and uploaded files by id from ``files``
    (None: ids are refused)."""

    roots: DataRoots
    files: FileStore | None = None

    @classmethod
    def of_jobs(cls, settings: JobStoreSettings) -> InputAccess:
        """What a job's own inputs may name: paths inside the data roots, uploaded files."""
        return cls(settings.data_roots(), FileStore(settings.artifacts_dir))

    @classmethod
    def under(cls, folder: Path) -> InputAccess:
        """What the worker itself reads between stages: files under ``folder`` only."""
        return cls(DataRoots.of([folder]))

    @property
    def readable(self) -> DataRoots:
        """Where an opened file may lie: the roots, and the uploads."""
        return self.roots + self.files.roots if self.files is not None else self.roots

    def open(self, path: str | Path) -> BinaryIO:
        """Open a file for reading after checking where it really lies (InputError if out)."""
        try:
            return self.readable.open(path)
        except OutsideDataRoots as exc:
            raise InputError(str(exc)) from None
        except OSError as exc:
            raise InputError(f"cannot read input {path}: {exc}") from exc

    def uploaded(self, file_id: str) -> Path:
        if self.files is None:
            raise InputError(f"uploaded file {file_id} cannot be read here")
        try:
            return self.files.content_path(file_id)
        except NotFound:
            raise InputError(f"uploaded file {file_id} does not exist (deleted?)") from None


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


def _named_files(raw: str, access: InputAccess, field: str) -> list[Path]:
    """The files one entry of ``paths`` names, each inside the data roots."""
    try:
        target = access.roots.resolve(raw)
    except OutsideDataRoots as exc:
        raise InputError(f"{field}: {exc}") from None
    base, pattern = literal_part(target)
    if pattern is not None:
        matches = glob.glob(pattern, root_dir=base, recursive=True) if base.is_dir() else []
        files = [base / m for m in sorted(matches) if (base / m).is_file()]
        if not files:
            raise InputError(f"input pattern {raw!r} matched no files")
    elif target.is_dir():
        files = sorted(
            p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in KNOWN_SUFFIXES
        )
        if not files:
            raise InputError(
                f"input folder {raw!r} holds no .jsonl, .ndjson, .parquet, .txt or .md files"
            )
    elif target.is_file():
        files = [target]
    elif target.exists():
        raise InputError(f"input {raw!r} is not a regular file")
    else:
        raise InputError(f"input {raw!r} does not exist")
    try:
        return [access.roots.check(p, name=f"{p} (from {raw!r})") for p in files]
    except OutsideDataRoots as exc:
        raise InputError(f"{field}: {exc}") from None


def discover(
    spec: InputSpec, access: InputAccess, *, field: str = "input.paths"
) -> list[SourceFile]:
    """Every input file (paths, then uploaded files), in a deterministic order, symlinks
    resolved. Raises InputError naming what is missing or outside the data roots (``field``:
    where the paths came from, for the message)."""
    found: list[Path] = []
    for raw in spec.paths or []:
        found += _named_files(raw, access, field)
    found += [access.uploaded(file_id) for file_id in spec.all_file_ids()]
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return [SourceFile(p, _format_of(p, spec.format)) for p in unique]


# --------------------------------------------------------------------------------------------
# Counting (planning)


def _jsonl_starts(path: Path, access: InputAccess) -> Iterator[int]:
    """Byte offset of each non-blank line."""
    offset = 0
    with access.open(path) as f:
        for line in f:
            if line.strip():
                yield offset
            offset += len(line)


def _separated_starts(path: Path, separator: str, access: InputAccess) -> Iterator[int]:
    """Byte offset of each non-blank piece between separators (streamed in 1 MiB chunks)."""
    sep = separator.encode()
    with access.open(path) as f:
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


def _parquet_rows(path: Path, access: InputAccess) -> int:
    import pyarrow.parquet as pq

    with access.open(path) as f:
        try:
            return int(pq.ParquetFile(f).metadata.num_rows)
        except Exception as exc:
            raise InputError(f"cannot read Parquet file {path}: {exc}") from exc


def _record_starts(src: SourceFile, spec: InputSpec, access: InputAccess) -> Iterator[int]:
    """One offset per record of the file (Parquet: the row number)."""
    if src.format is InputFormat.jsonl:
        yield from _jsonl_starts(src.path, access)
    elif src.format is InputFormat.parquet:
        yield from range(_parquet_rows(src.path, access))
    elif spec.separator is None:
        access.open(src.path).close()  # counted without reading; checked all the same
        yield 0
    else:
        yield from _separated_starts(src.path, spec.separator, access)


def plan(
    spec: InputSpec, shard_size: int, access: InputAccess, *, limit: int | None = None
) -> Plan:
    """Cut the inputs into shards of ``shard_size`` records (the last may be shorter)."""
    sources = discover(spec, access)
    shards: list[list[Segment]] = []
    total = 0
    for src in sources:
        seg: Segment | None = None
        try:
            for first, offset in enumerate(_record_starts(src, spec, access)):
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


def _read_jsonl(seg: Segment, start_index: int, access: InputAccess) -> Iterator[RawRecord]:
    with access.open(seg.path) as f:
        f.seek(seg.offset)
        n = 0
        for line in f:
            if n >= seg.count:
                break
            if not line.strip():
                continue
            yield _as_record(start_index + n, line)
            n += 1


def _read_parquet(
    seg: Segment, start_index: int, access: InputAccess, batch_rows: int = 1024
) -> Iterator[RawRecord]:
    with access.open(seg.path) as f:
        yield from _parquet_records(f, seg, start_index, batch_rows)


def _parquet_records(
    f: BinaryIO, seg: Segment, start_index: int, batch_rows: int
) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
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


def _read_text(
    seg: Segment, start_index: int, separator: str | None, access: InputAccess
) -> Iterator[RawRecord]:
    source = Path(seg.path).name
    if separator is None:
        with access.open(seg.path) as whole:
            data = whole.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield RawRecord(start_index, None, f"not UTF-8 text: {exc}")
            return
        yield RawRecord(start_index, {"text": text, "source": source})
        return
    sep = separator.encode()
    produced = 0
    with access.open(seg.path) as f:
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


def read_shard(
    segments: list[Segment], spec: InputSpec, start_index: int, access: InputAccess
) -> list[RawRecord]:
    """The records of one shard; ``start_index`` is the position of its first record in the
    stage's input. JSONL/Parquet records without a ``source`` get their file's name. Each
    file is checked against ``access`` as it is opened (InputError when it lies outside)."""
    out: list[RawRecord] = []
    index = start_index
    for seg in segments:
        if seg.format is InputFormat.jsonl:
            records: Iterator[RawRecord] = _read_jsonl(seg, index, access)
        elif seg.format is InputFormat.parquet:
            records = _read_parquet(seg, index, access)
        else:
            records = _read_text(seg, index, spec.separator, access)
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
