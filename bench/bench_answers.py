"""Answers on simple word problems: rationalyst, greedy and self-consistency, one run.

    python bench/bench_answers.py [--n 40] [--seed 0] [--max-steps 6] [--concurrency 2] \
        [--url http://127.0.0.1:8100] [--out results.jsonl]

Without ``--url`` it starts three model services on the embedded model and a gateway on free
loopback ports, and stops them at the end.

The problems are the first ``--n`` items of the generated task ``word_problems``
(shared/tasks/word_problems.py: 12 templates, seeded names and numbers; not the demos). Per
problem, with the gateway's defaults otherwise (default demos of the detected kind):

- rationalyst: POST /v1/reason, heuristic ``rationalyst`` (3 candidates per step);
- greedy:      POST /v1/reason, heuristic ``greedy`` (one candidate per step at temperature 0);
- self-consistency: plain chains of thought sampled at ``--sc-temperature`` (``greedy`` with
  a temperature, a new seed per chain), majority vote on each chain's last number (ties: the
  earliest chain). Chains are drawn until their agent calls reach the rationalyst run's agent
  calls on that problem (``sc@calls``, the budget of the comparison) and, from the same
  chains, until their sampled steps reach the rationalyst's proposed candidates (``sc@samples``,
  the same generation budget).

Printed per method: accuracy with a 95% Wilson interval, the share of runs with an answer,
candidates dropped as repeats of the trajectory, steps that needed the hotter retry, agent
calls and sampled steps per problem, and how the searches ended (``finish``); then each
method against rationalyst on the same problems (wins, losses, exact McNemar p).
``--replay FILE`` prints the report of an earlier run's ``--out`` file without running.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
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
from services.worker.evaluation.stats import mcnemar_exact_p, wilson_interval
from shared.tasks import TaskItem, check_answer, get_task
from shared.tasks.answers import format_number, parse_number

_NUMBER_RE = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


@dataclass
class Run:
    """What one /v1/reason response says, reduced to what the report needs."""

    steps: list[str]
    answer: str | None
    finish: str
    agent_calls: int
    samples: int
    repeats: int
    retries: int
    latency_s: float

    @classmethod
    def of(cls, body: dict[str, Any], latency_s: float) -> Run:
        return cls(
            steps=body["steps"],
            answer=body["answer"],
            finish=body["finish"],
            agent_calls=body["usage"]["agent"]["calls"],
            samples=sum(len(t["candidates"]) for t in body["trace"]),
            repeats=body["repeats"],
            retries=sum(t["retry_temperature"] is not None for t in body["trace"]),
            latency_s=latency_s,
        )


@dataclass
class Outcome:
    """One method on one problem."""

    correct: bool
    answered: bool
    agent_calls: int
    samples: int
    repeats: int
    retries: int
    finish: str
    chains: int = 1


@dataclass
class Method:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)


def last_number(run: Run) -> Fraction | None:
    """The number of the run's answer, else the last number in its steps."""
    if run.answer is not None:
        value = parse_number(run.answer)
        if value is not None:
            return value
    numbers = _NUMBER_RE.findall("\n".join(run.steps))
    return parse_number(numbers[-1]) if numbers else None


def vote(runs: list[Run]) -> Fraction | None:
    """The most frequent last number; ties go to the one seen first."""
    values = [v for v in map(last_number, runs) if v is not None]
    if not values:
        return None
    counts = collections.Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)


def sc_outcome(item: TaskItem, chains: list[Run], budget: int, unit: str) -> Outcome:
    """Self-consistency over the first chains whose agent calls (or samples) reach ``budget``."""
    used, taken = 0, []
    for chain in chains:
        if taken and used >= budget:
            break
        taken.append(chain)
        used += chain.agent_calls if unit == "calls" else chain.samples
    value = vote(taken)
    return Outcome(
        correct=value is not None and format_number(value) == item.answer,
        answered=value is not None,
        agent_calls=sum(c.agent_calls for c in taken),
        samples=sum(c.samples for c in taken),
        repeats=sum(c.repeats for c in taken),
        retries=sum(c.retries for c in taken),
        finish="vote" if value is not None else "no_answer",
        chains=len(taken),
    )


