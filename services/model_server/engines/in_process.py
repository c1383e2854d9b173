"""What the engines that run a transformers model in this process share: the one worker thread
that owns the model, the rule that tells a failed call from a broken engine, and loading a
checkpoint with threads, device, dtype and context length resolved from the settings.

One thread owns the model because torch's thread settings are per thread and a model is not
safe to call from two threads at once; the event loop only schedules work onto it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from services.model_server.engines.device import default_threads, pick_device, pick_dtype
from services.model_server.settings import ModelServerSettings
from shared.errors import EngineError, ServiceError

T = TypeVar("T")

DEFAULT_MAX_MODEL_LEN = 2048
"""The context of a checkpoint whose config states none, when the settings give none."""


def is_fatal(exc: BaseException) -> bool:
    """Whether a failure leaves the engine unusable (rather than failing one call): memory
    exhausted, or a CUDA error, after which the device state cannot be trusted."""
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        marker in text for marker in ("CUDA", "CUBLAS", "cuDNN", "out of memory", "device-side")
    )


def configure_threads(threads: int) -> int:
    """Size torch's CPU thread pools: ``threads`` intra-op threads and a single inter-op
    thread (the engine runs one model call at a time, so a pool of them would only compete
    with the intra-op threads of co-located services). Returns the intra-op threads in use."""
    torch.set_num_threads(threads)
    # Settable only before the first inter-op work; later calls keep the pool there is.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return int(torch.get_num_threads())


@dataclass(frozen=True)
class Pretrained:
    """A checkpoint loaded by :func:`load_pretrained`, with what was resolved for it."""

    tokenizer: Any
    model: Any
    device: str
    dtype: torch.dtype
    dtype_name: str
    threads: int
    max_model_len: int


def load_pretrained(
    auto: Any,
    model_path: str,
    settings: ModelServerSettings,
    model_kwargs: Callable[[str], dict[str, Any]] | None = None,
) -> Pretrained:
    """Tokenizer and ``auto.from_pretrained`` model (an ``AutoModelFor...`` class) of
    ``model_path``, on the device and in the dtype the settings resolve to, in eval mode.

    Call it on the worker thread: the torch thread settings it makes hold where it runs.
    ``model_kwargs(device)`` adds ``from_pretrained`` arguments that depend on the device
    (the attention implementation). ``max_model_len`` is the smaller of the setting and the
    checkpoint's ``max_position_embeddings``."""
    from transformers import AutoTokenizer

    threads = configure_threads(settings.threads or default_threads())
    device = pick_device(settings.device)
    dtype_name = pick_dtype(settings.dtype, device)
    dtype = getattr(torch, dtype_name)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    extra = model_kwargs(device) if model_kwargs is not None else {}
    model: Any = auto.from_pretrained(model_path, dtype=dtype, **extra)
    model.to(device)
    model.eval()
    config = model.config.get_text_config(decoder=True)
    limits = [
        n for n in (settings.max_model_len, getattr(config, "max_position_embeddings", None)) if n
    ]
    return Pretrained(
        tokenizer=tokenizer,
        model=model,
        device=device,
        dtype=dtype,
        dtype_name=dtype_name,
        threads=threads,
        max_model_len=int(min(limits)) if limits else DEFAULT_MAX_MODEL_LEN,
    )


class InProcessEngine:
    """The lifecycle of an engine whose model lives on one worker thread of this process.

    :meth:`start` creates the thread and runs :meth:`_load` on it (a failure is an
    EngineError naming the checkpoint); :meth:`_run` puts model work on it under
    ``torch.inference_mode``, where a failure fails that call with an EngineError (503) and
    only a failure that leaves the engine unusable (:func:`is_fatal`) sets :attr:`fatal`, so
    that /health reports the engine broken and the service reloads it; :meth:`close` lets a
    running call finish and fails the queued ones.
    """

    checkpoint = "model"
    """What start-up failures call the checkpoint ("failed to load <checkpoint> <path>")."""
    thread_name = "model-engine"

    def __init__(self, settings: ModelServerSettings, model_path: str) -> None:
        self.settings = settings
        self.model_path = str(model_path)
        self.model_name = settings.name
        self.max_model_len = settings.max_model_len or 0
        self.tokenizer: Any = None
        self.threads: int | None = None
        self._model: Any = None
        self._device = "cpu"
        self._executor: ThreadPoolExecutor | None = None
        self._started = False
        self._closed = False
        self.fatal: str | None = None  # why the engine can no longer serve (reload it)

    def _load(self) -> None:
        """Load the model (on the worker thread); sets at least ``_model`` and ``tokenizer``."""
        raise NotImplementedError

    async def start(self) -> None:
        if self._started:
            return
        if self._closed:
            raise EngineError("engine is closed")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.thread_name)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._load)
        except Exception as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise EngineError(f"failed to load {self.checkpoint} {self.model_path}: {exc}") from exc
        self._started = True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stop_worker()

    async def _stop_worker(self) -> None:
        """Shut the worker thread down and drop the model. Call with ``_closed`` set: a
        running call finishes, queued ones see the engine closed and fail fast."""
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True)
            self._executor = None
        self._model = None

    def healthy(self) -> bool:
        """False before start, after close, and after a fatal model failure (out of memory,
        a CUDA error): the service then reloads the engine."""
        return self._started and not self._closed and self.fatal is None

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError("engine is closed")
        if not self._started:
            raise EngineError("engine is not started")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the worker thread; errors come back as ServiceErrors."""
        if self._executor is None:
            raise EngineError("engine is closed" if self._closed else "engine is not started")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._guarded, fn, *args)
        except RuntimeError as exc:  # executor shut down under us
            if self._closed:
                raise EngineError("engine closed") from exc
            raise

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        """Run model work; a failure fails the call (503), and only a failure that leaves the
        engine unusable (out of memory, a CUDA error) marks it :attr:`fatal`."""
        if self._closed or self._model is None:
            raise EngineError("engine closed")
        try:
            with torch.inference_mode():
                return fn(*args)
        except ServiceError:
            raise
        except Exception as exc:
            message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            if is_fatal(exc):
                self.fatal = f"{type(exc).__name__}: {message}"
                if self._device.startswith("cuda"):
                    torch.cuda.empty_cache()
            # logged as the engine's own module, where its other lines are
            logging.getLogger(type(self).__module__).exception(
                "model call %s failed (fatal=%s)", fn.__name__, self.fatal is not None
            )
            raise EngineError(
                f"model failure in {fn.__name__}: {type(exc).__name__}: {message}"
            ) from exc
