"""The prefilter's reference set of reasoning examples.

Built in: BIG-bench strategyqa (questions with their explanations) and elementary_math_qa
(MathQA word problems) items, through the evaluation tasks' loader (:mod:`shared.tasks`,
whose ``rationalyst data pull`` puts the task files in the data cache). Where those files are
not in the cache, the worker falls back to a small set of reasoning examples written for this
project (``reference_data/reasoning_examples.jsonl``) and says so in the stage summary.
Callers may give their own texts or files instead.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from services.worker.inputs import InputAccess, read_shard
from services.worker.inputs import plan as plan_inputs
from shared.job_schemas import ReferenceSpec

logger = logging.getLogger(__name__)

BUILTIN_EXAMPLES = Path(__file__).parent / "reference_data" / "reasoning_examples.jsonl"


@dataclass
class ReferenceSet:
    texts: list[str]
    source: str
    """Where the texts came from, for the summary (e.g. ``bigbench:strategyqa=512``)."""


def builtin_examples() -> list[str]:
    with open(BUILTIN_EXAMPLES, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def _bigbench_texts(tasks: list[str], seed: int) -> dict[str, list[str]]:
    """Items of each task as one text (question, explanation, answer); tasks whose files are
    not in the data cache are left out."""
    try:
        from shared.tasks import DataMissingError, get_task
    except ImportError:  # the evaluation tasks package is not installed
        return {}
    out: dict[str, list[str]] = {}
    for name in tasks:
        try:
            items = get_task(name).items(seed=seed)
        except DataMissingError as exc:
            logger.info("reference task %s not available: %s", name, exc)
            continue
        except Exception as exc:
            logger.warning("reference task %s could not be read: %s", name, exc)
            continue
        texts = []
        for item in items:
            steps = " ".join(item.rationale or [])
            answer = "" if item.rationale else f"The answer is: {item.gold_text}"
            texts.append(" ".join(t for t in (item.question, steps, answer) if t))
        out[name] = texts
    return out


def load_reference(spec: ReferenceSpec, access: InputAccess) -> ReferenceSet:
    """The texts whose centroid the prefilter compares documents with (at most
    ``spec.max_items``, a seeded sample, spread evenly across the built-in tasks).
    ``access``: where ``spec.input`` may read (the job's data roots and uploads)."""
    rng = random.Random(spec.seed)
    if spec.texts is not None:
        texts, source = list(spec.texts), "inline"
    elif spec.input is not None:
        p = plan_inputs(spec.input, 1_000_000, access, limit=spec.max_items * 20)
        texts = []
        for shard in p.shards:
            for rec in read_shard(shard, spec.input, 0, access):
                value = (rec.data or {}).get(spec.input.text_field)
                if isinstance(value, str) and value.strip():
                    texts.append(value)
        source = "input:" + spec.input.describe().replace(", ", ",")
    else:
        by_task = _bigbench_texts(spec.bigbench_tasks, spec.seed)
        if by_task:
            per_task = max(1, spec.max_items // len(by_task))
            texts, parts = [], []
            for name, items in by_task.items():
                chosen = items[:per_task]
                texts += chosen
                parts.append(f"{name}={len(chosen)}")
            return ReferenceSet(texts[: spec.max_items], "bigbench:" + ",".join(parts))
        texts = builtin_examples()
        source = "builtin-fallback (BIG-bench task files not in the data cache)"
    if len(texts) > spec.max_items:
        texts = rng.sample(texts, spec.max_items)
    if not texts:
        raise ValueError("the reference set is empty")
    return ReferenceSet(texts, source)
