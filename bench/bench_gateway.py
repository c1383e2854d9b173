"""Gateway benchmark: /v1/reason against the original RATIONALYST call pattern, one run, the
same model services.

    python bench/bench_gateway.py [--requests 8] [--concurrency 8] [--max-steps 3] \
        [--threads N] [--parts throughput,loop,abandoned] \
        [--rationalyst-url U --agent-url U --scorer-url U]

Without URLs it starts three model services on the embedded model (and always its own gateway
subprocess) on free loopback ports, with the thread budget `rationalyst up` gives them (cores /
3 each; ``--threads`` overrides it), and stops them at the end.

throughput: two clients solve the same questions with the same budgets, ``--concurrency``
requests at once:

- gateway:  POST /v1/reason (rationale || propose, duplicates merged, ONE /v1/score call per
  step, stop on the answer step);
- original: the original code's pattern, straight to the model services: per step the
  rationale, then the agent's n=3 proposals, then one full-prompt /v1/score call per candidate,
  serially; the stop is detected one step late (one extra step after the answer step).

Printed: throughput of each and their ratio (goal >= 3), and the share of the gateway's wall
time spent outside model services, from the trace timings (goal <= 3%).

loop: one search at a time; then each of its model calls is sent again alone, on the idle
ensemble, with the same inputs. Printed: the search's wall time / the model work it needs, the
latter as the critical path of those lone calls (per step the longer of rationale and
propose, which the loop runs together, plus the score call; goal <= 1.2: co-running and the
gateway cost at most 20% over the calls alone) and as their plain sum.

abandoned: ``--concurrency`` clients start long searches and disconnect after a few seconds.
Printed: tokens the model services decode after the calls in flight at the disconnect could
have ended (goal: none), from their ``model_server_engine_tokens_total``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
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
from gateway.prompts import scoring_context
from shared.answers import contains_end_phrase
from shared.fewshot import DEFAULT_DEMOS

QUESTIONS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have now?",
    "A pen costs 2 dollars. How much do 4 pens cost?",
    "Sara had 10 candies and ate 4. How many candies are left?",
    "A box holds 6 eggs. How many eggs are in 3 boxes?",
    "Ben walks 2 km every day. How far does he walk in a week?",
    "There are 12 birds on a tree and 5 fly away. How many birds remain?",
    "A class has 4 rows of 7 desks. How many desks are there?",
    "Lia reads 9 pages on Monday and 11 on Tuesday. How many pages did she read?",
]


DEMOS = [d.model_dump() for d in DEFAULT_DEMOS]


@dataclass
class RunStats:
    name: str
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    errors: int = 0
    overhead_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    fallbacks: int = 0
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    cpu_s: float = 0.0  # CPU time the model services spent on this pattern

    def merge(self, other: RunStats) -> None:
        self.wall_s += other.wall_s
        self.cpu_s += other.cpu_s
        self.errors += other.errors
        self.fallbacks += other.fallbacks
        for stage, values in other.stage_ms.items():
            self.stage_ms.setdefault(stage, []).extend(values)
        for name in ("latencies_s", "steps", "calls", "overhead_ms", "total_ms"):
            getattr(self, name).extend(getattr(other, name))

    @property
    def throughput(self) -> float:
        done = len(self.latencies_s)
        return done / self.wall_s if self.wall_s else 0.0


async def gateway_request(
    client: httpx.AsyncClient, url: str, question: str, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    body = {
        "question": question,
        "n_candidates": 3,
        "max_steps": args.max_steps,
        "max_step_tokens": args.max_step_tokens,
        "max_rationale_tokens": args.max_rationale_tokens,
        "temperature": 0.7,
        "seed": seed,
        "few_shot": DEMOS,  # the demos the original pattern uses too
    }
    r = await client.post(f"{url}/v1/reason", json=body)
    r.raise_for_status()
    return dict(r.json())


async def original_request(
    client: httpx.AsyncClient, urls: dict[str, str], question: str, seed: int,
    args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    """The original call pattern: serial stages, one scoring request per candidate, the stop
    detected one step late."""
    steps: list[str] = []
    calls = 0
    for t in range(args.max_steps):
        r = await client.post(
            f"{urls['rationalyst']}/v1/rationale",
            json={"question": question, "steps": steps, "max_tokens": args.max_rationale_tokens},
        )
        r.raise_for_status()
        rationale = r.json()["rationale"]
        r = await client.post(
            f"{urls['agent']}/v1/propose",
            json={
                "question": question,
                "steps": steps,
                "n": 3,
                "temperature": 0.7,
                "seed": seed + t,
                "max_tokens": args.max_step_tokens,
                "few_shot": DEMOS,
            },
        )
        r.raise_for_status()
        candidates = [c["text"].strip() or "." for c in r.json()["candidates"]]
        calls += 2
        context = [
            m.model_dump() for m in scoring_context(question, steps, DEFAULT_DEMOS, rationale)
        ]
        scores = []
        for cand in candidates:  # serial, each re-sending the whole prompt
            r = await client.post(
                f"{urls['scorer']}/v1/score",
                json={"context": context, "continuations": [cand], "return_tokens": False},
            )
            r.raise_for_status()
            scores.append(r.json()["scores"][0]["mean"])
            calls += 1
        steps.append(candidates[max(range(len(scores)), key=scores.__getitem__)])
        if t >= 1 and contains_end_phrase(steps[-2]):  # one step late
            break
    return {"steps": steps, "calls": calls}


async def run_pattern(
    name: str, args: argparse.Namespace, call: Any, *, timeout_s: float
) -> RunStats:
    stats = RunStats(name)
    sem = asyncio.Semaphore(args.concurrency)
    async with httpx.AsyncClient(timeout=timeout_s) as client:

        async def one(i: int) -> None:
            async with sem:
                start = time.perf_counter()
                try:
                    res = await call(client, QUESTIONS[i % len(QUESTIONS)], 1000 + i)
                except httpx.HTTPError as exc:
                    stats.errors += 1
                    print(f"  {name} request {i} failed: {exc!r}", file=sys.stderr)
                    return
                stats.latencies_s.append(time.perf_counter() - start)
                stats.steps.append(len(res["steps"]))
                if "usage" in res:
                    stats.calls.append(sum(u["calls"] for u in res["usage"].values()))
                    stats.overhead_ms.append(res["timings"]["overhead_ms"])
                    stats.total_ms.append(res["timings"]["total_ms"])
                    stats.fallbacks += bool(res["fallbacks"] or res["deadline_reached"])
                    for step in res["trace"]:
                        for stage in ("rationale_ms", "propose_ms", "score_ms", "total_ms"):
                            if step["timings"][stage] is not None:
                                stats.stage_ms.setdefault(stage, []).append(step["timings"][stage])
                else:
                    stats.calls.append(res["calls"])

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(args.requests)))
        stats.wall_s = time.perf_counter() - start
    return stats


def report(gw: RunStats, orig: RunStats, args: argparse.Namespace) -> None:
    def mean(values: list[float] | list[int]) -> float:
        return statistics.fmean(values) if values else math.nan

    def row(s: RunStats) -> str:
        return (
            f"{s.name:<10} {len(s.latencies_s):>4}/{args.requests * args.rounds:<3} "
            f"{s.wall_s:>8.1f}s "
            f"{s.throughput * 60:>9.2f}/min {mean(s.latencies_s):>8.1f}s "
            f"{mean(s.steps):>6.2f} {mean(s.calls):>7.1f}"
        )

    print()
    print(
        f"rounds={args.rounds} requests/round={args.requests} concurrency={args.concurrency} "
        f"max_steps={args.max_steps} "
        f"n=3 max_step_tokens={args.max_step_tokens} max_rationale_tokens="
        f"{args.max_rationale_tokens}"
    )
    print(f"{'pattern':<10} {'done':>8} {'wall':>9} {'throughput':>13} {'latency':>9} "
          f"{'steps':>6} {'calls':>7}")  # fmt: skip
    print(row(gw))
    print(row(orig))
    ratio = gw.throughput / orig.throughput if orig.throughput else math.nan
    print(f"\nthroughput ratio gateway / original: {ratio:.2f}x (goal >= 3)")
    if gw.cpu_s and orig.cpu_s and gw.latencies_s and orig.latencies_s:
        per_gw, per_orig = gw.cpu_s / len(gw.latencies_s), orig.cpu_s / len(orig.latencies_s)
        print(
            f"model-service CPU time per request: gateway {per_gw:.1f}s, original "
            f"{per_orig:.1f}s; original / gateway {per_orig / per_gw:.2f}x (the throughput "
            "ratio on a machine with no other load)"
        )
    if gw.total_ms:
        share = sum(gw.overhead_ms) / sum(gw.total_ms)
        print(
            f"gateway time outside model services (trace timings): {share * 100:.2f}% "
            f"(mean {statistics.fmean(gw.overhead_ms):.1f} ms per request; goal <= 3%)"
        )
    if gw.stage_ms:
        stages = ", ".join(
            f"{k.removesuffix('_ms')} {statistics.fmean(v) / 1000:.1f}s"
            for k, v in gw.stage_ms.items()
        )
        print(f"gateway mean per step: {stages} (rationale and propose overlap)")
    if orig.latencies_s and gw.latencies_s:
        ratio_latency = statistics.fmean(orig.latencies_s) / statistics.fmean(gw.latencies_s)
        print(f"mean latency ratio original / gateway: {ratio_latency:.2f}x")
    if gw.fallbacks:
        print(f"WARNING: {gw.fallbacks} gateway response(s) degraded or hit a deadline")
    if gw.errors or orig.errors:
        print(f"errors: gateway {gw.errors}, original {orig.errors}")


SERVICE_PIDS: list[int] = []
"""The model services this script started (their CPU time is read from /proc)."""


def services_cpu_s() -> float:
    """User + system CPU seconds of the model services so far (0 when not started here)."""
    total = 0
    for pid in SERVICE_PIDS:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


async def throughput(args: argparse.Namespace, urls: dict[str, str], gateway_url: str) -> None:
    async def gw_call(client: httpx.AsyncClient, q: str, seed: int) -> dict[str, Any]:
        return await gateway_request(client, gateway_url, q, seed, args)

    async def orig_call(client: httpx.AsyncClient, q: str, seed: int) -> dict[str, Any]:
        return await original_request(client, urls, q, seed, args)

    calls = {"gateway": gw_call, "original": orig_call}
    results = {name: RunStats(name) for name in calls}
    for round_index in range(args.rounds):
        # Alternate the order per round so that drifting machine load hits both alike.
        order = ["gateway", "original"]
        if (round_index % 2 == 1) != args.original_first:
            order.reverse()
        for name in order:
            print(f"round {round_index + 1}: running {name} ...", file=sys.stderr)
            cpu = services_cpu_s()
            stats = await run_pattern(name, args, calls[name], timeout_s=args.timeout)
            stats.cpu_s = services_cpu_s() - cpu
            print(f"  {stats.wall_s:.1f}s, {len(stats.latencies_s)} done", file=sys.stderr)
            results[name].merge(stats)
    report(results["gateway"], results["original"], args)


async def replay_alone(
    client: httpx.AsyncClient, urls: dict[str, str], res: dict[str, Any], args: argparse.Namespace
) -> tuple[float, float]:
    """Send each model call of a finished search again, one at a time, with the same inputs;
    (critical path, plain sum) of their latencies."""

    async def timed(url: str, body: dict[str, Any]) -> float:
        start = time.perf_counter()
        r = await client.post(url, json=body)
        r.raise_for_status()
        return time.perf_counter() - start

    question = res["question"]
    critical = total = 0.0
    steps: list[str] = []
    for step in res["trace"]:
        rationale_s = await timed(
            f"{urls['rationalyst']}/v1/rationale",
            {"question": question, "steps": steps, "max_tokens": args.max_rationale_tokens,
             "temperature": 0.0},
        )  # fmt: skip
        propose_s = await timed(
            f"{urls['agent']}/v1/propose",
            {"question": question, "steps": steps, "n": 3, "temperature": 0.7,
             "seed": res["seed"] + step["index"], "max_tokens": args.max_step_tokens,
             "few_shot": DEMOS},
        )  # fmt: skip
        score_s = 0.0
        distinct = [
            c["text"] for c in step["candidates"] if c["duplicate_of"] is None and c["text"]
        ]
        if step["timings"]["score_ms"] is not None:
            context = scoring_context(question, steps, DEFAULT_DEMOS, step["rationale"])
            score_s = await timed(
                f"{urls['scorer']}/v1/score",
                {"context": [m.model_dump() for m in context], "continuations": distinct,
                 "return_tokens": False},
            )  # fmt: skip
        critical += max(rationale_s, propose_s) + score_s
        total += rationale_s + propose_s + score_s
        steps.append(step["step"])
    return critical, total


async def loop_ratio(args: argparse.Namespace, urls: dict[str, str], gateway_url: str) -> None:
    walls, criticals, totals = [], [], []
    async with httpx.AsyncClient(timeout=args.timeout) as client:
        for i in range(args.loop_requests):
            start = time.perf_counter()
            res = await gateway_request(
                client, gateway_url, QUESTIONS[i % len(QUESTIONS)], 2000 + i, args
            )
            walls.append(time.perf_counter() - start)
            critical, total = await replay_alone(client, urls, res, args)
            criticals.append(critical)
            totals.append(total)
            print(f"  loop {i}: {len(res['steps'])} steps, wall {walls[-1]:.1f}s, lone calls "
                  f"critical path {critical:.1f}s, sum {total:.1f}s", file=sys.stderr)  # fmt: skip
    print(
        f"\nloop wall time / model work it needs ({args.loop_requests} searches, one at a time): "
        f"{sum(walls) / sum(criticals):.2f}x the critical path of the lone calls (goal <= 1.2), "
        f"{sum(walls) / sum(totals):.2f}x their sum"
    )


def decoded_tokens(urls: dict[str, str]) -> float:
    total = 0.0
    for role in ("rationalyst", "agent", "scorer"):
        for line in httpx.get(f"{urls[role]}/metrics", timeout=30).text.splitlines():
            if line.startswith('model_server_engine_tokens_total{kind="decode"}'):
                total += float(line.split()[-1])
    return total


async def abandoned(args: argparse.Namespace, urls: dict[str, str], gateway_url: str) -> None:
    body = {
        "question": "A farmer has 17 sheep and buys 3 times as many goats, then sells 5 goats "
        "and 2 sheep. How many animals does he have?",
        "max_steps": 12, "n_candidates": 4, "max_step_tokens": 64, "temperature": 1.0,
    }  # fmt: skip

    async def client_that_leaves(i: int) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(args.leave_after, connect=5)) as c:
            with contextlib.suppress(httpx.TimeoutException):
                await c.post(f"{gateway_url}/v1/reason", json={**body, "seed": i})

    await asyncio.gather(*(client_that_leaves(i) for i in range(args.concurrency)))
    at_leave = decoded_tokens(urls)
    # A call in flight at the disconnect may finish its current decode step; give it that.
    await asyncio.sleep(args.grace)
    after_grace = decoded_tokens(urls)
    await asyncio.sleep(args.watch)
    later = decoded_tokens(urls)
    print(
        f"\nabandoned work: {args.concurrency} clients left after {args.leave_after:g}s; tokens "
        f"decoded in the {args.grace:g}s after: {after_grace - at_leave:.0f}, in the "
        f"{args.watch:g}s after that: {later - after_grace:.0f} (goal 0)"
    )


async def main_async(args: argparse.Namespace, urls: dict[str, str], gateway_url: str) -> None:
    # Warm-up: one request, so that lazy initialization is not measured.
    await run_pattern(
        "warmup",
        argparse.Namespace(**{**vars(args), "requests": 1}),
        lambda client, q, seed: gateway_request(client, gateway_url, q, seed, args),
        timeout_s=args.timeout,
    )
    parts = set(args.parts.split(","))
    if "throughput" in parts:
        await throughput(args, urls, gateway_url)
    if "loop" in parts:
        await loop_ratio(args, urls, gateway_url)
    if "abandoned" in parts:
        await abandoned(args, urls, gateway_url)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-steps", type=int, default=3)
    p.add_argument("--max-step-tokens", type=int, default=32)
    p.add_argument("--max-rationale-tokens", type=int, default=32)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--rounds", type=int, default=1, help="Alternating rounds of both.")
    p.add_argument("--original-first", action="store_true", help="Run the baseline first.")
    p.add_argument("--model", default=None, help="Model for the services this script starts.")
    p.add_argument(
        "--threads", type=int, default=None, help="Threads per service (default: cores / 3)."
    )
    p.add_argument("--parts", default="throughput,loop,abandoned", help="What to measure.")
    p.add_argument("--loop-requests", type=int, default=3, help="Searches of the loop part.")
    p.add_argument("--leave-after", type=float, default=6.0, help="abandoned: client timeout.")
    p.add_argument("--grace", type=float, default=3.0, help="abandoned: seconds allowed.")
    p.add_argument("--watch", type=float, default=15.0, help="abandoned: seconds watched.")
    for role in ("rationalyst", "agent", "scorer"):
        p.add_argument(f"--{role}-url", default=None)
    args = p.parse_args()
    exit_on_sigterm()

    procs: list[ServiceProcess] = []
    log_dir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    try:
        given = {role: getattr(args, f"{role}_url") for role in ("rationalyst", "agent", "scorer")}
        gateway_url, urls = start_ensemble(
            procs, log_dir=log_dir, model=args.model, threads=args.threads,
            timeout_s=args.timeout, urls=given,
        )  # fmt: skip
        SERVICE_PIDS.extend(p.pid for p in procs if p.name != "gateway")
        asyncio.run(main_async(args, urls, gateway_url))
    finally:
        stop_processes(procs)


if __name__ == "__main__":
    main()
