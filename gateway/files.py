"""Uploaded files: ``/v1/files``, shaped like OpenAI's Files API (the openai client's
``files.create/list/retrieve/content/delete`` work unchanged).

A job names an upload in ``input.file_id`` (or ``input.file_ids``) instead of a path, so a
client without access to the workers' file system can still feed them data. Uploads live on
the artifacts volume (:class:`shared.file_store.FileStore`); the body is streamed to disk and
cut off at ``max_upload_bytes`` (413), never held in memory.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from shared.errors import InvalidRequest, PayloadTooLarge
from shared.file_store import FileStore
from shared.http import error_responses
from shared.jobs_store import JobStoreSettings
from shared.openai_schemas import FileDeleted, FileList, FileObject

MEDIA_TYPES = {
    ".jsonl": "application/x-ndjson",
    ".ndjson": "application/x-ndjson",
    ".json": "application/json",
    ".parquet": "application/vnd.apache.parquet",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
}
DEFAULT_PURPOSE = "user_data"
_PURPOSE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_FORM_OVERHEAD = 64 * 1024
"""Room for the multipart boundaries and the other fields beyond the file's own bytes."""

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {
                            "type": "string",
                            "default": DEFAULT_PURPOSE,
                            "pattern": _PURPOSE_RE.pattern,
                        },
                    },
                }
            }
        },
    }
}


async def _capped(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The request body, PayloadTooLarge as soon as more than ``limit`` bytes arrived."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise PayloadTooLarge(f"body: larger than {limit} bytes", field="file")
        yield chunk


class _Form:
    """python-multipart's callbacks for one upload: the bytes of the part named ``file`` are
    handed on as they arrive (:meth:`take`), other parts are kept as short text fields."""

    max_field_bytes = 1024

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.has_file = False
        self.ended = False
        self._pending: list[bytes] = []
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._part: str | None = None
        self._value = bytearray()

    def take(self) -> bytes:
        """The file's bytes that arrived since the last call."""
        data = b"".join(self._pending)
        self._pending.clear()
        return data

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._field,
            "on_header_value": self._header,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._done,
        }

    def _begin(self) -> None:
        self._disposition, self._part, self._value = b"", None, bytearray()

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InvalidRequest("body: a multipart part without a name", field="body")
        self._part = options[b"name"].decode("utf-8", "replace")
        if self._part == "file":
            if self.has_file:
                raise InvalidRequest("file: one file per upload", field="file")
            self.has_file = True
            raw = options.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw is not None else None

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file":
            self._pending.append(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > self.max_field_bytes:
            raise InvalidRequest(
                f"{self._part}: longer than {self.max_field_bytes} bytes", field=self._part
            )

    def _end(self) -> None:
        if self._part is not None and self._part != "file":
            self.fields[self._part] = self._value.decode("utf-8", "replace")

    def _done(self) -> None:
        self.ended = True


def _boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise InvalidRequest(
            "body: expected multipart/form-data with a `file` part (curl -F file=@x.jsonl)",
            field="body",
        )
    return options[b"boundary"]


def create_files_router(settings: JobStoreSettings, *, max_upload_bytes: int) -> APIRouter:
    """The ``/v1/files`` routes over the uploads under ``settings.artifacts_dir``."""
    store = FileStore(settings.artifacts_dir)
    router = APIRouter(prefix="/v1/files", tags=["files"])

    @router.post("", responses=error_responses(401, 413, 422), openapi_extra=_UPLOAD_BODY)
    async def upload_file(request: Request) -> FileObject:
        """Upload a file (multipart: `file`, optional `purpose`) for jobs to read by id."""
        boundary = _boundary(request)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_upload_bytes + _FORM_OVERHEAD:
            raise PayloadTooLarge(
                f"file: larger than the upload limit of {max_upload_bytes} bytes", field="file"
            )
        form = _Form()
        parser = MultipartParser(boundary, form.callbacks())
        upload = await asyncio.to_thread(store.begin, max_upload_bytes)
        try:
            async for chunk in _capped(request.stream(), max_upload_bytes + _FORM_OVERHEAD):
                parser.write(chunk)
                if data := form.take():
                    await asyncio.to_thread(upload.write, data)
            if not form.ended:
                raise InvalidRequest("body: the multipart body ends early", field="body")
            if not form.has_file:
                raise InvalidRequest("file: a multipart part named `file` is needed", field="file")
            purpose = form.fields.get("purpose", DEFAULT_PURPOSE)  # sent empty: refused
            if not _PURPOSE_RE.match(purpose):
                raise InvalidRequest(
                    "purpose: lowercase letters, digits, _ and - (for example user_data)",
                    field="purpose",
                )
            return await asyncio.to_thread(upload.commit, form.filename, purpose)
        except FormParserError as exc:
            raise InvalidRequest(f"body: malformed multipart data ({exc})", field="body") from None
        finally:
            await asyncio.to_thread(upload.abort)

    @router.get("", responses=error_responses(401, 422))
    async def list_files(
        purpose: Annotated[str | None, Query(description="Only files of this purpose.")] = None,
        order: Annotated[Literal["asc", "desc"], Query(description="By upload time.")] = "desc",
        after: Annotated[str | None, Query(description="The page after this file id.")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    ) -> FileList:
        """List uploaded files, newest first."""
        return await asyncio.to_thread(
            store.list, purpose=purpose, order=order, after=after, limit=limit
        )

    @router.get("/{file_id}", responses=error_responses(401, 404, 422))
    async def get_file(file_id: str) -> FileObject:
        """One uploaded file's metadata."""
        return await asyncio.to_thread(store.get, file_id)

    @router.get(
        "/{file_id}/content",
        response_class=FileResponse,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "The bytes."},
            **error_responses(401, 404, 422),
        },
    )
    async def file_content(file_id: str) -> FileResponse:
        """Download an uploaded file's content."""
        obj = await asyncio.to_thread(store.get, file_id)
        path = await asyncio.to_thread(store.content_path, file_id)
        return FileResponse(
            path,
            media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
            filename=obj.filename,
        )

    @router.delete("/{file_id}", responses=error_responses(401, 404, 422))
    async def delete_file(file_id: str) -> FileDeleted:
        """Delete an uploaded file (a job that has not read it yet fails naming it)."""
        return await asyncio.to_thread(store.delete, file_id)

    return router
