"""The OpenAI chat-completions face of /v1/reason: request and response conversion.

The LAST user message is the question. Earlier turns (system prompts, previous exchanges) are
ignored - the agent has its own system prompt and few-shot demos - and the response says so in
its warnings. The reply's content is the solution, one step per line; the search (each step's
rationale, its candidates with their scores, the one chosen) is the reasoning, put where
``reasoning_format`` says: ``message.reasoning_content`` / ``delta.reasoning_content``
(DeepSeek's field, which Open WebUI, LibreChat, LiteLLM and LangChain's ChatDeepSeek show),
``reasoning``, ``<think>`` tags in the content, or nowhere (``none``: the steps stream as
content, as they are chosen). The full :class:`ReasonResponse` rides along in the extra
top-level field ``rationalyst``.

OpenAI's own parameters are honoured or refused, never ignored: ``stop`` ends the answer (and
the search) at a stop string, ``max_completion_tokens``/``max_tokens`` bound the search's
generated tokens by lowering ``max_steps`` (``max_rounds``), ``reasoning_effort`` picks a budget
preset, and parameters the search cannot honour (tools, logprobs, response formats, penalties,
...) are a 400 naming them. Errors on these routes use OpenAI's body
(``{"error": {"message", "type", "param", "code"}}``) so that the SDKs raise the right class.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.registry import model_strategy
from shared.errors import ErrorBody, InvalidRequest, NotFound, ServiceError
from shared.gateway_schemas import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessageOut,
    ChunkChoice,
    ChunkDelta,
    GatewayChatRequest,
    ReasoningFormat,
    ReasonRequest,
    ReasonResponse,
    RoundTrace,
    SearchOptions,
    ServiceUsage,
    StepTrace,
    Strategy,
)
from shared.http import ERROR_DESCRIPTIONS
from shared.openai_schemas import CompletionTokensDetails, OpenAIErrorBody, completion_id
from shared.openai_schemas import Usage as CompletionUsage

_OPTION_FIELDS = frozenset(SearchOptions.model_fields) - {"n"}  # chat's n counts choices

EFFORT_PRESETS: dict[str, dict[str, int]] = {
    "low": {"n_candidates": 2, "max_steps": 6},
    "medium": {"n_candidates": 3, "max_steps": 15},
    "high": {"n_candidates": 6, "max_steps": 32},
}
"""``reasoning_effort`` -> search budget (explicit n_candidates/max_steps win)."""

MAX_STOP = 4


def _unsupported_value(v: Any) -> bool:
    return v not in (None, False, 0, 0.0, [], {}, "")


# OpenAI parameters the search cannot honour: a request that sets one to anything but its
# default (or "off") is refused, naming it.
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tools": (_unsupported_value, "tool calls are not supported"),
    "functions": (_unsupported_value, "function calls are not supported"),
    "function_call": (
        lambda v: v not in (None, "none", "auto"),
        "function calls are not supported",
    ),
    "tool_choice": (lambda v: v not in (None, "none", "auto"), "tool calls are not supported"),
    "logprobs": (_unsupported_value, "token log-probabilities are in the trace (trace_tokens)"),
    "top_logprobs": (_unsupported_value, "token log-probabilities are in the trace (trace_tokens)"),
    "logit_bias": (_unsupported_value, "the agent's logits cannot be biased"),
    "presence_penalty": (_unsupported_value, "penalties are not supported"),
    "frequency_penalty": (_unsupported_value, "penalties are not supported"),
    "top_p": (lambda v: v not in (None, 1, 1.0), "the agent samples with temperature only"),
    "response_format": (
        lambda v: v is not None and not (isinstance(v, Mapping) and v.get("type") == "text"),
        "the answer is the search's text; structured output is not supported",
    ),
    "audio": (_unsupported_value, "audio output is not supported"),
    "modalities": (lambda v: v not in (None, ["text"]), "only text is supported"),
    "prediction": (_unsupported_value, "predicted outputs are not supported"),
    "web_search_options": (_unsupported_value, "web search is not supported"),
}


class UnsupportedParameter(InvalidRequest):
    """An OpenAI parameter the gateway cannot honour (OpenAI's code ``unsupported_parameter``)."""

    code = "unsupported_parameter"


def _check_supported(chat: GatewayChatRequest) -> None:
    extra = chat.model_extra or {}
    for name, (bad, why) in UNSUPPORTED.items():
        if name in extra and bad(extra[name]):
            raise UnsupportedParameter(f"{name}: not supported ({why})", field=name)
    if chat.stream_options is not None and not chat.stream:
        raise InvalidRequest(
            "stream_options: only allowed with stream: true", field="stream_options"
        )
    stops = chat_stops(chat)
    if len(stops) > MAX_STOP:
        raise InvalidRequest(f"stop: at most {MAX_STOP} strings, got {len(stops)}", field="stop")
    if any(not s for s in stops):
        raise InvalidRequest("stop: a stop string must not be empty", field="stop")


def chat_stops(chat: GatewayChatRequest) -> tuple[str, ...]:
    """The request's stop strings."""
    if chat.stop is None:
        return ()
    return (chat.stop,) if isinstance(chat.stop, str) else tuple(chat.stop)


def _fit_budget(options: dict[str, Any], chat: GatewayChatRequest) -> list[str]:
    """Lower max_steps (max_rounds) so the search generates at most max_completion_tokens."""
    given = [b for b in (chat.max_completion_tokens, chat.max_tokens) if b is not None]
    if not given:
        return []
    budget = min(given)
    param = "max_completion_tokens" if chat.max_completion_tokens == budget else "max_tokens"
    defaults = SearchOptions()
    get = lambda name: options.get(name, getattr(defaults, name))  # noqa: E731
    if get("strategy") is Strategy.self_improve:
        per, name, unit = get("max_round_tokens"), "max_rounds", "round (max_round_tokens)"
        fits = budget // per
    else:
        per = get("n_candidates") * get("max_step_tokens") + get("max_rationale_tokens")
        name = "max_steps"
        unit = (
            "step (n_candidates x max_step_tokens + max_rationale_tokens) plus one for a "
            "forced answer"
        )
        fits = budget // per - 1  # one step's budget is kept for the forced answer step
    if fits < 1:
        raise InvalidRequest(
            f"{param}: {budget} tokens do not fit one {unit} = {per} tokens each; raise it "
            "or lower those options",
            field=param,
        )
    if fits < get(name):
        options[name] = fits
        return [f"{param} {budget}: {name} lowered to {fits}"]
    return []


def to_reason_request(
    chat: GatewayChatRequest, served_model: str
) -> tuple[ReasonRequest, list[str]]:
    """The ReasonRequest a chat request stands for, and warnings about what was ignored."""
    try:
        by_model = model_strategy(chat.model, served_model)
    except NotFound as exc:
        raise ModelNotFound(exc.message, field="model") from None
    _check_supported(chat)
    users = [i for i, m in enumerate(chat.messages) if m.role == "user"]
    if not users:
        raise InvalidRequest("messages must contain a user message", field="messages")
    last = users[-1]
    question = chat.messages[last].text().strip()
    if not question:
        raise InvalidRequest(f"messages[{last}]: the question is empty", field=f"messages[{last}]")
    options: dict[str, Any] = {}
    if chat.reasoning_effort is not None:
        options.update(EFFORT_PRESETS[chat.reasoning_effort])
    options.update(
        {
            name: getattr(chat, name)
            for name in _OPTION_FIELDS
            if name in type(chat).model_fields and getattr(chat, name) is not None
        }
    )
    if chat.n_solutions is not None:
        options["n"] = chat.n_solutions
    if by_model is not None:
        if chat.strategy is not None and chat.strategy is not by_model:
            raise InvalidRequest(
                f"strategy: {chat.strategy} contradicts model {chat.model!r} ({by_model})",
                field="strategy",
            )
        options["strategy"] = by_model
    warnings = _fit_budget(options, chat)
    try:
        request = ReasonRequest(question=question, stream=chat.stream, **options)
    except ValidationError as exc:  # pragma: no cover - the chat model checks the same ranges
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"{field}: {first['msg']}", field=field) from exc
    if len(chat.messages) > 1:
        warnings.append(
            f"{len(chat.messages) - 1} other message(s) ignored: the last user message is the "
            "question"
        )
    return request, warnings


