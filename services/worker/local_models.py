"""Model services a worker starts itself, for stages that need a model the job itself trains
(TriPosT's attempts and evaluations: each iteration's model is made by the job).

``async with local_models.serve(model) as client`` gives a :class:`ModelServiceClient` of a
model service on that model, started on a free loopback port the first time (``python -m
services.model_server --role agent --model <folder>``) and kept while it is in use. One model
is served at a time: a request for another model waits until the current one is no longer in
use, then the service is stopped and one on the new model started. Each service gets a random
internal token (only this worker can call it) and dies with the worker (Linux: the kernel
kills it when its parent dies, kill -9 included), so a killed worker leaves no service behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from gateway.ensemble import PROJECT_ROOT, child_env, free_port, model_service_command
from services.worker.inputs import InputError
from services.worker.processes import die_with_parent
from services.worker.settings import WorkerSettings
from shared.clients import ModelServiceClient
from shared.errors import InvalidRequest
from shared.model_registry import ModelRegistry

logger = logging.getLogger(__name__)

STOP_GRACE_S = 10.0


class LocalModelError(RuntimeError):
    """The service exited or did not become ready in time (the message has its log's tail)."""


def resolve_local_model(model: str, settings: WorkerSettings) -> str:
    """The folder of a model (a folder inside the data roots, a models-cache name or a
    registered name); a model that is not on this machine, or a folder outside the data roots,
    is an :class:`InputError` (the job fails at once)."""
    from services.model_server.models import resolve_model

    try:
        return resolve_model(
            model,
            artifacts_dir=settings.artifacts_dir.expanduser(),
            allow_hub=False,
            folder_roots=settings.model_roots(),
        )
    except InvalidRequest as exc:
        raise InputError(f"model: {exc.message}") from exc


def is_tripost_model(model: str, artifacts_dir: Path) -> bool:
    """A model registered by a ``train_tripost`` stage: it was trained on TriPosT's text
    format, so it is prompted without worked examples."""
    card = ModelRegistry(artifacts_dir).find(model)
    return card is not None and card.kind == "tripost"


@dataclass
class _Served:
    path: str
    proc: asyncio.subprocess.Process
    client: ModelServiceClient
    log: Path


class LocalModels:
    """The model services of one worker process (see the module's docstring)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self._cond = asyncio.Condition()
        self._current: _Served | None = None
        self._users = 0

    @contextlib.asynccontextmanager
    async def serve(self, model: str) -> AsyncIterator[ModelServiceClient]:
        """A client of a service on ``model``, held for the block."""
        path = await asyncio.to_thread(resolve_local_model, model, self.settings)
        async with self._cond:
            while self._users and self._current is not None and self._current.path != path:
                await self._cond.wait()
            current = self._current
            if current is None or current.path != path or current.proc.returncode is not None:
                await self._stop()
                self._current = current = await self._start(path)
            self._users += 1
        try:
            yield current.client
        finally:
            async with self._cond:
                self._users -= 1
                self._cond.notify_all()

    async def _start(self, path: str) -> _Served:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        token = secrets.token_hex(16)
        cmd = model_service_command("agent", port, model=path, engine=self.settings.local_engine)
        env = child_env(
            {
                "MODEL_SERVER_INTERNAL_TOKEN": token,
                "MODEL_SERVER_ARTIFACTS_DIR": str(self.settings.artifacts_dir.expanduser()),
            }
        )
        logs = self.settings.artifacts_dir.expanduser() / "_worker_logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"local-model-{port}.log"
        with open(log_path, "ab") as log:  # noqa: ASYNC230 - opening a log file is instant
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                cwd=PROJECT_ROOT,
                preexec_fn=die_with_parent,
            )
        client = ModelServiceClient(
            "local",
            url,
            token=token,
            timeout=self.settings.request_timeout_s,
            connect_timeout=self.settings.connect_timeout_s,
        )
        served = _Served(path, proc, client, log_path)
        logger.info("serving %s locally at %s (process %d, log %s)", path, url, proc.pid, log_path)
        deadline = time.monotonic() + self.settings.local_ready_timeout_s
        while not await client.ready():
            if proc.returncode is not None or time.monotonic() > deadline:
                why = (
                    f"exited with status {proc.returncode}"
                    if proc.returncode is not None
                    else f"not ready after {self.settings.local_ready_timeout_s:g}s"
                )
                await self._stop_served(served)
                raise LocalModelError(f"the model service on {path} {why}:\n{_tail(log_path)}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.5)
        return served

    async def _stop(self) -> None:
        if self._current is not None:
            served, self._current = self._current, None
            await self._stop_served(served)

    @staticmethod
    async def _stop_served(served: _Served) -> None:
        await served.client.aclose()
        if served.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                served.proc.terminate()
            try:
                await asyncio.wait_for(served.proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    served.proc.kill()
                await served.proc.wait()

    async def aclose(self) -> None:
        async with self._cond:
            await self._stop()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
