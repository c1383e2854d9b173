"""The remote engine: an existing OpenAI-compatible server does the model work.

Any server with ``POST /v1/completions`` that returns log-probs works: ``vllm serve``, SGLang,
the llama.cpp server, OpenAI's legacy completion models, or another rationalyst model service.
This process keeps only a tokenizer (to render chat templates and locate score windows) and
one ``httpx.AsyncClient``; it never imports torch.

Generation sends the prompt as token ids (what vLLM and OpenAI accept); a server that rejects
id lists with a 4xx gets the decoded text instead, from then on. Scoring sends each full text
with ``echo=true, max_tokens=0, logprobs=1`` (``max_tokens=1`` where a server refuses 0, the
generated token then dropped), all texts concurrently.

Token windows. The upstream tokenizes the text itself. When its echoed tokens line up one to
one with the local tokenization (same tokenizer; a leading zero-width BOS the upstream does not
echo is allowed for), the windows are exactly the ones every other engine scores. Otherwise
(a different tokenizer) the window is located from the upstream's ``text_offset`` and token
ids the tokenizer does not know are -1.

Errors: an unreachable upstream is ServiceUnavailable (503), a timeout UpstreamTimeout (504),
an error answer EngineError (503) carrying the upstream's message.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import httpx

from services.model_server.engines.base import (
    Completion,
    FinishReason,
    SamplingParams,
    ScoreJob,
    TokenWindow,
    check_generation,
    common_prefix_len,
    encode,
    prepare,
    window_of,
)
from services.model_server.settings import ModelServerSettings
from shared.errors import (
    EngineError,
    ServiceError,
    ServiceUnavailable,
    UpstreamTimeout,
)
from shared.logging import REQUEST_ID_HEADER, request_id_var

logger = logging.getLogger(__name__)

T = TypeVar("T")

_CONNECT_TIMEOUT_S = 10.0
_CONNECT_RETRIES = 2
_DEFAULT_MAX_MODEL_LEN = 2048


class UpstreamRejected(EngineError):
    """The upstream answered 4xx (the request, not the server, was at fault)."""


class RemoteEngine:
    """An OpenAI-compatible server behind the
    :class:`~services.model_server.engines.base.Engine` interface.

    ``transport`` (tests) replaces the HTTP transport. Hooks as on the other engines:
    ``on_batch("generate", n)`` per generate call and ``on_batch("score", k)`` per score job
    (the upstream forms the real batches); ``on_tokens("prompt" | "completion", n)``.
    """

    kind = "remote"

    def __init__(
        self,
        settings: ModelServerSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not settings.remote_url:
            raise ValueError("the remote engine needs settings.remote_url")
        self.settings = settings
        self.base_url = settings.remote_url.rstrip("/")
        self.model_name = settings.name
        self.upstream_model = settings.model
        self.max_model_len = settings.max_model_len or 0
        self.tokenizer: Any = None
        self.on_batch: Callable[[str, int], None] | None = None
        self.on_tokens: Callable[[str, int], None] | None = None
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._ids_as_prompt = True  # until the upstream rejects token-id prompts
        self._zero_max_tokens = True  # until the upstream rejects max_tokens=0 with echo
        self._stop_ids: frozenset[int] = frozenset()
        self._vocab: dict[str, int] = {}
        self._warned_mismatch = False
        self._started = False
        self._failed = False
        self._closed = False

    # ----------------------------------------------------------------------------------------
    # Lifecycle

    async def start(self) -> None:
        """Load the tokenizer, open the HTTP client, and ask the upstream for its context
        length (best effort: an upstream that is down now does not stop the start)."""
        if self._started:
            return
        if self._closed:
            raise EngineError("engine is closed")
        try:
            self.tokenizer = await asyncio.to_thread(self._load_tokenizer)
            self._vocab = await asyncio.to_thread(_decoded_vocab, self.tokenizer)
        except ServiceError:
            self._failed = True
            raise
        except Exception as exc:
            self._failed = True
            raise EngineError(f"failed to load the remote engine's tokenizer: {exc}") from exc
        eos = self.tokenizer.eos_token_id
        self._stop_ids = frozenset([int(eos)] if eos is not None else [])
        headers = {"Accept": "application/json"}
        if self.settings.remote_api_key is not None:
            headers["Authorization"] = f"Bearer {self.settings.remote_api_key.get_secret_value()}"
        timeout = self.settings.request_timeout_s
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(_CONNECT_TIMEOUT_S, timeout)),
            transport=self._transport,
        )
        self.max_model_len = await self._context_length()
        self._started = True
        logger.info(
            "remote engine: %s at %s, max_model_len=%d",
            self.upstream_model,
            self.base_url,
            self.max_model_len,
        )

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        from services.model_server.models import resolve_model

        name = self.settings.tokenizer or self.settings.model
        folder = resolve_model(
            name, self.settings.models_dir, artifacts_dir=self.settings.artifacts_dir
        )
        return AutoTokenizer.from_pretrained(folder)

    async def _context_length(self) -> int:
        """``settings.max_model_len``, capped by the upstream's ``max_model_len`` in
        ``/v1/models`` where it reports one (vLLM, SGLang)."""
        known = [n for n in (self.settings.max_model_len,) if n]
        try:
            body = (await self._request("GET", "/v1/models", retries=0, timeout=10.0)).json()
            cards = body.get("data", []) if isinstance(body, dict) else []
            for card in cards:
                if isinstance(card, dict) and card.get("id") == self.upstream_model:
                    upstream = card.get("max_model_len")
                    if isinstance(upstream, int) and upstream > 0:
                        known.append(upstream)
        except ServiceError as exc:
            logger.warning("remote backend %s: /v1/models failed: %s", self.base_url, exc.message)
        except ValueError:
            logger.warning("remote backend %s: /v1/models is not JSON", self.base_url)
        if known:
            return min(known)
        limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < 10**7:
            return limit
        return _DEFAULT_MAX_MODEL_LEN

    async def close(self) -> None:
        self._closed = True
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def healthy(self) -> bool:
        """True once started (until closed): the upstream's own health is its business; a
        request to a down upstream answers 503 by itself."""
        return self._started and not self._failed and not self._closed

    # ----------------------------------------------------------------------------------------
    # HTTP

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        retries: int = _CONNECT_RETRIES,
        timeout: float | None = None,
    ) -> httpx.Response:
        """One call to the upstream. Connection failures (nothing reached the model) are
        retried ``retries`` times; timeouts never are."""
        if self._http is None:
            raise EngineError("engine is closed" if self._closed else "engine is not started")
        headers = {}
        if (rid := request_id_var.get()) is not None:
            headers[REQUEST_ID_HEADER] = rid
        kwargs: dict[str, Any] = {"json": json, "headers": headers}
        if timeout is not None:
            kwargs["timeout"] = timeout
        for attempt in range(retries + 1):
            try:
                response = await self._http.request(method, path, **kwargs)
                break
            except httpx.ConnectError as exc:
                if attempt == retries:
                    raise ServiceUnavailable(
                        f"remote backend unreachable at {self.base_url}: {exc}"
                    ) from exc
                await asyncio.sleep(0.2 * 2**attempt)
            except httpx.TimeoutException as exc:
                raise UpstreamTimeout(
                    f"remote backend {self.base_url} did not answer {path} in time "
                    f"({type(exc).__name__})"
                ) from exc
            except httpx.TransportError as exc:
                raise ServiceUnavailable(
                    f"remote backend {self.base_url} failed on {path}: {exc!r}"
                ) from exc
        if response.status_code >= 400:
            message = _error_message(response)
            cls = UpstreamRejected if response.status_code < 500 else EngineError
            raise cls(f"remote backend answered {response.status_code} on {path}: {message}")
        return response

    async def _completions(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._request("POST", "/v1/completions", json=body)
        try:
            data = response.json()
        except ValueError as exc:
            raise EngineError("remote backend answered /v1/completions with non-JSON") from exc
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise EngineError("remote backend answered /v1/completions without choices")
        return data

    def _hook(self, hook: Callable[[str, int], None] | None, kind: str, n: int) -> None:
        if hook is None:
            return
        try:
            hook(kind, n)
        except Exception:
            logger.exception("engine hook failed")

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError("engine is closed")
        if not self._started:
            raise EngineError("engine is not started")

    # ----------------------------------------------------------------------------------------
    # Generation

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> list[Completion]:
        """``params.n`` continuations of ``prompt_ids`` from the upstream.

        Token ids come from the upstream's echoed tokens where the tokenizer maps them, else
        from re-encoding the text. A completion stops at an EOS token (not included), at a
        stop string (only the tokens needed to spell ``text`` are kept), or after
        ``max_tokens`` tokens (clipped to the context).
        """
        self._check_open()
        check_generation(prompt_ids, params, self.max_model_len, None)
        # Greedy samples are one sample: ask once (vLLM upstreams refuse n > 1 when greedy).
        copies = params.n if params.greedy else 1
        n = 1 if params.greedy else params.n
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": min(params.max_tokens, self.max_model_len - len(prompt_ids)),
            "logprobs": 1,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        stops = [s for s in params.stop if s]
        if stops:
            body["stop"] = stops
        self._hook(self.on_batch, "generate", params.n)
        self._hook(self.on_tokens, "prompt", len(prompt_ids))
        data = await self._generate_request(body, list(prompt_ids))
        choices = sorted(data["choices"], key=lambda c: int(c.get("index", 0)))
        if len(choices) != n:
            raise EngineError(f"remote backend returned {len(choices)} choices for n={n}")
        completions = [self._completion(c) for c in choices]
        self._hook(self.on_tokens, "completion", sum(len(c.token_ids) for c in completions))
        if copies > 1:
            completions = [copy.deepcopy(completions[0]) for _ in range(copies)]
        return completions

    async def _generate_request(self, body: dict[str, Any], prompt_ids: list[int]) -> Any:
        if self._ids_as_prompt:
            try:
                return await self._completions({**body, "prompt": prompt_ids})
            except UpstreamRejected as exc:
                text_body = {**body, "prompt": self._prompt_text(prompt_ids)}
                try:
                    data = await self._completions(text_body)
                except UpstreamRejected:
                    raise exc from None
                logger.info(
                    "remote backend %s rejects token-id prompts (%s); sending text from now on",
                    self.base_url,
                    exc.message,
                )
                self._ids_as_prompt = False
                return data
        return await self._completions({**body, "prompt": self._prompt_text(prompt_ids)})

    def _prompt_text(self, prompt_ids: list[int]) -> str:
        """The prompt as text for servers that take no ids: special tokens kept (chat
        templates), a leading BOS left out (the server adds its own)."""
        bos = self.tokenizer.bos_token_id
        if bos is not None and prompt_ids[:1] == [bos] and self._adds_bos():
            prompt_ids = prompt_ids[1:]
        return str(self.tokenizer.decode(prompt_ids))

    def _adds_bos(self) -> bool:
        bos = self.tokenizer.bos_token_id
        return bool(self.tokenizer("a")["input_ids"][:1] == [bos])

    def _completion(self, choice: dict[str, Any]) -> Completion:
        text = str(choice.get("text") or "")
        reason: FinishReason = "length" if choice.get("finish_reason") == "length" else "stop"
        logprobs = choice.get("logprobs") or {}
        tokens = [str(t) for t in logprobs.get("tokens") or []]
        lps = logprobs.get("token_logprobs") or []
        if text and not lps:
            raise EngineError("remote backend returned no log-probs for a completion")
        if len(tokens) != len(lps):
            raise EngineError("remote backend returned tokens and log-probs of unequal length")
        if any(lp is None for lp in lps):
            raise EngineError("remote backend returned a null log-prob for a sampled token")
        values = [float(lp) for lp in lps]
        ids = self._ids_of(choice.get("token_ids"), tokens)
        if ids is None:
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
            if len(ids) != len(values):
                raise EngineError(
                    "the remote backend's tokens do not match the tokenizer "
                    f"({len(values)} log-probs for {len(ids)} tokens of the text); set "
                    "MODEL_SERVER_TOKENIZER to the upstream model's tokenizer"
                )
        if reason == "stop":
            while ids and ids[-1] in self._stop_ids:
                ids, values = ids[:-1], values[:-1]
            keep = len(ids)
            while keep > 0 and len(self._decode(ids[: keep - 1])) >= len(text):
                keep -= 1
            ids, values = ids[:keep], values[:keep]
        return Completion(text=text, token_ids=ids, logprobs=values, finish_reason=reason)

    def _ids_of(self, given: Any, tokens: list[str]) -> list[int] | None:
        """Token ids of the upstream's tokens: its own ``token_ids`` when it sends them,
        ``token_id:N`` strings (vLLM's ``return_tokens_as_token_ids``), or the tokenizer's
        vocabulary; None when some token has no unique id."""
        if (
            isinstance(given, list)
            and len(given) == len(tokens)
            and all(isinstance(t, int) for t in given)
        ):
            return [int(t) for t in given]
        ids = []
        for tok in tokens:
            tid = self._id_of_token(tok)
            if tid < 0:
                return None
            ids.append(tid)
        return ids

    def _id_of_token(self, token: str) -> int:
        """The id of one token string as servers print them, or -1."""
        if token.startswith("token_id:"):
            try:
                return int(token.removeprefix("token_id:"))
            except ValueError:
                return -1
        return self._vocab.get(token, -1)

    def _decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True)) if tokens else ""

    # ----------------------------------------------------------------------------------------
    # Scoring

    async def score(self, job: ScoreJob) -> tuple[list[TokenWindow], int]:
        """Each text's window log-probs from the upstream's echo (see the module docstring).

        The count returned is what a pass that computes the shared prefix once processes
        (``p + sum(len_i - p)`` over the local tokenization); what the upstream really
        computes depends on its prefix cache.
        """
        self._check_open()
        job = prepare(self.tokenizer, job, self.max_model_len)
        self._hook(self.on_batch, "score", len(job.texts))
        echoes = await _gather_all(self._echo(text) for text in job.texts)
        windows = [
            self._window(text, span, echo)
            for text, span, echo in zip(job.texts, job.spans, echoes, strict=True)
        ]
        p = common_prefix_len(job.token_ids)
        prompt_tokens = p + sum(len(s) - p for s in job.token_ids)
        self._hook(self.on_tokens, "prompt", prompt_tokens)
        return windows, prompt_tokens

    async def _echo(self, text: str) -> tuple[list[str], list[float | None], list[int]]:
        """The upstream's tokens, log-probs and text offsets of ``text`` (echo, no sampling)."""
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "prompt": text,
            "echo": True,
            "logprobs": 1,
            "temperature": 0.0,
        }
        if self._zero_max_tokens:
            try:
                data = await self._completions({**body, "max_tokens": 0})
                return _echoed(data, generated=0)
            except UpstreamRejected as exc:
                logger.info(
                    "remote backend %s rejects max_tokens=0 (%s); scoring with max_tokens=1",
                    self.base_url,
                    exc.message,
                )
                self._zero_max_tokens = False
        data = await self._completions({**body, "max_tokens": 1})
        return _echoed(data, generated=1)

    def _window(
        self,
        text: str,
        span: tuple[int, int],
        echo: tuple[list[str], list[float | None], list[int]],
    ) -> TokenWindow:
        tokens, lps, offsets = echo
        ids, local_offsets = encode(self.tokenizer, text)
        # Local tokens the upstream did not echo: zero-width ones at the start (a BOS).
        lead = len(ids) - len(tokens)
        if lead >= 0 and all(a == b for a, b in local_offsets[:lead]):
            aligned: list[float | None] = []
            aligned.extend([None] * lead)
            aligned.extend(lps)
            lo, hi = window_of(local_offsets, span)
            window_ids = ids[lo:hi]
            return TokenWindow(
                token_ids=window_ids,
                tokens=[str(self.tokenizer.decode([t])) for t in window_ids],
                logprobs=aligned[lo:hi],
            )
        if not self._warned_mismatch:
            self._warned_mismatch = True
            logger.warning(
                "remote backend %s tokenizes differently from the local tokenizer (%d tokens "
                "vs %d); windows follow the upstream's text offsets. Set "
                "MODEL_SERVER_TOKENIZER to the upstream model's tokenizer.",
                self.base_url,
                len(tokens),
                len(ids),
            )
        spans = [
            (start, offsets[i + 1] if i + 1 < len(offsets) else len(text))
            for i, start in enumerate(offsets)
        ]
        lo, hi = window_of(spans, span)
        if hi <= lo:
            raise EngineError("the remote backend's echo holds no token in the scored span")
        return TokenWindow(
            token_ids=[self._id_of_token(t) for t in tokens[lo:hi]],
            tokens=tokens[lo:hi],
            logprobs=list(lps[lo:hi]),
        )


