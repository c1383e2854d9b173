"""The OpenAI chat-completions face of /v1/reason: request and response conversion.

The LAST user message is the question. Earlier turns (system prompts, previous exchanges) are
ignored - the agent has its own system prompt and few-shot demos - and the response says so in
its warnings. The reply's content is the solution, one step per line; the full
:class:`ReasonResponse` rides along in the extra top-level field ``rationalyst``.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import ValidationError

from gateway.registry import model_strategy
from shared.errors import InvalidRequest
from shared.gateway_schemas import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessageOut,
    ChunkChoice,
    ChunkDelta,
    GatewayChatRequest,
    ReasonRequest,
    ReasonResponse,
    RoundTrace,
    SearchOptions,
    StepTrace,
)
from shared.openai_schemas import Usage as CompletionUsage
from shared.openai_schemas import completion_id

_OPTION_FIELDS = frozenset(SearchOptions.model_fields) - {"n"}  # chat's n counts choices


def to_reason_request(
    chat: GatewayChatRequest, served_model: str
) -> tuple[ReasonRequest, list[str]]:
    """The ReasonRequest a chat request stands for, and warnings about what was ignored."""
    by_model = model_strategy(chat.model, served_model)
    users = [i for i, m in enumerate(chat.messages) if m.role == "user"]
    if not users:
        raise InvalidRequest("messages must contain a user message", field="messages")
    last = users[-1]
    question = chat.messages[last].text().strip()
    if not question:
        raise InvalidRequest(f"messages[{last}]: the question is empty", field=f"messages[{last}]")
    options: dict[str, Any] = {
        name: getattr(chat, name)
        for name in _OPTION_FIELDS
        if name in type(chat).model_fields and getattr(chat, name) is not None
    }
    if chat.n_solutions is not None:
        options["n"] = chat.n_solutions
    if by_model is not None:
        if chat.strategy is not None and chat.strategy is not by_model:
            raise InvalidRequest(
                f"strategy: {chat.strategy} contradicts model {chat.model!r} ({by_model})",
                field="strategy",
            )
        options["strategy"] = by_model
    try:
        request = ReasonRequest(question=question, stream=chat.stream, **options)
    except ValidationError as exc:  # pragma: no cover - the chat model checks the same ranges
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"{field}: {first['msg']}", field=field) from exc
    warnings = []
    if len(chat.messages) > 1:
        warnings.append(
            f"{len(chat.messages) - 1} other message(s) ignored: the last user message is the "
            "question"
        )
    return request, warnings


def solution_text(steps: list[str]) -> str:
    return "\n".join(steps)


def _finish_reason(response: ReasonResponse) -> Literal["stop", "length"]:
    return "stop" if response.finished else "length"


def _usage(response: ReasonResponse) -> CompletionUsage:
    """Tokens the model services report: scored context tokens and generated tokens."""
    u = response.usage
    prompt = u.scorer.prompt_tokens or 0
    completion = sum(s.completion_tokens or 0 for s in (u.rationalyst, u.agent, u.scorer))
    return CompletionUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


CHAT_ID_PREFIX = "chatcmpl-"


def chat_id(request_id: str | None) -> str:
    """A chat completion's id: ``chatcmpl-<request id>``, so that the id every chunk carries
    names the search to cancel (``POST /v1/chat/completions/{id}/cancel``)."""
    return CHAT_ID_PREFIX + request_id if request_id else completion_id("chatcmpl")


def to_chat_completion(response: ReasonResponse, model: str) -> ChatCompletion:
    return ChatCompletion(
        id=chat_id(response.id),
        created=int(time.time()),
        model=model,
        choices=[
            ChatChoice(
                message=ChatMessageOut(content=solution_text(response.steps)),
                finish_reason=_finish_reason(response),
            )
        ],
        usage=_usage(response),
        rationalyst=response,
    )


class ChunkWriter:
    """Turns step traces and the final response into chat.completion.chunk payloads."""

    def __init__(self, model: str, request_id: str | None = None) -> None:
        self.id = chat_id(request_id)
        self.created = int(time.time())
        self.model = model
        self._steps = 0

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

    def role(self) -> str:
        return self._chunk(ChunkDelta(role="assistant", content=""))

    def step(self, trace: StepTrace) -> str:
        text = trace.step if self._steps == 0 else "\n" + trace.step
        self._steps += 1
        return self._chunk(ChunkDelta(content=text), rationalyst_step=trace)

    def round(self, trace: RoundTrace) -> str:
        """A round of self-improvement: its trace, no content (the solution is the last
        round's answer, sent with the final chunk)."""
        return self._chunk(ChunkDelta(), rationalyst_round=trace)

    def done(self, response: ReasonResponse) -> str:
        """The final chunk; it carries the solution's text when no step chunk did."""
        content = solution_text(response.steps) if self._steps == 0 and response.steps else None
        return self._chunk(
            ChunkDelta(content=content),
            finish_reason=_finish_reason(response),
            rationalyst=response,
        )
