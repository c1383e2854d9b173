"""Uploaded files on the shared artifacts volume, for jobs to read by id.

Layout: ``<artifacts>/_files/<id>/<name>`` holds the content (``name``: the uploaded file name
made safe, so its extension picks the input format and records keep it as their ``source``);
``<artifacts>/_files/<id>.json`` the metadata, written last. A file whose metadata exists is
complete; an upload interrupted midway leaves no metadata and is never listed. Job ids cannot
start with ``_``, so ``_files`` never collides with a job's folder.

The gateway writes, lists and deletes (``/v1/files``); workers only resolve ids to paths.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, BinaryIO, Literal

from shared.data_roots import DataRoots
from shared.errors import NotFound, PayloadTooLarge
from shared.files import fsync_dir, read_json, write_json
from shared.job_schemas import FILE_ID_PATTERN
from shared.openai_schemas import FileDeleted, FileList, FileObject

FILES_DIR = "_files"
_FILE_ID_RE = re.compile(FILE_ID_PATTERN)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CHUNK = 1 << 20


def check_file_id(file_id: str) -> str:
    if not _FILE_ID_RE.match(file_id):
        raise NotFound(f"no file {file_id!r}")
    return file_id


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def display_name(filename: str | None) -> str:
    """The name a file is listed under: the last component of what the client sent."""
    name = re.split(r"[/\\]", filename or "")[-1].strip()
    return name[:255] or "upload"


def stored_name(filename: str) -> str:
    """A file-system-safe name that keeps the extension: ``my notes (1).JSONL`` ->
    ``my_notes_1_.jsonl``."""
    stem, dot, suffix = display_name(filename).rpartition(".")
    if not dot:
        stem, suffix = suffix, ""
    stem = _UNSAFE.sub("_", stem).strip("._")[:120] or "upload"
    suffix = _UNSAFE.sub("", suffix).lower()[:16]
    return f"{stem}.{suffix}" if suffix else stem


STALE_UPLOAD_S = 24 * 3600.0


class Upload:
    """A file being uploaded: ``write`` its bytes as they arrive, then ``commit`` (it is listed
    from then on) or ``abort`` (nothing is left). Blocking: call from a thread."""

    def __init__(self, store: FileStore, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.size = 0
        self.tmp = store.root / f".upload-{secrets.token_hex(8)}.tmp"
        self._file: BinaryIO | None = open(self.tmp, "xb")  # noqa: SIM115 - closed in commit/abort

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise RuntimeError("the upload is finished")
        self.size += len(data)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(
                f"file: larger than the upload limit of {self.max_bytes} bytes", field="file"
            )
        self._file.write(data)

    def commit(self, filename: str | None, purpose: str) -> FileObject:
        """Move the bytes into place (fsynced), then write the metadata: listed from then on."""
        if self._file is None:
            raise RuntimeError("the upload is finished")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        file_id = new_file_id()
        folder = self.store.root / file_id
        folder.mkdir()
        name = stored_name(filename or "")
        os.replace(self.tmp, folder / name)
        fsync_dir(folder)
        now = time.time()
        obj = FileObject(
            id=file_id,
            bytes=self.size,
            created_at=int(now),
            filename=display_name(filename),
            purpose=purpose,
        )
        record = {"file": obj.model_dump(mode="json"), "name": name, "uploaded_at": now}
        write_json(self.store._meta(file_id), record)
        return obj

    def abort(self) -> None:
        """Drop what was written (a no-op after commit)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


class FileStore:
    """The uploads under one artifacts root. Methods block on disk I/O: call them in a thread
    from async code."""

    def __init__(self, artifacts_dir: Path) -> None:
        self.root = Path(artifacts_dir).expanduser() / FILES_DIR

    @property
    def roots(self) -> DataRoots:
        """Where uploaded content lies (jobs may read it by id, whatever ``data_dirs`` says)."""
        return DataRoots.of([self.root])

    def _meta(self, file_id: str) -> Path:
        return self.root / f"{check_file_id(file_id)}.json"

    def begin(self, max_bytes: int) -> Upload:
        """Start an upload of at most ``max_bytes`` (its bytes go to a temporary file)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_uploads()
        return Upload(self, max_bytes)

    def create(
        self, source: BinaryIO, *, filename: str | None, purpose: str, max_bytes: int
    ) -> FileObject:
        """Copy ``source`` into the store; PayloadTooLarge past ``max_bytes`` (nothing kept)."""
        upload = self.begin(max_bytes)
        try:
            while chunk := source.read(_CHUNK):
                upload.write(chunk)
            return upload.commit(filename, purpose)
        finally:
            upload.abort()

    def _remove_stale_uploads(self) -> None:
        """Temporary files of uploads cut off more than a day ago (a gateway killed midway)."""
        cutoff = time.time() - STALE_UPLOAD_S
        for tmp in self.root.glob(".upload-*.tmp"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()

    def _record(self, file_id: str) -> dict[str, Any]:
        try:
            record = read_json(self._meta(file_id))
        except (FileNotFoundError, ValueError):
            raise NotFound(f"no file {file_id!r}") from None
        if not isinstance(record, dict):
            raise NotFound(f"no file {file_id!r}")
        return record

    def get(self, file_id: str) -> FileObject:
        return FileObject.model_validate(self._record(file_id)["file"])

    def content_path(self, file_id: str) -> Path:
        """Where the content of ``file_id`` lies; NotFound if it was never uploaded or deleted."""
        name = str(self._record(file_id)["name"])
        path = self.root / file_id / name
        if "/" in name or not path.is_file():
            raise NotFound(f"no file {file_id!r}")
        return path

    def list(
        self,
        *,
        purpose: str | None = None,
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
        limit: int = 10_000,
    ) -> FileList:
        """Files by upload time (``desc``: newest first); ``after``: the page after that id."""
        found: list[tuple[float, FileObject]] = []
        for meta in self.root.glob("file-*.json") if self.root.is_dir() else []:
            with contextlib.suppress(NotFound, KeyError, TypeError, ValueError):
                record = self._record(meta.stem)
                obj = FileObject.model_validate(record["file"])
                if purpose is None or obj.purpose == purpose:
                    found.append((float(record.get("uploaded_at", obj.created_at)), obj))
        found.sort(key=lambda t: (t[0], t[1].id), reverse=order == "desc")
        files = [obj for _, obj in found]
        if after is not None:
            ids = [f.id for f in files]
            files = files[ids.index(after) + 1 :] if after in ids else []
        page = files[:limit]
        return FileList(
            data=page,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
            has_more=len(files) > limit,
        )

    def delete(self, file_id: str) -> FileDeleted:
        """Remove a file: its metadata first (it is gone from then on), then its content. A
        job that has not read it yet fails naming it."""
        meta = self._meta(file_id)
        self._record(file_id)
        meta.unlink(missing_ok=True)
        shutil.rmtree(self.root / file_id, ignore_errors=True)
        return FileDeleted(id=file_id)