class ModelNotFound(NotFound):
    code = "model_not_found"


def solution_text(steps: list[str]) -> str:
    return "\n".join(steps)


# --------------------------------------------------------------------------------------------
# The search as text


def _score(score: float | None) -> str:
    return "unscored" if score is None else f"{score:.3f}"


def step_reasoning(trace: StepTrace) -> str:
    """One step of the search as markdown: rationale, candidates by rank, the chosen one."""
    lines = [f"**Step {trace.index + 1}** ({trace.heuristic.value})"]
    if trace.rationale:
        lines.append(f"Rationale: {trace.rationale}")
    ranked = sorted(
        range(len(trace.candidates)),
        key=lambda i: (trace.candidates[i].score is None, -(trace.candidates[i].score or 0.0)),
    )
    for i in ranked:
        c = trace.candidates[i]
        if c.duplicate_of is not None:
            note = f"duplicate of {c.duplicate_of + 1}"
        elif c.repeat_of is not None:
            note = f"repeats step {c.repeat_of + 1}"
        else:
            note = _score(c.score)
        mark = " <- chosen" if i == trace.chosen else ""
        lines.append(f"- {i + 1}. [{note}] {c.text}{mark}")
    lines.extend(f"Warning: {w}" for w in trace.warnings)
    return "\n".join(lines) + "\n\n"


