"""Self-improvement at inference (TriPosT, REFERENCE.md 2.1) as plain async code.

The agent continues TriPosT's text format (:mod:`shared.tripost`) through its raw
``/v1/completions``:

1. it attempts: ``Q: <question>\\nAnswer:`` -> the answer (a model trained on TriPosT's samples
   often goes on with its feedback and its update in the same generation; they are used);
2. each round, the answer is judged: by the agent itself (``feedback: self``, the continuation
   of ``... Answer: <answer>\\nFeedback:``) or by a verifier (``feedback: verifier``: the task's
   scripted verifier, or the LLM one);
3. when the feedback says the final response is correct, or after ``max_rounds`` answers, the
   last answer is the solution; otherwise the agent writes the update (``... Feedback:
   <feedback>\\nUpdated Answer:``), which is the next round's answer.

It also stops when an answer has no numbered steps and final response (nothing to judge), when
a feedback cannot be read, or when an update cannot be read (the answer before it stands).
:class:`SelfImprovement` is the loop itself, which the worker's evaluation runs as well;
:class:`SelfImproveSearch` is the ``strategy: self_improve`` of ``/v1/reason``: the loop on the
agent service, with the request's deadline, cancellation, usage and response.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from gateway.loop import ServiceCounter, new_seed
from gateway.upstreams import ServiceName, Upstreams
from shared.answer_kinds import detect_answer_kind
from shared.answers import contains_end_phrase, extract_answer
from shared.errors import InvalidRequest, ServiceError, ServiceUnavailable
from shared.fewshot import DEFAULT_DEMOS
from shared.gateway_schemas import (
    FeedbackBy,
    Finish,
    Heuristic,
    ReasonRequest,
    ReasonResponse,
    RoundTrace,
    Strategy,
    Timings,
    Usage,
)
from shared.openai_schemas import ChatCompletionRequest, CompletionRequest, OAChatMessage
from shared.tasks import get_task
from shared.tasks.base import AnswerKind, DataMissingError, UnknownTaskError
from shared.tripost import STOP, normalize, prompt, read_continuation, tripost_demo
from shared.verify import (
    QuestionError,
    Verdict,
    VerifierKind,
    llm_verify,
    parse_feedback,
    resolve_task,
    scripted_verifier,
    split_steps,
)

logger = logging.getLogger(__name__)

DEMO_SHOTS = 2
"""Worked examples of the task when a request names a task but no ``few_shot``."""


@dataclass(frozen=True)
class Generation:
    """What one call of the model wrote."""

    text: str
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    """``length`` when the token limit cut it."""


Generate = Callable[[str], Awaitable[Generation]]
"""Continues a prompt (raw text, no chat template)."""
Judge = Callable[[str], Awaitable[tuple[Verdict, FeedbackBy]]]
"""A verifier: the verdict on an answer and who gave it (``scripted`` or ``llm``)."""


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def answer_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass
class SelfImprovement:
    """The loop for one question. Iterate :meth:`run` for the rounds as they end; afterwards
    :attr:`answer` is the solution (the last answer written) and :attr:`rounds` the trace.

    ``judge`` None: the model judges itself (TriPosT at test time)."""

    question: str
    generate: Generate
    demos: Sequence[tuple[str, str]] = ()
    max_rounds: int = 10
    judge: Judge | None = None
    rounds: list[RoundTrace] = field(default_factory=list)
    answer: str = ""
    """The last answer written (normalized once it has numbered steps)."""
    warnings: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int = 0

    async def _gen(self, text: str) -> tuple[Generation, float]:
        start = time.perf_counter()
        out = await self.generate(text)
        self.completion_tokens += out.completion_tokens or 0
        self.prompt_tokens += out.prompt_tokens or 0
        return out, time.perf_counter() - start

    async def run(self) -> AsyncGenerator[RoundTrace, None]:
        start = time.perf_counter()
        out, model_s = await self._gen(prompt(self.question, self.demos))
        tokens = out.completion_tokens
        attempt = read_continuation(out.text, "answer")
        raw = attempt.answer or ""
        answer = normalize(raw)
        self.answer = answer or raw
        if answer is None:
            self.warnings.append(
                "the attempt has no numbered steps and final response; nothing to improve"
            )
            yield self._round(0, raw, None, None, None, tokens, model_s, start, parsed=False)
            return
        own_feedback, own_update = attempt.feedback, _whole(attempt.updated, out)
        for index in range(self.max_rounds):
            if index:
                start, model_s, tokens = time.perf_counter(), 0.0, 0
            if self.judge is None:
                if own_feedback is None:
                    out, spent = await self._gen(prompt(self.question, self.demos, answer=answer))
                    model_s += spent
                    tokens = (tokens or 0) + (out.completion_tokens or 0)
                    cont = read_continuation(out.text, "feedback")
                    own_feedback, own_update = cont.feedback, _whole(cont.updated, out)
                feedback = own_feedback or ""
                labels = [s.label for s in split_steps(answer, strict=False)]
                verdict = parse_feedback(feedback, labels)
                by: FeedbackBy = "self"
            else:
                t = time.perf_counter()
                verdict, by = await self.judge(answer)
                model_s += time.perf_counter() - t
                feedback, own_update = verdict.feedback, None
            last = index == self.max_rounds - 1
            if verdict.unparseable:
                self.warnings.append(f"the feedback of round {index} could not be read; stopping")
            if verdict.correct or verdict.unparseable or last:
                yield self._round(index, answer, feedback, by, verdict, tokens, model_s, start)
                return
            if own_update is None:
                text = prompt(self.question, self.demos, answer=answer, feedback=feedback)
                out, spent = await self._gen(text)
                model_s += spent
                tokens = (tokens or 0) + (out.completion_tokens or 0)
                own_update = read_continuation(out.text, "updated").updated
            updated = normalize(own_update or "")
            round_ = self._round(index, answer, feedback, by, verdict, tokens, model_s, start)
            round_.updated = updated or (own_update or None)
            yield round_
            if updated is None:
                self.warnings.append(f"the update of round {index} could not be read; stopping")
                return
            answer = self.answer = updated
            own_feedback = own_update = None

    def _round(
        self,
        index: int,
        answer: str,
        feedback: str | None,
        by: FeedbackBy | None,
        verdict: Verdict | None,
        tokens: int | None,
        model_s: float,
        start: float,
        *,
        parsed: bool = True,
    ) -> RoundTrace:
        round_ = RoundTrace(
            index=index,
            answer=answer,
            parsed=parsed,
            feedback=feedback,
            feedback_by=by,
            correct=None if verdict is None or verdict.unparseable else verdict.correct,
            step=verdict.step if verdict is not None else None,
            completion_tokens=tokens,
            model_ms=_ms(model_s),
            total_ms=_ms(time.perf_counter() - start),
        )
        self.rounds.append(round_)
        return round_


def _whole(updated: str | None, out: Generation) -> str | None:
    """An update that a generation went on to write, unless the token limit cut it (it is
    then asked for on its own)."""
    return None if out.finish_reason == "length" else updated


def completion_generator(
    complete: Callable[[CompletionRequest], Awaitable[object]],
    *,
    max_tokens: int,
    temperature: float,
    seed: int | None,
) -> Generate:
    """A :data:`Generate` over an OpenAI-style ``complete`` call; call ``i`` of the loop
    samples with ``seed + i``."""
    calls = 0

    async def generate(text: str) -> Generation:
        nonlocal calls
        req = CompletionRequest(
            prompt=text,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=None if seed is None else seed + calls,
            stop=list(STOP),
        )
        calls += 1
        res = await complete(req)
        choices = getattr(res, "choices", None)
        usage = getattr(res, "usage", None)
        if not choices:
            raise ServiceUnavailable("the agent returned a completion without choices")
        return Generation(
            text=str(choices[0].text),
            completion_tokens=getattr(usage, "completion_tokens", None),
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            finish_reason=getattr(choices[0], "finish_reason", None),
        )

    return generate


def task_demos(task: str | None, shots: int = DEMO_SHOTS) -> list[tuple[str, str]]:
    """Worked examples in TriPosT's format: the task's own (its gold rationales), else the
    built-in demos."""
    if task is not None:
        try:
            t = get_task(task)
            return [tripost_demo(d, t.kind) for d in t.demos(shots)]
        except (UnknownTaskError, DataMissingError):
            pass
    return [tripost_demo(d, AnswerKind.number) for d in DEFAULT_DEMOS[:shots]]


class SelfImproveSearch:
    """One ``/v1/reason`` request with ``strategy: self_improve``. Iterate :meth:`run` for
    the rounds; the last item is the :class:`ReasonResponse`.

    Worked examples: the request's ``few_shot`` ([] for none, as for a model trained with
    ``train_tripost``); without it, the task's own (``task``) or the built-in ones.
    Bad combinations (an unknown task, a scripted verifier without one) are a 422 naming the
    field, raised when the search is built."""

    def __init__(
        self,
        request: ReasonRequest,
        upstreams: Upstreams,
        *,
        max_deadline_s: float = 600.0,
        request_id: str | None = None,
        verifier_service: ServiceName = "scorer",
        verifier_max_tokens: int = 256,
    ) -> None:
        self.request = request
        self.request_id = request_id
        self.upstreams = upstreams
        self.deadline_s = min(request.deadline_s or math.inf, max_deadline_s)
        self.seed = request.seed if request.seed is not None else new_seed()
        self.warnings: list[str] = []
        self.cancelled = False
        self.deadline_reached = False
        self._timeout: asyncio.Timeout | None = None
        self.verifier_service = verifier_service
        self.verifier_max_tokens = verifier_max_tokens
        self.counters: dict[ServiceName, ServiceCounter] = {
            "rationalyst": ServiceCounter(),
            "agent": ServiceCounter(),
            "scorer": ServiceCounter(),
        }
        self.task = self._task()
        if "heuristic" in request.model_fields_set:
            self.warnings.append("self_improve writes whole answers; heuristic ignored")
        if request.feedback == "self" and request.verifier is not None:
            self.warnings.append("feedback is self: verifier ignored")
        temperature = request.temperature if "temperature" in request.model_fields_set else 0.0
        demos = (
            [tripost_demo(d, self._kind()) for d in request.few_shot]
            if request.few_shot is not None
            else task_demos(self.task)
        )
        self.loop = SelfImprovement(
            request.question,
            completion_generator(
                self._complete,
                max_tokens=request.max_round_tokens,
                temperature=temperature,
                seed=self.seed,
            ),
            demos=demos,
            max_rounds=request.max_rounds,
            judge=self._judge() if request.feedback == "verifier" else None,
        )

    # -- set-up --------------------------------------------------------------------------

    def _task(self) -> str | None:
        if self.request.task is None:
            return None
        try:
            return resolve_task(self.request.task)
        except UnknownTaskError as exc:
            raise InvalidRequest(f"task: {exc}", field="task") from exc

    def _kind(self) -> AnswerKind:
        if self.task is None:
            return AnswerKind.number
        try:
            return get_task(self.task).kind
        except (UnknownTaskError, DataMissingError):
            return AnswerKind.number

    def _judge(self) -> Judge:
        task = self.task
        scripted = scripted_verifier(task) if task else None
        kind = self.request.verifier or (VerifierKind.scripted if scripted else VerifierKind.llm)
        question = self.request.question
        if kind is VerifierKind.scripted:
            if scripted is None:
                raise InvalidRequest(
                    "verifier: scripted needs a `task` with a scripted verifier "
                    "(multistep_arithmetic, word_sorting)",
                    field="verifier" if task else "task",
                )
            verifier = scripted

            async def judge_scripted(answer: str) -> tuple[Verdict, FeedbackBy]:
                try:
                    return verifier.verify(question, answer), "scripted"
                except QuestionError as exc:
                    raise InvalidRequest(f"question: {exc}", field="question") from exc

            return judge_scripted
        name = self.verifier_service
        client = self.upstreams.by_name()[name]
        description = None
        if task is not None:
            try:
                description = get_task(task).description
            except (UnknownTaskError, DataMissingError):
                description = None

        async def chat(messages: list[dict[str, str]], max_tokens: int) -> str:
            req = ChatCompletionRequest(
                messages=[OAChatMessage.model_validate(m) for m in messages],
                max_tokens=max_tokens,
                temperature=0.0,
            )
            self.counters[name].calls += 1
            res = await client.chat(req)
            if res.usage is not None:
                self.counters[name].add(
                    prompt=res.usage.prompt_tokens, completion=res.usage.completion_tokens
                )
            return res.text()

        async def judge_llm(answer: str) -> tuple[Verdict, FeedbackBy]:
            try:
                verdict, _ = await llm_verify(
                    chat,
                    question,
                    answer,
                    task_description=description,
                    max_tokens=self.verifier_max_tokens,
                )
            except ServiceError as exc:
                raise type(exc)(f"llm verifier ({name} service): {exc.message}") from exc
            return verdict, "llm"

        return judge_llm

    async def _complete(self, req: CompletionRequest) -> object:
        self.counters["agent"].calls += 1
        try:
            res = await self.upstreams.agent.complete(req)
        except ServiceError:
            raise
        except ValueError as exc:  # pydantic.ValidationError, JSON decoding
            raise ServiceUnavailable(f"agent returned an unexpected response: {exc}") from exc
        if res.usage is not None:
            self.counters["agent"].add(
                prompt=res.usage.prompt_tokens, completion=res.usage.completion_tokens
            )
        return res

    # -- the search ----------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop: the generation in flight is abandoned at once and :meth:`run` answers with
        the last answer written."""
        self.cancelled = True
        if self._timeout is not None:
            self._timeout.reschedule(asyncio.get_running_loop().time())

    async def run(self) -> AsyncGenerator[RoundTrace | ReasonResponse, None]:
        """Yield each round as it ends, then the response."""
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.deadline_s
        rounds = self.loop.run()
        try:
            while True:
                if self.cancelled:
                    self.warnings.append(f"cancelled before round {len(self.loop.rounds)}")
                    break
                timeout = asyncio.timeout_at(deadline if math.isfinite(deadline) else None)
                try:
                    async with timeout:
                        self._timeout = timeout
                        item = await anext(rounds)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if not timeout.expired():
                        raise
                    where = f"during round {len(self.loop.rounds)}"
                    if self.cancelled:
                        self.warnings.append(f"cancelled {where}; returning the last answer")
                    else:
                        self.deadline_reached = True
                        self.warnings.append(
                            f"deadline of {self.deadline_s:g}s reached {where}; returning the "
                            "last answer"
                        )
                    break
                finally:
                    self._timeout = None
                yield item
        finally:
            await rounds.aclose()
        yield self.response(time.perf_counter() - start)

    def response(self, elapsed_s: float) -> ReasonResponse:
        text = self.loop.answer
        total_ms = _ms(elapsed_s)
        model_ms = round(sum(r.model_ms for r in self.loop.rounds), 3)
        finished = contains_end_phrase(text)
        if finished:
            finish = Finish.answer
        elif self.cancelled:
            finish = Finish.cancelled
        elif self.deadline_reached:
            finish = Finish.deadline
        else:
            finish = Finish.max_steps
        given = self.request.answer_kind
        return ReasonResponse(
            id=self.request_id,
            question=self.request.question,
            answer=extract_answer(text),
            steps=answer_lines(text),
            finished=finished,
            finish=finish,
            deadline_reached=self.deadline_reached,
            cancelled=self.cancelled,
            # The attempts follow TriPosT's format, not the step demos.
            answer_kind=given or detect_answer_kind(self.request.question),
            answer_kind_source="request" if given else "detected",
            few_shot_source="request" if self.request.few_shot else "default",
            few_shot_kind=None,
            heuristic_requested=self.request.heuristic,
            heuristic_used=Heuristic.greedy,
            seed=self.seed,
            warnings=[*self.warnings, *self.loop.warnings],
            strategy=Strategy.self_improve,
            rounds=list(self.loop.rounds),
            usage=Usage(
                rationalyst=self.counters["rationalyst"].model(),
                agent=self.counters["agent"].model(),
                scorer=self.counters["scorer"].model(),
            ),
            timings=Timings(
                total_ms=total_ms, model_ms=model_ms, overhead_ms=round(total_ms - model_ms, 3)
            ),
        )
