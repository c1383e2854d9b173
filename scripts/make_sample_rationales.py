"""Write services/worker/sample_corpus/rationales.jsonl: (preceding, rationale) rows for the
``sft_data`` job and the training demo, from generated multistep-arithmetic problems.

Each row is one step of a gold solution: ``preceding`` is what the rationale model sees at that
point (``Question: q`` / ``Answer: steps so far``, the model service's format) and
``rationale`` the unstated thought that leads to the next step. The embedded model cannot
extract such rationales from a corpus itself (it never writes the markers), so the demo trains
on these. Deterministic: ``python scripts/make_sample_rationales.py`` rewrites the same file.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from shared.tasks.arithmetic import generate_problem, question_text, rationale

OUT = Path(__file__).resolve().parents[1] / "services/worker/sample_corpus/rationales.jsonl"
N_PROBLEMS = 30


def thought(step: str) -> str:
    """The implicit rationale that leads to ``step``."""
    if step.startswith("(1) This equation can be written as"):
        return (
            "The expression nests several groups; naming each innermost group with a letter "
            "lets us compute them one at a time."
        )
    if m := re.match(r"\(\d+\) Let's calculate ([A-Z])", step):
        return (
            f"Group {m.group(1)} is named but not computed yet, so work it out next, one "
            "operation at a time, multiplying before adding or subtracting."
        )
    if "the final equation is" in step:
        return (
            "Every group has a value now, so put the values back into the outer expression "
            "and evaluate it."
        )
    return "The last result is the value of the whole expression, so state it as the answer."


def main() -> None:
    rng = random.Random(20241001)
    rows = []
    for p in range(N_PROBLEMS):
        problem = generate_problem(rng, "seen")
        steps = rationale(problem.expression)
        for i, step in enumerate(steps):
            preceding = f"Question: {question_text(problem.expression)}\nAnswer: " + " ".join(
                steps[:i]
            )
            rows.append(
                {
                    "id": f"arith-{p:03d}-step{i + 1}",
                    "preceding": preceding.strip(),
                    "rationale": thought(step),
                    "following": step,
                    "split": "dev" if p % 10 == 9 else "train",
                }
            )
    with open(OUT, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} rows -> {OUT}")


if __name__ == "__main__":
    main()
