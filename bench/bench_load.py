"""Load benchmark: /v1/select and /v1/reason at rising concurrency, up to and past overload.

    python bench/bench_load.py [--levels 1,2,4,8,16,32] [--duration 40] [--deadline 30] \
        [--max-concurrent 8] [--max-queued 8] [--endpoints select,reason] [--threads N]

It starts its own ensemble on free loopback ports (three model services on the embedded model
with the thread budget `rationalyst up` gives them, and a gateway subprocess whose admission
limits are small: GATEWAY_MAX_CONCURRENT_REQUESTS / GATEWAY_MAX_QUEUED_REQUESTS from
``--max-concurrent`` / ``--max-queued``), and stops it at the end.

Per endpoint and level, ``level`` clients send requests back to back for ``--duration``
seconds (then the requests in flight finish); a client that gets 503 waits its Retry-After
(as a well-behaved client does) before the next. Bounded: each level sends at most
``--max-requests`` and lasts at most ``--duration`` + ``--deadline`` x 2 seconds. The deadline
is the client's: reason requests carry it as ``deadline_s`` (GATEWAY_MAX_DEADLINE_S is set to
it as well), and the client gives up on any request after twice that.

Printed per level: completed requests per second, p50/p99 latency of the 200s, the answers by
status (and how many 503s carried Retry-After, and how fast they came), client timeouts, and
200s that degraded (a fallback, counted as errors); then per endpoint the highest rate whose p99
is within the deadline with no error, and what the levels past it gave. The run stops if a
process of the ensemble exits.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.ensemble import (
    ROLES,
    ServiceProcess,
    available_cores,
    exit_on_sigterm,
    start_ensemble,
    stop_processes,
)

QUESTIONS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have now?",
    "A pen costs 2 dollars. How much do 4 pens cost?",
    "Sara had 10 candies and ate 4. How many candies are left?",
    "A box holds 6 eggs. How many eggs are in 3 boxes?",
    "Ben walks 2 km every day. How far does he walk in a week?",
    "There are 12 birds on a tree and 5 fly away. How many birds remain?",
]
CANDIDATES = [
    ["We add the two numbers.", "We multiply the numbers.", "The answer is: 8", "We subtract."],
    ["4 pens cost 4 x 2 = 8 dollars.", "The answer is: 6", "We add 2 and 4.", "Pens are blue."],
    ["10 - 4 = 6 candies are left.", "The answer is: 14", "She ate them all.", "We add 10."],
    ["3 x 6 = 18 eggs.", "The answer is: 9", "A box has eggs.", "We divide 6 by 3."],
    ["7 x 2 = 14 km.", "The answer is: 9", "He walks slowly.", "A week has 5 days."],
    ["12 - 5 = 7 birds remain.", "The answer is: 17", "Birds can fly.", "We add 5."],
]


@dataclass
class Level:
    endpoint: str
    concurrency: int
    wall_s: float = 0.0
    ok_latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    busy_latencies: list[float] = field(default_factory=list)
    busy_with_retry_after: int = 0
    busy_queue_full: int = 0  # refused at once; the others waited out the queue timeout
    deadline_reached: int = 0
    degraded: int = 0  # 200s with a fallback: a model service was down

    @property
    def ok(self) -> int:
        return len(self.ok_latencies)

    @property
    def errors(self) -> int:
        """Answers that are not a full 200: other statuses, timeouts, degraded searches."""
        return sum(n for status, n in self.statuses.items() if status != "200") + self.degraded

    @property
    def rate(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    def p(self, q: float) -> float:
        return percentile(self.ok_latencies, q)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; nan without values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def body_for(endpoint: str, i: int, args: argparse.Namespace) -> dict[str, Any]:
    k = i % len(QUESTIONS)
    if endpoint == "select":
        return {
            "question": QUESTIONS[k],
            "candidates": CANDIDATES[k],
            "max_rationale_tokens": args.max_rationale_tokens,
        }
    return {
        "question": QUESTIONS[k],
        "max_steps": args.max_steps,
        "n_candidates": args.n_candidates,
        "max_step_tokens": args.max_step_tokens,
        "max_rationale_tokens": args.max_rationale_tokens,
        "temperature": 0.7,
        "seed": i,
        "deadline_s": args.deadline,
    }


async def run_level(
    gateway: str, endpoint: str, concurrency: int, args: argparse.Namespace
) -> Level:
    level = Level(endpoint, concurrency)
    stop_at = time.monotonic() + args.duration
    sent = 0
    timeout = httpx.Timeout(args.deadline * 2, connect=10)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def one_client() -> None:
            nonlocal sent
            while time.monotonic() < stop_at and sent < args.max_requests:
                i = sent
                sent += 1
                start = time.perf_counter()
                try:
                    r = await client.post(
                        f"{gateway}/v1/{endpoint}", json=body_for(endpoint, i, args)
                    )
                except httpx.TimeoutException:
                    level.statuses["timeout"] += 1
                    continue
                except httpx.HTTPError as exc:
                    level.statuses[type(exc).__name__] += 1
                    continue
                elapsed = time.perf_counter() - start
                level.statuses[str(r.status_code)] += 1
                if r.status_code == 200:
                    answer = r.json()
                    level.ok_latencies.append(elapsed)
                    level.deadline_reached += bool(answer.get("deadline_reached"))
                    level.degraded += bool(answer.get("fallbacks"))
                elif r.status_code == 503:
                    level.busy_latencies.append(elapsed)
                    level.busy_queue_full += "is full" in r.text
                    wait = r.headers.get("retry-after")
                    if wait is not None:
                        level.busy_with_retry_after += 1
                        await asyncio.sleep(min(float(wait), max(0.0, stop_at - time.monotonic())))

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        level.wall_s = time.perf_counter() - start
    return level


def row(level: Level) -> str:
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(level.statuses.items()))
    busy = ""
    if level.busy_latencies:
        busy = (
            f"; 503s with Retry-After {level.busy_with_retry_after}/{len(level.busy_latencies)}"
            f" ({level.busy_queue_full} queue full, at once), answered in p50 "
            f"{percentile(level.busy_latencies, 0.5) * 1000:.0f} ms"
        )
    partial = f"; {level.deadline_reached} deadline_reached" if level.deadline_reached else ""
    if level.degraded:
        partial += f"; {level.degraded} DEGRADED (a fallback: a model service was down)"
    return (
        f"{level.endpoint:<7} {level.concurrency:>4} {level.rate:>8.2f} "
        f"{level.p(0.5):>7.1f}s {level.p(0.99):>7.1f}s  {statuses}{busy}{partial}"
    )


def summary(levels: list[Level], args: argparse.Namespace) -> None:
    for endpoint in dict.fromkeys(lv.endpoint for lv in levels):
        mine = [lv for lv in levels if lv.endpoint == endpoint]
        good = [lv for lv in mine if lv.errors == 0 and lv.ok and lv.p(0.99) <= args.deadline]
        if not good:
            print(f"{endpoint}: no level had p99 within {args.deadline:g}s and no error")
            continue
        best = max(good, key=lambda lv: lv.rate)
        print(
            f"{endpoint}: highest rate with p99 <= {args.deadline:g}s and no error: "
            f"{best.rate:.2f}/s at concurrency {best.concurrency} (p99 {best.p(0.99):.1f}s)"
        )
        for lv in mine:
            if lv.concurrency <= best.concurrency:
                continue
            total = sum(lv.statuses.values())
            busy = lv.statuses.get("503", 0)
            other = lv.errors - busy
            print(
                f"  past it, concurrency {lv.concurrency}: {busy}/{total} answers were 503 "
                f"({lv.busy_with_retry_after} with Retry-After; {lv.busy_queue_full} at once, "
                f"the queue full; p50 {percentile(lv.busy_latencies, 0.5):.2f}s), {other} other "
                f"errors or timeouts; the admitted ones: {lv.rate:.2f}/s, p99 {lv.p(0.99):.1f}s"
            )


def check_alive(procs: list[ServiceProcess]) -> None:
    """A level measured with a service gone measures fallbacks: stop instead."""
    dead = [p for p in procs if not p.alive()]
    if dead:
        names = ", ".join(f"{p.name} (exit {p.popen.returncode}, log {p.log_path})" for p in dead)
        raise SystemExit(f"stopped: {names} exited during the run; its numbers are not valid")


async def main_async(gateway: str, procs: list[ServiceProcess], args: argparse.Namespace) -> None:
    async with httpx.AsyncClient(timeout=args.deadline * 2) as client:
        for endpoint in args.endpoints.split(","):  # warm-up, not measured
            r = await client.post(f"{gateway}/v1/{endpoint}", json=body_for(endpoint, 0, args))
            r.raise_for_status()
    levels: list[Level] = []
    print(f"{'route':<7} {'conc':>4} {'ok/s':>8} {'p50':>8} {'p99':>8}  answers")
    for endpoint in args.endpoints.split(","):
        for concurrency in (int(c) for c in args.levels.split(",")):
            level = await run_level(gateway, endpoint, concurrency, args)
            levels.append(level)
            print(row(level), flush=True)
            check_alive(procs)
    print()
    summary(levels, args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--levels", default="1,2,4,8,16,32", help="Concurrencies, rising.")
    p.add_argument("--endpoints", default="select,reason")
    p.add_argument("--duration", type=float, default=40.0, help="Seconds of sending per level.")
    p.add_argument("--max-requests", type=int, default=400, help="Most requests per level.")
    p.add_argument("--deadline", type=float, default=30.0, help="The client's deadline (s).")
    p.add_argument("--max-concurrent", type=int, default=8)
    p.add_argument("--max-queued", type=int, default=8)
    p.add_argument("--queue-timeout", type=float, default=10.0)
    p.add_argument("--max-steps", type=int, default=2)
    p.add_argument("--n-candidates", type=int, default=3)
    p.add_argument("--max-step-tokens", type=int, default=24)
    p.add_argument("--max-rationale-tokens", type=int, default=24)
    p.add_argument("--model", default=None, help="Model for the services (default: embedded).")
    p.add_argument("--threads", type=int, default=None, help="Threads per model service.")
    args = p.parse_args()
    exit_on_sigterm()

    procs: list[ServiceProcess] = []
    log_dir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    try:
        gw_env = {
            "GATEWAY_MAX_CONCURRENT_REQUESTS": str(args.max_concurrent),
            "GATEWAY_MAX_QUEUED_REQUESTS": str(args.max_queued),
            "GATEWAY_QUEUE_TIMEOUT_S": str(args.queue_timeout),
            "GATEWAY_MAX_DEADLINE_S": str(args.deadline),
            "GATEWAY_UPSTREAM_TIMEOUT_S": str(args.deadline * 2),
        }
        gateway, urls = start_ensemble(
            procs, log_dir=log_dir, model=args.model, threads=args.threads,
            timeout_s=args.deadline * 4, gateway_env=gw_env,
        )  # fmt: skip
        threads = httpx.get(f"{urls[ROLES[0]]}/ready", timeout=10).json().get("threads")
        cores = len(available_cores())
        print(
            f"{platform.machine()}, {cores} cores, threads per model service "
            f"{threads}; admission "
            f"{args.max_concurrent} running + {args.max_queued} queued (queue timeout "
            f"{args.queue_timeout:g}s); deadline {args.deadline:g}s; {args.duration:g}s per level;"
            f" reason: max_steps {args.max_steps}, n_candidates {args.n_candidates}, "
            f"{args.max_step_tokens}/{args.max_rationale_tokens} step/rationale tokens; select: "
            f"4 candidates, {args.max_rationale_tokens} rationale tokens"
        )
        asyncio.run(main_async(gateway, procs, args))
    finally:
        stop_processes(procs)


if __name__ == "__main__":
    main()
