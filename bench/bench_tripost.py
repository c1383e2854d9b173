"""TriPosT benchmark: a whole ``tripost`` job on the embedded model, on this machine.

    python bench/bench_tripost.py [--task multistep_arithmetic_seen] [--items 16]
        [--iterations 3] [--eval-items 12] [--eval-tokens 512] [--shots 2] [--no-gold]
        [--out /tmp/bench-tripost]

Starts its own redis-server and one worker (which serves each model the job trains itself)
and runs the job: evaluate the base model, fine-tune on the gold rationales and evaluate,
then per iteration collect (the current model's attempts, the scripted verifier and
improver), train from the current model with the weighted loss, evaluate. Printed:

- the collection's throughput per iteration: questions, trajectories and candidate samples
  per minute of the stage's wall time, kept and dropped by reason;
- each training's time and loss;
- accuracy of the first attempt and of the final answer after self-improvement, per model on
  seen and unseen questions, with 95% Wilson intervals (the job's result.json).

The job's folder (report.md, accuracy.png, every stage's rows and reports; not the models) is
copied to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.ensemble import PROJECT_ROOT, free_port
from shared.jobs_store import JOB_SPEC_ADAPTER, JobStore, JobStoreSettings


def job_spec(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "kind": "tripost",
        "task": args.task,
        "items": args.items,
        "iterations": args.iterations,
        "seed": args.seed,
        "collect": {"few_shot": args.shots, "max_tokens": 384, "max_rounds": 3},
        "train": {
            "epochs": args.epochs,
            "batch_size": 4,
            "learning_rate": args.learning_rate,
            "save_steps": 25,
            "max_length": 1024,
        },
        "dev_fraction": 0.0,
        "gold_sft": not args.no_gold,
        "eval": {
            "items": args.eval_items,
            "max_rounds": 3,
            "max_tokens": args.eval_tokens,
            "few_shot": args.shots,
        },
    }


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 (kept open for the child)
    return subprocess.Popen(
        [sys.executable, "-m", "services.worker"],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        cwd=PROJECT_ROOT,
    )


async def run_job(settings: JobStoreSettings, spec: dict[str, Any]) -> Any:
    store = JobStore.from_settings(settings)
    try:
        status = await store.create(JOB_SPEC_ADAPTER.validate_python(spec))
        shown = ""
        while True:
            status = await store.get(status.id)
            line = f"{status.state.value} {status.stage.value if status.stage else ''}"
            if status.stages and status.state.value == "running":
                current = next((s for s in status.stages if s.state.value == "running"), None)
                line += f" {current.label if current else ''}"
            if line != shown:
                print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
                shown = line
            if status.state.terminal:
                return status
            await asyncio.sleep(2.0)
    finally:
        await store.aclose()


def pct(x: float | None) -> str:
    return "  –  " if x is None else f"{100 * x:5.1f}%"


def report(folder: Path, status: Any) -> None:
    print(f"\njob {status.id}: {status.state.value} in {status.timings.running_s:.0f} s")
    for stage in status.stages:
        minutes = ((stage.finished_at or 0) - (stage.started_at or 0)) / 60
        root = folder / (stage.label or stage.name.value)
        if stage.name.value == "tripost_collect":
            r = json.loads((root / "report.json").read_text())
            samples = sum(r["samples_before"].values())
            print(
                f"{stage.label}: {r['questions']} questions in {minutes:.1f} min = "
                f"{r['questions'] / minutes:.1f} questions/min, {samples / minutes:.1f} candidate "
                f"samples/min ({samples} samples: {r['samples_before']}; kept "
                f"{r['kept']}/{r['trajectories']}, right at once {r['right_at_once']}, dropped "
                f"{ {k: v for k, v in r['dropped_by_reason'].items() if v} }); rebalanced "
                f"{r.get('samples')}"
            )
        if stage.name.value == "train_tripost":
            result = json.loads((root / "result.json").read_text())
            m, data = result["metrics"], result["data"]["train"]
            print(
                f"{stage.label}: trained {m['steps']:.0f} steps on {data['kept']} rows "
                f"({data['weighted_rows']} weighted, {data['truncated']} truncated) in "
                f"{minutes:.1f} min; loss {m['first_loss']:.3f} -> {m['last_loss']:.3f}"
            )
    result = json.loads((folder / "result.json").read_text())
    print("\naccuracy (first attempt -> final answer after self-improvement, 95% Wilson CI):")
    for cell in result["cells"]:
        print(
            f"  {cell['heuristic']:<12} {cell['task']:<28} n={cell['n']:<3} "
            f"first {pct(cell['first_accuracy'])} [{100 * cell['first_ci_low']:.0f}, "
            f"{100 * cell['first_ci_high']:.0f}]  final {pct(cell['accuracy'])} "
            f"[{100 * cell['ci_low']:.0f}, {100 * cell['ci_high']:.0f}]  "
            f"rounds {cell['mean_rounds'] or 0:.2f}  wrong->right {cell['improved']}  "
            f"right->wrong {cell['worsened']}  said correct {cell['said_correct']}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="multistep_arithmetic_seen")
    ap.add_argument("--items", type=int, default=16, help="training questions")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--eval-items", type=int, default=12, help="questions per bucket")
    ap.add_argument(
        "--shots", type=int, default=2, help="worked examples for every model, trained or not"
    )
    ap.add_argument("--eval-tokens", type=int, default=512, help="tokens per generation")
    ap.add_argument(
        "--no-gold", action="store_true", help="no stage 0: iteration 1 starts from the base model"
    )
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench-tripost")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below

    tmp = Path(tempfile.mkdtemp(prefix="bench-tripost-"))
    redis_port = free_port()
    redis_bin = shutil.which("redis-server") or "/usr/bin/redis-server"
    redis_proc = subprocess.Popen(
        [redis_bin, "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    env = {
        "WORKER_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "WORKER_ARTIFACTS_DIR": str(tmp / "artifacts"),
        "WORKER_CONCURRENCY": "1",
        "WORKER_REQUEST_CONCURRENCY": "2",
        "WORKER_SHARD_SIZE": "8",
        "WORKER_POLL_DELAY_S": "0.2",
        "WORKER_LOG_LEVEL": "INFO",
        "MODEL_SERVER_THREADS": str(args.threads),
        "OMP_NUM_THREADS": str(args.threads),
    }
    settings = JobStoreSettings(
        redis_url=env["WORKER_REDIS_URL"], artifacts_dir=Path(env["WORKER_ARTIFACTS_DIR"])
    )
    spec = job_spec(args)
    worker = start_worker(env, tmp / "worker.log")
    print(f"machine: {os.cpu_count()} cores; work folder {tmp}; spec {json.dumps(spec)}")
    try:
        status = asyncio.run(run_job(settings, spec))
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        redis_proc.kill()
    folder = tmp / "artifacts" / status.id
    if status.state.value != "succeeded":
        print(f"job {status.id} {status.state.value}: {status.error}")
        print((tmp / "worker.log").read_text()[-3000:])
        sys.exit(1)
    report(folder, status)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(  # the reports and rows, not the models
        folder,
        args.out / status.id,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("model", "checkpoints", "model.tmp-*"),
    )
    print(f"\nreport: {args.out / status.id / 'report.md'}")


if __name__ == "__main__":
    main()
