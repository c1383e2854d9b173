"""Benchmark: training steps per second in bf16 mixed precision vs float32.

Runs the training child's code (:func:`services.worker.training.run.train`) twice on the same
rows with the same settings, once with ``dtype: float32`` and once with ``dtype: bfloat16``
(on a CPU: float32 weights, bf16 autocast math), and prints the time per optimizer step of
each (the trainer's own ``train_runtime``, warm-up step left out) and their ratio, plus the
loss each reached, so a speed-up that costs accuracy shows.

    python bench/bench_train.py                       # embedded model, 6 steps of 8 rows
    python bench/bench_train.py --steps 10 --batch-size 4 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path
from typing import Any

from services.model_server.models import EMBEDDED_MODEL, resolve_model
from services.worker.training import TrainPaths
from services.worker.training.run import train
from shared.files import write_json
from shared.job_schemas import TrainRationalystSpec

ROWS = Path(__file__).resolve().parents[1] / "services/worker/sample_corpus/rationales.jsonl"


def run(dtype: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    spec = TrainRationalystSpec.model_validate(
        {
            "kind": "train_rationalyst",
            "data": {"train": [str(ROWS)], "dev_fraction": 0.0},
            "max_steps": args.steps,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "save_steps": 10_000,
            "device": args.device,
            "dtype": dtype,
        }
    )
    paths = TrainPaths(root / dtype)
    paths.root.mkdir(parents=True)
    write_json(
        paths.request,
        {
            "spec": spec.model_dump(mode="json"),
            "train_files": [str(ROWS)],
            "dev_files": [],
            "base_model_path": resolve_model(args.model),
        },
    )
    assert train(paths) == 0
    log = [json.loads(line) for line in paths.log_history.read_text().splitlines()]
    step_times = [e for e in log if "train_runtime" in e]
    result = json.loads(paths.result.read_text())
    return {
        "s_per_step": step_times[-1]["train_runtime"] / args.steps,
        "last_loss": result["metrics"]["last_loss"],
        "dtype": result["dtype"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = run("float32", args, Path(tmp))
        bf16 = run("bfloat16", args, Path(tmp))
    print(f"machine: {platform.machine()} {platform.processor() or ''}, device {args.device}")
    print(f"{args.steps} steps of {args.batch_size} rows, max length {args.max_length}")
    for name, r in (("float32", fp32), ("bf16 mixed", bf16)):
        print(f"  {name:<11} {r['s_per_step']:.2f} s/step   last loss {r['last_loss']:.4f}")
    print(f"bf16 / float32 time per step: {bf16['s_per_step'] / fp32['s_per_step']:.2f}")


if __name__ == "__main__":
    main()
