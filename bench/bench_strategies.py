"""Search-strategy benchmark: beam search's batching, and accuracy against tokens spent for
every strategy, one run, the same model services.

    python bench/bench_strategies.py [--questions 2] [--beams 2,4] [--parts batching,accuracy] \
        [--threads N] [--rationalyst-url U --agent-url U --scorer-url U]

Without URLs it starts three model services on the embedded model and a gateway on free
loopback ports (the thread budget `rationalyst up` gives them) and stops them at the end.

batching: for each N of ``--beams``, ``strategy: beam`` (n_beams N, beam_width 2, heuristic
likelihood) on ``--questions`` questions, one at a time. Printed: scorer calls per search step
(goal: 1 whatever N: the pool of every beam goes to the scorer in one call), and beam's
throughput / that of N independent ``step`` searches of the same questions (n_candidates 2,
i.e. the same proposals per path and step; the N run concurrently), both in questions per
second.

accuracy: every strategy (step, beam, best_of_n, vote, weighted_vote; heuristic likelihood) on
``--questions`` items of a generated task (multistep_arithmetic) and of a BIG-bench task (the
StrategyQA sample shipped in services/worker/sample_corpus, yes/no). Printed per task and
strategy: accuracy with its 95% Wilson interval and the mean tokens spent (generated +
scored, the response's usage.budget_tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.ensemble import (
    ServiceProcess,
    exit_on_sigterm,
    start_ensemble,
    stop_processes,
)
from services.worker.evaluation.stats import wilson_interval
from shared.tasks import check_answer, get_task
from shared.tasks.answers import canonical, extract_span
from shared.tasks.base import AnswerKind

ROOT = Path(__file__).resolve().parents[1]
STRATEGYQA = ROOT / "services" / "worker" / "sample_corpus" / "strategyqa.jsonl"
STRATEGIES = ["step", "beam", "best_of_n", "vote", "weighted_vote"]
BATCH_QUESTIONS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have now?",
    "A pen costs 2 dollars. How much do 4 pens cost?",
    "Sara had 10 candies and ate 4. How many candies are left?",
    "A box holds 6 eggs. How many eggs are in 3 boxes?",
]


@dataclass(frozen=True)
class Item:
    question: str
    judge: Any  # (steps) -> bool


def generated_items(n: int, seed: int) -> list[Item]:
    task = get_task("multistep_arithmetic")
    items = task.items(n, seed)
    return [
        Item(it.question, lambda steps, it=it: check_answer(it, "\n".join(steps)).correct)
        for it in items
    ]


def strategyqa_items(n: int) -> list[Item]:
    out = []
    for line in STRATEGYQA.read_text().splitlines()[:n]:
        row = json.loads(line)
        question = row["text"].split("\n")[0].removeprefix("Question: ").strip()
        question += " Answer yes or no."
        gold = row["answer"]

        def judge(steps: list[str], gold: str = gold) -> bool:
            span = extract_span("\n".join(steps))
            return span is not None and canonical(AnswerKind.boolean, span) == gold

        out.append(Item(question, judge))
    return out


def options(args: argparse.Namespace, strategy: str) -> dict[str, Any]:
    base: dict[str, Any] = {
        "heuristic": "likelihood",
        "max_steps": args.max_steps,
        "max_step_tokens": args.max_step_tokens,
        "strategy": strategy,
    }
    if strategy == "beam":
        base.update(n_beams=args.n, beam_width=1)
    elif strategy == "step":
        base["n_candidates"] = args.n
    else:
        base["n"] = args.n
    return base


async def reason(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/v1/reason", json=body)
    r.raise_for_status()
    return dict(r.json())


def search_steps(res: dict[str, Any]) -> int:
    depths = {n["depth"] for n in res["tree"]}
    return max(1, len(depths) - (res["finish"] == "forced_answer"))


async def batching(args: argparse.Namespace, client: httpx.AsyncClient) -> None:
    questions = BATCH_QUESTIONS[: args.questions]
    print("\n== batching: beam's scorer calls per search step, throughput vs N step searches")
    for n in [int(x) for x in args.beams.split(",")]:
        common = {"heuristic": "likelihood", "max_steps": args.max_steps, "seed": 1}
        common["max_step_tokens"] = args.max_step_tokens
        per_step: list[float] = []
        start = time.perf_counter()
        for q in questions:
            res = await reason(
                client,
                {"question": q, **common, "strategy": "beam", "n_beams": n, "beam_width": 2},
            )
            score = res["usage"]["phases"].get("score", {"calls": 0})["calls"]
            per_step.append(score / search_steps(res))
        beam_s = time.perf_counter() - start
        start = time.perf_counter()
        for q in questions:
            await asyncio.gather(
                *(
                    reason(client, {"question": q, **common, "n_candidates": 2, "seed": 1 + i})
                    for i in range(n)
                )
            )
        step_s = time.perf_counter() - start
        print(
            f"N={n}: scorer calls per search step {statistics.fmean(per_step):.2f} "
            f"(max {max(per_step):.2f}); beam {len(questions) / beam_s:.3f} q/s, "
            f"{n} step searches {len(questions) / step_s:.3f} q/s, ratio "
            f"{step_s / beam_s:.2f}"
        )


async def accuracy(args: argparse.Namespace, client: httpx.AsyncClient) -> None:
    tasks = {
        "multistep_arithmetic (generated)": generated_items(args.questions, args.seed),
        "strategyqa (BIG-bench sample)": strategyqa_items(args.questions),
    }
    print(
        f"\n== accuracy vs tokens: {args.questions} questions per task, n={args.n}, "
        f"max_steps={args.max_steps}, max_step_tokens={args.max_step_tokens}"
    )
    print(f"{'task':34} {'strategy':14} {'acc':>6} {'95% Wilson':>14} {'tokens':>8} {'s/q':>6}")
    for task, items in tasks.items():
        for strategy in STRATEGIES:
            correct, tokens = 0, []
            start = time.perf_counter()
            for i, item in enumerate(items):
                res = await reason(
                    client,
                    {"question": item.question, "seed": args.seed + i, **options(args, strategy)},
                )
                correct += bool(item.judge(res["steps"]))
                tokens.append(res["usage"]["budget_tokens"])
            elapsed = (time.perf_counter() - start) / len(items)
            low, high = wilson_interval(correct, len(items))
            print(
                f"{task:34} {strategy:14} {correct}/{len(items):<4} "
                f"[{100 * low:4.0f}%, {100 * high:4.0f}%] {statistics.fmean(tokens):8.0f} "
                f"{elapsed:6.1f}"
            )


async def main_async(args: argparse.Namespace, gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=args.timeout) as client:
        await reason(client, {"question": BATCH_QUESTIONS[0], "max_steps": 1})  # warm-up
        parts = set(args.parts.split(","))
        if "batching" in parts:
            await batching(args, client)
        if "accuracy" in parts:
            await accuracy(args, client)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--questions", type=int, default=2, help="Questions per part and task.")
    p.add_argument("--beams", default="2,4", help="batching: the N of beam (n_beams).")
    p.add_argument("--n", type=int, default=4, help="accuracy: beams, candidates, solutions.")
    p.add_argument("--max-steps", type=int, default=3)
    p.add_argument("--max-step-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", default="batching,accuracy")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--model", default=None, help="Model for the services this script starts.")
    p.add_argument("--threads", type=int, default=None, help="Threads per service.")
    for role in ("rationalyst", "agent", "scorer"):
        p.add_argument(f"--{role}-url", default=None)
    args = p.parse_args()
    exit_on_sigterm()

    procs: list[ServiceProcess] = []
    log_dir = Path(tempfile.mkdtemp(prefix="bench-strategies-"))
    try:
        given = {role: getattr(args, f"{role}_url") for role in ("rationalyst", "agent", "scorer")}
        gateway_url, _ = start_ensemble(
            procs, log_dir=log_dir, model=args.model, threads=args.threads,
            timeout_s=args.timeout, urls=given,
        )  # fmt: skip
        asyncio.run(main_async(args, gateway_url))
    finally:
        stop_processes(procs)


if __name__ == "__main__":
    main()
