"""The job API: submit, list, inspect and cancel offline jobs, and download their artifacts.

Mount it in the gateway's ``create_app``::

    from gateway.jobs import create_jobs_router
    app.include_router(create_jobs_router(settings))   # settings: a JobStoreSettings

The router brings its own lifespan (merged into the app's by ``include_router``): it opens a
:class:`shared.jobs_store.JobStore` on ``app.state.jobs`` and closes it at shutdown; tests may
pass ``store=`` instead. Redis down -> 503, an unknown job -> 404, a bad spec -> 422 naming the
field (the app's error handlers). No torch, no model code.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse

from shared.errors import NotFound, ServiceUnavailable
from shared.http import error_responses
from shared.job_schemas import ArtifactList, JobList, JobSpec, JobState, JobStatus
from shared.jobs_store import JobStore, JobStoreSettings, check_job_id

MEDIA_TYPES = {
    ".jsonl": "application/x-ndjson",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}


_NOTES = {
    404: "No such job (or artifact).",
    409: "The job exists already, or has already finished.",
    503: "The job store (Redis) is unreachable.",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return error_responses(*statuses, notes=_NOTES)


def get_job_store(request: Request) -> JobStore:
    store: JobStore | None = getattr(request.app.state, "jobs", None)
    if store is None:  # only before the lifespan has run
        raise ServiceUnavailable("the job store is not open yet")
    return store


JobStoreDep = Annotated[JobStore, Depends(get_job_store)]


def create_jobs_router(
    settings: JobStoreSettings | None = None, *, store: JobStore | None = None
) -> APIRouter:
    """The ``/v1/jobs`` routes. Without ``store`` the router's lifespan connects to the Redis
    that ``settings`` name (default: ``JobStoreSettings()``) and closes it at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = store is None
        opened = store if store is not None else JobStore.from_settings(
            settings or JobStoreSettings()
        )  # fmt: skip
        app.state.jobs = opened
        try:
            yield
        finally:
            app.state.jobs = None
            if own:
                await opened.aclose()

    router = APIRouter(prefix="/v1/jobs", tags=["jobs"], lifespan=lifespan)

    @router.post("", status_code=202, responses=_errors(401, 409, 422, 503))
    async def submit(spec: JobSpec, jobs: JobStoreDep) -> JobStatus:
        """Submit a job (prefilter, extract, filter, sft_data, rationale_pipeline,
        train_rationalyst, tripost_collect)."""
        return await jobs.create(spec)

    @router.get("", responses=_errors(401, 422, 503))
    async def list_jobs(
        jobs: JobStoreDep,
        state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> JobList:
        """List jobs, newest first."""
        return JobList(jobs=await jobs.list_jobs(limit=limit, state=state))

    @router.get("/{job_id}", responses=_errors(401, 404, 422, 503))
    async def get_job(job_id: str, jobs: JobStoreDep) -> JobStatus:
        """A job's state, progress, counts, sampled errors, timings and outputs."""
        return await jobs.get(job_id)

    @router.post("/{job_id}/cancel", responses=_errors(401, 404, 409, 422, 503))
    async def cancel_job(job_id: str, jobs: JobStoreDep) -> JobStatus:
        """Cancel a job; running shards stop at their next record."""
        return await jobs.cancel(job_id)

    @router.get("/{job_id}/artifacts", responses=_errors(401, 404, 422, 503))
    async def list_artifacts(job_id: str, jobs: JobStoreDep) -> ArtifactList:
        """Every file of a job (names to download)."""
        check_job_id(job_id)
        artifacts = jobs.artifacts(job_id)
        if not artifacts:
            await jobs.get(job_id)  # 404 for an unknown job, [] for one not started yet
        return ArtifactList(job_id=job_id, artifacts=artifacts)

    @router.get(
        "/{job_id}/artifacts/{name:path}",
        response_class=FileResponse,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "The file."},
            **_errors(401, 404, 422, 503),
        },
    )
    async def download_artifact(job_id: str, name: str, jobs: JobStoreDep) -> FileResponse:
        """Download one file of a job (a name from the artifact list)."""
        path = jobs.artifact_path(job_id, name)
        if not path.is_file():  # pragma: no cover - artifact_path checks it
            raise NotFound(f"no artifact {name!r} in job {job_id}")
        return FileResponse(
            path,
            media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
            filename=path.name,
        )

    return router