def round_reasoning(trace: RoundTrace) -> str:
    """One round of self-improvement as markdown: the answer, the feedback, the verdict."""
    lines = [f"**Round {trace.index + 1}**", trace.answer]
    if trace.feedback is not None:
        by = f" ({trace.feedback_by})" if trace.feedback_by else ""
        lines.append(f"Feedback{by}: {trace.feedback}")
    if trace.correct is not None:
        lines.append("Judged correct." if trace.correct else "Judged wrong.")
    return "\n".join(lines) + "\n\n"


def response_reasoning(response: ReasonResponse) -> str:
    parts = [step_reasoning(t) for t in response.trace]
    parts += [round_reasoning(r) for r in response.rounds]
    parts += [f"Fallback at step {f.step + 1}: {f.reason}\n" for f in response.fallbacks]
    return "".join(parts).rstrip("\n")


# --------------------------------------------------------------------------------------------
# Stop strings


class StopText:
    """The answer's text as it grows, cut before the first stop string. :meth:`push` returns
    what can be sent so far (holding back a possible stop string's beginning)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.keep = max((len(s) for s in stops), default=1) - 1
        self.text = ""
        self.sent = 0
        self.stopped = False

    def _cut(self) -> int | None:
        found = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.text += piece
        cut = self._cut()
        if cut is not None:
            self.stopped = True
            self.text = self.text[:cut]
        upto = len(self.text) if self.stopped else max(self.sent, len(self.text) - self.keep)
        out, self.sent = self.text[self.sent : upto], upto
        return out

    def flush(self) -> str:
        out, self.sent = self.text[self.sent :], len(self.text)
        return out


# --------------------------------------------------------------------------------------------
# Responses


def _finish_reason(response: ReasonResponse, stopped: bool = False) -> Literal["stop", "length"]:
    return "stop" if response.finished or stopped else "length"


def _services(response: ReasonResponse) -> list[ServiceUsage]:
    u = response.usage
    return [v for v in (getattr(u, n) for n in type(u).model_fields) if isinstance(v, ServiceUsage)]


def _answer_tokens(response: ReasonResponse) -> int:
    """Generated tokens that made it into the answer: the chosen candidates (self_improve:
    the last round)."""
    if response.rounds:
        return response.rounds[-1].completion_tokens or 0
    return sum(t.candidates[t.chosen].num_tokens or 0 for t in response.trace if t.candidates)


def chat_usage(response: ReasonResponse) -> CompletionUsage:
    """The model services' tokens: prompt tokens they read (the agent's and the
    rationalyst's prompts, the scorer's contexts) and every token generated; reasoning tokens
    are those generated that are not in the answer (rationales, candidates not chosen,
    feedback)."""
    services = _services(response)
    prompt = sum(s.prompt_tokens or 0 for s in services)
    completion = sum(s.completion_tokens or 0 for s in services)
    reasoning = max(0, completion - _answer_tokens(response))
    return CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning),
    )


CHAT_ID_PREFIX = "chatcmpl-"


def chat_id(request_id: str | None) -> str:
    """A chat completion's id: ``chatcmpl-<request id>``, so that the id every chunk carries
    names the search to cancel (``POST /v1/chat/completions/{id}/cancel``)."""
    return CHAT_ID_PREFIX + request_id if request_id else completion_id("chatcmpl")


def to_chat_completion(
    response: ReasonResponse,
    model: str,
    reasoning_format: ReasoningFormat = "reasoning_content",
    stop: tuple[str, ...] = (),
) -> ChatCompletion:
    answer = StopText(stop)
    content = answer.push(solution_text(response.steps)) + answer.flush()
    reasoning = response_reasoning(response)
    message = ChatMessageOut(content=content)
    if reasoning_format == "reasoning_content":
        message.reasoning_content = reasoning
    elif reasoning_format == "reasoning":
        message.reasoning = reasoning
    elif reasoning_format == "think":
        message.content = f"<think>\n{reasoning}\n</think>\n\n{content}"
    return ChatCompletion(
        id=chat_id(response.id),
        created=int(time.time()),
        model=model,
        choices=[
            ChatChoice(message=message, finish_reason=_finish_reason(response, answer.stopped))
        ],
        usage=chat_usage(response),
        rationalyst=response,
    )


class ChunkWriter:
    """Turns step traces and the final response into chat.completion.chunk payloads.

    With a reasoning format, each step's search goes out as reasoning as it is decided and
    the answer as content in the last chunk; with ``none`` the steps themselves are the
    content, sent as they are chosen. :attr:`stopped` turns true once the answer reached a
    stop string (the caller then stops the search)."""

    def __init__(
        self,
        model: str,
        request_id: str | None = None,
        *,
        reasoning_format: ReasoningFormat = "reasoning_content",
        stop: tuple[str, ...] = (),
        include_usage: bool = False,
    ) -> None:
        self.id = chat_id(request_id)
        self.created = int(time.time())
        self.model = model
        self.format = reasoning_format
        self.include_usage = include_usage
        self.answer = StopText(stop)
        self._steps = 0
        self._thinking = False

    @property
    def stopped(self) -> bool:
        return self.answer.stopped

    def _chunk(self, delta: ChunkDelta, **extra: Any) -> str:
        finish = extra.pop("finish_reason", None)
        chunk = ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)],
            **extra,
        )
        return chunk.model_dump_json()

    def _reasoning_delta(self, text: str) -> ChunkDelta:
        if self.format == "reasoning_content":
            return ChunkDelta(reasoning_content=text)
        if self.format == "reasoning":
            return ChunkDelta(reasoning=text)
        if not self._thinking:  # think
            self._thinking = True
            text = "<think>\n" + text
        return ChunkDelta(content=text)

    def role(self) -> str:
        return self._chunk(ChunkDelta(role="assistant", content=""))

    def step(self, trace: StepTrace) -> str:
        piece = trace.step if self._steps == 0 else "\n" + trace.step
        self._steps += 1
        sendable = self.answer.push(piece)
        if self.format == "none":
            return self._chunk(ChunkDelta(content=sendable or None), rationalyst_step=trace)
        return self._chunk(self._reasoning_delta(step_reasoning(trace)), rationalyst_step=trace)

    def round(self, trace: RoundTrace) -> str:
        """A round of self-improvement: its trace (and its reasoning); the solution is the
        last round's answer, sent with the final chunk."""
        if self.format == "none":
            return self._chunk(ChunkDelta(), rationalyst_round=trace)
        return self._chunk(self._reasoning_delta(round_reasoning(trace)), rationalyst_round=trace)

    def done(self, response: ReasonResponse) -> str:
        """The final chunk: the answer (what the step chunks did not send of it)."""
        if self._steps == 0 and response.steps:
            self.answer.push(solution_text(response.steps))
        if self.format == "none":
            content = self.answer.flush()
        else:
            content = self.answer.text
            if self.format == "think":
                head = "" if self._thinking else "<think>\n"
                content = f"{head}\n</think>\n\n{content}"
        return self._chunk(
            ChunkDelta(content=content or None),
            finish_reason=_finish_reason(response, self.stopped),
            rationalyst=response,
        )

    def usage(self, response: ReasonResponse) -> str | None:
        """The usage chunk (``stream_options.include_usage``): no choices, the usage."""
        if not self.include_usage:
            return None
        chunk = ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[],
            usage=chat_usage(response),
        )
        return chunk.model_dump_json()


