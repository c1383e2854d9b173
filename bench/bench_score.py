"""Benchmark: scoring K continuations of one context with the transformers engine.

Measures, as medians over a few repeats after warm-up:

(a) ``engine.score`` of all K continuations (shared prefix computed once, one batched pass);
(b) one plain forward pass of context + the longest continuation (the floor: one sequence);
(c) the original pattern: K separate full forward passes, one per continuation, each
    followed by log_softmax over its continuation tokens.

It prints a/b (the goal is <= 1.3: scoring K candidates costs about one forward) and a/c.

    python bench/bench_score.py                     # embedded model, dtype auto
    python bench/bench_score.py --dtype float32 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import torch

from services.model_server.engines.base import ScoreJob, encode
from services.model_server.engines.device import pick_device, pick_dtype
from services.model_server.engines.transformers_engine import TransformersEngine
from services.model_server.models import EMBEDDED_MODEL, resolve_model
from services.model_server.settings import ModelServerSettings

QUESTION = (
    "A farmer keeps chickens, ducks and geese. On Monday she counts 48 chickens, which is "
    "three times the number of ducks, and the geese number four fewer than the ducks. "
    "On Tuesday she sells a quarter of the chickens at the market for 6 dollars each and buys "
    "5 more ducks with part of the money. Each goose lays one egg every two days, each duck "
    "lays an egg every day and each chicken lays five eggs a week. She sells eggs in boxes of "
    "a dozen for 4 dollars a box and keeps any eggs that do not fill a box for her family. "
    "How much money does she make from eggs in one week after Tuesday, and how many eggs does "
    "her family keep? Explain each step."
)
STEPS = [
    "There are 48 chickens, and that is three times the number of ducks, so there are "
    "48 / 3 = 16 ducks.",
    "The geese are four fewer than the ducks: 16 - 4 = 12 geese.",
    "On Tuesday she sells a quarter of the chickens: 48 / 4 = 12 chickens sold, leaving 36.",
    "She earns 12 * 6 = 72 dollars and buys 5 more ducks, so there are now 21 ducks.",
]
CANDIDATES = [
    "Each chicken lays five eggs a week, so the 36 chickens lay 36 * 5 = 180 eggs a week.",
    "Ducks lay an egg a day, so 21 ducks lay 21 * 7 = 147 eggs in one week.",
    "The geese lay one egg every two days, which is 3.5 eggs a week each, so 12 geese lay "
    "12 * 3.5 = 42 eggs a week in total.",
    "Next, let us add up all the eggs laid in the week by chickens, ducks and geese, and then "
    "divide the total by twelve to find how many full boxes she can sell.",
]


def build_job(engine: TransformersEngine, k: int, context_tokens: int) -> tuple[ScoreJob, str]:
    """A ChatML context of about ``context_tokens`` tokens and ``k`` candidate next steps."""
    steps: list[str] = []
    messages: list[dict[str, str]] = [{"role": "user", "content": QUESTION}]
    while True:
        # Repeat the worked steps one at a time until the context is long enough.
        steps.append(STEPS[len(steps) % len(STEPS)])
        context = engine.tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": "\n".join(steps)}],
            tokenize=False,
            continue_final_message=True,
        )
        context = str(context) + "\n"
        if len(encode(engine.tokenizer, context)[0]) >= context_tokens:
            break
    candidates = [CANDIDATES[i % len(CANDIDATES)] for i in range(k)]
    job = ScoreJob(
        texts=[context + c for c in candidates],
        spans=[(len(context), len(context) + len(c)) for c in candidates],
    )
    return job, context


async def timed(
    fns: list[Callable[[], Awaitable[Any]]], repeats: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Median wall seconds and median process CPU seconds of each function.

    The functions take turns within each repeat, so load from other processes on a shared
    machine falls on all of them alike. CPU time (all threads of this process) is the steadier
    measure on a loaded machine; with more than one torch thread it also counts spin-waiting.
    """
    for _ in range(warmup):
        for fn in fns:
            await fn()
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, w, c in zip(fns, wall, cpu, strict=True):
            start, start_cpu = time.perf_counter(), time.process_time()
            await fn()
            w.append(time.perf_counter() - start)
            c.append(time.process_time() - start_cpu)
    return [statistics.median(x) for x in wall], [statistics.median(x) for x in cpu]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def main(args: argparse.Namespace) -> None:
    load_before = f"{os.getloadavg()[0]:.2f}"
    settings = ModelServerSettings(
        device=args.device, dtype=args.dtype, threads=args.threads, max_model_len=None
    )
    path = resolve_model(args.model)
    engine = TransformersEngine(settings, path)
    await engine.start()
    try:
        job, context = build_job(engine, args.k, args.context_tokens)
        windows, prompt_tokens = await engine.score(job)  # also fills job.token_ids
        context_len = len(encode(engine.tokenizer, context)[0])
        lengths = [len(ids) for ids in job.token_ids]
        longest = job.token_ids[lengths.index(max(lengths))]

        from transformers import AutoModelForCausalLM

        device = pick_device(args.device)
        dtype = getattr(torch, pick_dtype(args.dtype, device))
        reference: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        reference.to(device).eval()

        async def run_a() -> None:
            await engine.score(ScoreJob(texts=list(job.texts), spans=list(job.spans)))

        def forward(ids: list[int], lo: int) -> float:
            with torch.inference_mode():
                logits = reference(torch.tensor([ids], device=device)).logits[0]
                lp = torch.log_softmax(logits[lo - 1 : -1].float(), dim=-1)
                targets = torch.tensor(ids[lo:], device=device)
                return float(lp.gather(-1, targets[:, None]).sum())

        async def run_b() -> None:
            with torch.inference_mode():
                reference(torch.tensor([longest], device=device))

        async def run_c() -> None:
            for ids, (lo, _) in zip(job.token_ids, job.windows, strict=True):
                forward(ids, lo)

        (a, b, c), (a_cpu, b_cpu, c_cpu) = await timed(
            [run_a, run_b, run_c], args.repeats, args.warmup
        )
    finally:
        await engine.close()

    print(f"machine: {cpu_name()}; {os.cpu_count()} cores; torch {torch.__version__}")
    print(f"engine: device={device} dtype={dtype} torch threads={torch.get_num_threads()}")
    print(
        f"job: context {context_len} tokens, K={args.k} continuations of "
        f"{[n - context_len for n in lengths]} tokens (approx.); "
        f"prompt_tokens={prompt_tokens} (sum of lengths {sum(lengths)})"
    )
    print(f"load average before/after: {load_before} / {os.getloadavg()[0]:.2f}")
    print("                                        wall (median)   CPU time (median)")
    print(f"(a) engine.score, all K:              {a * 1000:9.1f} ms   {a_cpu * 1000:9.1f} ms")
    print(f"(b) one forward, context + longest:   {b * 1000:9.1f} ms   {b_cpu * 1000:9.1f} ms")
    print(f"(c) K separate full scoring passes:   {c * 1000:9.1f} ms   {c_cpu * 1000:9.1f} ms")
    print(f"a/b = {a / b:.2f} wall, {a_cpu / b_cpu:.2f} CPU  (goal <= 1.3)")
    print(f"a/c = {a / c:.2f} wall, {a_cpu / c_cpu:.2f} CPU")
    print(f"windows scored: {[len(w.token_ids) for w in windows]}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="model folder or cache name")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--k", type=int, default=4, help="continuations per context")
    parser.add_argument("--context-tokens", type=int, default=300, help="context length")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
