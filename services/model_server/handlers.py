"""What each endpoint does, apart from HTTP: validate against the service's limits, render the
role's prompt, call the engine, shape the answer. Raises :mod:`shared.errors` only."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from pydantic import BaseModel

from services.model_server import prompts
from services.model_server.engines.base import (
    Completion,
    Engine,
    SamplingParams,
    ScoreJob,
    TokenWindow,
    encode,
)
from services.model_server.metrics import ModelMetrics
from services.model_server.rollout import roll_out
from services.model_server.settings import ModelServerSettings
from shared.errors import EngineError, InvalidRequest, ServiceError, UpstreamTimeout
from shared.openai_schemas import ChatCompletionRequest, CompletionRequest, completion_id
from shared.reward import AGGREGATES, RewardInput, aggregates, encode_outcome, encode_steps
from shared.schemas import (
    Aggregate,
    Candidate,
    ContinuationScore,
    ProposeRequest,
    ProposeResponse,
    RationaleRequest,
    RationaleResponse,
    RewardRequest,
    RewardResponse,
    RewardResult,
    RewardUsage,
    RolloutCompletion,
    RolloutRequest,
    RolloutResponse,
    RolloutUsage,
    ScoreRequest,
    ScoreResponse,
    TokenLogprob,
)
from shared.steps import solution_answer

logger = logging.getLogger(__name__)

T = TypeVar("T")


def aggregate(logprobs: list[float], decay: float) -> dict[str, float]:
    """Sum, mean, decayed sum (sum of decay**i * lp_i) and decayed mean of token log-probs."""
    n = len(logprobs)
    total = math.fsum(logprobs)
    decayed = math.fsum(decay**i * lp for i, lp in enumerate(logprobs))
    return {
        "sum": total,
        "mean": total / n if n else 0.0,
        "decayed_sum": decayed,
        "decayed_mean": decayed / n if n else 0.0,
    }


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


@dataclass
class ModelService:
    """One loaded role of the model service."""

    settings: ModelServerSettings
    engine: Engine
    metrics: ModelMetrics

    @property
    def system(self) -> str | None:
        return prompts.system_prompt(self.settings.role, self.settings.system_prompt)

    # -- guards --------------------------------------------------------------------------

    async def _run(self, coro: Awaitable[T]) -> T:
        """Await engine work under the request timeout; unexpected failures become 503."""
        try:
            return await asyncio.wait_for(coro, self.settings.request_timeout_s)
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"the model did not finish within {self.settings.request_timeout_s:g} s"
            ) from exc
        except ServiceError:
            raise
        except Exception as exc:
            logger.exception("engine failure")
            raise EngineError(f"model engine failed: {type(exc).__name__}: {exc}") from exc

    def _check_max_tokens(self, max_tokens: int, field: str = "max_tokens") -> None:
        if max_tokens > self.settings.max_tokens_limit:
            raise InvalidRequest(
                f"{field} must be <= {self.settings.max_tokens_limit}", field=field
            )

    def _limited(self, req: BaseModel, field: str, limit: int) -> int:
        """The request's ``field`` (``n``, ``max_tokens``) within the service's ``limit``: a
        value the client sent over it is a 422 naming the field; the schema's default is
        lowered to it, so a client is never refused for a field it did not send."""
        value = int(getattr(req, field))
        if field not in req.model_fields_set:
            return min(value, limit)
        if value > limit:
            raise InvalidRequest(f"{field} must be <= {limit}", field=field)
        return value

    def _n(self, req: BaseModel) -> int:
        return self._limited(req, "n", self.settings.max_n)

    def _max_tokens(self, req: BaseModel) -> int:
        return self._limited(req, "max_tokens", self.settings.max_tokens_limit)

    def _prompt_ids(self, prompt: str, field: str) -> list[int]:
        ids, _ = encode(self.engine.tokenizer, prompt)
        if len(ids) >= self.engine.max_model_len:
            raise InvalidRequest(
                f"the prompt is {len(ids)} tokens; the model's context is "
                f"{self.engine.max_model_len}",
                field=field,
            )
        return ids

    async def _generate(self, ids: list[int], params: SamplingParams) -> list[Completion]:
        room = self.engine.max_model_len - len(ids)
        params = params.normalized()
        if params.max_tokens > room:
            params = replace(params, max_tokens=room)
        start = time.perf_counter()
        outputs = await self._run(self.engine.generate(ids, params))
        self.metrics.observe_generation(ids, outputs, time.perf_counter() - start)
        return outputs

    # -- endpoints -----------------------------------------------------------------------

    async def rationale(self, req: RationaleRequest) -> RationaleResponse:
        max_tokens = self._max_tokens(req)
        prompt = prompts.rationale_prompt(self.engine.tokenizer, self.system, req)
        ids = self._prompt_ids(prompt, "question")
        params = SamplingParams(max_tokens=max_tokens, temperature=req.temperature, seed=req.seed)
        (out,) = await self._generate(ids, params)
        return RationaleResponse(
            rationale=out.text.strip(),
            mean_logprob=_mean(out.logprobs),
            num_tokens=len(out.token_ids),
            finish_reason=out.finish_reason,
            prompt_tokens=len(ids),
        )

    async def propose(self, req: ProposeRequest) -> ProposeResponse:
        n, max_tokens = self._n(req), self._max_tokens(req)
        system = self.system if req.system is None else (req.system or None)
        prompt = prompts.propose_prompt(self.engine.tokenizer, system, req)
        ids = self._prompt_ids(prompt, "steps")
        params = SamplingParams(
            max_tokens=max_tokens, n=n, temperature=req.temperature,
            top_p=req.top_p, seed=req.seed,
        )  # fmt: skip
        outputs = await self._generate(ids, params)
        prefix = req.step_prefix or ""
        return ProposeResponse(
            candidates=[
                Candidate(
                    text=(prefix + o.text).strip(),
                    mean_logprob=_mean(o.logprobs),
                    num_tokens=len(o.token_ids),
                    finish_reason=o.finish_reason,
                )
                for o in outputs
            ],
            prompt_tokens=len(ids),
        )

    async def rollout(self, req: RolloutRequest) -> RolloutResponse:
        """``n`` completions of a partial solution (:mod:`services.model_server.rollout`)."""
        n = self._n(req)
        max_step_tokens = self._limited(req, "max_step_tokens", self.settings.max_tokens_limit)
        tokenizer = self.engine.tokenizer
        demos = prompts.default_or_given_demos(req.question, req.few_shot, req.answer_kind)

        def render(steps: Sequence[str]) -> list[int]:
            prompt = prompts.agent_prompt(tokenizer, self.system, demos, req.question, steps)
            return encode(tokenizer, prompt)[0]

        self._prompt_ids(  # the request's own prompt must fit: 422 naming the field
            prompts.agent_prompt(tokenizer, self.system, demos, req.question, req.steps), "steps"
        )

        async def generate(ids: list[int], params: SamplingParams) -> list[Completion]:
            start = time.perf_counter()
            outputs = await self.engine.generate(ids, params.normalized())
            self.metrics.observe_generation(ids, outputs, time.perf_counter() - start)
            return outputs

        params = SamplingParams(
            max_tokens=max_step_tokens, n=n, temperature=req.temperature,
            top_p=req.top_p, seed=req.seed,
        )  # fmt: skip
        result = await self._run(
            roll_out(
                prefix=req.steps,
                render=render,
                generate=generate,
                params=params,
                max_steps=req.max_steps,
                max_model_len=self.engine.max_model_len,
            )
        )
        completions = [
            RolloutCompletion(
                steps=r.steps,
                answer=solution_answer([*req.steps, *r.steps]) if r.finished else None,
                finished=r.finished,
                completion_tokens=r.completion_tokens,
            )
            for r in result.rollouts
        ]
        return RolloutResponse(
            id=completion_id("rollout"),
            completions=completions,
            usage=RolloutUsage(
                prompt_tokens=result.prompt_tokens,
                completion_tokens=sum(c.completion_tokens for c in completions),
            ),
        )

    async def score(self, req: ScoreRequest) -> ScoreResponse:
        k = len(req.continuations)
        if k > self.settings.max_continuations:
            raise InvalidRequest(
                f"at most {self.settings.max_continuations} continuations per request, got {k}",
                field="continuations",
            )
        prefixes = [
            c if isinstance(c, str) else prompts.chat_prompt(self.engine.tokenizer, c)
            for c in req.all_contexts()
        ]
        # A causal model's log-probs of the continuation do not depend on what follows it,
        # so the continuation is scored as the text right after the generation prompt.
        # ``given`` text (a rationale) conditions its continuation without being scored.
        heads = [
            prefixes[i] + g for i, g in zip(req.context_indices(), req.given_texts(), strict=True)
        ]
        job = ScoreJob(
            texts=[h + c for h, c in zip(heads, req.continuations, strict=True)],
            spans=[
                (len(h), len(h) + len(c)) for h, c in zip(heads, req.continuations, strict=True)
            ],
        )
        start = time.perf_counter()
        windows, processed = await self._run(self.engine.score(job))
        self.metrics.observe_score(k, processed, time.perf_counter() - start)
        return ScoreResponse(
            scores=[self._continuation_score(w, req) for w in windows], prompt_tokens=processed
        )

    async def reward(self, req: RewardRequest) -> RewardResponse:
        """Step scores (PRM) or the outcome score (ORM) of every solution, in one batched
        forward pass. A solution longer than the context is a 422 naming it and its step."""
        engine = self.engine
        reward_kind = getattr(engine, "reward_kind", None)
        if reward_kind is None:
            raise InvalidRequest(
                f"this model service is the {self.settings.role.value} role; /v1/reward is "
                "served by MODEL_SERVER_ROLE=reward on a PRM or ORM",
                field="solutions",
            )
        tokenizer, tag = engine.tokenizer, engine.step_tag_id  # type: ignore[attr-defined]
        limit = engine.max_model_len
        inputs: list[RewardInput] = []
        for i, steps in enumerate(req.solutions):
            if reward_kind == "prm":
                enc = encode_steps(tokenizer, req.question, steps, tag)
            else:
                enc = encode_outcome(tokenizer, req.question, steps, tag)
            if len(enc.input_ids) > limit:
                if reward_kind == "prm":
                    j = next(k for k, end in enumerate(enc.step_ends) if end > limit)
                    field = f"solutions[{i}][{j}]"
                    what = f"solution {i}, step {j}: the question and the steps up to here are"
                    n = enc.step_ends[j]
                else:
                    field, n = f"solutions[{i}]", len(enc.input_ids)
                    what = f"solution {i}: the question and the solution are"
                raise InvalidRequest(
                    f"{what} {n} tokens, past the reward model's context of {limit}",
                    field=field,
                )
            inputs.append(enc)
        start = time.perf_counter()
        scores = await self._run(engine.reward(inputs))  # type: ignore[attr-defined]
        self.metrics.observe_score(len(inputs), sum(len(x.input_ids) for x in inputs),
                                   time.perf_counter() - start)  # fmt: skip
        results = []
        for values in scores:
            if reward_kind == "prm":
                results.append(RewardResult(step_scores=values, **aggregates(values)))
            else:
                results.append(RewardResult(step_scores=[], **dict.fromkeys(AGGREGATES, values[0])))
        return RewardResponse(
            id=f"reward-{uuid.uuid4().hex[:16]}",
            model=self.settings.name,
            kind=reward_kind,
            results=results,
            usage=RewardUsage(prompt_tokens=sum(len(x.input_ids) for x in inputs)),
        )

    @staticmethod
    def _continuation_score(window: TokenWindow, req: ScoreRequest) -> ContinuationScore:
        lps = [lp for lp in window.logprobs if lp is not None]
        agg = aggregate(lps, req.decay)
        tokens = None
        if req.return_tokens:
            tokens = [
                TokenLogprob(token=t, logprob=lp)
                for t, lp in zip(window.tokens, window.logprobs, strict=True)
                if lp is not None
            ]
        return ContinuationScore(
            score=agg[Aggregate(req.aggregate).value],
            num_tokens=len(lps),
            tokens=tokens,
            **agg,
        )

    # -- OpenAI-compatible ---------------------------------------------------------------

    async def completions(self, req: CompletionRequest) -> dict[str, Any]:
        n, max_tokens = self._n(req), self._max_tokens(req)
        if req.stream:
            raise InvalidRequest(
                "stream is not supported on /v1/completions; use /v1/chat/completions",
                field="stream",
            )
        if max_tokens == 0 and not req.echo:
            raise InvalidRequest("max_tokens 0 needs echo=true", field="max_tokens")
        prompts_in = self._completion_prompts(req.prompt)
        choices: list[dict[str, Any]] = []
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        for p_index, text in enumerate(prompts_in):
            field = "prompt" if len(prompts_in) == 1 else f"prompt[{p_index}]"
            ids = self._prompt_ids(text, field)
            usage["prompt_tokens"] += len(ids)
            echo_window = await self._echo_window(text) if req.echo else None
            outputs: list[Completion]
            if max_tokens == 0:
                outputs = [Completion("", [], [], "length")] * n
            else:
                params = SamplingParams(
                    max_tokens=max_tokens, n=n, temperature=req.temperature,
                    top_p=req.top_p, seed=req.seed, stop=req.stop_list(),
                )  # fmt: skip
                outputs = await self._generate(ids, params)
            for out in outputs:
                usage["completion_tokens"] += len(out.token_ids)
                choices.append(
                    {
                        "index": len(choices),
                        "text": (text if req.echo else "") + out.text,
                        "logprobs": self._completion_logprobs(req, text, echo_window, out),
                        "finish_reason": out.finish_reason,
                    }
                )
        return {
            "id": completion_id("cmpl"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.settings.name,
            "choices": choices,
            "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
        }

    def _completion_prompts(
        self, prompt: str | list[str] | list[int] | list[list[int]]
    ) -> list[str]:
        """Token-id prompts are decoded so every path scores the same text."""
        if isinstance(prompt, str):
            return [prompt]
        ints = [p for p in prompt if isinstance(p, int)]
        if len(ints) == len(prompt):
            return [self._decode(ints, "prompt")]
        out: list[str] = []
        for i, p in enumerate(prompt):
            if isinstance(p, str):
                out.append(p)
            elif isinstance(p, list):
                out.append(self._decode(p, f"prompt[{i}]"))
        if any(not p for p in out):
            raise InvalidRequest("prompt must not be empty", field="prompt")
        return out

    def _decode(self, ids: list[int], field: str) -> str:
        """Token ids as text; an id outside the vocabulary is a 422 naming the field."""
        tok = self.engine.tokenizer
        vocab = len(tok)
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequest(
                f"{field}: token id {bad} is outside the vocabulary (0..{vocab - 1})", field=field
            )
        text: str = tok.decode(ids)
        if not text:
            raise InvalidRequest(f"{field}: the token ids decode to no text", field=field)
        return text

    async def _echo_window(self, text: str) -> tuple[TokenWindow, list[int]]:
        """Log-probs of every prompt token (the first has none) and their character offsets."""
        _, offsets = encode(self.engine.tokenizer, text)
        job = ScoreJob(texts=[text], spans=[(0, len(text))])
        (window,), _ = await self._run(self.engine.score(job))
        starts = [a for a, b in offsets if b > a][: len(window.token_ids)]
        return window, starts

    def _pieces(self, out: Completion) -> list[str]:
        """Each generated token's text."""
        return [self.engine.tokenizer.decode([t]) for t in out.token_ids]

    def _completion_logprobs(
        self,
        req: CompletionRequest,
        prompt: str,
        echo: tuple[TokenWindow, list[int]] | None,
        out: Completion,
    ) -> dict[str, Any] | None:
        if req.logprobs is None:
            return None
        tokens: list[str] = []
        lps: list[float | None] = []
        offsets: list[int] = []
        if echo is not None:
            window, starts = echo
            tokens += window.tokens
            lps += window.logprobs
            offsets += starts
        pos = len(prompt) if req.echo else 0
        for piece, lp in zip(self._pieces(out), out.logprobs, strict=True):
            tokens.append(piece)
            lps.append(lp)
            offsets.append(pos)
            pos += len(piece)
        top = [None if lp is None else {t: lp} for t, lp in zip(tokens, lps, strict=True)]
        return {
            "tokens": tokens,
            "token_logprobs": lps,
            "text_offset": offsets,
            "top_logprobs": top if req.logprobs else None,
        }

    async def chat_completions(self, req: ChatCompletionRequest) -> dict[str, Any]:
        n = self._n(req)
        budget = req.token_budget(default=min(256, self.settings.max_tokens_limit))
        self._check_max_tokens(budget)
        messages = [{"role": _chat_role(m.role), "content": m.text()} for m in req.messages]
        prompt = prompts.chat_prompt(self.engine.tokenizer, messages)
        ids = self._prompt_ids(prompt, "messages")
        params = SamplingParams(
            max_tokens=budget, n=n, temperature=req.temperature, top_p=req.top_p,
            seed=req.seed, stop=req.stop_list(),
        )  # fmt: skip
        outputs = await self._generate(ids, params)
        completion_tokens = sum(len(o.token_ids) for o in outputs)
        return {
            "id": completion_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.settings.name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": o.text},
                    "logprobs": _chat_logprobs(self._pieces(o), o) if req.logprobs else None,
                    "finish_reason": o.finish_reason,
                }
                for i, o in enumerate(outputs)
            ],
            "usage": {
                "prompt_tokens": len(ids),
                "completion_tokens": completion_tokens,
                "total_tokens": len(ids) + completion_tokens,
            },
        }


def _chat_role(role: str) -> str:
    return "system" if role == "developer" else role


def _chat_logprobs(pieces: list[str], out: Completion) -> dict[str, Any]:
    return {
        "content": [
            {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
            for t, lp in zip(pieces, out.logprobs, strict=True)
        ]
    }
