"""Benchmark: rollouts through /v1/rollout, and what the two labelling methods cost.

One model service (transformers engine, the embedded model unless ``--model``) is served by
uvicorn on a loopback port in a background thread; the bench talks to it over real HTTP and,
for the baselines, calls the SAME engine in-process (on the server's event loop), so both see
one model, one prefix cache and the same seeds.

(a) Throughput of ``n`` completions of one question (``--n``, ``--max-steps``,
    ``--max-step-tokens``), medians over ``--repeats`` after a warm-up:

    * completions/s through ``POST /v1/rollout`` ÷ the engine's own batched generation of
      the same completions in-process (the same first call with ``n`` samples, then each
      completion's next steps as concurrent engine calls, no HTTP, no service layer); the
      same seed gives the same completions, which the bench checks. Goal >= 0.9.
    * completion tokens/s through ``/v1/rollout`` ÷ one plain ``engine.generate`` with
      ``n`` samples of the same prompt (a single turn, so no step boundaries): what writing
      a solution step by step costs over one batched generation.

(b) Labelling cost on ``--problems`` generated word problems (``word_problems``, seed 0):
    the prm_labels stage's own code on this service, ``shepherd`` first, then
    ``binary_search`` on the same solutions and the same cached rollouts (so the two see
    identical estimates and differ only by method). Prints rollouts per labelled step of
    each, their ratio, and how often their labels agree (per step and per solution).

    python bench/bench_rollout.py                        # small defaults
    python bench/bench_rollout.py --n 16 --problems 8 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx

from gateway.ensemble import free_port
from services.model_server import prompts
from services.model_server.app import create_app
from services.model_server.engines.base import Completion, SamplingParams, encode
from services.model_server.engines.transformers_engine import TransformersEngine
from services.model_server.models import EMBEDDED_MODEL, resolve_model
from services.model_server.rollout import roll_out
from services.model_server.settings import ModelServerSettings
from services.worker.inputs import RawRecord
from services.worker.settings import WorkerSettings
from services.worker.stages import build_stage
from services.worker.stages.base import StageContext
from shared.clients import ModelServiceClient
from shared.job_schemas import InputSpec, PrmLabelsSpec, job_stages
from shared.schemas import Role
from shared.tasks import get_task

T = TypeVar("T")

QUESTION = (
    "A baker bakes 36 rolls in the morning and 28 in the afternoon. He sells 45 rolls and "
    "gives 7 to a neighbour. How many rolls does he have left?"
)


class Server:
    """The model service app on uvicorn in a thread; ``call`` runs a coroutine on its loop."""

    def __init__(self, settings: ModelServerSettings, engine: TransformersEngine) -> None:
        import uvicorn

        self.engine = engine
        self.port = free_port()
        app = create_app(settings, engine=engine)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            self.loop.run_until_complete(self.server.serve())

        self.thread = threading.Thread(target=run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the model service did not become ready")
            time.sleep(0.5)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def rollout_body(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return {
        "question": QUESTION,
        "n": args.n,
        "seed": seed,
        "temperature": 0.7,
        "max_steps": args.max_steps,
        "max_step_tokens": args.max_step_tokens,
    }


async def in_process(
    engine: TransformersEngine, system: str | None, args: argparse.Namespace, seed: int
) -> tuple[list[list[str]], int]:
    """The same completions from the engine directly: its completions' steps and tokens."""
    demos = prompts.default_or_given_demos(QUESTION, None)

    def render(steps: Sequence[str]) -> list[int]:
        text = prompts.agent_prompt(engine.tokenizer, system, demos, QUESTION, steps)
        return encode(engine.tokenizer, text)[0]

    async def generate(ids: list[int], params: SamplingParams) -> list[Completion]:
        return await engine.generate(ids, params.normalized())

    params = SamplingParams(max_tokens=args.max_step_tokens, n=args.n, temperature=0.7, seed=seed)
    result = await roll_out(
        prefix=[],
        render=render,
        generate=generate,
        params=params,
        max_steps=args.max_steps,
        max_model_len=engine.max_model_len,
    )
    tokens = sum(r.completion_tokens for r in result.rollouts)
    return [r.steps for r in result.rollouts], tokens


async def one_turn(
    engine: TransformersEngine, system: str | None, args: argparse.Namespace, seed: int
) -> int:
    """One batched generation of n samples of the same prompt: completion tokens."""
    demos = prompts.default_or_given_demos(QUESTION, None)
    text = prompts.agent_prompt(engine.tokenizer, system, demos, QUESTION, [])
    ids = encode(engine.tokenizer, text)[0]
    params = SamplingParams(
        max_tokens=args.max_step_tokens * args.max_steps, n=args.n, temperature=0.7, seed=seed
    )
    outs = await engine.generate(ids, params)
    return sum(len(o.token_ids) for o in outs)


