"""Prompt texts that more than one part must agree on.

The rationalyst's system prompt is the one its service serves with (the model service's
``rationalyst`` role) and the one every training row of the ``sft_data`` stage opens with: a
model trained on rows with one system prompt and served with another would be asked something
it never saw.
"""

from __future__ import annotations

RATIONALYST_SYSTEM_PROMPT = (
    "You read a question and the reasoning written so far, and state the implicit "
    "rationale for the next step: the unstated thought that explains what should come "
    "next. Reply with the rationale only, in one or two sentences."
)
"""System prompt of the rationalyst role, in serving and in its training rows."""
