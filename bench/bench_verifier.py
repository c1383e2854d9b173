"""Scripted verifier benchmark: verifications per second on generated items.

    python bench/bench_verifier.py [--items 300] [--seconds 2]

For each generated task (multistep arithmetic and word sorting, seen and unseen buckets) the
gold rationales and corrupted copies of them (one number changed in a random step: a wrong
result, letter index, substitution or answer) are verified over and over for ``--seconds``;
then the same items go through ``POST /v1/verify`` of a gateway served in-process (no model
services are involved). Printed per task: mean characters per solution, verifications/s
directly and through HTTP, and their ratio (the share of a request's time spent verifying).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.testing import fake_upstreams
from shared.tasks import get_task
from shared.verify import scripted_verifier

TASKS = (
    "multistep_arithmetic_seen",
    "multistep_arithmetic_unseen",
    "word_sorting_seen",
    "word_sorting_unseen",
)
_NUMBER_RE = re.compile(r"(?<=[ (])-?\d+(?=[ ).])")


def corrupt(lines: list[str], rng: random.Random) -> list[str]:
    """One number of one step (not its label) moved by one."""
    out = list(lines)
    while True:
        i = rng.randrange(len(out))
        label, _, body = out[i].partition(") ")
        numbers = list(_NUMBER_RE.finditer(body))
        if numbers:
            m = rng.choice(numbers)
            out[i] = f"{label}) {body[: m.start()]}{int(m[0]) + 1}{body[m.end() :]}"
            return out


def attempts(task: str, n: int) -> list[tuple[str, str]]:
    rng = random.Random(task)
    out = []
    for item in get_task(task).items(n, seed=11):
        assert item.rationale is not None
        out.append((item.question, "\n".join(item.rationale)))
        out.append((item.question, "\n".join(corrupt(item.rationale, rng))))
    return out


def direct_rate(task: str, pairs: list[tuple[str, str]], seconds: float) -> float:
    verifier = scripted_verifier(task)
    assert verifier is not None
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for question, solution in pairs:
            verifier.verify(question, solution)
        done += len(pairs)
    return done / (time.perf_counter() - started)


async def http_rate(task: str, pairs: list[tuple[str, str]], seconds: float) -> float:
    app = create_app(GatewaySettings(), clients=fake_upstreams())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            done = 0
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                for question, solution in pairs:
                    body = {"task": task, "question": question, "solution": solution}
                    r = await client.post("/v1/verify", json=body)
                    assert r.status_code == 200, r.text
                done += len(pairs)
            return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=300, help="Items per task (x2 attempts).")
    parser.add_argument("--seconds", type=float, default=2.0, help="Time per measurement.")
    args = parser.parse_args()
    print(f"{'task':30} {'chars':>6} {'flagged':>8} {'direct/s':>10} {'http/s':>8} {'verify%':>8}")
    for task in TASKS:
        pairs = attempts(task, args.items)
        verifier = scripted_verifier(task)
        assert verifier is not None
        chars = sum(len(s) for _, s in pairs) / len(pairs)
        flagged = sum(not verifier.verify(q, s).correct for q, s in pairs) / len(pairs)
        direct = direct_rate(task, pairs, args.seconds)
        http = asyncio.run(http_rate(task, pairs, args.seconds))
        print(
            f"{task:30} {chars:6.0f} {flagged:8.0%} {direct:10.0f} {http:8.0f} {http / direct:8.1%}"
        )


if __name__ == "__main__":
    main()
