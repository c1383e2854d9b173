"""Uploads (/v1/files, OpenAI's Files API shape) and the job API's input check, on an
in-process gateway whose Redis is unreachable (the checks answer before it is needed)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.testing import fake_upstreams

pytestmark = pytest.mark.unit


@contextlib.asynccontextmanager
async def served(tmp_path: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    (tmp_path / "data").mkdir(exist_ok=True)
    config = GatewaySettings(
        artifacts_dir=tmp_path / "artifacts",
        data_dirs=[tmp_path / "data"],
        redis_url="redis://127.0.0.1:1/0",
        redis_timeout_s=0.5,
        **settings,
    )
    app = create_app(config, clients=fake_upstreams())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def envelope(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert {"type", "message", "request_id"} <= err.keys()
    if field is not None:
        assert err["field"] == field, err
    return err


async def test_gateway_files_upload_list_get_content_delete(tmp_path: Path) -> None:
    async with served(tmp_path) as client:
        r = await client.post(
            "/v1/files",
            files={"file": ("my corpus.JSONL", b'{"text": "a"}\n')},
            data={"purpose": "job_input"},
        )
        assert r.status_code == 200, r.text
        obj = r.json()
        assert obj["id"].startswith("file-") and obj["object"] == "file"
        assert (obj["bytes"], obj["filename"], obj["purpose"]) == (
            14,
            "my corpus.JSONL",
            "job_input",
        )
        assert isinstance(obj["created_at"], int)
        second = (await client.post("/v1/files", files={"file": ("b.txt", b"b")})).json()
        assert second["purpose"] == "user_data"

        listed = (await client.get("/v1/files")).json()
        assert listed["object"] == "list"
        assert [f["id"] for f in listed["data"]] == [second["id"], obj["id"]]  # newest first
        asc = (await client.get("/v1/files", params={"order": "asc", "limit": 1})).json()
        assert [f["id"] for f in asc["data"]] == [obj["id"]] and asc["has_more"] is True
        page = (await client.get("/v1/files", params={"order": "asc", "after": obj["id"]})).json()
        assert [f["id"] for f in page["data"]] == [second["id"]]
        only = (await client.get("/v1/files", params={"purpose": "job_input"})).json()
        assert [f["id"] for f in only["data"]] == [obj["id"]]

        assert (await client.get(f"/v1/files/{obj['id']}")).json() == obj
        content = await client.get(f"/v1/files/{obj['id']}/content")
        assert content.status_code == 200 and content.content == b'{"text": "a"}\n'
        assert content.headers["content-type"] == "application/x-ndjson"
        stored = tmp_path / "artifacts" / "_files" / obj["id"] / "my_corpus.jsonl"
        assert stored.read_bytes() == content.content  # the extension picks the input format

        r = await client.delete(f"/v1/files/{obj['id']}")
        assert r.status_code == 200
        assert r.json() == {"id": obj["id"], "object": "file", "deleted": True}
        for path in (f"/v1/files/{obj['id']}", f"/v1/files/{obj['id']}/content"):
            assert envelope(await client.get(path), 404)["type"] == "not_found"
        envelope(await client.delete(f"/v1/files/{obj['id']}"), 404)
        assert not stored.parent.exists()


@pytest.mark.parametrize("file_id", ["file-nope", "..", "file-..%2F..%2Fx", "job-1"])
async def test_gateway_files_unknown_ids_are_404(tmp_path: Path, file_id: str) -> None:
    async with served(tmp_path) as client:
        for method, path in (("GET", f"/v1/files/{file_id}"),
                             ("GET", f"/v1/files/{file_id}/content"),
                             ("DELETE", f"/v1/files/{file_id}")):  # fmt: skip
            r = await client.request(method, path)
            assert r.status_code == 404, (method, path, r.text)


async def test_gateway_files_over_the_limit_is_413_and_keeps_nothing(tmp_path: Path) -> None:
    async with served(tmp_path, max_upload_bytes=100) as client:
        r = await client.post("/v1/files", files={"file": ("big.jsonl", b"x" * 101)})
        assert envelope(r, 413, "file")["type"] == "payload_too_large"
        ok = await client.post("/v1/files", files={"file": ("ok.jsonl", b"x" * 100)})
        assert ok.status_code == 200 and ok.json()["bytes"] == 100
        big = b"x" * (200 * 1024)  # past the limit and the form's overhead: refused by length
        r = await client.post("/v1/files", files={"file": ("huge.jsonl", big)})
        envelope(r, 413, "file")

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: cut off as it streams
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="c.txt"\r\n\r\n'
            for _ in range(100):
                yield b"y" * 4096

        r = await client.post(
            "/v1/files",
            content=chunked(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        envelope(r, 413, "file")
    files = tmp_path / "artifacts" / "_files"
    assert sorted(p.name for p in files.iterdir()) == sorted(
        [ok.json()["id"], ok.json()["id"] + ".json"]
    )


TRUNCATED = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc'


@pytest.mark.parametrize(
    ("kwargs", "field", "says"),
    [
        ({"json": {"file": "x"}}, "body", "multipart/form-data"),
        ({"data": {"purpose": "user_data"}}, "body", "multipart/form-data"),  # urlencoded
        ({"files": {"other": ("a.txt", b"a")}}, "file", "`file`"),
        ({"files": {"file": ("a.txt", b"a")}, "data": {"purpose": "Bad Purpose"}}, "purpose", ""),
        ({"files": {"file": ("a.txt", b"a")}, "data": {"purpose": ""}}, "purpose", ""),
        ({"content": TRUNCATED, "headers": {"content-type": "multipart/form-data; boundary=b"}},
         "body", "ends early"),
        (
            {"files": [("file", ("a.txt", b"a")), ("file", ("b.txt", b"b"))]},
            "file", "one file",
        ),
    ],
)  # fmt: skip
async def test_gateway_files_bad_uploads_are_422(
    tmp_path: Path, kwargs: dict[str, Any], field: str, says: str
) -> None:
    async with served(tmp_path) as client:
        err = envelope(await client.post("/v1/files", **kwargs), 422, field)
        assert err["type"] == "invalid_request" and says in err["message"]
        assert (await client.get("/v1/files")).json()["data"] == []


async def test_gateway_files_work_with_the_openai_client(tmp_path: Path) -> None:
    import openai

    async with served(tmp_path) as http:
        client = openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http)
        created = await client.files.create(file=("rows.jsonl", b"{}\n"), purpose="user_data")
        assert created.id.startswith("file-") and created.bytes == 3
        assert [f.id async for f in client.files.list()] == [created.id]
        assert (await client.files.retrieve(created.id)).filename == "rows.jsonl"
        assert (await client.files.content(created.id)).content == b"{}\n"
        assert (await client.files.delete(created.id)).deleted is True
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(created.id)


async def test_gateway_files_need_the_api_key(tmp_path: Path) -> None:
    async with served(tmp_path, api_keys="k1") as client:
        r = await client.post("/v1/files", files={"file": ("a.txt", b"a")})
        assert envelope(r, 401)["type"] == "unauthorized"
        assert (await client.get("/v1/files")).status_code == 401
        ok = await client.get("/v1/files", headers={"Authorization": "Bearer k1"})
        assert ok.status_code == 200


# -- the job API: inputs inside the data roots, uploaded files by id --------------------------


@pytest.mark.parametrize(
    "paths",
    [["../etc/passwd"], ["/etc/passwd"], ["{tmp}/artifacts/x.jsonl"], ["{tmp}/*/x.jsonl"],
     ["{tmp}/data/link.jsonl"]],
)  # fmt: skip
async def test_gateway_jobs_inputs_outside_the_data_roots_are_422(
    tmp_path: Path, paths: list[str]
) -> None:
    async with served(tmp_path) as client:
        (tmp_path / "data" / "link.jsonl").symlink_to("/etc/passwd")
        spec = {"kind": "sft_data", "input": {"paths": [p.format(tmp=tmp_path) for p in paths]}}
        err = envelope(await client.post("/v1/jobs", json=spec), 422, "input.paths")
        assert err["type"] == "invalid_request"
        assert err["message"].startswith("input.paths: ") and "data roots" in err["message"]


async def test_gateway_jobs_unknown_file_id_is_422(tmp_path: Path) -> None:
    async with served(tmp_path) as client:
        spec = {"kind": "prefilter", "input": {"file_id": "file-0123456789abcdef01234567"}}
        err = envelope(await client.post("/v1/jobs", json=spec), 422, "input.file_id")
        assert "no uploaded file" in err["message"]
        spec = {"kind": "prefilter", "input": {"file_id": "../../etc/passwd"}}
        envelope(await client.post("/v1/jobs", json=spec), 422, "prefilter.input.file_id")
        spec = {"kind": "prefilter", "input": {}}
        err = envelope(await client.post("/v1/jobs", json=spec), 422)
        assert "input.paths, input.file_id or input.file_ids" in err["message"]


async def test_gateway_jobs_accepted_inputs_go_on_to_the_job_store(tmp_path: Path) -> None:
    """Inside the roots or uploaded: the check passes and the (unreachable) Redis answers."""
    async with served(tmp_path) as client:
        upload = (await client.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")})).json()
        for inputs in ({"paths": [str(tmp_path / "data" / "a.jsonl")]},
                       {"paths": ["*.jsonl"]}, {"file_ids": [upload["id"]]}):  # fmt: skip
            r = await client.post("/v1/jobs", json={"kind": "sft_data", "input": inputs})
            assert envelope(r, 503)["type"] == "service_unavailable", inputs
