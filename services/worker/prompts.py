"""The extraction prompt: a system prompt and worked examples written for this project
(REFERENCE.md 1.2: copy the text verbatim, insert the unstated rationales as
``<BOT>...<EOT>`` after sentences or steps, never repeat or change the text)."""

from __future__ import annotations

from shared.job_schemas import ExtractExample

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
