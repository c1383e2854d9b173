"""The model a service serves now, and switching it at run time without dropping a request.

Leases. Each request takes the engine that is current when it starts (:meth:`ServedModel.lease`)
and holds it until its response is built, so a switch never changes the model under a request
that is already running: that request finishes on the engine it started with.

Switching (:meth:`ServedModel.switch`, ``POST /admin/model``). The new engine is built from the
same settings with ``model`` replaced and fully started while the old one keeps serving; then
the two are swapped in one step (one event loop: a request gets the old model or the new one,
never a mix). The old engine is retired in the background: closed once its in-flight requests
have finished, or after a bounded wait (the request timeout plus :data:`DRAIN_GRACE_S`;
requests still running then fail with 503), with a log line either way.

- Both models are in memory while the new one loads. On a GPU with vLLM the new engine gets
  only the memory the old one leaves free: the load fails (503) unless
  MODEL_SERVER_VLLM_GPU_MEMORY_UTILIZATION leaves room for two models.
- One load at a time: a switch while another switch, or the first load, is in progress is a
  Conflict (409).
- Only models on this machine are accepted: a model folder, a models-cache name or the name of
  a registered trained model. Anything else is InvalidRequest (422, field ``model``): a hub id
  would be a download at run time.
- A new engine that fails to build or start is closed and the switch answers
  ServiceUnavailable (503) with the reason; the old model keeps serving.
- The load runs as its own task: a client that disconnects or times out does not cancel it,
  and the switch still happens (``/ready`` tells which model is served).
- Switching to the model already served loads it again (a retrained model registered under
  the same name, a folder overwritten in place).
- Remote engine: switching changes the model name sent to the upstream server (an upstream
  that serves several models: vLLM with several LoRA adapters, an OpenAI-compatible router).
  Any name is accepted (the upstream is the judge of it); the tokenizer is
  MODEL_SERVER_TOKENIZER when set, else the new name resolved like a local model. Whether the
  upstream serves that name is not checked: requests then answer 503 with the upstream's
  message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from services.model_server.engines import build_engine, model_location
from services.model_server.engines.base import Engine
from services.model_server.handlers import ModelService
from services.model_server.metrics import ModelMetrics
from services.model_server.settings import ModelServerSettings
from shared.errors import Conflict, EngineError, ServiceError, ServiceUnavailable
from shared.schemas import SwitchModelResponse

logger = logging.getLogger(__name__)

EngineFactory = Callable[[ModelServerSettings], Engine]

DRAIN_GRACE_S = 10.0
"""Added to the request timeout: how long a replaced engine waits for its requests."""


@dataclass(eq=False)
class _Slot:
    """One started engine and the requests that hold it."""

    service: ModelService
    model: str  # as asked: registered name, cache name, folder (remote: upstream name)
    location: str  # what the engine loaded
    load_s: float
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def engine(self) -> Engine:
        return self.service.engine


class ServedModel:
    """The served model of one model service: leases for requests, the first load, switches
    and shutdown. ``engine_factory`` builds engines from settings (default
    :func:`~services.model_server.engines.build_engine`; tests pass fakes)."""

    def __init__(
        self,
        settings: ModelServerSettings,
        metrics: ModelMetrics,
        engine_factory: EngineFactory | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._factory = engine_factory or build_engine
        self._slot: _Slot | None = None
        self._load_error: str | None = None
        self._loading: str | None = None
        self._load_task: asyncio.Task[_Slot] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    # -- serving -------------------------------------------------------------------------

    def _ready_slot(self) -> _Slot:
        role = self.settings.role.value
        slot = self._slot
        if slot is None:
            why = self._load_error or "the model is still loading"
            raise ServiceUnavailable(f"{role} is not ready: {why}")
        if not slot.engine.healthy():
            fatal = getattr(slot.engine, "fatal", None)
            if fatal:
                self._reload(slot)
                raise EngineError(f"{role}: the model engine has failed ({fatal}); reloading")
            raise EngineError(f"{role}: the model engine has failed")
        return slot

    def health(self) -> dict[str, Any]:
        """What /health reports: alive unless the engine has failed in a way no request can
        recover from (out of memory, a CUDA error, a dead vLLM engine process), so that an
        orchestrator restarts the service if the in-process reload does not bring it back."""
        role = self.settings.role.value
        slot = self._slot
        fatal = getattr(slot.engine, "fatal", None) if slot is not None else None
        if slot is not None and fatal:
            self._reload(slot)
            raise EngineError(f"{role}: the model engine has failed ({fatal}); reloading")
        return {"status": "ok", "role": role}

    def _reload(self, slot: _Slot) -> None:
        """Replace a failed engine by a fresh one of the same model (once at a time)."""
        if self._load_task is not None and not self._load_task.done():
            return
        role = self.settings.role.value
        logger.error("%s: reloading %s after an engine failure", role, slot.model)
        settings = self.settings.model_copy(update={"model": slot.model})
        task = self._begin(slot.model, self._load(settings, slot.location, None))
        task.add_done_callback(self._reload_done)

    def _reload_done(self, task: asyncio.Task[_Slot]) -> None:
        """A reload that failed leaves nothing to serve with: stop the process, so that its
        supervisor (compose's restart policy, Kubernetes) starts a fresh one."""
        if task.cancelled() or task.exception() is None:
            return
        logger.critical("the engine could not be reloaded: stopping the service to be restarted")
        self.on_unrecoverable()

    def on_unrecoverable(self) -> None:
        """What to do when the model cannot be served again in-process (default: SIGTERM to
        this process; uvicorn shuts down and the process exits)."""
        os.kill(os.getpid(), signal.SIGTERM)

    @contextlib.contextmanager
    def lease(self) -> Iterator[ModelService]:
        """The current model's service, held until the block ends: a switch meanwhile does
        not close its engine. ServiceUnavailable/EngineError (503) when not ready."""
        slot = self._ready_slot()
        slot.in_flight += 1
        slot.idle.clear()
        try:
            yield slot.service
        finally:
            slot.in_flight -= 1
            if slot.in_flight == 0:
                slot.idle.set()

    def ready(self) -> dict[str, Any]:
        """What /ready reports; raises like :meth:`lease` when not ready."""
        slot = self._ready_slot()
        return {
            "status": "ready",
            "role": self.settings.role.value,
            "model": slot.engine.model_name,
            "loaded_model": slot.model,
            "model_path": slot.location,
            "engine": slot.engine.kind,
            "max_model_len": slot.engine.max_model_len,
            # CPU threads of the engine (None: the library's default, or not applicable)
            "threads": getattr(slot.engine, "threads", None),
            "switching_to": self._loading,
        }

    # -- loading -------------------------------------------------------------------------

    def start(self, engine: Engine | None = None) -> None:
        """Begin loading the first model in the background (``engine``, or the one the
        settings name); /ready turns 200 once it is loaded. A model that cannot be found or
        loaded leaves the service unready, saying why."""
        settings = self.settings
        location = settings.model
        if engine is None:
            try:
                location = model_location(settings)
                engine = self._factory(settings)
            except ServiceError as exc:
                self._load_error = exc.message
                return
        self._begin(settings.model, self._load(settings, location, engine))

    async def switch(self, model: str) -> SwitchModelResponse:
        """Load ``model`` next to the current one, swap, retire the old (module docstring)."""
        settings = self.settings.model_copy(update={"model": model})
        location = model_location(settings, allow_hub=False)
        if self._load_task is not None and not self._load_task.done():
            raise Conflict(
                f"{settings.role.value}: {self._loading!r} is loading; switch again once it "
                "is served (see /ready)"
            )
        previous = self._slot.model if self._slot is not None else None
        logger.info("switching %s from %s to %s", settings.role.value, previous, model)
        task = self._begin(model, self._load(settings, location, None))
        # Shielded: a caller that goes away does not cancel the load.
        slot = await asyncio.shield(task)
        return SwitchModelResponse(
            role=settings.role,
            model=slot.model,
            previous_model=previous,
            model_path=slot.location,
            engine=slot.engine.kind,
            load_s=round(slot.load_s, 3),
        )

    def _begin(self, model: str, load: Any) -> asyncio.Task[_Slot]:
        task: asyncio.Task[_Slot] = asyncio.create_task(load, name=f"load-model-{model}")
        self._load_task, self._loading = task, model
        task.add_done_callback(self._load_done)
        return task

    def _load_done(self, task: asyncio.Task[_Slot]) -> None:
        if self._load_task is task:
            self._load_task, self._loading = None, None
        if not task.cancelled():
            task.exception()  # retrieved here: a switch whose caller left still has one

    async def _load(
        self, settings: ModelServerSettings, location: str, engine: Engine | None
    ) -> _Slot:
        """Build (unless given) and start an engine, then make it the served one."""
        began = time.perf_counter()
        try:
            if engine is None:
                engine = self._factory(settings)
            for hook in ("on_batch", "on_prefix", "on_work"):  # optional hooks of the engines
                if hasattr(engine, hook):
                    setattr(engine, hook, getattr(self.metrics, hook))
            await engine.start()
        except BaseException as exc:
            if engine is not None:
                await _close_quietly(engine)
            if not isinstance(exc, Exception):
                raise
            logger.exception("model %s failed to load", settings.model)
            reason = (
                exc.message if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"
            )
            error = f"the model {settings.model!r} failed to load: {reason}"
            if self._slot is None:
                self._load_error = error
            raise ServiceUnavailable(error) from exc
        slot = _Slot(
            ModelService(settings, engine, self.metrics),
            model=settings.model,
            location=location,
            load_s=time.perf_counter() - began,
        )
        previous, self._slot = self._slot, slot
        self._load_error = None
        logger.info(
            "%s ready: %s (%s) on %s in %.1f s",
            settings.role.value,
            slot.model,
            location,
            engine.kind,
            slot.load_s,
        )
        if previous is not None:
            self._retire(previous)
        return slot

    # -- retiring ------------------------------------------------------------------------

    def _retire(self, slot: _Slot) -> None:
        task = asyncio.create_task(self._drain(slot), name=f"retire-model-{slot.model}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drain(self, slot: _Slot) -> None:
        """Close a replaced engine once its requests have finished (bounded wait)."""
        limit = self.settings.request_timeout_s + DRAIN_GRACE_S
        try:
            if slot.in_flight:
                logger.info(
                    "previous model %s: waiting for %d request(s) in flight (at most %g s)",
                    slot.model,
                    slot.in_flight,
                    limit,
                )
                try:
                    await asyncio.wait_for(slot.idle.wait(), limit)
                except TimeoutError:
                    logger.warning(
                        "previous model %s: closing with %d request(s) still in flight after %g s",
                        slot.model,
                        slot.in_flight,
                        limit,
                    )
        finally:
            await _close_quietly(slot.engine)
            logger.info("previous model %s closed", slot.model)

    async def close(self) -> None:
        """Shutdown: stop a load in progress and close every engine, replaced ones at once
        (the server has already drained its requests)."""
        if self._load_task is not None:
            self._load_task.cancel()
            with contextlib.suppress(BaseException):
                await self._load_task
        retiring = list(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        slot, self._slot = self._slot, None
        if slot is not None:
            await _close_quietly(slot.engine)


async def _close_quietly(engine: Engine) -> None:
    try:
        await engine.close()
    except Exception:
        logger.exception("closing the %s engine failed", engine.kind)