def _decoded_vocab(tokenizer: Any) -> dict[str, int]:
    """Token text as servers print it -> id: the decoded text of every token whose text no
    other token shares, and the raw vocabulary strings (for servers that print those)."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for tid in range(len(tokenizer)):
        text = tokenizer.decode([tid])
        counts[text] = counts.get(text, 0) + 1
        first.setdefault(text, tid)
    vocab = {text: tid for text, tid in first.items() if counts[text] == 1}
    for raw, tid in tokenizer.get_vocab().items():
        vocab.setdefault(raw, tid)
    return vocab


def _echoed(
    data: dict[str, Any], *, generated: int
) -> tuple[list[str], list[float | None], list[int]]:
    """The prompt part of an echo answer (``generated`` sampled tokens dropped)."""
    choice = data["choices"][0]
    logprobs = choice.get("logprobs") or {}
    tokens = [str(t) for t in logprobs.get("tokens") or []]
    lps = logprobs.get("token_logprobs") or []
    offsets = logprobs.get("text_offset") or []
    if not tokens or len(tokens) != len(lps) or len(offsets) != len(tokens):
        raise EngineError("remote backend returned no usable echo log-probs")
    count = len(tokens) - generated
    values = [None if lp is None else float(lp) for lp in lps[:count]]
    return tokens[:count], values, [int(o) for o in offsets[:count]]


def _error_message(response: httpx.Response) -> str:
    """The message of an error answer: OpenAI's and our envelope ``{"error": {"message"}}``,
    vLLM's ``{"message"}``, FastAPI's ``{"detail"}``, else the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
        for key in ("message", "detail"):
            if body.get(key):
                return str(body[key])[:300]
    return str(body)[:300]


async def _gather_all(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Like ``asyncio.gather``, but the first failure cancels the rest before it propagates."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
