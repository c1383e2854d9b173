"""Commands of the offline jobs: ``rationalyst worker`` runs a worker process;
``rationalyst jobs submit|watch|list|show|cancel|fetch`` talk to the gateway's job API.

Mount them in the top-level CLI::

    from services.worker.cli import jobs_app, worker_app
    app.add_typer(worker_app, name="worker")
    app.add_typer(jobs_app, name="jobs")
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

DEFAULT_GATEWAY = "http://127.0.0.1:8100"

worker_app = typer.Typer(
    help="Run a worker: takes shards of offline jobs from Redis (any number of replicas).",
    add_completion=False,
    invoke_without_command=True,
)
jobs_app = typer.Typer(
    help="Offline jobs through the gateway's job API.", add_completion=False, no_args_is_help=True
)


@worker_app.callback(invoke_without_command=True)
def worker(
    redis_url: Annotated[str | None, typer.Option(help="Redis of the job queue.")] = None,
    artifacts_dir: Annotated[Path | None, typer.Option(help="Artifacts root.")] = None,
    agent_url: Annotated[str | None, typer.Option(help="Agent model service.")] = None,
    scorer_url: Annotated[str | None, typer.Option(help="Scorer model service.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Shards run at once.")] = None,
    shard_size: Annotated[int | None, typer.Option(help="Default records per shard.")] = None,
    log_level: Annotated[str | None, typer.Option(help="Python log level.")] = None,
) -> None:
    """Start one worker process; options override WORKER_* variables."""
    from services.worker.settings import WorkerSettings
    from services.worker.tasks import run_worker
    from shared.settings import load_settings

    given: dict[str, Any] = {
        "redis_url": redis_url, "artifacts_dir": artifacts_dir, "agent_url": agent_url,
        "scorer_url": scorer_url, "concurrency": concurrency, "shard_size": shard_size,
        "log_level": log_level,
    }  # fmt: skip
    run_worker(load_settings(WorkerSettings, **{k: v for k, v in given.items() if v is not None}))


# --------------------------------------------------------------------------------------------
# The job API client

GatewayOpt = Annotated[
    str,
    typer.Option("--url", "--gateway", envvar="RATIONALYST_URL", help="Gateway URL."),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", envvar="RATIONALYST_API_KEY", help="Gateway API key, if any."),
]


def _client(gateway: str, api_key: str | None) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=gateway.rstrip("/"), headers=headers, timeout=30.0)


def _call(gateway: str, api_key: str | None, method: str, path: str, **kwargs: Any) -> Any:
    """One request; an error envelope or an unreachable gateway exits with its message."""
    import httpx

    try:
        with _client(gateway, api_key) as http:
            response = http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        typer.secho(f"cannot reach the gateway at {gateway}: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    if response.status_code >= 400:
        try:
            err = response.json()["error"]
            message = f"{err['type']}: {err['message']}"
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        typer.secho(f"HTTP {response.status_code} {message}", fg="red", err=True)
        raise typer.Exit(1)
    return response


def _set_path(spec: dict[str, Any], dotted: str, raw: str) -> None:
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    node = spec
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def build_spec(
    spec_file: Path | None,
    kind: str | None,
    inputs: list[str],
    settings: list[str],
    input_format: str | None = None,
    text_field: str | None = None,
) -> dict[str, Any]:
    """A job spec from a JSON file (``-`` = stdin) and/or options; options win."""
    spec: dict[str, Any] = {}
    if spec_file is not None:
        text = sys.stdin.read() if str(spec_file) == "-" else spec_file.read_text()
        spec = json.loads(text)
    if kind:
        spec["kind"] = kind
    if inputs:
        spec.setdefault("input", {})["paths"] = [
            str(Path(p).expanduser().absolute()) for p in inputs
        ]
    if input_format:
        spec.setdefault("input", {})["format"] = input_format
    if text_field:
        spec.setdefault("input", {})["text_field"] = text_field
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set takes key=value, got {item!r}")
        _set_path(spec, key.strip(), value)
    return spec


@jobs_app.command("submit")
def submit(
    spec_file: Annotated[
        Path | None, typer.Argument(help="Job spec as JSON (`-` = stdin); options override.")
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            help="prefilter, extract, filter, sft_data, rationale_pipeline, train_rationalyst, "
            "tripost_collect, train_tripost, tripost_eval, tripost, prm_labels, train_prm or "
            "train_orm."
        ),
    ] = None,
    input_paths: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="Input file, folder or glob (repeatable)."),
    ] = None,
    input_format: Annotated[
        str | None, typer.Option("--format", help="auto, jsonl, parquet or text.")
    ] = None,
    text_field: Annotated[str | None, typer.Option(help="JSONL/Parquet text field.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value (JSON value; dotted keys nest), repeatable."),
    ] = None,
    watch_: Annotated[bool, typer.Option("--watch", help="Then watch it.")] = False,
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    api_key: ApiKeyOpt = None,
) -> None:
    """Submit a job; prints its id."""
    spec = build_spec(spec_file, kind, input_paths or [], set_ or [], input_format, text_field)
    status = _call(gateway, api_key, "POST", "/v1/jobs", json=spec).json()
    typer.echo(status["id"])
    if watch_:
        watch(status["id"], gateway=gateway, api_key=api_key)


def _stage_line(stage: dict[str, Any]) -> tuple[int, int | None, str]:
    """A stage's bar: records for data stages; optimizer steps, loss and eval loss for
    training."""
    t = stage.get("training")
    if t is not None:
        parts = [f"step {t['step']}/{t['max_steps'] or '?'}"]
        for key, label in (("loss", "loss"), ("eval_loss", "eval loss")):
            if t.get(key) is not None:
                parts.append(f"{label} {t[key]:.4f}")
        if t.get("resumed_from_step") is not None:
            parts.append(f"resumed at {t['resumed_from_step']}")
        parts.append(f"[{t['phase'] if stage['state'] == 'running' else stage['state']}]")
        return int(t["step"]), t["max_steps"], "  ".join(parts)
    p, c = stage["progress"], stage["counts"]
    rollouts = f"rollouts {p['rollouts_done']}  " if p.get("rollouts_done") is not None else ""
    detail = (
        f"{rollouts}kept {c['records_kept']}  dropped {c['records_dropped']}  "
        f"failed {c['records_failed']}  [{stage['state']}]"
    )
    return int(p["records_done"]), p["records_total"], detail


def _report_lines(stage: dict[str, Any]) -> list[str]:
    """What a finished stage's report says that counts alone do not: the extraction mode and
    its yield, records dropped by reason, warnings."""
    report = stage.get("report") or {}
    lines = []
    if report.get("mode"):
        how = " (chosen by auto)" if report.get("mode_requested") == "auto" else ""
        b = report.get("boundary")
        yield_ = ""
        if b:
            yield_ = (
                f": {b['boundaries_asked']} of {b['boundaries']} boundaries asked, "
                f"{b['triples']} triples, rationales dropped {b['rationales_dropped'] or {}}"
            )
        lines.append(f"mode {report['mode']}{how}{yield_}")
    if report.get("drop_reasons"):
        lines.append(f"dropped {report['drop_reasons']}")
    lines += [f"warning: {w}" for w in report.get("warnings", [])]
    return lines


def _result_lines(result: dict[str, Any] | None) -> list[str]:
    """A tripost job's accuracy per evaluation: first attempt -> final answer, per task."""
    lines = []
    for entry in (result or {}).get("accuracy", []):
        cells = []
        for task, c in entry.get("tasks", {}).items():
            first, final = c.get("first_accuracy"), c.get("accuracy")
            if final is None:
                continue
            low, high = c.get("ci", [0.0, 1.0])
            first_text = "–" if first is None else f"{100 * first:.0f}%"
            cells.append(
                f"{task} {first_text} -> {100 * final:.0f}% "
                f"[{100 * low:.0f}, {100 * high:.0f}] (n={c.get('n')})"
            )
        lines.append(f"  {entry.get('label')}: " + "; ".join(cells))
    return lines


