"""Write services/worker/sample_corpus/strategyqa.jsonl: a few hundred short documents of
ordinary reasoning-bearing text for the rationale pipeline, built offline from the BIG-bench
``strategyqa`` task file the project already pulls (``rationalyst data pull``: the
``bigbench==1.0.0`` sdist, Apache-2.0).

Each document is a StrategyQA question followed by the facts its writer gave as the answer's
justification, in their order, and the conclusion they lead to::

    Question: Would a pear sink in water?
    Answer: The density of a raw pear is about 0.59 g/cm^3. The density of water is about
    1 g/cm^3. Objects only sink if they are denser than the surrounding fluid. So the answer
    is no.

That is the rationalyst's own input format (``Question: q`` / ``Answer: steps``), and the step
from the facts to the answer is exactly the implicit reasoning the pipeline should extract.
Only examples with at least two fact sentences are used (three or more boundaries each); the
first three examples are left out (the strategyqa task's few-shot demos). Every record keeps
BIG-bench's canary string, so corpus filters that honour it leave the file out of training
sets. Deterministic: running it again on the same task file rewrites the same file.

Usage: ``python scripts/build_corpus.py [--n 300] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path
from typing import Any

from shared.sentences import split_sentences
from shared.tasks.bigbench import read_task_file

OUT = Path(__file__).resolve().parents[1] / "services/worker/sample_corpus/strategyqa.jsonl"
TASK_FILE = "strategyqa/task.json"
DEMOS = 3
"""The task's first examples are its few-shot demos (``shared.tasks.bigbench``)."""
SEED = 0


def document(example: dict[str, Any]) -> tuple[str, str] | None:
    """(text, answer) of one example, or None when its explanation has fewer than two
    sentences."""
    scores: dict[str, float] = example["target_scores"]
    answer = max(scores, key=lambda k: scores[k]).strip().lower()
    target = str(example.get("target", ""))
    explanation = re.sub(r"^\s*(yes|no)\b[.,:]?", "", target, flags=re.IGNORECASE).strip()
    facts = [" ".join(s.split()) for s in split_sentences(explanation)]
    facts = [f if f[-1] in ".!?" else f + "." for f in facts if f]
    if len(facts) < 2 or answer not in ("yes", "no"):
        return None
    question = " ".join(str(example["input"]).split())
    return f"Question: {question}\nAnswer: {' '.join(facts)} So the answer is {answer}.", answer


def build(n: int) -> list[dict[str, Any]]:
    data = read_task_file(TASK_FILE)
    candidates = []
    for index, example in enumerate(data["examples"]):
        if index < DEMOS:
            continue
        doc = document(example)
        if doc is not None:
            candidates.append((index, *doc))
    chosen = sorted(random.Random(SEED).sample(candidates, min(n, len(candidates))))
    return [
        {
            "id": f"strategyqa-{index:04d}",
            "text": text,
            "source": "strategyqa",
            "answer": answer,
            "bigbench_index": index,
            "canary": data["canary"],
        }
        for index, text, answer in chosen
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="Documents (default 300).")
    parser.add_argument("--out", type=Path, default=OUT, help=f"Output (default {OUT}).")
    args = parser.parse_args()
    rows = build(args.n)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} documents to {args.out}")


if __name__ == "__main__":
    main()
