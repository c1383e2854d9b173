"""Benchmark: PRM quality, step-level AUROC on held-out problems before and after training.

Runs the ``train_prm`` job's training child (:func:`services.worker.training.run.train`) on
stepwise rows and prints what its ``result.json`` measured on the held-out problems (a seeded
share of the problems, all their solutions): step-level accuracy, F1 and AUROC of the
untrained head ("before": the base model with a fresh classification head) and of the
trained PRM ("after"), with the training time.

Rows: ``--rows stepwise.jsonl`` of a ``prm_labels`` job (the embedded model's own Monte-Carlo
labels: ``<artifacts>/<job>/prm_labels/stepwise.jsonl``); without it, generated arithmetic
solutions labelled by construction (a right solution, and one whose step ``k`` is wrong:
steps from ``k`` on are bad), which says whether the head learns to read the step tag at
all, not how good the labels of a 135M completer are.

    python bench/bench_prm.py                         # generated rows, embedded model, CPU
    python bench/bench_prm.py --rows <artifacts>/<job>/prm_labels/stepwise.jsonl --steps 60
    python bench/bench_prm.py --label-mode soft --device cuda --model <7B PRM base>
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from services.model_server.models import EMBEDDED_MODEL, resolve_model
from services.worker.training import TrainPaths
from services.worker.training.run import train
from shared.files import write_json
from shared.job_schemas import TrainPrmSpec


def generated_rows(n_problems: int, seed: int) -> list[dict[str, Any]]:
    """Per problem: a right three-step solution and one with a wrong step (1, 2 or 3)."""
    rng = random.Random(seed)
    rows = []
    for p in range(n_problems):
        a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(1, 9)
        q = f"Sam has {a} marbles, wins {b} more and gives away {c}. How many are left?"
        for s in range(2):
            wrong = rng.randint(0, 2) if s == 1 else None
            total = a + b + (rng.randint(1, 5) if wrong == 0 else 0)
            left = total - c + (rng.randint(1, 5) if wrong == 1 else 0)
            shown = left + (rng.randint(1, 5) if wrong == 2 else 0)
            steps = [
                f"After winning, Sam has {a} + {b} = {total} marbles.",
                f"After giving away {c}, Sam has {total} - {c} = {left} marbles.",
                f"The answer is: {shown}",
            ]
            labels = [wrong is None or i < wrong for i in range(3)]
            rows.append(
                {
                    "id": f"p{p}:{s}",
                    "prompt": q,
                    "completions": steps,
                    "labels": labels,
                    "soft_labels": [1.0 if y else 0.0 for y in labels],
                    "solution_correct": wrong is None,
                    "rollouts_used": 0,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=Path, help="stepwise.jsonl of a prm_labels job")
    parser.add_argument("--problems", type=int, default=40, help="generated problems")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--dev-fraction", type=float, default=0.25)
    parser.add_argument("--label-mode", choices=["hard", "soft"], default="hard")
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-prm-") as tmp:
        root = Path(tmp)
        rows_path = args.rows
        if rows_path is None:
            rows_path = root / "stepwise.jsonl"
            rows = generated_rows(args.problems, args.seed)
            rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        spec = TrainPrmSpec.model_validate(
            {
                "kind": "train_prm",
                "data": {"train": [str(rows_path)], "dev_fraction": args.dev_fraction},
                "label_mode": args.label_mode,
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "max_length": args.max_length,
                "learning_rate": args.learning_rate,
                "save_steps": 100_000,
                "eval_steps": 100_000,  # no eval loss during training: the metrics come after
                "device": args.device,
                "seed": args.seed,
            }
        )
        paths = TrainPaths(root / "train_prm")
        paths.root.mkdir()
        write_json(
            paths.request,
            {
                "spec": spec.model_dump(mode="json"),
                "train_files": [str(rows_path)],
                "dev_files": [],
                "data_roots": [str(rows_path.resolve().parent)],
                "base_model_path": resolve_model(args.model),
            },
        )
        started = time.perf_counter()
        assert train(paths) == 0, paths.error.read_text() if paths.error.exists() else ""
        elapsed = time.perf_counter() - started
        result = json.loads(paths.result.read_text())
    m, data = result["metrics"], result["data"]
    source = str(args.rows) if args.rows else f"generated ({args.problems} problems x 2)"
    print(f"rows: {source}; model {args.model} on {result['device']} ({result['dtype']}), "
          f"{platform.machine()}")  # fmt: skip
    print(
        f"train: {data['train']['kept']} solutions, {data['train']['labels']} step labels; "
        f"held out: {data['dev']['kept']} solutions, {data['dev']['labels']} step labels "
        f"(positive rate {data['dev']['positive_rate']:.2f})"
    )
    print(f"{int(m['steps'])} steps of {args.batch_size}, label_mode {args.label_mode}, "
          f"{elapsed:.0f} s in all")  # fmt: skip
    print(f"{'':>8} {'accuracy':>9} {'F1':>6} {'AUROC':>6}")
    for when in ("before", "after"):
        vals = [m.get(f"step_{k}_{when}") for k in ("accuracy", "f1", "auroc")]
        cells = " ".join(f"{v:>{w}.3f}" if v is not None else f"{'-':>{w}}"
                         for v, w in zip(vals, (9, 6, 6), strict=True))  # fmt: skip
        print(f"{when:>8} {cells}")


if __name__ == "__main__":
    main()