def run_outcome(item: TaskItem, run: Run) -> Outcome:
    return Outcome(
        correct=check_answer(item, "\n".join(run.steps)).correct,
        answered=run.answer is not None,
        agent_calls=run.agent_calls,
        samples=run.samples,
        repeats=run.repeats,
        retries=run.retries,
        finish=run.finish,
    )


class Bench:
    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args = args
        self.url = url
        self.methods = {
            name: Method(name) for name in ("rationalyst", "greedy", "sc@calls", "sc@samples")
        }
        self.records: list[dict[str, Any]] = []

    async def reason(self, client: httpx.AsyncClient, body: dict[str, Any]) -> Run:
        body = {"max_steps": self.args.max_steps, **body}
        if self.args.max_step_tokens:
            body["max_step_tokens"] = self.args.max_step_tokens
        if self.args.max_rationale_tokens:
            body["max_rationale_tokens"] = self.args.max_rationale_tokens
        start = time.perf_counter()
        r = await client.post(f"{self.url}/v1/reason", json=body)
        r.raise_for_status()
        return Run.of(r.json(), time.perf_counter() - start)

    async def problem(self, client: httpx.AsyncClient, index: int, item: TaskItem) -> None:
        seed = self.args.seed * 1000 + index
        q = item.question
        rat = await self.reason(client, {"question": q, "heuristic": "rationalyst", "seed": seed})
        greedy = await self.reason(client, {"question": q, "heuristic": "greedy", "seed": seed})
        # Chains until the larger of the two budgets is spent; each budget takes a prefix.
        chains: list[Run] = []
        calls = samples = 0
        while not chains or calls < rat.agent_calls or samples < rat.samples:
            chain = await self.reason(
                client,
                {
                    "question": q,
                    "heuristic": "greedy",
                    "temperature": self.args.sc_temperature,
                    "seed": seed + 100_000 * (len(chains) + 1),
                },
            )
            chains.append(chain)
            calls += chain.agent_calls
            samples += chain.samples
        outcomes = {
            "rationalyst": run_outcome(item, rat),
            "greedy": run_outcome(item, greedy),
            "sc@calls": sc_outcome(item, chains, rat.agent_calls, "calls"),
            "sc@samples": sc_outcome(item, chains, rat.samples, "samples"),
        }
        for name, outcome in outcomes.items():
            self.methods[name].outcomes.append(outcome)
        self.records.append(
            {
                "id": item.id,
                "question": q,
                "gold": item.answer,
                "rationalyst": vars(rat),
                "greedy": vars(greedy),
                "chains": [vars(c) for c in chains],
                "outcomes": {k: vars(v) for k, v in outcomes.items()},
            }
        )
        marks = " ".join(f"{k}={'+' if v.correct else '-'}" for k, v in outcomes.items())
        print(
            f"  [{len(self.records)}/{self.args.n}] {item.id} gold {item.answer}: "
            f"rationalyst {rat.answer!r}, greedy {greedy.answer!r}, {len(chains)} chains; {marks}",
            file=sys.stderr,
        )

    async def run(self) -> None:
        items = get_task("word_problems").items(self.args.n, seed=self.args.seed)
        sem = asyncio.Semaphore(self.args.concurrency)
        async with httpx.AsyncClient(timeout=self.args.timeout) as client:

            async def one(i: int, item: TaskItem) -> None:
                async with sem:
                    await self.problem(client, i, item)

            await asyncio.gather(*(one(i, it) for i, it in enumerate(items)))

    def report(self, wall_s: float | None) -> None:
        a = self.args
        print()
        if wall_s is None:
            print(f"word_problems n={len(self.records)}: the records of {a.replay}")
        else:
            print(
                f"word_problems n={a.n} seed={a.seed} max_steps={a.max_steps} "
                f"max_step_tokens={a.max_step_tokens or 'default'} "
                f"max_rationale_tokens={a.max_rationale_tokens or 'default'} "
                f"sc_temperature={a.sc_temperature}; wall {wall_s / 60:.1f} min"
            )
        header = (
            f"{'method':<12} {'correct':>8} {'accuracy':>9} {'95% CI':>15} {'answered':>9} "
            f"{'repeats':>8} {'retries':>8} {'calls':>6} {'samples':>8} {'chains':>7}  finish"
        )
        print(header)
        for m in self.methods.values():
            n = len(m.outcomes)
            if not n:
                continue
            k = sum(o.correct for o in m.outcomes)
            low, high = wilson_interval(k, n)
            answered = sum(o.answered for o in m.outcomes)
            finishes = collections.Counter(o.finish for o in m.outcomes)
            print(
                f"{m.name:<12} {f'{k}/{n}':>8} {k / n:>9.1%} "
                f"{f'[{low:.1%}, {high:.1%}]':>15} {answered / n:>9.0%} "
                f"{sum(o.repeats for o in m.outcomes):>8} {sum(o.retries for o in m.outcomes):>8} "
                f"{sum(o.agent_calls for o in m.outcomes) / n:>6.1f} "
                f"{sum(o.samples for o in m.outcomes) / n:>8.1f} "
                f"{sum(o.chains for o in m.outcomes) / n:>7.1f}  "
                + ", ".join(f"{f} {c}" for f, c in finishes.most_common())
            )
        print(
            "repeats: candidates dropped for repeating a trajectory step (summed over runs); "
            "retries: steps where every candidate repeated and the agent was asked again; "
            "calls/samples/chains: per problem."
        )
        base = self.methods["rationalyst"].outcomes
        for m in self.methods.values():
            if m.name == "rationalyst" or len(m.outcomes) != len(base):
                continue
            wins = sum(r.correct and not o.correct for r, o in zip(base, m.outcomes, strict=True))
            losses = sum(o.correct and not r.correct for r, o in zip(base, m.outcomes, strict=True))
            print(
                f"rationalyst vs {m.name}: right only with rationalyst {wins}, only with "
                f"{m.name} {losses}; exact McNemar p = {mcnemar_exact_p(wins, losses):.2f}"
            )

    def replay(self, path: Path) -> None:
        """Outcomes from an earlier run's records (``--out``)."""
        for line in path.read_text().splitlines():
            record = json.loads(line)
            self.records.append(record)
            for name, outcome in record["outcomes"].items():
                self.methods[name].outcomes.append(Outcome(**outcome))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=40, help="Problems (at least 40 for the README).")
    p.add_argument("--seed", type=int, default=0, help="Which generated problems, and seeds.")
    p.add_argument("--max-steps", type=int, default=6)
    p.add_argument("--max-step-tokens", type=int, default=None, help="Default: the gateway's.")
    p.add_argument("--max-rationale-tokens", type=int, default=None)
    p.add_argument("--sc-temperature", type=float, default=0.7)
    p.add_argument("--concurrency", type=int, default=2, help="Problems in flight.")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--url", default=None, help="A running gateway; else one is started.")
    p.add_argument("--model", default=None, help="Model for the services this script starts.")
    p.add_argument("--threads", type=int, default=1, help="torch threads per service started.")
    p.add_argument("--out", type=Path, default=None, help="Write per-problem records (JSONL).")
    p.add_argument("--replay", type=Path, default=None, help="Report an earlier --out file.")
    args = p.parse_args()
    exit_on_sigterm()
    if args.replay:
        bench = Bench(args, "")
        bench.replay(args.replay)
        bench.report(None)
        return

    procs: list[ServiceProcess] = []
    try:
        if args.url:
            url = args.url.rstrip("/")
        else:
            log_dir = Path(tempfile.mkdtemp(prefix="bench-answers-"))
            url, _ = start_ensemble(
                procs, log_dir=log_dir, model=args.model, threads=args.threads,
                timeout_s=args.timeout,
            )  # fmt: skip
        bench = Bench(args, url)
        start = time.perf_counter()
        asyncio.run(bench.run())
        bench.report(time.perf_counter() - start)
        if args.out:
            args.out.write_text("".join(json.dumps(r) + "\n" for r in bench.records))
    finally:
        stop_processes(procs)


if __name__ == "__main__":
    main()
