"""Generation throughput of the vLLM engine against bare vLLM, measured in one run.

    python bench/bench_vllm.py [--model M] [--dtype auto] [--prompts 4] [--n 4] [--max-tokens 64]

Both sides get the same work: ``--prompts`` chat prompts, each asking for ``--n`` samples of up
to ``--max-tokens`` tokens (fixed seeds, sampled log-probs on, as the engine always asks for
them), all submitted at once. Side A is :class:`VllmEngine` (``AsyncLLM``, engine in a child
process, requests through asyncio); side B is ``vllm.LLM.generate`` in this process with the
same engine settings. On a CPU both stay loaded and the timed rounds alternate A, B, A, B, ...
so that a machine whose load changes (a shared CPU) affects both alike; on a GPU (or with
``--sequential``) all A rounds run first, then A stops and B starts. Prints tokens/s of each round,
the medians and their ratio A / B (the goal: >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.model_server.engines.base import SamplingParams, encode
from services.model_server.engines.device import pick_device, pick_dtype
from services.model_server.models import resolve_model
from services.model_server.settings import ModelServerSettings

QUESTIONS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how photosynthesis works.",
    "List some tips for learning a new language.",
    "Describe a walk through a busy market.",
    "What makes a good cup of tea?",
    "Tell me about the history of bicycles.",
    "How do bees communicate?",
    "Describe your ideal weekend.",
]


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPUs, {gpu}, Python {platform.python_version()}"


def load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


async def run_engine(engine: Any, prompts: list[list[int]], args: argparse.Namespace) -> int:
    """One round through VllmEngine: every prompt at once; returns tokens generated."""
    outs = await asyncio.gather(
        *(
            engine.generate(
                ids,
                SamplingParams(max_tokens=args.max_tokens, n=args.n, temperature=1.0, seed=i),
            )
            for i, ids in enumerate(prompts)
        )
    )
    return sum(len(c.token_ids) for completions in outs for c in completions)


def run_bare(llm: Any, prompts: list[list[int]], args: argparse.Namespace) -> int:
    """The same round through ``LLM.generate``; returns tokens generated (EOS excluded, as
    the engine reports them)."""
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.inputs import TokensPrompt

    params = [
        VllmSamplingParams(
            n=args.n, temperature=1.0, seed=i, max_tokens=args.max_tokens, logprobs=0
        )
        for i in range(len(prompts))
    ]
    outs = llm.generate(
        [TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False
    )
    eos = llm.get_tokenizer().eos_token_id
    total = 0
    for out in outs:
        for o in out.outputs:
            ids = list(o.token_ids)
            total += len(ids) - (1 if ids and ids[-1] == eos else 0)
    return total


async def main(args: argparse.Namespace) -> None:
    from services.model_server.engines.vllm_engine import VllmEngine

    model_path = resolve_model(args.model)
    settings = ModelServerSettings(
        engine="vllm",
        model=model_path,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        vllm_kv_cache_gib=args.kv_cache_gib,
    )
    print(f"machine: {machine()}")
    print(f"load average at start: {load()}")

    began = time.perf_counter()
    engine = VllmEngine(settings, model_path)
    await engine.start()
    print(f"A  VllmEngine started in {time.perf_counter() - began:.1f}s ({engine.dtype})")
    prompts = []
    for q in QUESTIONS[: args.prompts]:
        messages = [{"role": "user", "content": q}]
        text = engine.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        prompts.append(encode(engine.tokenizer, text)[0])

    device = pick_device(settings.device)
    # On a GPU both engines would compete for its memory: run the sides one after the other.
    sequential = args.sequential or device.startswith("cuda")

    def start_bare() -> Any:
        from vllm import LLM

        began = time.perf_counter()
        # The settings VllmEngine gives AsyncLLM (on CPU, LLM runs in this process with
        # VLLM_ENABLE_V1_MULTIPROCESSING=0).
        llm_kwargs: dict[str, Any] = {
            "model": model_path,
            "dtype": pick_dtype(settings.dtype, device),
            "max_model_len": args.max_model_len + 1,
            "enforce_eager": settings.vllm_enforce_eager,
            "enable_prefix_caching": settings.vllm_enable_prefix_caching,
            "disable_log_stats": True,
        }
        if device.startswith("cuda"):
            llm_kwargs["gpu_memory_utilization"] = settings.vllm_gpu_memory_utilization
        llm = LLM(**llm_kwargs)
        print(f"B  vllm.LLM started in {time.perf_counter() - began:.1f}s")
        run_bare(llm, prompts, args)  # warm-up round (first-use costs)
        return llm

    async def round_a() -> tuple[float, int]:
        t = time.perf_counter()
        tokens = await run_engine(engine, prompts, args)
        return tokens / (time.perf_counter() - t), tokens

    def round_b() -> tuple[float, int]:
        t = time.perf_counter()
        tokens = run_bare(llm, prompts, args)
        return tokens / (time.perf_counter() - t), tokens

    await run_engine(engine, prompts, args)  # warm-up round (first-use costs)
    rates: dict[str, list[float]] = {"A": [], "B": []}
    if sequential:
        for r in range(args.rounds):
            a, tokens = await round_a()
            rates["A"].append(a)
            print(f"round {r + 1}: A {a:7.1f} tok/s ({tokens} tokens)   load {load()}")
        await engine.close()
        llm = start_bare()
        for r in range(args.rounds):
            b, tokens = round_b()
            rates["B"].append(b)
            print(f"round {r + 1}: B {b:7.1f} tok/s ({tokens} tokens)   load {load()}")
    else:
        llm = start_bare()
        for r in range(args.rounds):
            a, tokens = await round_a()
            b, tokens_b = round_b()
            rates["A"].append(a)
            rates["B"].append(b)
            print(
                f"round {r + 1}: A {a:7.1f} tok/s ({tokens} tokens)   "
                f"B {b:7.1f} tok/s ({tokens_b} tokens)   A/B {a / b:.2f}   load {load()}"
            )
        await engine.close()

    a_med, b_med = statistics.median(rates["A"]), statistics.median(rates["B"])
    print(
        f"\nwork per round: {len(prompts)} prompts x n={args.n} x <= {args.max_tokens} tokens, "
        f"sampled, temperature 1, log-probs on"
    )
    print(f"A  VllmEngine (AsyncLLM):   {a_med:7.1f} tok/s (median of {args.rounds})")
    print(f"B  vllm.LLM.generate:       {b_med:7.1f} tok/s (median of {args.rounds})")
    print(f"ratio A / B = {a_med / b_med:.2f}  (goal >= 0.9)")
    if not sequential:
        paired = sorted(a / b for a, b in zip(rates["A"], rates["B"], strict=True))
        print(
            f"per-round ratios (paired rounds): median {statistics.median(paired):.2f}, "
            f"range {paired[0]:.2f}-{paired[-1]:.2f}"
        )
    print(f"load average at end: {load()}")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="model folder or cache name")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--prompts", type=int, default=4, help="prompts per round (at most 8)")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per sample (at most)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per side")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--kv-cache-gib", type=int, default=1, help="vLLM on CPU: KV cache per side")
    p.add_argument(
        "--sequential",
        action="store_true",
        help="run all A rounds, stop A, then B (always so on a GPU); default: alternate",
    )
    return p.parse_args()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asyncio.run(main(parse()))
