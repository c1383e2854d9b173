"""Pipeline benchmark: corpus to compared model on the embedded model, with its yield and speed.

    python bench/bench_pipeline.py [--docs 100] [--train-steps 40] [--n 50] [--k 4]
                                   [--tasks multistep_arithmetic_seen] [--out runs/bench-pipeline]

Starts ``rationalyst up`` (its own Redis and an artifacts root under ``--out``, free loopback
ports), runs ``rationalyst pipeline``'s three steps on the first ``--docs`` documents of the
shipped corpus (services/worker/sample_corpus/strategyqa.jsonl): a rationale_pipeline job
(prefilter -> extract, mode auto -> filter -> sft_data), a train_rationalyst job on its rows
and ``eval compare`` of the trained model against the base model, then stops the ensemble.

Printed, all measured in this one run:

- per stage: records in, kept, out, wall time and records per minute (documents for
  prefilter and extract, triples for filter, rows for sft_data);
- the yield: documents -> boundaries -> asked -> triples -> kept by the filter -> SFT rows,
  and the share of asked boundaries that became kept rows;
- the filter's cost per triple: tokens its one /v1/score request computes (the shared prefix
  once, then both continuations) over one forward pass of the with-rationale text, and over
  the two separate requests of scoring with and without the rationale apart (tokenizer counts
  on the run's own triples, no model time);
- the comparison: both accuracies with Wilson intervals, the paired difference trained - base
  with its bootstrap interval, and the exact McNemar p-value.

``--out`` keeps pipeline.json (every number), the comparison's files and the processes' logs;
a rerun with the same ``--out`` reuses the finished jobs and resumes the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.ensemble import PROJECT_ROOT, ROLES, child_env, free_port
from services.worker.evaluation.pipeline import PipelineSpec, run_pipeline

CORPUS = PROJECT_ROOT / "services" / "worker" / "sample_corpus" / "strategyqa.jsonl"


def start_up(out: Path, ready_timeout_s: float) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """``rationalyst up`` on free ports with its own Redis; returns it once all is ready."""
    ports = {name: free_port() for name in ("gateway", *ROLES)}
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "services.cli", "up", "--logs-dir", str(logs),
        "--port", str(ports["gateway"]),
        *(arg for role in ROLES for arg in (f"--{role}-port", str(ports[role]))),
        "--start-redis", "--artifacts-dir", str(out / "artifacts"),
    ]  # fmt: skip
    report = logs / "up.out"
    env = child_env({"PYTHONUNBUFFERED": "1"})
    with report.open("wb") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + ready_timeout_s
    while "all ready" not in report.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_up(proc)
            raise SystemExit(f"rationalyst up did not get ready:\n{report.read_text()[-3000:]}")
        time.sleep(1)
    return proc, {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}


def stop_up(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: up stops its children
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def filter_token_ratios(triples_path: Path) -> dict[str, float]:
    """Tokens the filter's request per triple computes ÷ one forward of the with-rationale
    text, and ÷ two separate requests (with and without the rationale)."""
    from transformers import AutoTokenizer

    from services.model_server.models import pull
    from services.model_server.prompts import chat_prompt
    from services.worker.stages.filter import score_request
    from shared.job_schemas import FilterOptions

    tok = AutoTokenizer.from_pretrained(str(pull()))
    one = with_text = two = 0
    for line in triples_path.read_text().splitlines():
        req = score_request(json.loads(line), FilterOptions())
        prefix = chat_prompt(tok, req.context)
        ids = [
            tok(prefix + g + c, add_special_tokens=False)["input_ids"]
            for g, c in zip(req.given_texts(), req.continuations, strict=True)
        ]
        shared = 0
        while shared < min(map(len, ids)) and ids[0][shared] == ids[1][shared]:
            shared += 1
        one += shared + sum(len(i) - shared for i in ids)
        with_text += len(ids[0])
        two += sum(len(i) for i in ids)
    return {"per_forward": one / with_text, "per_two_requests": one / two} if two else {}


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_report(state: dict[str, Any]) -> None:
    data, train, cmp_ = state["data"], state["train"], state["compare"]
    print(f"{'stage':<10} {'in':>5} {'kept':>5} {'out':>5} {'wall s':>8} {'records/min':>12}")
    for row in data["stages"]:
        wall = row["wall_s"] or 0.0
        rate = row["per_min"] or 0.0
        print(
            f"{row['stage']:<10} {row['in']:>5} {row['kept']:>5} {row['out']:>5} "
            f"{wall:>8.0f} {rate:>12.1f}"
        )
    c = data["counts"]
    asked = c["boundaries_asked"] or 0
    print(
        f"yield: {c['documents']} documents -> {c['boundaries']} boundaries -> {asked} asked "
        f"({c['extract_mode']} mode, requested {c['extract_mode_requested']}) -> "
        f"{c['triples']} triples -> {c['kept']} kept -> {c['rows']} SFT rows"
    )
    if asked:
        print(
            f"kept / asked = {c['kept'] / asked:.3f}; triples / asked = {c['triples'] / asked:.3f}"
            f"; rationales dropped: {c['rationales_dropped']}"
        )
    if state.get("filter_tokens"):
        ft = state["filter_tokens"]
        print(
            f"filter cost: {ft['per_forward']:.3f} forward passes per triple "
            f"({ft['per_two_requests']:.3f} of two separate requests)"
        )
    m = train.get("metrics", {})
    print(
        f"training: {m.get('steps')} steps in {train.get('running_s') or 0:.0f} s; eval loss "
        f"{m.get('eval_loss_before')} -> {m.get('eval_loss')}"
    )
    print(
        f"compare ({', '.join(cmp_['tasks'])}, n={cmp_['n']}, k={cmp_['k']}, "
        f"{cmp_['wall_s']:.0f} s): base {pct(cmp_['base_accuracy'])} "
        f"[{pct(cmp_['base_ci'][0])}, {pct(cmp_['base_ci'][1])}], trained "
        f"{pct(cmp_['trained_accuracy'])} [{pct(cmp_['trained_ci'][0])}, "
        f"{pct(cmp_['trained_ci'][1])}], difference {pct(cmp_['difference'])} "
        f"[{pct(cmp_['difference_ci'][0])}, {pct(cmp_['difference_ci'][1])}], "
        f"McNemar p = {cmp_['mcnemar_p']:.3g} ({cmp_['trained_only']} only trained, "
        f"{cmp_['base_only']} only base)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100, help="Corpus documents used.")
    parser.add_argument("--max-boundaries", type=int, default=6)
    parser.add_argument("--tau", type=float, default=0.0)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--tasks", default="multistep_arithmetic_seen")
    parser.add_argument("--n", type=int, default=50, help="Comparison items per task.")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-pipeline"))
    parser.add_argument("--ready-timeout", type=float, default=900.0)
    args = parser.parse_args()

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through the finally that stops the ensemble

    # also when started in the background, where a shell leaves SIGINT ignored
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    out = args.out.resolve()
    started = time.monotonic()
    proc, urls = start_up(out, args.ready_timeout)
    try:
        spec = PipelineSpec(
            inputs=[str(CORPUS)],
            out_dir=out,
            gateway=urls["gateway"],
            limit=args.docs,
            extract={"mode": "auto", "max_boundaries_per_doc": args.max_boundaries},
            filter={"tau": args.tau},
            train={"max_steps": args.train_steps},
            compare_tasks=[t for t in args.tasks.split(",") if t],
            compare_n=args.n,
            compare_k=args.k,
            seed=args.seed,
            agent_url=urls["agent"],
            scorer_url=urls["scorer"],
        )
        result = run_pipeline(spec)
    finally:
        stop_up(proc)
    state = result.state
    state["bench_wall_s"] = time.monotonic() - started
    job = state["data"]["job"]
    state["filter_tokens"] = filter_token_ratios(out / "artifacts" / job / "extract/output.jsonl")
    (out / "pipeline.json").write_text(json.dumps(state, indent=2, default=str) + "\n")
    print_report(state)
    print(f"total wall time {state['bench_wall_s']:.0f} s; numbers in {out / 'pipeline.json'}")


if __name__ == "__main__":
    main()