# --------------------------------------------------------------------------------------------
# Errors in OpenAI's shape

OPENAI_PATHS = frozenset({"/v1/chat/completions"})
"""Routes whose errors use OpenAI's body and statuses (a bad request is a 400, not a 422)."""

_OPENAI_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
}


def openai_error(
    status: int, body: Mapping[str, Any], code: str | None = None
) -> tuple[int, dict[str, Any]]:
    """The shared envelope ``{"error": {type, message, request_id, field}}`` as OpenAI's
    ``{"error": {message, type, param, code, request_id}}``; 422 becomes 400."""
    found = body.get("error")
    detail: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    status = 400 if status == 422 else status
    kind = str(detail.get("type") or "internal_error")
    if code is None and kind == "invalid_request":
        code = "invalid_value"
    return status, {
        "error": {
            "message": str(detail.get("message", "")),
            "type": _OPENAI_TYPE.get(status, "server_error" if status >= 500 else kind),
            "param": detail.get("field"),
            "code": code or kind,
            "request_id": detail.get("request_id"),
        }
    }


def openai_error_of(exc: BaseException, request_id: str | None) -> dict[str, Any]:
    """A stream's error event in OpenAI's shape (the openai SDK raises it as APIError)."""
    if isinstance(exc, ServiceError):
        return openai_error(exc.status, exc.body(request_id), getattr(exc, "code", None))[1]
    message = f"internal error ({type(exc).__name__}); see the gateway log"
    body = {"error": {"type": "internal_error", "message": message, "request_id": request_id}}
    return openai_error(500, body)[1]


