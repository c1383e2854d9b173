"""The scorer's context: the structure (chat messages) in which candidate steps are scored.

The gateway sends structure, not rendered text: the scorer applies its own chat template. The
context mirrors the agent's chat (few-shot demos, the question, one assistant turn per chosen
step) so that a candidate is scored as exactly the next assistant turn the agent wrote.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.schemas import ChatMessage, Demo

SCORING_SYSTEM_PROMPT = (
    "You continue a step-by-step solution. Given the preceding text and rationales that guide "
    "the reasoning still to come, write the future text. Rationales start with 'Rationale: '. "
    "Continue consistently with the rationales and with the preceding text."
)
"""System prompt of the scoring context (the gist of the original's scoring prompt)."""

RATIONALE_PREFIX = "Rationale: "


def scoring_context(
    question: str,
    steps: Sequence[str],
    demos: Sequence[Demo],
    rationale: str | None,
    *,
    system: str = SCORING_SYSTEM_PROMPT,
) -> list[ChatMessage]:
    """Messages after which each candidate is scored as the next assistant turn.

    system, then per demo its question (user) and one assistant message per step, then the
    question, one assistant message per chosen step, and - when a rationale is given - an
    assistant turn ``"Rationale: <rationale>"``.
    """
    messages = [ChatMessage(role="system", content=system)]
    for demo in demos:
        messages.append(ChatMessage(role="user", content=demo.question))
        messages.extend(ChatMessage(role="assistant", content=s) for s in demo.steps)
    messages.append(ChatMessage(role="user", content=question))
    messages.extend(ChatMessage(role="assistant", content=s) for s in steps)
    if rationale is not None:
        messages.append(ChatMessage(role="assistant", content=RATIONALE_PREFIX + rationale))
    return messages
