"""Worker benchmark: the filter job against raw /v1/score calls, and scaling with replicas.

    python bench/bench_worker.py [--triples 48] [--shard-size 4] [--concurrency 8]

Starts its own redis-server, two scorer model services on the embedded model (one torch thread
each) and worker processes on free loopback ports, and stops them at the end. Three runs on
the same triples (one /v1/score request each, scoring ``following`` with and without the
rationale):

- raw:  the request of every triple sent straight to scorer A, as many at once as one
        worker keeps in flight (``--concurrency`` x ``--worker-concurrency`` shards);
- 1x1:  a filter job on one worker using scorer A;
- 2x2:  the same job on two workers, each using its own scorer replica (A, B).

Tokens are the scored tokens (those of ``following``, twice per triple: ``num_tokens`` of
/v1/score, counted in the raw run; the same triples, so tokens/s ratios are triples/s ratios);
a job's time is its running time (planning, shards and merge). Printed: filter
job tokens/s / raw tokens/s (goal >= 0.8) and 2x2 / 1x1 throughput (goal >= 1.8 where the
machine has the cores: each scorer replica needs one).
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

from gateway.ensemble import (
    PROJECT_ROOT,
    ServiceProcess,
    free_port,
    model_service_command,
    start_process,
    stop_processes,
    wait_ready,
)
from services.worker.stages.filter import score_request
from shared.clients import ModelServiceClient
from shared.job_schemas import FilterOptions, FilterSpec, InputSpec
from shared.jobs_store import JobStore, JobStoreSettings

SAMPLE = PROJECT_ROOT / "services" / "worker" / "sample_corpus" / "corpus.jsonl"


def make_triples(n: int) -> list[dict[str, Any]]:
    """Triples cut from the sample corpus: first sentence(s) / a rationale / the next one."""
    docs = [json.loads(line)["text"] for line in SAMPLE.read_text().splitlines()]
    out: list[dict[str, Any]] = []
    while len(out) < n:
        for doc in docs:
            sentences = [s.strip().rstrip(".") + "." for s in doc.split(". ") if s.strip()]
            if len(sentences) < 2:
                continue
            cut = 1 + len(out) % (len(sentences) - 1)
            out.append(
                {
                    "id": f"b{len(out):04d}",
                    "preceding": " ".join(sentences[:cut]),
                    "rationale": "Use what was just said to work out what comes next.",
                    "following": sentences[cut],
                    "source": "bench",
                }
            )
            if len(out) == n:
                break
    return out


async def raw_run(url: str, triples: list[dict[str, Any]], concurrency: int) -> tuple[float, int]:
    """Seconds and tokens for the n score requests (each scoring with and without the
    rationale) straight to one scorer."""
    client = ModelServiceClient("scorer", url, timeout=600)
    sem = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(req: Any) -> None:
        nonlocal tokens
        async with sem:
            scored = sum(s.num_tokens for s in (await client.score(req)).scores)
            tokens += scored  # not `tokens += await ...`: that reads tokens before awaiting

    reqs = [score_request(t, FilterOptions()) for t in triples]
    start = time.perf_counter()
    await asyncio.gather(*(one(r) for r in reqs))
    elapsed = time.perf_counter() - start
    await client.aclose()
    return elapsed, tokens


def start_worker(
    env: dict[str, str], scorer_url: str, log_dir: Path, name: str
) -> subprocess.Popen[bytes]:
    log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 (kept open for the child)
    return subprocess.Popen(
        [sys.executable, "-m", "services.worker"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env, "WORKER_SCORER_URL": scorer_url},
        cwd=PROJECT_ROOT,
    )


def wait_worker_up(log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while " up: " not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)


async def job_run(store: JobStore, path: Path, shard_size: int) -> float:
    spec = FilterSpec(
        kind="filter", input=InputSpec(paths=[str(path)]), shard_size=shard_size, tau=-1e9
    )
    status = await store.create(spec)
    while True:
        status = await store.get(status.id)
        if status.state.terminal:
            break
        await asyncio.sleep(0.2)
    if status.state.value != "succeeded":
        raise RuntimeError(f"job {status.id} {status.state.value}: {status.error}")
    assert status.timings.running_s is not None
    return status.timings.running_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--triples", type=int, default=48)
    ap.add_argument("--shard-size", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=8, help="score requests per shard")
    ap.add_argument("--worker-concurrency", type=int, default=2, help="shards per worker")
    args = ap.parse_args()
    in_flight = args.concurrency * args.worker_concurrency
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below

    tmp = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    logs = tmp / "logs"
    logs.mkdir()
    redis_port = free_port()
    redis_bin = shutil.which("redis-server") or "/usr/bin/redis-server"
    redis_proc = subprocess.Popen(
        [redis_bin, "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    scorers: list[ServiceProcess] = []
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for name in ("scorer-a", "scorer-b"):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            scorers.append(
                start_process(
                    name,
                    model_service_command("scorer", port),
                    url,
                    log_dir=logs,
                    env={"MODEL_SERVER_THREADS": "1"},
                )
            )
        wait_ready(scorers, timeout_s=900)
        a, b = (s.url for s in scorers)
        triples = make_triples(args.triples)
        path = tmp / "artifacts" / "triples.jsonl"  # inside the default data roots
        path.parent.mkdir()
        path.write_text("".join(json.dumps(t) + "\n" for t in triples))
        asyncio.run(raw_run(a, triples[:4], in_flight))  # warm-up
        asyncio.run(raw_run(b, triples[:4], in_flight))

        raw_s, tokens = asyncio.run(raw_run(a, triples, in_flight))
        env = {
            "WORKER_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "WORKER_ARTIFACTS_DIR": str(tmp / "artifacts"),
            "WORKER_CONCURRENCY": str(args.worker_concurrency),
            "WORKER_REQUEST_CONCURRENCY": str(args.concurrency),
            "WORKER_POLL_DELAY_S": "0.1",
            "WORKER_LOG_LEVEL": "INFO",
            "OMP_NUM_THREADS": "1",
        }
        settings = JobStoreSettings(
            redis_url=env["WORKER_REDIS_URL"], artifacts_dir=Path(env["WORKER_ARTIFACTS_DIR"])
        )

        async def timed_job() -> float:
            store = JobStore.from_settings(settings)
            try:
                return await job_run(store, path, args.shard_size)
            finally:
                await store.aclose()

        workers.append(start_worker(env, a, logs, "worker-1"))
        wait_worker_up(logs / "worker-1.log")
        one_s = asyncio.run(timed_job())
        workers.append(start_worker(env, b, logs, "worker-2"))
        wait_worker_up(logs / "worker-2.log")
        two_s = asyncio.run(timed_job())
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=30)
        stop_processes(scorers)
        redis_proc.kill()

    n = len(triples)
    raw_tps, one_tps, two_tps = tokens / raw_s, tokens / one_s, tokens / two_s
    print(
        f"machine: {os.cpu_count()} cores; {n} triples, {n} score requests (with and without "
        f"the rationale in each), {tokens} tokens"
    )
    print(f"raw /v1/score      {raw_s:7.2f} s  {raw_tps:8.1f} tok/s  {n / raw_s:6.2f} triples/s")
    print(f"filter job 1w x 1s {one_s:7.2f} s  {one_tps:8.1f} tok/s  {n / one_s:6.2f} triples/s")
    print(f"filter job 2w x 2s {two_s:7.2f} s  {two_tps:8.1f} tok/s  {n / two_s:6.2f} triples/s")
    print(f"job / raw (1x1):   {one_tps / raw_tps:.2f}   (goal >= 0.8)")
    print(f"2x2 / 1x1:         {two_tps / one_tps:.2f}   (goal >= 1.8 where cores allow)")


if __name__ == "__main__":
    main()
