"""The transformers engine: a Hugging Face causal LM in-process, on CPU or one GPU.

Threading. Every piece of model work (loading, prefill, each decode step, each scoring pass)
runs on ONE dedicated worker thread (:class:`~.in_process.InProcessEngine`), under
``torch.inference_mode``. The event loop only schedules: it never touches a tensor. Because the
decode loop is submitted one step at a time, a scoring job queued behind a long generation
waits for at most one decode step, not for the whole generation.

Generation (continuous batching). ``generate`` turns a request into ``n`` rows and queues them.
A scheduler task on the event loop gathers rows (waiting up to ``batch_wait_ms`` for company,
at most ``max_batch_size`` rows), prefills them together (left-padded; a prompt shared by
several rows is computed once and its KV cache copied), then runs its own decode loop over a
``DynamicCache`` with explicit ``position_ids = cumsum(attention_mask) - 1``. Rows that arrive
while a batch decodes join it at the next step: their cache is prefilled apart and merged in
(the shorter cache is left-padded with masked zeros). Finished or cancelled rows are pruned
after each step. Each row samples with its own ``torch.Generator`` seeded from
``(params.seed, row index)``, so a fixed seed reproduces the same candidates whatever else
shares the batch (up to floating-point noise of different batch shapes).

Scoring. The K texts of a score job share a prefix (the context), computed once. The K
suffixes run as ONE packed row whose 4D mask keeps each suffix to the prefix and itself: no
padding is computed and no cache is copied per text. For a short context, prefix and suffixes
share a single forward call; a long context gets its own causal pass whose KV cache the
suffix passes reuse, as do further chunks of a large job. Attention kinds that take no custom
mask fall back to a prefix pass plus a right-padded batch over the cache repeated per row.
Log-probabilities are computed in float32.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import inspect
import logging
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from services.model_server.engines.attention import GROUPED_DECODE, attention_kwargs
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
from services.model_server.engines.in_process import InProcessEngine, load_pretrained
from services.model_server.engines.prefix_cache import MISS, PrefixCache
from services.model_server.engines.prefix_cache import rows as prefix_rows
from services.model_server.settings import ModelServerSettings
from shared.errors import EngineError, InvalidRequest, ServiceError

logger = logging.getLogger(__name__)

# A scoring pass holds at most this many suffix tokens (padded tokens in the padded path),
# which bounds the logits (tokens x vocabulary) and attention scores it materializes.
_SCORE_TOKEN_BUDGET = 2048
# Below this many tokens (prefix + first chunk), the prefix shares one forward call with the
# suffixes (saves a call's fixed cost); above, it gets its own plain causal pass.
_SINGLE_PASS_TOKENS = 1024
# Log-softmax is taken over at most this many positions at a time (float32, x vocabulary).
_LOGPROB_SLICE = 512


def _row_seed(seed: int | None, index: int) -> int:
    """The generator seed of sample ``index`` of a request: fixed by ``(seed, index)``, fresh
    randomness when ``seed`` is None."""
    if seed is None:
        return secrets.randbits(63)
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@dataclass(eq=False)
class _Request:
    """One ``generate`` call: its rows deliver into ``results`` and resolve ``future``."""

    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    future: asyncio.Future[list[Completion]]
    results: list[Completion | None]
    remaining: int


@dataclass(eq=False)
class _Row:
    """One sequence being decoded (sample ``index`` of ``req``)."""

    req: _Request
    index: int
    generator: torch.Generator | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    sampled: int = 0
    completion: Completion | None = None
    error: ServiceError | None = None  # this row's own failure; the batch goes on without it

    @property
    def done(self) -> bool:
        return self.completion is not None or self.error is not None


@dataclass(eq=False)
class _Batch:
    """Rows decoding together. ``cache`` and ``mask`` cover every token fed so far (left
    padding included); ``positions`` is each row's next position; ``last`` the token each
    row feeds at the next step."""

    rows: list[_Row]
    cache: Any
    mask: torch.Tensor
    positions: torch.Tensor
    last: torch.Tensor
    mergeable: bool


class TransformersEngine(InProcessEngine):
    """A transformers ``AutoModelForCausalLM`` behind the :class:`Engine` interface.

    Hooks (optional, called on the event loop; exceptions in them are logged and ignored):
    ``on_batch(kind, rows)`` with kind ``"generate"`` each time rows join the decoding batch
    (``rows`` = the batch size after they joined) and ``"score"`` per scoring forward pass
    (``rows`` = texts in it); ``on_tokens(kind, n)`` with ``"prompt"`` (prompt tokens of a
    generate call, distinct tokens of a score job) and ``"completion"`` (tokens sampled);
    ``on_work("decode", n)`` after each decode step (``n`` rows stepped); ``on_prefix(op, n)``
    with the prompt tokens a prefill or score pass took from the prefix cache.

    Cancellation: a caller that stops awaiting :meth:`generate` (its task cancelled, e.g. its
    HTTP client went away) cancels the request's future; its rows are dropped before the
    next decode step and rows still waiting are never admitted. A cancelled :meth:`score`
    job that has not started is never run.
    """

    kind = "transformers"
    checkpoint = "model"
    thread_name = "tf-engine"

    def __init__(self, settings: ModelServerSettings, model_path: str) -> None:
        super().__init__(settings, model_path)
        self.on_batch: Callable[[str, int], None] | None = None
        self.on_tokens: Callable[[str, int], None] | None = None
        self.on_prefix: Callable[[str, int], None] | None = None
        self.on_work: Callable[[str, int], None] | None = None
        self._prefix = PrefixCache(settings.prefix_cache_tokens)
        self._dtype = torch.float32
        self._eos: frozenset[int] = frozenset()
        self._pad_id = 0
        self._vocab_size = 0
        self._keeps_logits = False
        self._packable = False
        self._mergeable = False
        self._scheduler: asyncio.Task[None] | None = None
        self._pending: deque[_Row] = deque()
        self._wake = asyncio.Event()

    # ----------------------------------------------------------------------------------------
    # Lifecycle

    async def start(self) -> None:
        if self._started:
            return
        await super().start()
        self._wake = asyncio.Event()
        self._scheduler = asyncio.create_task(self._schedule(), name="tf-engine-scheduler")

    def _load(self) -> None:
        """Load tokenizer and model (on the worker thread, so its torch thread settings hold
        where the model runs)."""
        from transformers import AutoModelForCausalLM

        loaded = load_pretrained(
            AutoModelForCausalLM,
            self.model_path,
            self.settings,
            lambda device: attention_kwargs(self.settings.attention, device),
        )
        tokenizer, model = loaded.tokenizer, loaded.model
        tokenizer.padding_side = "left"  # the engine pads by hand; left suits generation
        self.threads, self._device, self._dtype = loaded.threads, loaded.device, loaded.dtype
        self.max_model_len = loaded.max_model_len

        eos: set[int] = set()
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        if isinstance(gen_eos, int):
            eos.add(gen_eos)
        elif gen_eos:
            eos.update(int(t) for t in gen_eos)
        self._eos = frozenset(eos)
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else min(eos, default=0))
        self._vocab_size = int(model.get_input_embeddings().num_embeddings)
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._mergeable = _full_attention(model)
        self._packable = self._mergeable and _takes_custom_masks(model)
        self.tokenizer = tokenizer
        self._model = model
        logger.info(
            "loaded %s on %s (%s, %d threads); max_model_len=%d",
            self.model_path,
            self._device,
            loaded.dtype_name,
            torch.get_num_threads(),
            self.max_model_len,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
            self._scheduler = None
        self._fail_rows(list(self._pending), EngineError("engine closed"))
        self._pending.clear()
        await self._stop_worker()  # a running step finishes; queued work fails fast
        self._prefix.clear()
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()

    # ----------------------------------------------------------------------------------------
    # Hooks

    def _hook(self, hook: Callable[[str, int], None] | None, kind: str, n: int) -> None:
        if hook is None:
            return
        try:
            hook(kind, n)
        except Exception:
            logger.exception("engine hook failed")

    # ----------------------------------------------------------------------------------------
    # Generation: request side

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> list[Completion]:
        """``params.n`` continuations of ``prompt_ids``. ``max_tokens`` is clipped so that
        prompt plus completion fit ``max_model_len``.

        A completion stops at an EOS token (not included), at a stop string (``text`` ends
        before it; ``token_ids``/``logprobs`` keep the tokens needed to spell that text, so a
        token straddling the stop string stays), or after ``max_tokens`` tokens.
        """
        self._check_open()
        check_generation(prompt_ids, params, self.max_model_len, self._vocab_size)
        max_tokens = min(params.max_tokens, self.max_model_len - len(prompt_ids))
        loop = asyncio.get_running_loop()
        req = _Request(
            prompt=list(prompt_ids),
            params=params,
            max_tokens=max_tokens,
            future=loop.create_future(),
            results=[None] * params.n,
            remaining=params.n,
        )
        self._pending.extend(_Row(req=req, index=j) for j in range(params.n))
        self._wake.set()
        self._hook(self.on_tokens, "prompt", len(prompt_ids))
        return await req.future

    def _deliver(self, rows: list[_Row]) -> None:
        for row in rows:
            req = row.req
            if req.future.done():
                continue
            if row.error is not None:
                req.future.set_exception(row.error)
                continue
            if row.completion is None:
                continue
            req.results[row.index] = row.completion
            req.remaining -= 1
            self._hook(self.on_tokens, "completion", row.sampled)
            if req.remaining == 0:
                req.future.set_result([c for c in req.results if c is not None])

    def _fail_rows(self, rows: Sequence[_Row], error: Exception) -> None:
        for row in rows:
            if not row.req.future.done():
                row.req.future.set_exception(error)

    async def _gather(self) -> None:
        """Wait for a first row, then up to ``batch_wait_ms`` for more (until a full batch)."""
        while not self._pending:
            self._wake.clear()
            await self._wake.wait()
        wait = self.settings.batch_wait_ms / 1000.0
        if wait <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while len(self._pending) < self.settings.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    def _take(self, capacity: int) -> list[_Row]:
        rows: list[_Row] = []
        while self._pending and len(rows) < capacity:
            row = self._pending.popleft()
            if not row.req.future.done():  # cancelled or failed meanwhile
                rows.append(row)
        return rows

    async def _schedule(self) -> None:
        """The batching loop: admit waiting rows, run one decode step, deliver, repeat."""
        batch: _Batch | None = None
        admitted: list[_Row] = []
        try:
            while True:
                try:
                    if batch is None:
                        await self._gather()
                    admitted = []
                    if batch is None or batch.mergeable:
                        size = len(batch.rows) if batch else 0
                        admitted = self._take(self.settings.max_batch_size - size)
                    if admitted:
                        batch, finished = await self._run(self._admit, batch, admitted)
                        self._hook(self.on_work, "decode", len(admitted))  # first tokens
                        admitted = []
                        self._deliver(finished)
                        self._hook(self.on_batch, "generate", len(batch.rows) if batch else 0)
                    if batch is not None:
                        drop = [i for i, r in enumerate(batch.rows) if r.req.future.done()]
                        stepping = len(batch.rows) - len(drop)
                        batch, finished = await self._run(self._step, batch, drop)
                        self._hook(self.on_work, "decode", stepping)
                        self._deliver(finished)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    error = exc if isinstance(exc, ServiceError) else EngineError(str(exc))
                    if not isinstance(exc, ServiceError):
                        logger.exception("generation scheduler failed")
                    self._fail_rows([*(batch.rows if batch else []), *admitted], error)
                    batch, admitted = None, []
        finally:
            closing = EngineError("engine closed")
            self._fail_rows([*(batch.rows if batch else []), *admitted], closing)

    # ----------------------------------------------------------------------------------------
    # Generation: worker side

    def _forward(self, **kwargs: Any) -> Any:
        if not self._keeps_logits:
            kwargs.pop("logits_to_keep", None)
        return self._model(**kwargs)

    def _admit(self, batch: _Batch | None, rows: list[_Row]) -> tuple[_Batch | None, list[_Row]]:
        """Prefill ``rows`` (each distinct prompt once, after the longest prefix the prefix
        cache holds for it), sample their first token, and merge the rows that go on into
        ``batch``. Returns the batch and the rows that finished.

        Row i of the prefill is laid out ``[pad | cached prefix | pad | rest of prompt]``:
        the cached prefixes are right-aligned in the past cache, the uncached parts in the new
        tokens, and the mask and ``position_ids = cumsum(mask) - 1`` skip both paddings, so
        every prompt sees exactly its own tokens at their own positions.
        """
        dev = self._device
        keys: dict[tuple[int, ...], int] = {}
        index = [keys.setdefault(tuple(r.req.prompt), len(keys)) for r in rows]
        prompts = list(keys)
        hits = [self._prefix.lookup(p) if self._mergeable else MISS for p in prompts]
        past_width = max(h.length for h in hits)
        width = max(len(p) - h.length for p, h in zip(prompts, hits, strict=True))
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), past_width + width), dtype=torch.long)
        for i, (p, hit) in enumerate(zip(prompts, hits, strict=True)):
            rest = p[hit.length :]
            ids[i, width - len(rest) :] = torch.tensor(rest, dtype=torch.long)
            mask[i, past_width - hit.length : past_width] = 1
            mask[i, past_width + width - len(rest) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, past_width:]
        out = self._forward(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=prefix_rows(hits, past_width),
            use_cache=True,
            logits_to_keep=1,
        )
        cache = out.past_key_values
        self._remember(prompts, cache, mask)
        self._hook(self.on_prefix, "generate", sum(h.length for h in hits))
        logits = out.logits[:, -1, :].float()
        if index != list(range(len(prompts))):
            sel = torch.tensor(index, dtype=torch.long, device=dev)
            cache.batch_select_indices(sel)
            mask, logits = mask[sel], logits[sel]
        for r in rows:
            r.generator = torch.Generator(device=dev)
            r.generator.manual_seed(_row_seed(r.req.params.seed, r.index))
        mergeable = all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", ()))
        new = _Batch(
            rows=rows,
            cache=cache,
            mask=mask,
            positions=mask.sum(-1),
            last=torch.zeros(len(rows), dtype=torch.long, device=dev),
            mergeable=mergeable,
        )
        finished = self._sample_into(new, logits)
        going = self._prune(new, [i for i, r in enumerate(new.rows) if r.done])
        if going is None:
            return batch, finished
        if batch is None:
            return going, finished
        return self._merge(batch, going), finished

    def _remember(self, prompts: list[tuple[int, ...]], cache: Any, mask: torch.Tensor) -> None:
        """Keep each prefilled prompt's KV (its unmasked columns) in the prefix cache."""
        if not (self._prefix.enabled and self._mergeable):
            return
        for i, prompt in enumerate(prompts):
            if len(prompt) < self._prefix.min_tokens:
                continue
            cols = mask[i].nonzero().squeeze(-1)
            layers = [
                (
                    layer.keys[i : i + 1].index_select(2, cols),
                    layer.values[i : i + 1].index_select(2, cols),
                )
                for layer in cache.layers
            ]
            self._prefix.store(prompt, layers)

    def _step(self, batch: _Batch, drop: list[int]) -> tuple[_Batch | None, list[_Row]]:
        """One decode step of the whole batch (after dropping the rows in ``drop``)."""
        pruned = self._prune(batch, drop)
        if pruned is None:
            return None, []
        batch = pruned
        ones = torch.ones((len(batch.rows), 1), dtype=torch.long, device=self._device)
        batch.mask = torch.cat([batch.mask, ones], dim=1)
        out = self._forward(
            input_ids=batch.last[:, None],
            attention_mask=batch.mask,
            position_ids=batch.positions[:, None],
            past_key_values=batch.cache,
            use_cache=True,
        )
        batch.cache = out.past_key_values
        batch.positions = batch.positions + 1
        finished = self._sample_into(batch, out.logits[:, -1, :].float())
        done = [i for i, r in enumerate(batch.rows) if r.done]
        return self._prune(batch, done), finished

    def _sample_into(self, batch: _Batch, logits: torch.Tensor) -> list[_Row]:
        """Sample each row's next token from float32 ``logits`` [rows, vocab], record it,
        and set ``batch.last``. Returns the rows that finished, a row whose sampling failed
        among them (with its error): one row's failure never stops the others."""
        logprobs = torch.log_softmax(logits, dim=-1)
        finished: list[_Row] = []
        nxt: list[int] = []
        for i, row in enumerate(batch.rows):
            try:
                token = self._sample(logits[i], row)
            except Exception as exc:
                logger.exception("sampling failed for one row")
                row.error = EngineError(f"sampling failed: {type(exc).__name__}: {exc}")
            if row.error is not None:
                nxt.append(self._pad_id)
                finished.append(row)
                continue
            nxt.append(token)
            if self._push(row, token, float(logprobs[i, token])):
                finished.append(row)
        batch.last = torch.tensor(nxt, dtype=torch.long, device=self._device)
        return finished

    def _sample(self, logits: torch.Tensor, row: _Row) -> int:
        """One token from one row's float32 logits. Safe for every accepted parameter: the
        logits are shifted so their maximum is 0 before the temperature divides them (no
        overflow for any temperature; below GREEDY_BELOW it is the argmax), and top-p keeps
        at least the most likely token. Logits that are not numbers fail the row."""
        params = row.req.params
        if torch.isnan(logits).any() or not torch.isfinite(logits).any():
            row.error = EngineError("the model produced logits that are not numbers")
            return 0
        if params.greedy:
            return int(torch.argmax(logits))
        probs = torch.softmax((logits - logits.max()) / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            # Keep the smallest set of most likely tokens whose mass reaches top_p.
            keep = (torch.cumsum(sorted_p, dim=0) - sorted_p) < params.top_p
            keep[0] = True  # a top_p below float32's range compares as 0
            choice = torch.multinomial(sorted_p * keep, 1, generator=row.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _push(self, row: _Row, token: int, logprob: float) -> bool:
        """Record a sampled token; True (and ``row.completion`` set) when the row is done."""
        row.sampled += 1
        if token in self._eos:
            self._complete(row, "stop")
            return True
        row.tokens.append(token)
        row.logprobs.append(logprob)
        stops = row.req.params.stop
        if stops:
            text = self._decode(row.tokens)
            hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
            if hits:
                self._complete(row, "stop", cut=min(hits))
                return True
        if len(row.tokens) >= row.req.max_tokens:
            self._complete(row, "length")
            return True
        return False

    def _complete(self, row: _Row, reason: FinishReason, cut: int | None = None) -> None:
        tokens, logprobs = row.tokens, row.logprobs
        text = self._decode(tokens)
        if cut is not None:
            text = text[:cut]
            keep = len(tokens)
            while keep > 0 and len(self._decode(tokens[: keep - 1])) >= cut:
                keep -= 1
            tokens, logprobs = tokens[:keep], logprobs[:keep]
        row.completion = Completion(
            text=text, token_ids=list(tokens), logprobs=list(logprobs), finish_reason=reason
        )

    def _decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True)) if tokens else ""

    def _prune(self, batch: _Batch, drop: list[int]) -> _Batch | None:
        """Remove rows ``drop``; trim leading columns no remaining row attends to."""
        if not drop:
            return batch
        gone = set(drop)
        keep = [i for i in range(len(batch.rows)) if i not in gone]
        if not keep:
            return None
        sel = torch.tensor(keep, dtype=torch.long, device=self._device)
        batch.cache.batch_select_indices(sel)
        batch.rows = [batch.rows[i] for i in keep]
        batch.mask, batch.positions, batch.last = (
            batch.mask[sel],
            batch.positions[sel],
            batch.last[sel],
        )
        if batch.mergeable:
            used = batch.mask.sum(0) > 0
            lead = int(torch.argmax(used.long())) if bool(used.any()) else 0
            if lead > 0:
                for layer in batch.cache.layers:
                    layer.keys = layer.keys[:, :, lead:, :]
                    layer.values = layer.values[:, :, lead:, :]
                batch.mask = batch.mask[:, lead:]
        return batch

    def _merge(self, a: _Batch, b: _Batch) -> _Batch:
        """Concatenate two batches of plain dynamic caches, left-padding the shorter one."""
        width = max(a.mask.shape[1], b.mask.shape[1])

        def pad(t: torch.Tensor, dim_from_end: int) -> torch.Tensor:
            missing = width - t.shape[-dim_from_end]
            if missing == 0:
                return t
            spec = [0, 0] * (dim_from_end - 1) + [missing, 0]
            return torch.nn.functional.pad(t, spec)

        for la, lb in zip(a.cache.layers, b.cache.layers, strict=True):
            la.keys = torch.cat([pad(la.keys, 2), pad(lb.keys, 2)], dim=0)
            la.values = torch.cat([pad(la.values, 2), pad(lb.values, 2)], dim=0)
        a.mask = torch.cat([pad(a.mask, 1), pad(b.mask, 1)], dim=0)
        a.positions = torch.cat([a.positions, b.positions])
        a.last = torch.cat([a.last, b.last])
        a.rows = a.rows + b.rows
        return a

    # ----------------------------------------------------------------------------------------
    # Scoring

    async def score(self, job: ScoreJob) -> tuple[list[TokenWindow], int]:
        """Token log-probs of each text's window in one batched pass over the shared prefix.

        The prefix pass stops before the first scored token of any text, so every window
        token is predicted by logits that saw exactly the tokens before it.
        """
        self._check_open()
        if not job.texts:
            raise InvalidRequest("nothing to score", field="continuations")
        windows, prompt_tokens, batches = await self._run(self._score_sync, job)
        for rows in batches:
            self._hook(self.on_batch, "score", rows)
        self._hook(self.on_tokens, "prompt", prompt_tokens)
        return windows, prompt_tokens

    def _score_sync(self, job: ScoreJob) -> tuple[list[TokenWindow], int, list[int]]:
        job = prepare(self.tokenizer, job, self.max_model_len)
        seqs, spans = job.token_ids, job.windows
        p = min(common_prefix_len(seqs), *(lo for lo, _ in spans))
        # Token j of text i is predicted by the logits at position j - 1: position p - 1 lies
        # in the shared prefix, later ones in text i's own suffix (suffix index j - 1 - p).
        # ``first`` is the first window token predicted from inside the suffix.
        first = [max(lo, p + 1, 1) for lo, _ in spans]
        chunks = [
            chunk
            for chunk in self._score_chunks([len(s) - p for s in seqs])
            # texts whose window tokens all follow the prefix directly need no suffix logits
            if any(first[i] < spans[i][1] for i in chunk)
        ]
        scores: list[list[float | None]] = [[None] * (hi - lo) for lo, hi in spans]

        def record(i: int, logits: torch.Tensor) -> None:
            hi = spans[i][1]
            if first[i] < hi:
                targets = torch.tensor(seqs[i][first[i] : hi], dtype=torch.long)
                scores[i][first[i] - spans[i][0] :] = _token_logprobs(logits, targets)

        def record_boundary(logits: torch.Tensor) -> None:
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for i, (lo, _) in enumerate(spans):
                if lo == p:
                    scores[i][0] = float(logprobs[seqs[i][p]])

        if self._packable:
            batches = self._score_packed(seqs, p, first, spans, chunks, record, record_boundary)
        else:
            batches = self._score_padded(seqs, p, first, spans, chunks, record, record_boundary)

        windows = []
        for i, (lo, hi) in enumerate(spans):
            ids = seqs[i][lo:hi]
            tokens = [str(self.tokenizer.decode([t])) for t in ids]
            windows.append(TokenWindow(token_ids=ids, tokens=tokens, logprobs=scores[i]))
        prompt_tokens = p + sum(len(s) - p for s in seqs)
        return windows, prompt_tokens, batches

    def _score_packed(
        self,
        seqs: list[list[int]],
        p: int,
        first: list[int],
        spans: list[tuple[int, int]],
        chunks: list[list[int]],
        record: Callable[[int, torch.Tensor], None],
        record_boundary: Callable[[torch.Tensor], None],
    ) -> list[int]:
        """Score with packed passes: the prefix and the first chunk's suffixes usually share
        ONE forward call; further chunks (or all chunks, when the context is long enough that
        the prefix deserves its own causal pass) reuse the prefix's KV cache."""
        boundary = p >= 1 and any(lo == p for lo, _ in spans)
        # The prefix's leading tokens may be cached from an earlier call (at most p - 1, so
        # that the prefix pass still yields the boundary logits).
        hit = self._prefix.lookup(seqs[0][:p]) if p else MISS
        self._hook(self.on_prefix, "score", hit.length)
        remember = p >= self._prefix.min_tokens and self._prefix.enabled
        passes: list[tuple[bool, list[int]]]  # (carries the prefix, texts)
        fresh = p - hit.length
        if p == 0:
            passes = [(False, chunk) for chunk in chunks]
        elif chunks and fresh + sum(len(seqs[i]) - p for i in chunks[0]) <= _SINGLE_PASS_TOKENS:
            passes = [(True, chunks[0])] + [(False, chunk) for chunk in chunks[1:]]
        else:
            passes = [(True, [])] + [(False, chunk) for chunk in chunks]

        prefix_cache: Any = None
        batches: list[int] = []
        for k, (carries_prefix, chunk) in enumerate(passes):
            last = k == len(passes) - 1
            suffixes = [seqs[i][p:] for i in chunk]
            ranges = [(first[i] - 1 - p, spans[i][1] - 1 - p) for i in chunk]
            past = None
            if carries_prefix and hit.length:
                past = prefix_rows([hit], hit.length)
            elif not carries_prefix and prefix_cache is not None:
                past = prefix_cache if last else copy.deepcopy(prefix_cache)
            logits, cache = self._packed_pass(
                prefix=seqs[0][hit.length : p] if carries_prefix else [],
                past=past,
                p=p,
                suffixes=suffixes,
                ranges=ranges,
                boundary=carries_prefix and boundary,
                keep_cache=carries_prefix and (remember or not last),
            )
            if carries_prefix:
                if boundary:
                    record_boundary(logits.pop(0)[0])
                if cache is not None:  # keep the prefix only: drop this pass's suffix tokens
                    if suffixes:
                        cache.crop(-sum(len(s) for s in suffixes))
                    if remember:
                        self._prefix.store(
                            seqs[0][:p], [(layer.keys, layer.values) for layer in cache.layers]
                        )
                    if not last:
                        prefix_cache = cache
            for i, part in zip(chunk, logits, strict=True):
                record(i, part)
            if chunk:
                batches.append(len(chunk))
        return batches

    def _packed_pass(
        self,
        *,
        prefix: list[int],
        past: Any,
        p: int,
        suffixes: list[list[int]],
        ranges: list[tuple[int, int]],
        boundary: bool,
        keep_cache: bool,
    ) -> tuple[list[torch.Tensor], Any]:
        """One forward call over ``prefix`` (or a ``past`` cache holding it) followed by the
        ``suffixes`` packed in one row.

        A 4D additive mask keeps the prefix causal and lets each suffix token see the whole
        prefix plus the earlier tokens of its own suffix; positions restart at ``p`` for each
        suffix. No padding is computed. Returns the logits per suffix at suffix indices
        ``ranges[k]`` (``[a, b)``), preceded by the prefix's last-position logits when
        ``boundary``, and the cache when ``keep_cache``.
        """
        dev, dtype = self._device, self._dtype
        q, past_len = len(prefix), p - len(prefix)
        total = sum(len(s) for s in suffixes)
        ids = list(prefix)
        positions = list(range(past_len, p))
        keep = [q - 1] if boundary else []
        mask: torch.Tensor | None = None
        if total:  # a prefix alone needs no mask: it is plain causal attention
            neg = torch.finfo(dtype).min
            mask = torch.full((q + total, p + total), neg, dtype=dtype, device=dev)
            if q:
                mask[:q, :p] = torch.full((q, p), neg, dtype=dtype, device=dev).triu(past_len + 1)
            mask[q:, :p] = 0
            offset = q
            for suffix, (a, b) in zip(suffixes, ranges, strict=True):
                n = len(suffix)
                col = p + offset - q
                block = torch.full((n, n), neg, dtype=dtype, device=dev).triu(1)
                mask[offset : offset + n, col : col + n] = block
                ids.extend(suffix)
                positions.extend(range(p, p + n))
                keep.extend(range(offset + a, offset + max(a, b)))
                offset += n
            mask = mask[None, None]
        keep_t = torch.tensor(keep, dtype=torch.long, device=dev)
        out = self._forward(
            input_ids=torch.tensor([ids], dtype=torch.long, device=dev),
            attention_mask=mask,
            position_ids=torch.tensor([positions], dtype=torch.long, device=dev),
            past_key_values=past,
            use_cache=past is not None or keep_cache,
            logits_to_keep=keep_t,
        )
        logits = out.logits[0] if self._keeps_logits else out.logits[0, keep_t]
        parts: list[torch.Tensor] = []
        start = 0
        if boundary:
            parts.append(logits[0:1])
            start = 1
        for a, b in ranges:
            n = max(b - a, 0)
            parts.append(logits[start : start + n])
            start += n
        return parts, out.past_key_values if keep_cache else None

    def _score_padded(
        self,
        seqs: list[list[int]],
        p: int,
        first: list[int],
        spans: list[tuple[int, int]],
        chunks: list[list[int]],
        record: Callable[[int, torch.Tensor], None],
        record_boundary: Callable[[torch.Tensor], None],
    ) -> list[int]:
        """Fallback for attention kinds that take no custom 4D mask (flash attention, sliding
        windows): a prefix pass, then per chunk the prefix cache repeated per row and the
        suffixes right-padded."""
        dev = self._device
        prefix_cache: Any = None
        if p >= 1:
            out = self._forward(
                input_ids=torch.tensor([seqs[0][:p]], dtype=torch.long, device=dev),
                use_cache=True,
                logits_to_keep=1,
            )
            prefix_cache = out.past_key_values
            record_boundary(out.logits[0, -1, :])
            del out
        batches: list[int] = []
        for k, chunk in enumerate(chunks):
            rows = len(chunk)
            width = max(len(seqs[i]) - p for i in chunk)
            ids = torch.full((rows, width), self._pad_id, dtype=torch.long)
            mask = torch.zeros((rows, p + width), dtype=torch.long)
            mask[:, :p] = 1
            for r, i in enumerate(chunk):
                suffix = seqs[i][p:]
                ids[r, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
                mask[r, p : p + len(suffix)] = 1
            positions = torch.arange(p, p + width, dtype=torch.long).expand(rows, width)
            cache = None
            if prefix_cache is not None:
                # A forward pass extends the cache it is given: earlier chunks take a copy.
                cache = prefix_cache if k == len(chunks) - 1 else copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(rows)
            out = self._forward(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                position_ids=positions.to(dev),
                past_key_values=cache,
                use_cache=cache is not None,
            )
            for r, i in enumerate(chunk):
                record(i, out.logits[r, first[i] - 1 - p : spans[i][1] - 1 - p])
            batches.append(rows)
            del out
        return batches

    def _score_chunks(self, lengths: list[int]) -> list[list[int]]:
        """Group texts (by index) into suffix passes of at most ``max_batch_size`` texts and
        about ``_SCORE_TOKEN_BUDGET`` tokens (padded tokens in the padded path)."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        chunks: list[list[int]] = []
        current: list[int] = []
        for i in order:  # ascending, so lengths[i] is the chunk's width once added
            if self._packable:
                fits = sum(lengths[k] for k in current) + lengths[i] <= _SCORE_TOKEN_BUDGET
            else:
                fits = (len(current) + 1) * lengths[i] <= _SCORE_TOKEN_BUDGET
            if current and (len(current) >= self.settings.max_batch_size or not fits):
                chunks.append(current)
                current = []
            current.append(i)
        if current:
            chunks.append(current)
        return chunks


def _takes_custom_masks(model: Any) -> bool:
    """Whether scoring may pack suffixes into one row with a custom 4D additive mask: the
    attention implementation must accept one (sdpa, eager, or grouped decode, which hands
    multi-token passes to sdpa)."""
    config = model.config.get_text_config(decoder=True)
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager", GROUPED_DECODE)


def _full_attention(model: Any) -> bool:
    """Whether every layer attends to the full context, so that caches are plain dynamic
    layers: batches can merge, and prefix KV can be reused (a sliding window would not)."""
    config = model.config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return all(t == "full_attention" for t in layer_types)
    return not getattr(config, "sliding_window", None)


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> list[float | None]:
    """log_softmax(logits)[target] per position, in float32, a slice of positions at a time."""
    values: list[float | None] = []
    targets = targets.to(logits.device)
    for start in range(0, logits.shape[0], _LOGPROB_SLICE):
        part = logits[start : start + _LOGPROB_SLICE].float()
        picked = part.gather(-1, targets[start : start + _LOGPROB_SLICE, None]).squeeze(-1)
        values.extend((picked - torch.logsumexp(part, dim=-1)).tolist())
    return values