@jobs_app.command("watch")
def watch(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 1.0,
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    api_key: ApiKeyOpt = None,
) -> None:
    """Show a job's progress until it ends; exit 0 when it succeeded, 1 otherwise."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    bars: dict[str, Any] = {}
    status: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description:<20}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        while True:
            status = _call(gateway, api_key, "GET", f"/v1/jobs/{job_id}").json()
            for st in status["stages"]:
                completed, total, detail = _stage_line(st)
                name = st.get("label") or st["name"]  # repeated stages differ by folder
                if name not in bars:
                    bars[name] = progress.add_task(name, total=None, detail=detail)
                progress.update(bars[name], completed=completed, total=total, detail=detail)
            if status["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(interval)
    color = {"succeeded": "green", "failed": "red"}.get(status["state"], "yellow")
    console.print(f"job {job_id}: [{color}]{status['state']}[/{color}]")
    for line in _result_lines(status.get("result")):
        console.print(line)
    if status.get("error"):
        console.print(f"[red]{status['error']}[/red]")
    for err in status.get("errors", [])[:5]:
        console.print(f"  {err['stage']} shard {err.get('shard')}: {err['type']}: {err['message']}")
    for st in status["stages"]:
        for line in _report_lines(st):
            console.print(f"  {st['name']}: {line}", markup=False, soft_wrap=True)
    for art in status.get("artifacts", []):
        console.print(f"  {art['name']}  ({art['size']} bytes)")
    if status["state"] != "succeeded":
        raise typer.Exit(1)


@jobs_app.command("list")
def list_jobs(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(help="Most jobs shown.")] = 20,
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    api_key: ApiKeyOpt = None,
) -> None:
    """List jobs, newest first."""
    from rich.console import Console
    from rich.table import Column, Table

    params: dict[str, Any] = {"limit": limit}
    if state:
        params["state"] = state
    jobs = _call(gateway, api_key, "GET", "/v1/jobs", params=params).json()["jobs"]
    table = Table("kind", "state", "stage", "records", "kept", "failed", "created")
    table.columns.insert(0, Column("id", no_wrap=True, min_width=20))  # ids are to be copied
    for job in jobs:
        p, c = job["progress"], job["counts"]
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["timings"]["created_at"]))
        table.add_row(
            job["id"],
            job["kind"],
            job["state"],
            job.get("stage") or "-",
            f"{p['records_done']}/{p['records_total'] if p['records_total'] is not None else '?'}",
            str(c["records_kept"]),
            str(c["records_failed"]),
            created,
        )
    Console().print(table)


@jobs_app.command("show")
def show(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    api_key: ApiKeyOpt = None,
) -> None:
    """Print a job's status as JSON."""
    typer.echo(json.dumps(_call(gateway, api_key, "GET", f"/v1/jobs/{job_id}").json(), indent=2))


