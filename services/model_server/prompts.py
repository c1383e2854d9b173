"""Prompt rendering per role. The service renders with its own model's chat template; callers
send structure (question, steps, demos), never pre-rendered prompts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.answer_kinds import AnswerKind, detect_answer_kind
from shared.fewshot import default_demos
from shared.prompts import RATIONALYST_SYSTEM_PROMPT
from shared.schemas import ChatMessage, Demo, ProposeRequest, Role, Trajectory

DEFAULT_SYSTEM_PROMPTS: dict[Role, str | None] = {
    Role.rationalyst: RATIONALYST_SYSTEM_PROMPT,
    Role.agent: (
        "Solve the problem step by step. Write exactly one step in each reply. When you reach "
        "the result, end the step with 'The answer is: X'."
    ),
    Role.scorer: None,
    Role.reward: None,
}

BOT, EOT = "<BOT>", "<EOT>"


def system_prompt(role: Role, override: str | None) -> str | None:
    """The setting wins when given ('' means no system message); else the role's default."""
    if override is not None:
        return override or None
    return DEFAULT_SYSTEM_PROMPTS[role]


def render(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )
    return str(text)


def rationale_user_message(traj: Trajectory) -> str:
    """The rationalyst's input: ``Question: q`` / ``Answer: step1 step2 ...`` (one message)."""
    return f"Question: {traj.question}\nAnswer: {' '.join(traj.steps)}"


def rationale_prompt(tokenizer: Any, system: str | None, traj: Trajectory) -> str:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": rationale_user_message(traj)})
    return render(tokenizer, messages, generation_prompt=True)


def agent_messages(system: str | None, demos: list[Demo], traj: Trajectory) -> list[dict[str, str]]:
    """Few-shot demos, the question, and one assistant turn per chosen step."""
    messages = [{"role": "system", "content": system}] if system else []
    for demo in demos:
        messages.append({"role": "user", "content": demo.question})
        messages.extend({"role": "assistant", "content": s} for s in demo.steps)
    messages.append({"role": "user", "content": traj.question})
    messages.extend({"role": "assistant", "content": s} for s in traj.steps)
    return messages


def default_or_given_demos(
    question: str, few_shot: list[Demo] | None, answer_kind: AnswerKind | None = None
) -> list[Demo]:
    """The request's demos, or the defaults of the answer kind (given, else detected)."""
    if few_shot is not None:
        return few_shot
    return default_demos(answer_kind or detect_answer_kind(question))


def agent_prompt(
    tokenizer: Any, system: str | None, demos: list[Demo], question: str, steps: Sequence[str]
) -> str:
    """The agent's prompt for the step after ``steps`` (the next assistant turn opened)."""
    traj = Trajectory(question=question, steps=[s for s in steps if s])
    return render(tokenizer, agent_messages(system, demos, traj), generation_prompt=True)


def propose_prompt(tokenizer: Any, system: str | None, req: ProposeRequest) -> str:
    """The agent's prompt for the next step. With an explicit rationale, the next assistant
    turn opens with ``<BOT>rationale<EOT>`` and the candidates continue after it; a
    ``step_prefix`` comes after that. Without demos in the request, the defaults of the
    question's answer kind are used."""
    demos = default_or_given_demos(req.question, req.few_shot)
    prompt = render(tokenizer, agent_messages(system, demos, req), generation_prompt=True)
    if req.rationale:
        prompt += f"{BOT}{req.rationale}{EOT} "
    if req.step_prefix:
        prompt += req.step_prefix
    return prompt


def chat_prompt(tokenizer: Any, messages: list[ChatMessage] | list[dict[str, str]]) -> str:
    """A generation prompt: the messages, then the opening of the next assistant turn."""
    plain = [m if isinstance(m, dict) else m.model_dump() for m in messages]
    return render(tokenizer, plain, generation_prompt=True)
