"""What each gateway endpoint does, apart from HTTP: check limits, hold a concurrency slot, run
the loop, record metrics, and frame streams. Raises :mod:`shared.errors` only.

Streaming: the first step is computed BEFORE the response starts, so a failure on the first
step (agent down, strict mode) is an ordinary error response with its HTTP status. After the
stream has started, an error is sent as the stream's last event (SSE ``event: error`` with the
envelope; for OpenAI chunks a ``data: {"error": ...}`` line, which the openai client raises as
an APIError) and the stream ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from gateway import loop
from gateway.openai_compat import (
    CHAT_ID_PREFIX,
    ChunkWriter,
    StopText,
    chat_stops,
    openai_error_of,
    to_chat_completion,
    to_reason_request,
)
from gateway.search import Search, build_search, run_to_end
from gateway.state import GatewayState
from shared.errors import InternalError, InvalidRequest, ServiceError, ServiceUnavailable
from shared.gateway_schemas import (
    CancelResponse,
    ChatCompletion,
    GatewayChatRequest,
    ReasonRequest,
    ReasonResponse,
    RoundTrace,
    SelectRequest,
    SelectResponse,
    StepTrace,
    TreeNode,
    VerifierKind,
    VerifyRequest,
    VerifyResponse,
)
from shared.openai_schemas import ChatCompletionRequest, OAChatMessage
from shared.tasks import UnknownTaskError, get_task
from shared.verify import QuestionError, Verdict, llm_verify, resolve_task, scripted_verifier

logger = logging.getLogger(__name__)

Item = StepTrace | RoundTrace | TreeNode | ReasonResponse


def check_question(question: str, state: GatewayState) -> None:
    limit = state.settings.max_question_chars
    if len(question) > limit:
        raise InvalidRequest(
            f"question: {len(question)} characters; at most {limit} are accepted",
            field="question",
        )


async def readiness(state: GatewayState) -> dict[str, Any]:
    """Ready when all three model services answer /ready (and the reward service, when one
    is configured); else 503 naming those that do not."""
    clients: dict[str, Any] = {str(k): v for k, v in state.upstreams.by_name().items()}
    if state.upstreams.reward is not None:
        clients["reward"] = state.upstreams.reward
    names = list(clients)

    async def check(name: str) -> bool:
        try:
            return bool(
                await asyncio.wait_for(clients[name].ready(), state.settings.ready_timeout_s)
            )
        except (TimeoutError, OSError):
            return False

    results = await asyncio.gather(*(check(name) for name in names))
    down = [name for name, ok in zip(names, results, strict=True) if not ok]
    if down:
        raise ServiceUnavailable(f"model services not ready: {', '.join(down)}")
    return {"status": "ready", "services": dict.fromkeys(names, "ready")}


def _search(state: GatewayState, req: ReasonRequest, request_id: str | None) -> Search:
    settings = state.settings
    return build_search(
        req,
        state.upstreams,
        max_deadline_s=settings.max_deadline_s,
        request_id=request_id,
        verifier_service=settings.verifier_service,
        verifier_max_tokens=settings.verifier_max_tokens,
        answer_grace_s=settings.answer_grace_s,
    )


async def reason(
    state: GatewayState,
    req: ReasonRequest,
    request_id: str | None,
    endpoint: str = "reason",
    on_step: Callable[[StepTrace, Search], None] | None = None,
) -> ReasonResponse:
    """Run a search to its response; ``on_step`` sees each step as it is chosen (and may
    cancel the search)."""
    check_question(req.question, state)
    async with state.limiter.slot():
        search = _search(state, req, request_id)
        with state.searches.register(request_id, search):
            try:
                response = await (
                    run_to_end(search) if on_step is None else _run_watched(search, on_step)
                )
            except ServiceError as exc:
                state.metrics.observe_error(endpoint, exc)
                raise
    state.metrics.observe_reason(response, endpoint)
    _log_payload(state, response)
    state.traces.put(response)
    return response


async def _run_watched(
    search: Search, on_step: Callable[[StepTrace, Search], None]
) -> ReasonResponse:
    async for item in search.run():
        if isinstance(item, ReasonResponse):
            return item
        if isinstance(item, StepTrace):
            on_step(item, search)
    raise AssertionError("the search ended without a response")  # pragma: no cover


def _log_payload(state: GatewayState, response: ReasonResponse) -> None:
    """Questions and steps may be private: logged only with GATEWAY_LOG_PAYLOADS."""
    if state.settings.log_payloads:
        logger.info(
            "question=%r steps=%r answer=%r", response.question, response.steps, response.answer
        )


async def select(state: GatewayState, req: SelectRequest, request_id: str | None) -> SelectResponse:
    check_question(req.question, state)
    async with state.limiter.slot():
        try:
            response = await loop.select(req, state.upstreams, request_id=request_id)
        except ServiceError as exc:
            state.metrics.observe_error("select", exc)
            raise
    state.metrics.observe_select(response)
    return response


async def chat_completion(
    state: GatewayState, chat: GatewayChatRequest, request_id: str | None
) -> ChatCompletion:
    req, warnings = to_reason_request(chat, state.settings.served_model_name)
    stops = chat_stops(chat)
    answer = StopText(stops)

    def stop_at_stop_string(step: StepTrace, search: Search) -> None:
        if not answer.stopped:
            answer.push(step.step if step.index == 0 else "\n" + step.step)
            if answer.stopped:
                search.cancel()  # the answer ends here: no more steps

    response = await reason(state, req, request_id, "chat", stop_at_stop_string if stops else None)
    response.warnings[:0] = warnings
    if answer.stopped:
        response.warnings.append("stopped at a stop string (`stop`)")
    return to_chat_completion(
        response,
        chat.model,
        chat.reasoning_format or state.settings.reasoning_format,
        chat_stops(chat),
    )


async def verify(state: GatewayState, req: VerifyRequest, request_id: str | None) -> VerifyResponse:
    """The verdict of the scripted verifier of ``req.task`` or of the LLM verifier (the
    settings' ``verifier_service``). Unknown task, a question the scripted verifier cannot
    read, too long a solution: 422 naming the field; the LLM verifier down: 503 naming it."""
    started = time.perf_counter()
    try:
        task = resolve_task(req.task)
    except UnknownTaskError as exc:
        raise InvalidRequest(f"task: {exc}", field="task") from exc
    check_question(req.question, state)
    limit = state.settings.max_solution_chars
    if len(req.solution) > limit:
        raise InvalidRequest(
            f"solution: {len(req.solution)} characters; at most {limit} are accepted",
            field="solution",
        )
    scripted = scripted_verifier(task)
    kind = req.verifier or (VerifierKind.scripted if scripted else VerifierKind.llm)
    model_output: str | None = None
    if kind is VerifierKind.scripted:
        if scripted is None:
            raise InvalidRequest(
                f"verifier: {task} has no scripted verifier; use llm (or leave verifier out)",
                field="verifier",
            )
        try:
            verdict = scripted.verify(req.question, req.solution)
        except QuestionError as exc:
            raise InvalidRequest(f"question: {exc}", field="question") from exc
    else:
        verdict, model_output = await _llm_verdict(state, task, req)
    response = VerifyResponse(
        **verdict.model_dump(),
        id=request_id,
        task=task,
        verifier=kind,
        model_output=model_output,
        elapsed_ms=(time.perf_counter() - started) * 1000.0,
    )
    state.metrics.observe_verify(response)
    return response


async def _llm_verdict(
    state: GatewayState, task: str, req: VerifyRequest
) -> tuple[Verdict, str | None]:
    """Ask the verifier service (greedy decoding), holding a concurrency slot. Its failures
    are re-raised naming it as the LLM verifier; a prompt it refuses as too long is the
    solution's fault (422 on ``solution``)."""
    name = state.settings.verifier_service
    client = state.upstreams.by_name()[name]

    async def chat(messages: list[dict[str, str]], max_tokens: int) -> str:
        request = ChatCompletionRequest(
            messages=[OAChatMessage.model_validate(m) for m in messages],
            max_tokens=max_tokens,
            temperature=0.0,
        )
        return (await client.chat(request)).text()

    async with state.limiter.slot():
        try:
            return await llm_verify(
                chat,
                req.question,
                req.solution,
                task_description=get_task(task).description,
                max_tokens=state.settings.verifier_max_tokens,
            )
        except InvalidRequest as exc:
            raise InvalidRequest(
                f"solution: the llm verifier ({name} service) refused it: {exc.message}",
                field="solution",
            ) from exc
        except ServiceError as exc:
            state.metrics.observe_error("verify", exc)
            raise type(exc)(f"llm verifier ({name} service): {exc.message}") from exc


# --------------------------------------------------------------------------------------------
# Streams


class SearchStream:
    """A started search: its first item (already computed) and the rest, holding a
    concurrency slot and its place among the cancellable searches until :meth:`aclose`
    (idempotent; also run when the request is over however it ended, so both are freed even
    when the client leaves before the body starts)."""

    def __init__(
        self,
        state: GatewayState,
        first: Item,
        rest: AsyncGenerator[Item, None],
        *,
        admitted: float,
        unregister: Callable[[], None],
        search: Search | None = None,
    ) -> None:
        self.state = state
        self.search = search
        self.first = first
        self.rest = rest
        self._admitted = admitted
        self._unregister = unregister
        self._closed = False

    async def items(self) -> AsyncIterator[Item]:
        yield self.first
        async for item in self.rest:
            yield item

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.rest.aclose()
        finally:
            self._unregister()
            self.state.limiter.release(self._admitted)


async def open_stream(
    state: GatewayState, req: ReasonRequest, request_id: str | None, endpoint: str
) -> SearchStream:
    """Check the request, take a slot and run the search up to its first item."""
    check_question(req.question, state)
    admitted = await state.limiter.acquire()
    try:
        search = _search(state, req, request_id)
    except BaseException:
        state.limiter.release(admitted)
        raise
    unregister = state.searches.add(request_id, search)
    items = search.run()
    try:
        first = await anext(items)
    except BaseException as exc:
        await items.aclose()
        unregister()
        state.limiter.release(admitted)
        if isinstance(exc, ServiceError):
            state.metrics.observe_error(endpoint, exc)
        raise
    return SearchStream(
        state,
        first,
        items,
        admitted=admitted,
        unregister=unregister,
        search=search,
    )


def cancel(state: GatewayState, search_id: str) -> CancelResponse:
    """Cancel a running search by its id (a chat completion's id names its search too)."""
    key = search_id.removeprefix(CHAT_ID_PREFIX)
    outcome = state.searches.cancel(key)
    if outcome == "cancelled":
        state.metrics.cancellations.labels("api").inc()
    return CancelResponse(id=search_id, status=outcome)


def _error_body(exc: BaseException, request_id: str | None) -> dict[str, Any]:
    if isinstance(exc, ServiceError):
        return exc.body(request_id)
    logger.exception("unexpected error in a stream", exc_info=exc)
    return InternalError(f"internal error ({type(exc).__name__}); see the gateway log").body(
        request_id
    )


def _sse(event: str, data: str) -> str:
    return f"event: {event}\ndata: {data}\n\n"


async def reason_events(stream: SearchStream, request_id: str | None) -> AsyncIterator[str]:
    """SSE body of /v1/reason: ``event: step`` per step (``event: round`` per round of
    self-improvement), ``event: node`` per tree node as it is decided (data: the node with
    ``"event": "node"``; a node is sent again when its status changes), ``event: done`` with
    the response, or ``event: error`` with the envelope as the last event."""
    metrics = stream.state.metrics
    try:
        async for item in stream.items():
            if isinstance(item, StepTrace):
                yield _sse("step", item.model_dump_json())
            elif isinstance(item, RoundTrace):
                yield _sse("round", item.model_dump_json())
            elif isinstance(item, TreeNode):
                yield _sse("node", json.dumps({"event": "node", **item.model_dump(mode="json")}))
            else:
                metrics.observe_reason(item)
                _log_payload(stream.state, item)
                stream.state.traces.put(item)
                yield _sse("done", item.model_dump_json())
    except Exception as exc:
        if isinstance(exc, ServiceError):
            metrics.observe_error("reason", exc)
        yield _sse("error", json.dumps(_error_body(exc, request_id)))
    finally:
        await stream.aclose()


async def open_chat_stream(
    state: GatewayState, chat: GatewayChatRequest, request_id: str | None
) -> tuple[SearchStream, list[str]]:
    req, warnings = to_reason_request(chat, state.settings.served_model_name)
    return await open_stream(state, req, request_id, "chat"), warnings


async def chat_chunks(
    stream: SearchStream,
    warnings: list[str],
    request_id: str | None,
    chat: GatewayChatRequest | None = None,
) -> AsyncIterator[str]:
    """OpenAI stream body: a role chunk, a chunk per step (its search as reasoning, or with
    ``reasoning_format: none`` the step as content; steps joined by newlines), a final chunk
    with the answer, finish_reason and the whole trace, the usage chunk when
    ``stream_options.include_usage``, then ``[DONE]``. An answer that reaches a ``stop``
    string stops the search there."""
    metrics = stream.state.metrics
    settings = stream.state.settings
    writer = ChunkWriter(
        chat.model if chat else settings.served_model_name,  # a strategy id is echoed
        request_id,
        reasoning_format=(chat.reasoning_format if chat else None) or settings.reasoning_format,
        stop=chat_stops(chat) if chat else (),
        include_usage=bool(chat and chat.stream_options and chat.stream_options.include_usage),
    )
    stopping = False
    try:
        yield f"data: {writer.role()}\n\n"
        async for item in stream.items():
            if isinstance(item, StepTrace):
                yield f"data: {writer.step(item)}\n\n"
                if writer.stopped and not stopping and stream.search is not None:
                    stopping = True  # the answer reached a stop string: no more steps
                    stream.search.cancel()
            elif isinstance(item, RoundTrace):
                yield f"data: {writer.round(item)}\n\n"
            elif isinstance(item, TreeNode):
                continue  # the tree rides along in the final chunk's `rationalyst`
            else:
                item.warnings[:0] = warnings
                if stopping:
                    item.warnings.append("stopped at a stop string (`stop`)")
                metrics.observe_reason(item, "chat")
                stream.state.traces.put(item)
                yield f"data: {writer.done(item)}\n\n"
                usage = writer.usage(item)
                if usage is not None:
                    yield f"data: {usage}\n\n"
    except Exception as exc:
        if isinstance(exc, ServiceError):
            metrics.observe_error("chat", exc)
        else:
            logger.exception("unexpected error in a stream", exc_info=exc)
        yield f"data: {json.dumps(openai_error_of(exc, request_id))}\n\n"
    finally:
        await stream.aclose()
    yield "data: [DONE]\n\n"
