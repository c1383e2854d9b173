"""Co-location benchmark: two model services on one machine, computing at the same time.

    python bench/bench_colocation.py [--calls 3] [--rounds 2] [--model PATH]

Starts a rationalyst and an agent service on the embedded model, twice: with each service's
default threads (every core it may use: what two services started by hand get) and with the
thread budget `rationalyst up` gives them (cores / services each). Per setting it sends
``--calls`` /v1/rationale calls to one and ``--calls`` /v1/propose (n=4) calls to the other,

- one after another (sequential), and
- all at once (together), as the gateway does at every step,

and prints the wall time of each and together / sequential (goal <= 1.0: running them at
once must not cost more than running them in turn).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.ensemble import (
    ServiceProcess,
    available_cores,
    free_port,
    model_service_command,
    start_process,
    stop_processes,
    thread_envs,
    wait_ready,
)

QUESTION = "A baker makes 24 rolls and sells 9. Then he bakes 12 more. How many rolls now?"
STEPS = ["The baker starts with 24 rolls."]


def calls(
    urls: dict[str, str], n: int, args: argparse.Namespace
) -> list[tuple[str, dict[str, Any]]]:
    rationale = {"question": QUESTION, "steps": STEPS, "max_tokens": args.rationale_tokens}
    propose = {
        "question": QUESTION,
        "steps": STEPS,
        "n": 4,
        "max_tokens": args.step_tokens,
        "temperature": 0.7,
    }
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        out.append((f"{urls['rationalyst']}/v1/rationale", {**rationale, "seed": i}))
        out.append((f"{urls['agent']}/v1/propose", {**propose, "seed": i}))
    return out


async def timed(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> float:
    start = time.perf_counter()
    r = await client.post(url, json=body)
    r.raise_for_status()
    return time.perf_counter() - start


async def measure(urls: dict[str, str], args: argparse.Namespace) -> tuple[float, float, float]:
    """(sequential wall, together wall, slowest single call when together)."""
    async with httpx.AsyncClient(timeout=1800) as client:
        for url, body in calls(urls, 1, args):  # warm-up
            await timed(client, url, body)
        seq = tog = slowest = 0.0
        for _ in range(args.rounds):
            start = time.perf_counter()
            for url, body in calls(urls, args.calls, args):
                await timed(client, url, body)
            seq += time.perf_counter() - start
            start = time.perf_counter()
            single = await asyncio.gather(
                *(timed(client, url, body) for url, body in calls(urls, args.calls, args))
            )
            tog += time.perf_counter() - start
            slowest = max(slowest, *single)
    return seq / args.rounds, tog / args.rounds, slowest


def run_setting(name: str, envs: dict[str, dict[str, str]], args: argparse.Namespace) -> None:
    log_dir = Path(tempfile.mkdtemp(prefix=f"bench-colocation-{name}-"))
    procs: list[ServiceProcess] = []
    urls: dict[str, str] = {}
    try:
        for role in ("rationalyst", "agent"):
            port = free_port()
            urls[role] = f"http://127.0.0.1:{port}"
            cmd = model_service_command(role, port, model=args.model)
            procs.append(start_process(role, cmd, urls[role], log_dir=log_dir, env=envs[role]))
        wait_ready(procs, timeout_s=900)
        threads = [httpx.get(f"{u}/ready").json().get("threads") for u in urls.values()]
        seq, tog, slowest = asyncio.run(measure(urls, args))
        print(
            f"{name:<16} threads={threads}  sequential {seq:6.1f}s  together {tog:6.1f}s  "
            f"slowest single call together {slowest:5.1f}s  together/sequential {tog / seq:.2f}x"
        )
    finally:
        stop_processes(procs)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--calls", type=int, default=3, help="Calls to each service per round.")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rationale-tokens", type=int, default=48)
    p.add_argument("--step-tokens", type=int, default=48)
    p.add_argument("--model", default=None)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    roles = ("rationalyst", "agent")
    os.environ.pop("MODEL_SERVER_THREADS", None)
    default: dict[str, dict[str, str]] = {role: {} for role in roles}  # the engine's own choice
    print(f"cores: {len(available_cores())}; {args.calls} rationale + {args.calls} propose calls")
    run_setting("default threads", default, args)
    run_setting("launcher budget", thread_envs(roles, environ={}), args)
    print("goal: together / sequential <= 1.0 with the launcher's budget")


if __name__ == "__main__":
    main()