@jobs_app.command("cancel")
def cancel(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    api_key: ApiKeyOpt = None,
) -> None:
    """Cancel a job (running shards stop at their next record)."""
    status = _call(gateway, api_key, "POST", f"/v1/jobs/{job_id}/cancel").json()
    typer.echo(f"{job_id}: {status['state']}")


@jobs_app.command("fetch")
def fetch(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    names: Annotated[
        list[str] | None, typer.Argument(help="Artifact names (default: all but shard files).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder to write into (<out>/<job id>/...).")] = Path(
        "."
    ),
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    api_key: ApiKeyOpt = None,
) -> None:
    """Download a job's artifacts."""
    listing = _call(gateway, api_key, "GET", f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]
    wanted = names or [a["name"] for a in listing if "/shards/" not in f"/{a['name']}"]
    target_root = (out / job_id).resolve()
    with _client(gateway, api_key) as http:
        for name in wanted:
            target = (target_root / name).resolve()
            if not target.is_relative_to(target_root):
                raise typer.BadParameter(f"refusing to write outside {target_root}: {name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as response:
                if response.status_code >= 400:
                    response.read()
                    typer.secho(f"{name}: HTTP {response.status_code}", fg="red", err=True)
                    raise typer.Exit(1)
                tmp = target.with_name(target.name + f".part-{os.getpid()}")
                with open(tmp, "wb") as f:
                    for chunk in response.iter_bytes():
                        f.write(chunk)
                tmp.replace(target)
            typer.echo(str(target))


# --------------------------------------------------------------------------------------------
# The registry of trained models (mounted under `rationalyst models`)


def list_models(
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    api_key: ApiKeyOpt = None,
) -> None:
    """List trained models: name, kind, base, data, held-out metric, folder."""
    from rich.console import Console
    from rich.table import Table

    models = _call(gateway, api_key, "GET", "/v1/registry/models").json()["models"]
    table = Table("name", "kind", "base", "method", "rows", "steps", "eval", "job", "path")
    for m in models:
        metrics, train = m.get("metrics", {}), m.get("data", {}).get("train", {})
        kind = m.get("kind", "rationalyst")
        table.add_row(
            m["name"],
            kind,
            m["base_model"],
            m["method"],
            str(train.get("kept", "-")),
            str(int(metrics["steps"])) if metrics.get("steps") is not None else "-",
            eval_summary(kind, metrics),
            m.get("job_id") or "-",
            m["path"],
        )
    Console().print(table)


EVAL_METRICS: dict[str, list[tuple[str, str, str]]] = {
    "prm": [
        ("auroc", "step_auroc_before", "step_auroc_after"),
        ("accuracy", "step_accuracy_before", "step_accuracy_after"),
    ],
    "orm": [
        ("auroc", "solution_auroc_before", "solution_auroc_after"),
        ("accuracy", "solution_accuracy_before", "solution_accuracy_after"),
    ],
}
"""Per kind, the held-out metrics ``models list`` shows, the first the card has: a reward
model's AUROC, else its accuracy (AUROC is None when the held-out rows hold one class only);
any other model's eval loss."""
EVAL_LOSS = [("loss", "eval_loss_before", "eval_loss")]


def eval_summary(kind: str, metrics: dict[str, Any]) -> str:
    """The held-out metric before → after training, named (``loss 1.310 → 0.770``,
    ``auroc 0.620 → 0.640``), or ``-`` when the card has none (no held-out rows)."""
    for label, before_key, after_key in EVAL_METRICS.get(kind, EVAL_LOSS):
        before, after = metrics.get(before_key), metrics.get(after_key)
        if after is not None:
            values = f"{before:.3f} → {after:.3f}" if before is not None else f"{after:.3f}"
            return f"{label} {values}"
    return "-"


def show_model(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    api_key: ApiKeyOpt = None,
) -> None:
    """Print a trained model's registry card as JSON."""
    card = _call(gateway, api_key, "GET", f"/v1/registry/models/{name}").json()
    typer.echo(json.dumps(card, indent=2))