def install_openai_errors(app: FastAPI, paths: frozenset[str] = OPENAI_PATHS) -> None:
    """Answer errors on ``paths`` in OpenAI's shape; other routes keep the shared envelope.
    Wraps the handlers :func:`shared.http.install_error_handlers` installed."""

    def wrap(kind: type[Exception]) -> None:
        inner = app.exception_handlers[kind]

        async def handler(request: Request, exc: Any) -> Response:
            response = inner(request, exc)
            if isinstance(response, Awaitable):
                response = await response
            if request.url.path not in paths or not isinstance(response, JSONResponse):
                return response
            status, body = openai_error(
                response.status_code, json.loads(bytes(response.body)), getattr(exc, "code", None)
            )
            headers = {k: v for k, v in response.headers.items() if k.lower() == "retry-after"}
            return JSONResponse(body, status_code=status, headers=headers)

        app.add_exception_handler(kind, handler)

    for kind in (ServiceError, RequestValidationError, StarletteHTTPException):
        wrap(kind)

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document without the 422 it adds to every route with a body: these
        answer 400 instead (and FastAPI's own validation schemas go when nothing uses them)."""
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        for path in paths:
            for op in schema.get("paths", {}).get(path, {}).values():
                op.get("responses", {}).pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            rest = {k: v for k, v in components.items() if k != name}
            used = json.dumps([schema.get("paths"), rest])
            if name in components and f'"#/components/schemas/{name}"' not in used:
                del components[name]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


OPENAI_ERROR_DESCRIPTIONS: dict[int, str] = {
    **ERROR_DESCRIPTIONS,
    400: "A parameter is wrong or not supported (`error.param` names it; `error.code` is "
    "unsupported_parameter, unsupported_value or invalid_value); also a body that is not "
    "UTF-8 JSON (`param: body`).",
}


def openai_error_responses(
    *statuses: int, notes: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of an OpenAI route: OpenAI's error body, but for the 401 of the auth
    middleware (the shared envelope; the SDKs raise AuthenticationError by its status)."""
    notes = notes or {}
    return {
        s: {
            "model": ErrorBody if s == 401 else OpenAIErrorBody,
            "description": notes.get(s, OPENAI_ERROR_DESCRIPTIONS[s]),
        }
        for s in statuses
    }
