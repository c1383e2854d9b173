"""The extraction prompt: a system prompt and worked examples written for this project
(REFERENCE.md 1.2: copy the text verbatim, insert the unstated rationales as
``<BOT>...<EOT>`` after sentences or steps, never repeat or change the text)."""

from __future__ import annotations

from shared.job_schemas import BoundaryExample, ExtractExample

EXTRACTION_SYSTEM_PROMPT = (
    "You copy a text exactly, word for word, and insert hidden rationales into it. A rationale "
    "is the implicit thought a writer had but did not state: the reason, plan or fact that "
    "explains why the next sentence or step follows. Put each rationale between <BOT> and "
    "<EOT> right after the sentence or step it follows, and only where it helps predict the "
    "text that comes next. Do not repeat the previous text in a rationale, do not add, "
    "remove or change any word of the original text, and do not add anything after the end "
    "of the text."
)

EXTRACTION_EXAMPLES: tuple[ExtractExample, ...] = (
    ExtractExample(
        text=(
            "Lena buys 3 packs of pencils with 12 pencils in each pack. She gives 9 pencils "
            "to her brother. 3 x 12 = 36 pencils. 36 - 9 = 27. Lena has 27 pencils left."
        ),
        output=(
            "Lena buys 3 packs of pencils with 12 pencils in each pack. She gives 9 pencils "
            "to her brother. <BOT>First count all the pencils she bought, which is the number "
            "of packs times the pencils per pack.<EOT> 3 x 12 = 36 pencils. <BOT>The pencils "
            "she gave away must be subtracted from the total.<EOT> 36 - 9 = 27. <BOT>The "
            "difference is what she still has.<EOT> Lena has 27 pencils left."
        ),
    ),
    ExtractExample(
        text=(
            "Question: Where would you keep milk so that it stays fresh? Choices: cupboard, "
            "refrigerator, oven. Milk spoils quickly when it is warm. The refrigerator keeps "
            "food cold. So the answer is refrigerator."
        ),
        output=(
            "Question: Where would you keep milk so that it stays fresh? Choices: cupboard, "
            "refrigerator, oven. <BOT>To stay fresh, milk needs a place that slows down "
            "spoiling.<EOT> Milk spoils quickly when it is warm. <BOT>So the right place is "
            "the one that is cold.<EOT> The refrigerator keeps food cold. <BOT>Only the "
            "refrigerator among the choices is cold.<EOT> So the answer is refrigerator."
        ),
    ),
    ExtractExample(
        text=(
            "Our bakery opens an hour later on Sundays. The ovens need forty minutes to heat "
            "up, and the staff prefer to start together. Fresh bread is ready at nine."
        ),
        output=(
            "Our bakery opens an hour later on Sundays. <BOT>The reason for the later opening "
            "is about to be explained by the baking routine.<EOT> The ovens need forty "
            "minutes to heat up, and the staff prefer to start together. <BOT>Heating and "
            "baking take time after the staff arrive, so bread comes out well after they "
            "start.<EOT> Fresh bread is ready at nine."
        ),
    ),
)


def extraction_messages(
    text: str, *, system: str | None = None, examples: list[ExtractExample] | None = None
) -> list[dict[str, str]]:
    """The chat sent to the agent's /v1/chat/completions for one document."""
    messages = [{"role": "system", "content": system or EXTRACTION_SYSTEM_PROMPT}]
    for ex in EXTRACTION_EXAMPLES if examples is None else examples:
        messages.append({"role": "user", "content": ex.text})
        messages.append({"role": "assistant", "content": ex.output})
    messages.append({"role": "user", "content": text})
    return messages


# --------------------------------------------------------------------------------------------
# Boundary mode: one question per sentence boundary

BOUNDARY_SYSTEM_PROMPT = (
    "You find the hidden thought between two parts of a text. You are given the text so far "
    "and the sentence that comes next. Write the one unstated thought that leads from the "
    "text so far to the next sentence: the reason, plan or fact the writer had in mind. "
    "Write one short sentence. Do not copy the next sentence or the text so far."
)

BOUNDARY_EXAMPLES: tuple[BoundaryExample, ...] = (
    BoundaryExample(
        preceding=(
            "Lena buys 3 packs of pencils with 12 pencils in each pack. She gives 9 pencils "
            "to her brother."
        ),
        following="3 x 12 = 36 pencils.",
        rationale="To know how many she has left, first count all the pencils she bought.",
    ),
    BoundaryExample(
        preceding="Question: Can a cat swim across the English Channel?",
        following="Answer: The English Channel is about 33 km wide at its narrowest.",
        rationale="Whether a cat could do it depends on how far it would have to swim.",
    ),
    BoundaryExample(
        preceding="Milk spoils quickly when it is warm.",
        following="The refrigerator keeps food cold.",
        rationale="Keeping milk fresh needs a place that is cold.",
    ),
)
"""Worked examples: a plan, a strategy and a fact, none of which repeats either side."""


def boundary_user_message(preceding: str, following: str) -> str:
    """The question at one boundary."""
    return f"Text so far: {preceding.strip()}\nNext sentence: {following.strip()}\nHidden thought:"


def boundary_messages(
    preceding: str,
    following: str,
    *,
    system: str | None = None,
    examples: list[BoundaryExample] | None = None,
) -> list[dict[str, str]]:
    """The chat sent to the agent's /v1/chat/completions for one boundary. The messages of
    one document's boundaries share the system prompt, the examples and the text so far, so
    the model service's prefix cache computes those once."""
    messages = [{"role": "system", "content": system or BOUNDARY_SYSTEM_PROMPT}]
    for ex in BOUNDARY_EXAMPLES if examples is None else examples:
        question = boundary_user_message(ex.preceding, ex.following)
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": ex.rationale})
    messages.append({"role": "user", "content": boundary_user_message(preceding, following)})
    return messages
