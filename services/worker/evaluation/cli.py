"""Commands: ``rationalyst eval run | select | compare | tasks``, ``rationalyst data pull |
path`` and ``rationalyst pipeline`` (corpus to compared model).

``app`` (eval), ``data_app`` (data) and ``pipeline`` are mounted by the root CLI
(:mod:`services.cli`).
Heavy imports happen inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shared.gateway_schemas import Heuristic

if TYPE_CHECKING:
    from services.worker.evaluation.compare import CompareResult

SHIPPED_CORPUS = Path(__file__).resolve().parents[1] / "sample_corpus" / "strategyqa.jsonl"

app = typer.Typer(
    help="Evaluate heuristics through the gateway: accuracy per task, step selection.",
    add_completion=False,
    no_args_is_help=True,
)
data_app = typer.Typer(
    help="The data cache (BIG-bench task files).", add_completion=False, no_args_is_help=True
)

TasksOpt = Annotated[
    list[str],
    typer.Option(
        "--tasks", "-t", help="Task names, comma-separated or repeated (see `eval tasks`); "
        "jsonl:<path> for a file of your own.",
    ),
]  # fmt: skip
GatewayOpt = Annotated[
    str, typer.Option(envvar="RATIONALYST_GATEWAY_URL", help="Gateway base URL.")
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(envvar="RATIONALYST_API_KEY", help="Gateway bearer key, if it needs one."),
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (resumes if it exists).")]


def _split(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _heuristics(values: list[str]) -> list[Heuristic]:
    names = _split(values)
    try:
        return [Heuristic(n) for n in names]
    except ValueError as exc:
        known = ", ".join(h.value for h in Heuristic)
        raise typer.BadParameter(f"{exc}; known heuristics: {known}") from exc


def _logging() -> None:
    from shared.logging import configure_logging

    configure_logging(os.environ.get("LOG_LEVEL", "WARNING"))


class RichProgress:
    """A rich progress bar with the running accuracy."""

    def __init__(self, description: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.description = description
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.task_id: Any = None
        self.correct = self.answered = self.errors = 0

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def planned(self, total: int, done: int) -> None:
        status = f"{done} done before" if done else ""
        self.task_id = self.progress.add_task(
            self.description, total=total, completed=done, status=status
        )

    def completed(self, record: dict[str, Any]) -> None:
        if record.get("error"):
            self.errors += 1
        else:
            self.answered += 1
            self.correct += bool(record.get("correct"))
        status = f"acc {self.correct}/{self.answered}"
        if self.errors:
            status += f", {self.errors} errors"
        self.progress.update(self.task_id, advance=1, status=status)


def _print_cells(title: str, cells: list[Any], selection: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("Task", "Heuristic", "n", "Accuracy", "95% CI"):
        table.add_column(col)
    table.add_column("Chance" if selection else "Unparsed")
    table.add_column("Errors")
    for c in cells:
        acc = "–" if c.accuracy is None else f"{100 * c.accuracy:.1f}%"
        ci = f"[{100 * c.ci_low:.1f}, {100 * c.ci_high:.1f}]" if c.n else "–"
        extra = (
            f"{100 * c.chance:.1f}%"
            if selection
            else ("–" if c.unparsed_rate is None else f"{100 * c.unparsed_rate:.1f}%")
        )
        table.add_row(c.task, c.heuristic, str(c.n), acc, ci, extra, str(c.errors))
    Console().print(table)


@app.command("run")
def run(
    tasks: TasksOpt,
    out: OutOpt,
    heuristics: Annotated[
        list[str], typer.Option("--heuristics", "-H", help="Comma-separated or repeated.")
    ] = ["rationalyst", "greedy"],  # noqa: B006 - typer reads the default
    n: Annotated[int, typer.Option(help="Examples per task.")] = 20,
    seed: Annotated[int, typer.Option(help="Picks examples and seeds requests.")] = 0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 4,
    gateway_url: GatewayOpt = "http://127.0.0.1:8100",
    api_key: ApiKeyOpt = None,
    n_candidates: Annotated[int, typer.Option(help="Candidates per step.")] = 3,
    max_steps: Annotated[int, typer.Option(help="Most steps per solution.")] = 15,
    max_step_tokens: Annotated[int | None, typer.Option(help="Most tokens per step.")] = None,
    max_rationale_tokens: Annotated[
        int | None, typer.Option(help="Most tokens per rationale.")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="Agent temperature.")] = None,
    deadline: Annotated[float | None, typer.Option(help="Seconds per request.")] = None,
    few_shot: Annotated[str, typer.Option(help="task, default (gateway's) or none.")] = "task",
    shots: Annotated[int, typer.Option(help="Demos per request (few-shot=task).")] = 3,
    strict: Annotated[bool, typer.Option(help="Fail instead of falling back.")] = False,
    label: Annotated[str | None, typer.Option(help="Text for the report (models).")] = None,
    timeout: Annotated[float, typer.Option(help="Client timeout per request (s).")] = 900.0,
    strategies: Annotated[
        list[str],
        typer.Option(
            "--strategies",
            "-S",
            help="Search strategies, comma-separated: step, beam, best_of_n, vote, "
            "weighted_vote (each with every heuristic and budget).",
        ),
    ] = ["step"],  # noqa: B006 - typer reads the default
    budgets: Annotated[
        list[str],
        typer.Option(
            "--budgets",
            "-B",
            help="max_tokens_budget values, comma-separated (generated + scored tokens); "
            "the report plots accuracy against tokens spent.",
        ),
    ] = [],  # noqa: B006 - typer reads the default
    n_beams: Annotated[int, typer.Option(help="beam: paths kept per step.")] = 4,
    beam_width: Annotated[int, typer.Option(help="beam: proposals per beam.")] = 2,
    n_solutions: Annotated[
        int, typer.Option(help="best_of_n / vote / weighted_vote: solutions.")
    ] = 4,
    aggregation: Annotated[str, typer.Option(help="min, prod, last or mean.")] = "mean",
) -> None:
    """Accuracy of each heuristic (and strategy, and budget) on each task through POST
    /v1/reason (resumable)."""
    from pydantic import ValidationError

    from services.worker.evaluation.runner import run_evaluation
    from services.worker.evaluation.spec import EvalSpec
    from shared.errors import ServiceError
    from shared.tasks import DataMissingError, UnknownTaskError

    _logging()
    try:
        spec = EvalSpec(
            tasks=_split(tasks), heuristics=_heuristics(heuristics), n=n, seed=seed,
            concurrency=concurrency, gateway_url=gateway_url, api_key=api_key, out_dir=out,
            n_candidates=n_candidates, max_steps=max_steps, max_step_tokens=max_step_tokens,
            max_rationale_tokens=max_rationale_tokens, temperature=temperature,
            deadline_s=deadline, few_shot=few_shot, shots=shots, strict=strict, label=label,
            request_timeout_s=timeout, strategies=_split(strategies),
            budgets=[int(b) for b in _split(budgets)], n_beams=n_beams, beam_width=beam_width,
            n_solutions=n_solutions, aggregation=aggregation,
        )  # fmt: skip
    except (ValidationError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        with RichProgress("eval") as progress:
            result = asyncio.run(run_evaluation(spec, progress=progress))
    except (DataMissingError, UnknownTaskError, ServiceError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    _print_cells("Accuracy", result.cells)
    typer.echo(f"report:  {result.report_path}")
    typer.echo(f"results: {result.results_path} ({result.requested} new, {result.skipped} resumed)")
    if result.errors:
        typer.secho(f"{result.errors} requests failed; run again to retry them", fg="yellow")
        raise typer.Exit(1)


@app.command("select")
def select(
    tasks: TasksOpt,
    out: OutOpt,
    heuristics: Annotated[
        list[str], typer.Option("--heuristics", "-H", help="Scoring heuristics.")
    ] = ["rationalyst", "likelihood", "random"],  # noqa: B006 - typer reads the default
    n: Annotated[int, typer.Option(help="Items per task.")] = 20,
    k: Annotated[int, typer.Option(help="Candidates per item, the gold one included.")] = 4,
    seed: Annotated[int, typer.Option(help="Picks items and corruptions.")] = 0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 4,
    gateway_url: GatewayOpt = "http://127.0.0.1:8100",
    api_key: ApiKeyOpt = None,
    few_shot: Annotated[str, typer.Option(help="task, default (gateway's) or none.")] = "task",
    shots: Annotated[int, typer.Option(help="Demos in the scorer's context.")] = 3,
    label: Annotated[str | None, typer.Option(help="Text for the report (models).")] = None,
    timeout: Annotated[float, typer.Option(help="Client timeout per request (s).")] = 900.0,
) -> None:
    """How often each heuristic ranks the gold next step first (POST /v1/select)."""
    from pydantic import ValidationError

    from services.worker.evaluation.selection import run_selection
    from services.worker.evaluation.spec import SelectionSpec
    from shared.errors import ServiceError
    from shared.tasks import DataMissingError, UnknownTaskError

    _logging()
    try:
        spec = SelectionSpec(
            tasks=_split(tasks), heuristics=_heuristics(heuristics), n=n, k=k, seed=seed,
            concurrency=concurrency, gateway_url=gateway_url, api_key=api_key, out_dir=out,
            few_shot=few_shot, shots=shots, label=label, request_timeout_s=timeout,
        )  # fmt: skip
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        with RichProgress("select") as progress:
            result = asyncio.run(run_selection(spec, progress=progress))
    except (DataMissingError, UnknownTaskError, ServiceError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    _print_cells("Step selection (top-1)", result.cells, selection=True)
    typer.echo(f"report:  {result.report_path}")
    if result.errors:
        typer.secho(f"{result.errors} requests failed; run again to retry them", fg="yellow")
        raise typer.Exit(1)


def _print_comparison(result: CompareResult) -> None:
    from rich.console import Console
    from rich.table import Table

    def acc(x: float | None, low: float, high: float) -> str:
        return "–" if x is None else f"{100 * x:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"

    table = Table(title="Step selection (top-1), same items; 95% intervals")
    for col in ("Task", "n", "Base", "Trained", "Δ trained−base", "+/−", "McNemar p"):
        table.add_column(col)
    cells = [*result.tasks, result.overall] if len(result.tasks) > 1 else result.tasks
    for c in cells:
        d = c.difference
        delta = f"{100 * (d.diff or 0):+.1f} [{100 * d.ci_low:+.1f}, {100 * d.ci_high:+.1f}]"
        table.add_row(
            "all" if c is result.overall else c.task, str(c.n),
            acc(c.base_accuracy, c.base_ci_low, c.base_ci_high),
            acc(c.trained_accuracy, c.trained_ci_low, c.trained_ci_high),
            "–" if d.diff is None else delta, f"{d.trained_only}/{d.base_only}",
            f"{d.p_value:.3g}",
        )  # fmt: skip
    console = Console()
    console.print(table)
    console.print(
        "Base/Trained: Wilson intervals. Δ: "
        f"{result.overall.difference.method}. +/−: items only trained / only base got right.",
        markup=False,
    )
    if result.overall.unpaired:
        console.print(
            f"{result.overall.unpaired} item(s) left out (failed or fell back in a run).",
            style="yellow",
        )


COMPARE_HELP = (
    "Trained vs base rationalyst on the same step-selection items: both accuracies and the "
    "paired difference trained - base with a 95% interval.\n\n"
    "Starts a scorer and an agent on the base model, one rationalyst service per model and one "
    "gateway per rationalyst on free loopback ports, runs both selections and stops them all. "
    "The started services inherit the environment (e.g. MODEL_SERVER_THREADS=1); their logs "
    "go to OUT/logs."
)


@app.command("compare", help=COMPARE_HELP)
def compare(
    trained: Annotated[
        str,
        typer.Option(
            help="The trained rationalyst: a model folder, a models-cache name or a name "
            "registered in the model registry."
        ),
    ],
    tasks: TasksOpt,
    out: OutOpt,
    base: Annotated[
        str,
        typer.Option(help="Base model: rationalyst of the baseline run, agent and scorer."),
    ] = "smollm2-135m-instruct",
    n: Annotated[int, typer.Option(help="Items per task.")] = 50,
    k: Annotated[int, typer.Option(help="Candidates per item, the gold one included.")] = 4,
    seed: Annotated[int, typer.Option(help="Picks items and corruptions; bootstrap seed.")] = 0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight per run.")] = 4,
    artifacts_dir: Annotated[
        Path | None,
        typer.Option(
            help="Artifacts root of the model registry [default: ~/.cache/rationalyst/artifacts]."
        ),
    ] = None,
    scorer_url: Annotated[
        str | None, typer.Option(help="Use this running scorer service instead of starting one.")
    ] = None,
    agent_url: Annotated[
        str | None, typer.Option(help="Use this running agent service instead of starting one.")
    ] = None,
    engine: Annotated[
        str | None, typer.Option(help="Engine of the started model services.")
    ] = None,
    few_shot: Annotated[str, typer.Option(help="task, default (gateway's) or none.")] = "task",
    shots: Annotated[int, typer.Option(help="Demos in the scorer's context.")] = 3,
    ready_timeout: Annotated[
        float, typer.Option(help="Seconds the started processes may take to be ready.")
    ] = 600.0,
    timeout: Annotated[float, typer.Option(help="Client timeout per request (s).")] = 900.0,
) -> None:
    """Trained vs base rationalyst on the same step-selection items (see COMPARE_HELP)."""
    import signal
    import threading
    from types import FrameType

    from pydantic import ValidationError
    from rich.console import Console

    from gateway.ensemble import EnsembleError
    from services.worker.evaluation.compare import CompareInputError, run_compare
    from services.worker.evaluation.spec import CompareSpec
    from shared.errors import ServiceError
    from shared.tasks import DataMissingError, UnknownTaskError

    _logging()
    try:
        spec = CompareSpec(
            trained=trained, base=base, tasks=_split(tasks), n=n, k=k, seed=seed,
            concurrency=concurrency, few_shot=few_shot, shots=shots, out_dir=out,
            artifacts_dir=artifacts_dir, scorer_url=scorer_url, agent_url=agent_url,
            engine=engine, ready_timeout_s=ready_timeout, request_timeout_s=timeout,
        )  # fmt: skip
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console = Console(stderr=True)

    def on_stop_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwinds through run_compare, which stops its processes

    # SIGTERM (e.g. `kill`, a CI timeout) must stop the started processes too: they run in
    # their own sessions, so nothing else would. Ctrl-C raises KeyboardInterrupt already.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_stop_signal) if main_thread else None
    try:
        with console.status("starting processes...") as status:

            def on_status(states: dict[str, str]) -> None:
                ready = sum(s == "ready" for s in states.values())
                waiting = ", ".join(name for name, s in states.items() if s != "ready")
                text = f"processes ready {ready}/{len(states)}"
                status.update(text + (f"; waiting for {waiting}" if waiting else ""))

            def progress(run: str) -> RichProgress:
                status.stop()  # the progress bars take over the terminal
                return RichProgress(f"select ({run})")

            result = run_compare(spec, progress=progress, on_status=on_status)
    except (CompareInputError, DataMissingError, UnknownTaskError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    except EnsembleError as exc:
        typer.secho(f"error: a process failed to start: {exc}", fg="red", err=True)
        typer.echo(f"logs: {out / 'logs'}", err=True)
        raise typer.Exit(1) from exc
    except ServiceError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        typer.secho("interrupted; processes stopped (run again to resume)", fg="yellow", err=True)
        raise typer.Exit(130) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    _print_comparison(result)
    typer.echo(f"report:  {result.report_path}")
    typer.echo(f"results: {result.json_path} (runs in {out / 'base'} and {out / 'trained'})")
    if result.errors:
        typer.secho(f"{result.errors} requests failed; run again to retry them", fg="yellow")
        raise typer.Exit(1)


@app.command("tasks")
def tasks_command() -> None:
    """List the built-in tasks and whether their data is present."""
    from rich.console import Console
    from rich.table import Table

    from shared.tasks.data import missing_files
    from shared.tasks.registry import builtin_tasks

    missing = missing_files()
    table = Table(title="Tasks (also: jsonl:<path>)")
    for col in ("Task", "Source", "Answer", "Data", "Description"):
        table.add_column(col)
    for name, task in sorted(builtin_tasks().items()):
        file = getattr(task, "file", None)
        data = "generated" if file is None else ("missing" if file in missing else "ok")
        table.add_row(name, task.source, task.kind.value, data, task.description)
    Console().print(table)
    if missing:
        typer.echo("Missing BIG-bench files: run `rationalyst data pull`.")


@data_app.command("pull")
def data_pull(
    data_dir: Annotated[
        Path | None, typer.Option(help="Data cache (default $RATIONALYST_DATA_DIR or ~/.cache).")
    ] = None,
    sdist: Annotated[
        Path | None, typer.Option(help="Use this bigbench-1.0.0.tar.gz instead of downloading.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Extract the files again.")] = False,
) -> None:
    """Fetch the BIG-bench task files (bigbench==1.0.0 sdist, once); no-op when present."""
    from rich.console import Console

    from shared.tasks.data import missing_files, pull

    _logging()
    console = Console(stderr=True)
    if not force and not missing_files(data_dir):
        typer.echo(str(pull(data_dir)))
        return
    with console.status("Downloading the bigbench sdist (358 MB) and extracting task files..."):
        root = pull(data_dir, sdist=sdist, force=force, on_file=lambda f: console.print(f"  {f}"))
    typer.echo(str(root))


@data_app.command("path")
def data_path(
    data_dir: Annotated[Path | None, typer.Option(help="Data cache.")] = None,
) -> None:
    """Print the BIG-bench data folder and any missing files."""
    from shared.tasks.data import bigbench_dir, missing_files

    typer.echo(str(bigbench_dir(data_dir)))
    for rel in missing_files(data_dir):
        typer.echo(f"missing: {rel}", err=True)


# --------------------------------------------------------------------------------------------
# rationalyst pipeline


def _settings_from(items: list[str]) -> dict[str, Any]:
    from services.worker.cli import _set_path

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set takes key=value, got {item!r}")
        _set_path(out, key.strip(), value)
    return out


def _print_data(console: Any, state: dict[str, Any]) -> None:
    from rich.table import Table

    data = state["data"]
    table = Table(title=f"rationale_pipeline job {data['job']}", title_justify="left")
    for col in ("stage", "in", "kept", "dropped", "failed", "out", "wall", "records/min"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for row in data["stages"]:
        wall = "-" if row["wall_s"] is None else f"{row['wall_s']:.0f}s"
        rate = "-" if row["per_min"] is None else f"{row['per_min']:.1f}"
        table.add_row(
            row["stage"], *(str(row[k]) for k in ("in", "kept", "dropped", "failed", "out")),
            wall, rate,
        )  # fmt: skip
    console.print(table)
    c = data["counts"]
    mode = c["extract_mode"] or "?"
    if c["extract_mode_requested"] == "auto":
        mode += " (chosen by auto: the probe " + (
            "reproduced the markup)" if mode == "insert" else "found no usable markup)"
        )
    rows = c["rows_by_split"] or {}
    asked = "" if c["boundaries"] is None else (
        f", {c['boundaries']} boundaries, {c['boundaries_asked']} asked"
    )  # fmt: skip
    console.print(
        f"documents {c['documents']} -> prefilter kept {c['documents_prefiltered']} -> "
        f"extract [{mode}]{asked} -> {c['triples']} triples -> filter kept {c['kept']} -> "
        f"{c['rows']} SFT rows ({rows.get('train', '?')} train / {rows.get('dev', '?')} dev)",
        markup=False,
        soft_wrap=True,
    )
    if c["rationales_dropped"]:
        console.print(f"rationales dropped: {c['rationales_dropped']}", markup=False)
    for warning in c["warnings"]:
        console.print(f"warning: {warning}", markup=False, style="yellow")


def _print_train(console: Any, state: dict[str, Any]) -> None:
    t = state["train"]
    m = t.get("metrics", {})
    rows = (t.get("data") or {}).get("train", {}).get("kept", "?")
    before, after = m.get("eval_loss_before"), m.get("eval_loss")
    loss = "" if after is None else (
        f"; eval loss {before:.3f} -> {after:.3f}" if before is not None else f"; {after:.3f}"
    )  # fmt: skip
    console.print(
        f"trained {t['model']} (job {t['job']}) on {rows} rows, "
        f"{m.get('steps', '?')} steps{loss}; {t['path']}",
        markup=False,
        soft_wrap=True,
    )


def pipeline(
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            help="Corpus files, folders or globs [default: the shipped "
            "services/worker/sample_corpus/strategyqa.jsonl].",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="pipeline.json and compare/ (a rerun resumes).")
    ] = Path("runs/pipeline"),
    limit: Annotated[int | None, typer.Option(help="Only the first N documents.")] = None,
    extract_mode: Annotated[str, typer.Option(help="insert, boundary or auto.")] = "auto",
    max_boundaries: Annotated[int, typer.Option(help="Boundaries asked per document.")] = 6,
    tau: Annotated[float, typer.Option(help="Filter: keep when S_with - S_without >= tau.")] = 0.0,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value for the rationale_pipeline job (repeatable)."),
    ] = None,
    train_steps: Annotated[int, typer.Option(help="Optimizer steps of the training.")] = 40,
    train_set: Annotated[
        list[str] | None,
        typer.Option("--train-set", help="key=value for the train_rationalyst job."),
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(help="Registry name (default: rationalyst-<job id>).")
    ] = None,
    tasks: Annotated[
        list[str] | None,
        typer.Option("--tasks", "-t", help="Held-out tasks of the comparison."),
    ] = None,
    n: Annotated[int, typer.Option(help="Comparison items per task.")] = 50,
    k: Annotated[int, typer.Option(help="Candidates per item, the gold one included.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of training and comparison.")] = 0,
    gateway: Annotated[
        str, typer.Option("--url", envvar="RATIONALYST_URL", help="Gateway of the ensemble.")
    ] = "http://127.0.0.1:8100",
    api_key: ApiKeyOpt = None,
    agent_url: Annotated[str, typer.Option(help="The ensemble's agent.")] = (
        "http://127.0.0.1:8102"
    ),
    scorer_url: Annotated[str, typer.Option(help="The ensemble's scorer.")] = (
        "http://127.0.0.1:8103"
    ),
) -> None:
    """Corpus to compared model: rationale_pipeline, train_rationalyst, eval compare.

    Runs against a running ensemble (`rationalyst up`, as `make run` starts it) and prints the
    counts at each stage, the training result and both accuracies with the paired difference.
    """
    from rich.console import Console

    from services.worker.evaluation.pipeline import PipelineError, PipelineSpec, run_pipeline
    from shared.errors import ServiceError
    from shared.tasks import DataMissingError, UnknownTaskError

    _logging()
    console = Console()
    extract = {"mode": extract_mode, "max_boundaries_per_doc": max_boundaries}
    extra = _settings_from(set_ or [])
    extract.update(extra.pop("extract", {}))
    spec = PipelineSpec(
        inputs=inputs or [str(SHIPPED_CORPUS)],
        out_dir=out,
        gateway=gateway,
        api_key=api_key,
        limit=limit,
        extract=extract,
        filter={"tau": tau, **extra.pop("filter", {})},
        model_name=model_name,
        train={"max_steps": train_steps, **_settings_from(train_set or [])},
        compare_tasks=_split(tasks or ["multistep_arithmetic_seen"]),
        compare_n=n,
        compare_k=k,
        seed=seed,
        agent_url=agent_url,
        scorer_url=scorer_url,
    )
    for key in ("shard_size",):
        if key in extra:
            setattr(spec, key, extra.pop(key))
    if extra:
        raise typer.BadParameter(f"--set: unknown keys {sorted(extra)}")
    status = console.status("submitting...")

    def on_status(step: str, job: dict[str, Any]) -> None:
        st = next((s for s in job["stages"] if s["name"] == job.get("stage")), job["stages"][-1])
        p, t = st["progress"], st.get("training")
        where = (
            f"step {t['step']}/{t['max_steps'] or '?'}" if t
            else f"{p['records_done']}/{p['records_total'] or '?'} records"
        )  # fmt: skip
        status.update(f"{step} job {job['id']}: {st['name']} {where} [{job['state']}]")

    def on_step(name: str, state: dict[str, Any]) -> None:
        status.stop()
        if name == "data":
            _print_data(console, state)
        elif name == "train":
            _print_train(console, state)
        status.start()
        status.update("comparing trained vs base..." if name == "train" else "training...")

    def progress(run: str) -> RichProgress:
        status.stop()
        return RichProgress(f"compare ({run})")

    try:
        with status:
            result = run_pipeline(
                spec, on_status=on_status, on_step=on_step, compare_progress=progress
            )
    except (PipelineError, DataMissingError, UnknownTaskError, ServiceError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        typer.secho("interrupted (run again with the same --out to resume)", err=True)
        raise typer.Exit(130) from None
    _print_comparison(result.compare)
    typer.echo(f"numbers: {out / 'pipeline.json'}; report: {result.compare.report_path}")