def bench_throughput(server: Server, system: str | None, args: argparse.Namespace) -> None:
    http = httpx.Client(base_url=server.url, timeout=600)
    rows: dict[str, list[float]] = {"http": [], "engine": [], "http_tok": [], "turn_tok": []}
    same = 0
    for r in range(args.warmup + args.repeats):
        seed = 100 + r
        # alternate which goes first: the second finds the first's prompts in the prefix cache
        order = ["http", "engine"] if r % 2 == 0 else ["engine", "http"]
        took: dict[str, float] = {}
        for which in order:
            start = time.perf_counter()
            if which == "http":
                resp = http.post("/v1/rollout", json=rollout_body(args, seed))
                resp.raise_for_status()
                body = resp.json()
            else:
                steps, _ = server.call(in_process(server.engine, system, args, seed))
            took[which] = time.perf_counter() - start
        http_s, engine_s = took["http"], took["engine"]
        start = time.perf_counter()
        turn_tokens = server.call(one_turn(server.engine, system, args, seed))
        turn_s = time.perf_counter() - start
        if r < args.warmup:
            continue
        same += int([c["steps"] for c in body["completions"]] == steps)
        rows["http"].append(args.n / http_s)
        rows["engine"].append(args.n / engine_s)
        rows["http_tok"].append(body["usage"]["completion_tokens"] / http_s)
        rows["turn_tok"].append(turn_tokens / turn_s)
    http.close()
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(
        f"(a) n={args.n}, max_steps={args.max_steps}, max_step_tokens={args.max_step_tokens}, "
        f"{args.repeats} repeats (medians)"
    )
    print(
        f"    /v1/rollout {med['http']:.2f} completions/s ÷ engine in-process "
        f"{med['engine']:.2f} completions/s = {med['http'] / med['engine']:.2f} "
        f"(identical completions in {same}/{args.repeats} repeats)"
    )
    print(
        f"    /v1/rollout {med['http_tok']:.1f} completion tokens/s ÷ one batched single-turn "
        f"generate {med['turn_tok']:.1f} tokens/s = {med['http_tok'] / med['turn_tok']:.2f}"
    )


async def label(url: str, spec: PrmLabelsSpec, artifacts: Path, n_problems: int) -> Any:
    """The prm_labels stage's own processing of the first problems, over HTTP."""
    stage = build_stage(spec, job_stages(spec)[0], "bench")
    items = get_task("word_problems").items(n_problems, seed=0)
    async with ModelServiceClient("agent", url, timeout=900) as agent:
        rt = SimpleNamespace(
            settings=WorkerSettings(artifacts_dir=artifacts, request_concurrency=8), agent=agent
        )
        extras = await stage.prepare(rt)

        async def active() -> None:
            return None

        ctx = StageContext(
            job_id="bench", stage_index=0, shard=0, runtime=rt,  # type: ignore[arg-type]
            input=InputSpec(paths=["x"], id_field="id"), extras=extras, check_active=active,
        )  # fmt: skip
        records = [RawRecord(i, item.model_dump()) for i, item in enumerate(items)]
        start = time.perf_counter()
        result = await stage.process(records, ctx)
        return result, time.perf_counter() - start


def bench_labels(server: Server, args: argparse.Namespace) -> None:
    common = {
        "kind": "prm_labels", "task": "word_problems", "items": args.problems,
        "n_solutions": args.solutions, "n_rollouts": args.rollouts,
        "max_steps": args.max_steps, "max_step_tokens": args.max_step_tokens,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for method in ("shepherd", "binary_search"):
            spec = PrmLabelsSpec.model_validate({**common, "method": method})
            runs[method] = asyncio.run(label(server.url, spec, Path(tmp), args.problems))
    (sh, sh_s), (bs, bs_s) = runs["shepherd"], runs["binary_search"]
    sh_rows = {r["id"]: r for r in sh.streams["stepwise"]}
    bs_rows = {r["id"]: r for r in bs.streams["stepwise"]}
    steps = sum(len(r["labels"]) for r in sh_rows.values())
    used = {
        m: sum(r["rollouts_used"] for r in rows.values())
        for m, rows in (("shepherd", sh_rows), ("binary_search", bs_rows))
    }
    agree = sum(
        a == b
        for k, r in sh_rows.items()
        for a, b in zip(r["labels"], bs_rows[k]["labels"], strict=True)
    )
    same_solutions = sum(r["labels"] == bs_rows[k]["labels"] for k, r in sh_rows.items())
    correct = sum(r["solution_correct"] for r in sh_rows.values())
    positive = sum(sum(r["labels"]) for r in sh_rows.values())
    print(
        f"(b) {args.problems} word problems x {args.solutions} solutions, "
        f"n_rollouts={args.rollouts}: {len(sh_rows)} solutions ({correct} correct), {steps} "
        f"steps ({positive} positive by shepherd)"
    )
    per = {m: u / steps if steps else float("nan") for m, u in used.items()}
    print(
        f"    rollouts per labelled step: binary_search {per['binary_search']:.2f} ÷ shepherd "
        f"{per['shepherd']:.2f} = {per['binary_search'] / per['shepherd']:.2f}"
    )
    print(
        f"    label agreement: {agree}/{steps} steps ({agree / steps:.0%}), "
        f"{same_solutions}/{len(sh_rows)} solutions identical; shepherd {sh_s:.1f} s, "
        f"binary_search {bs_s:.1f} s (its rollouts from shepherd's cache)"
    )


def main(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()[0]
    settings = ModelServerSettings(
        role=Role.agent, dtype=args.dtype, threads=args.threads, max_n=64, model=args.model
    )
    engine = TransformersEngine(settings, resolve_model(args.model))
    server = Server(settings, engine)
    began = time.perf_counter()
    server.start()
    system = prompts.system_prompt(settings.role, settings.system_prompt)
    try:
        print(f"model {args.model}, threads {engine.threads}, load average {load_before:.2f}")
        bench_throughput(server, system, args)
        if args.problems:
            bench_labels(server, args)
    finally:
        server.stop()
    print(f"total {time.perf_counter() - began:.0f} s, load average now {os.getloadavg()[0]:.2f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="model folder or cache name")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--n", type=int, default=4, help="completions per rollout")
    parser.add_argument("--max-steps", type=int, default=3, help="steps per completion")
    parser.add_argument("--max-step-tokens", type=int, default=24, help="tokens per step")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds")
    parser.add_argument("--problems", type=int, default=2, help="(b): word problems, 0 = skip")
    parser.add_argument("--solutions", type=int, default=3, help="(b): solutions per problem")
    parser.add_argument("--rollouts", type=int, default=2, help="(b): rollouts per prefix")
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
