"""A trained rationalyst against its base model on the same step-selection items.

:func:`run_compare` (a :class:`CompareSpec`):

1. resolves both models to folders (a folder, a name in the models cache, or a name in the
   model registry under the artifacts root), builds the item plan and checks the output
   folder: bad input fails here, before any process starts;
2. starts on free loopback ports, as subprocesses (:mod:`gateway.ensemble`): a scorer and an
   agent service on the base model (unless running ones are given), one rationalyst service
   per model and one gateway per rationalyst; waits until every one answers /ready;
3. runs :func:`~services.worker.evaluation.selection.run_selection` with the heuristic
   ``rationalyst`` through each gateway: the base run, then the trained run;
4. stops every process it started, also on errors and Ctrl-C;
5. pairs the records item by item and writes into ``spec.out_dir``:

   * ``base/``, ``trained/``: each run's usual files (spec.json, results.jsonl, summary.json,
     report.md, accuracy.png) and ``models.json``, the models behind its records;
   * ``logs/``: one log per started process;
   * ``compare.json``: settings, models, both runs' summaries, and per task and overall the
     accuracies on the paired items and the paired difference trained - base with its 95%
     interval (:func:`~services.worker.evaluation.stats.paired_difference`);
   * ``compare.md``: the report.

Rerunning with the same folder resumes both runs (see :mod:`.runner`); a run folder whose
``models.json`` names other models is refused rather than mixed in. When both runs are
already complete, no process is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeGuard

import httpx
from pydantic import BaseModel

from gateway.ensemble import (
    EnsembleError,
    ServiceProcess,
    free_port,
    gateway_command,
    is_ready,
    model_service_command,
    start_process,
    stop_processes,
    wait_ready,
)
from services.model_server.models import is_model_folder, models_dir, resolve_model
from services.worker.evaluation.common import (
    NoProgress,
    ProgressHook,
    write_json_atomic,
    write_text_atomic,
)
from services.worker.evaluation.report import compare_report
from services.worker.evaluation.runner import RESULTS_FILE, resolve_tasks
from services.worker.evaluation.selection import (
    SelectionJob,
    SelectionResult,
    build_selection_plan,
    run_selection,
)
from services.worker.evaluation.spec import CompareSpec, SelectionSpec
from services.worker.evaluation.stats import CompareCellStats, compare_cell
from services.worker.evaluation.store import JsonlStore
from shared.errors import InvalidRequest
from shared.gateway_schemas import Heuristic
from shared.model_registry import ModelRegistry, RegisteredModel
from shared.settings import default_cache_dir

logger = logging.getLogger(__name__)

RUNS: tuple[str, str] = ("base", "trained")
COMPARE_JSON = "compare.json"
COMPARE_REPORT = "compare.md"
MODELS_FILE = "models.json"
LOGS_DIR = "logs"
NO_GATEWAY = "none (every item was already done)"
"""The gateway URL of a run that sends no request."""
LOAD_FAILED = "failed to load"
"""In the 503 /ready message of a model service whose model could not be loaded: the
service stays up (a model can be switched in later) but will not become ready by itself."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")

StatusHook = Callable[[dict[str, str]], None]
"""Told ``{process: "starting" | "ready"}`` while the started processes come up."""
ProgressFactory = Callable[[str], AbstractContextManager[ProgressHook]]
"""Gives the progress display of one run (``"base"`` or ``"trained"``)."""


class CompareInputError(ValueError):
    """Bad input found before any process starts (the CLI exits with code 2)."""


class ModelNotFoundError(CompareInputError):
    """A model argument is not a model folder, a cached model or a registered model."""


class ResolvedModel(BaseModel):
    """A model argument and the folder it stands for."""

    given: str
    path: Path
    """Absolute: the services run with another working directory."""
    source: Literal["folder", "registry", "cache"]
    registered: RegisteredModel | None = None

    def identity(self) -> dict[str, Any]:
        """What makes results of this model: its folder and its weight files' sizes and
        modification times (a model retrained in place is another model)."""
        weights = sorted(
            [p.name, p.stat().st_size, p.stat().st_mtime_ns]
            for p in self.path.iterdir()
            if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
        )
        return {"path": str(self.path), "weights": weights}


class Started(NamedTuple):
    """The processes a comparison started, and the gateway of each run among them."""

    gateways: dict[str, str]
    processes: list[ServiceProcess]


class CompareResult(BaseModel):
    """What a comparison did and where its files are."""

    out_dir: Path
    json_path: Path
    report_path: Path
    models: dict[str, ResolvedModel]
    runs: dict[str, SelectionResult]
    tasks: list[CompareCellStats]
    """One cell per task, on the items both runs answered."""
    overall: CompareCellStats
    """All tasks together (the same as the task's cell when there is one task)."""
    started: int
    """Processes this comparison started (0 when both runs were already complete)."""

    @property
    def errors(self) -> int:
        """Requests of this invocation that failed (retried by the next one)."""
        return sum(r.errors for r in self.runs.values())


def default_artifacts_dir() -> Path:
    return default_cache_dir() / "artifacts"


def resolve_model_folder(
    name: str, *, artifacts_dir: Path | None = None, cache: Path | None = None
) -> ResolvedModel:
    """A model argument -> its folder, resolved as the model service resolves it (a folder, a
    models-cache name, a registered name), but never a hub id: the comparison runs offline.
    Anything else raises :class:`ModelNotFoundError` with the model service's message."""
    root = artifacts_dir or default_artifacts_dir()
    try:
        folder = Path(resolve_model(name, cache, artifacts_dir=root, allow_hub=False))
    except InvalidRequest as exc:
        raise ModelNotFoundError(exc.message) from exc
    source: Literal["folder", "registry", "cache"]
    card = None
    if Path(name).expanduser().exists():
        source = "folder"
    elif is_model_folder(models_dir(cache) / name):
        source = "cache"
    else:
        source, card = "registry", ModelRegistry(root).find(name)
    return ResolvedModel(given=name, path=folder.resolve(), source=source, registered=card)


def selection_spec(
    spec: CompareSpec, run: str, model: ResolvedModel, gateway_url: str
) -> SelectionSpec:
    """The step-selection run of one model: the same items and settings for both runs."""
    return SelectionSpec(
        tasks=spec.tasks,
        heuristics=[Heuristic.rationalyst],
        n=spec.n,
        k=spec.k,
        seed=spec.seed,
        concurrency=spec.concurrency,
        gateway_url=gateway_url,
        out_dir=spec.out_dir / run,
        few_shot=spec.few_shot,
        shots=spec.shots,
        label=f"Comparison run `{run}`: rationalyst {model.given} ({model.path}); agent and "
        f"scorer {spec.base}",
        request_timeout_s=spec.request_timeout_s,
    )


def run_identities(
    spec: CompareSpec, models: Mapping[str, ResolvedModel]
) -> dict[str, dict[str, Any]]:
    """Per run, the models behind its records (``models.json``)."""
    base = models["base"].identity()
    agent = {"url": spec.agent_url} if spec.agent_url else base
    scorer = {"url": spec.scorer_url} if spec.scorer_url else base
    return {
        run: {"rationalyst": models[run].identity(), "agent": agent, "scorer": scorer}
        for run in RUNS
    }


def check_run_folders(spec: CompareSpec, identities: Mapping[str, dict[str, Any]]) -> None:
    """Refuse a run folder holding results of other models (its record keys do not name the
    models, so resuming would mix them in)."""
    for run in RUNS:
        path = spec.out_dir / run / MODELS_FILE
        if not path.is_file():
            if (spec.out_dir / run / RESULTS_FILE).exists():
                raise CompareInputError(
                    f"{path.parent} holds results of unknown models (no {MODELS_FILE}); "
                    "choose another --out"
                )
            continue
        try:
            existing = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CompareInputError(f"cannot read {path}: {exc}") from exc
        if existing != identities[run]:
            raise CompareInputError(
                f"{path.parent} holds results of other models than this comparison's "
                f"(see {path}); choose another --out or delete that folder"
            )


def pending_jobs(out_dir: Path, plan: list[SelectionJob]) -> int:
    """Jobs of the plan without a successful record in ``out_dir``."""
    done = JsonlStore(out_dir / RESULTS_FILE).read()
    return sum(1 for j in plan if j.key not in done or done[j.key].get("error"))


def _check_external(spec: CompareSpec) -> None:
    for role, url in (("scorer", spec.scorer_url), ("agent", spec.agent_url)):
        if url and not is_ready(url, timeout_s=5.0):
            raise CompareInputError(f"the {role} service at {url} does not answer /ready")


def load_failure(url: str) -> str | None:
    """Why the model service at ``url`` failed to load its model; None while it is loading,
    ready, or says something else."""
    try:
        response = httpx.get(f"{url}/ready", timeout=2.0)
        message = response.json()["error"]["message"] if response.status_code == 503 else ""
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return message if isinstance(message, str) and LOAD_FAILED in message else None


@contextlib.contextmanager
def compare_services(
    spec: CompareSpec,
    models: Mapping[str, ResolvedModel],
    *,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    on_status: StatusHook | None = None,
) -> Iterator[Started]:
    """Start the processes of a comparison, wait until all are ready, yield the gateway URL
    of each run and the processes; stop them all on exit (normal, error or Ctrl-C).

    Raises :class:`gateway.ensemble.EnsembleError` (with the log tail) when a process exits
    before it is ready, a model service reports that its model failed to load, or a process
    is not ready within ``spec.ready_timeout_s``.
    """
    # The gateways started here are private to this comparison: no API key, whatever the
    # environment says (an inherited GATEWAY_API_KEYS would lock this client out).
    child_env = {**(env or {}), "GATEWAY_API_KEYS": ""}
    names = [r for r in ("scorer", "agent") if not getattr(spec, f"{r}_url")]
    names += [f"{kind}-{run}" for run in RUNS for kind in ("rationalyst", "gateway")]
    ports = {name: free_port() for name in names}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    upstreams = {
        "scorer": spec.scorer_url or urls["scorer"],
        "agent": spec.agent_url or urls["agent"],
    }
    commands = {}
    for name in names:
        role, _, run = name.partition("-")
        if role == "gateway":
            rationalyst = urls[f"rationalyst-{run}"]
            commands[name] = gateway_command(ports[name], {**upstreams, "rationalyst": rationalyst})
        else:
            model = str(models[run or "base"].path)
            commands[name] = model_service_command(
                role, ports[name], model=model, engine=spec.engine
            )
    procs: list[ServiceProcess] = []
    try:
        for name in names:
            procs.append(
                start_process(name, commands[name], urls[name], log_dir=log_dir, env=child_env)
            )
        model_services = [p for p in procs if not p.name.startswith("gateway")]

        def poll(states: dict[str, str]) -> None:
            for p in model_services:
                if states[p.name] != "ready" and (why := load_failure(p.url)):
                    raise EnsembleError(
                        f"{p.name} cannot serve: {why}\n(log {p.log_path}):\n{p.log_tail(20)}"
                    )
            if on_status is not None:
                on_status(states)

        wait_ready(procs, timeout_s=spec.ready_timeout_s, on_poll=poll)
        yield Started({run: urls[f"gateway-{run}"] for run in RUNS}, procs)
    finally:
        if procs:
            logger.info("stopping %d processes", len(procs))
        stop_processes(procs)


def run_compare(
    spec: CompareSpec,
    *,
    progress: ProgressFactory | None = None,
    on_status: StatusHook | None = None,
    env: Mapping[str, str] | None = None,
) -> CompareResult:
    """Run (or resume) a comparison; see the module docstring. Blocking: it runs its own event
    loop per run. ``env`` is added to the started processes' environment (e.g.
    ``MODEL_SERVER_THREADS``)."""
    progress = progress or (lambda run: contextlib.nullcontext(NoProgress()))
    artifacts = spec.artifacts_dir or default_artifacts_dir()
    models = {
        "base": resolve_model_folder(spec.base, artifacts_dir=artifacts),
        "trained": resolve_model_folder(spec.trained, artifacts_dir=artifacts),
    }
    if models["base"].path == models["trained"].path:
        logger.warning("base and trained are the same folder %s", models["base"].path)
    # The plan does not depend on the gateway: building it now checks tasks and data.
    plan = build_selection_plan(
        selection_spec(spec, "base", models["base"], NO_GATEWAY), resolve_tasks(spec.tasks)
    )
    identities = run_identities(spec, models)
    check_run_folders(spec, identities)
    runs: dict[str, SelectionResult] = {}
    started = 0

    def run_all(gateways: Mapping[str, str]) -> None:
        for run in RUNS:
            sel = selection_spec(spec, run, models[run], gateways[run])
            write_json_atomic(sel.out_dir / MODELS_FILE, identities[run])
            with progress(run) as hook:
                runs[run] = asyncio.run(run_selection(sel, progress=hook))

    if any(pending_jobs(spec.out_dir / run, plan) for run in RUNS):
        _check_external(spec)
        log_dir = spec.out_dir / LOGS_DIR
        with compare_services(spec, models, log_dir=log_dir, env=env, on_status=on_status) as svc:
            started = len(svc.processes)
            run_all(svc.gateways)
    else:
        # Both runs complete: rewrite their summaries and reports without any service.
        run_all(dict.fromkeys(RUNS, NO_GATEWAY))
    return write_comparison(spec, models, plan, runs, started=started)


def paired_cells(
    spec: CompareSpec, plan: list[SelectionJob], records: Mapping[str, Mapping[str, Any]]
) -> tuple[list[CompareCellStats], CompareCellStats]:
    """Per task and overall: both models on the items that both runs answered with the
    rationalyst heuristic (no error, no fallback to another heuristic)."""

    def usable(record: object) -> TypeGuard[Mapping[str, Any]]:
        return (
            isinstance(record, Mapping)
            and not record.get("error")
            and not record.get("fallbacks")
            and record.get("heuristic_used", Heuristic.rationalyst.value)
            == Heuristic.rationalyst.value
        )

    flags: dict[str, tuple[list[bool], list[bool]]] = {}
    unpaired: dict[str, int] = {}
    for job in plan:
        task = job.item.task
        base, trained = flags.setdefault(task, ([], []))
        b, t = records["base"].get(job.key), records["trained"].get(job.key)
        if usable(b) and usable(t):
            base.append(bool(b["correct"]))
            trained.append(bool(t["correct"]))
        else:
            unpaired[task] = unpaired.get(task, 0) + 1
    cells = [
        compare_cell(
            task, b, t, unpaired=unpaired.get(task, 0), resamples=spec.resamples, seed=spec.seed
        )
        for task, (b, t) in flags.items()
    ]
    overall = compare_cell(
        "all",
        [x for b, _ in flags.values() for x in b],
        [x for _, t in flags.values() for x in t],
        unpaired=sum(unpaired.values()),
        resamples=spec.resamples,
        seed=spec.seed,
    )
    return cells, overall


def write_comparison(
    spec: CompareSpec,
    models: Mapping[str, ResolvedModel],
    plan: list[SelectionJob],
    runs: Mapping[str, SelectionResult],
    *,
    started: int,
) -> CompareResult:
    """Pair the two runs' records and write ``compare.json`` and ``compare.md``."""
    records = {run: JsonlStore(runs[run].results_path).read() for run in RUNS}
    cells, overall = paired_cells(spec, plan, records)
    services = {
        "scorer": spec.scorer_url or f"started on {models['base'].path}",
        "agent": spec.agent_url or f"started on {models['base'].path}",
    }
    generated_at = dt.datetime.now(dt.UTC)
    document = {
        "generated_at": generated_at.isoformat(timespec="seconds"),
        "settings": spec.model_dump(mode="json"),
        "models": {
            **{run: m.model_dump(mode="json") for run, m in models.items()},
            **services,
        },
        "n": overall.n,
        "difference": overall.difference.model_dump(mode="json"),
        "overall": overall.model_dump(mode="json"),
        "tasks": [c.model_dump(mode="json") for c in cells],
        "runs": {
            run: {
                "dir": run,
                "summary": [c.model_dump(mode="json") for c in runs[run].cells],
                "errors": sum(c.errors for c in runs[run].cells),
            }
            for run in RUNS
        },
    }
    out = spec.out_dir
    write_json_atomic(out / COMPARE_JSON, document)
    report = compare_report(
        spec,
        cells,
        overall,
        models={run: f"{m.given} ({m.source}: {m.path})" for run, m in models.items()},
        services=services,
        generated_at=generated_at,
    )
    write_text_atomic(out / COMPARE_REPORT, report)
    return CompareResult(
        out_dir=out,
        json_path=out / COMPARE_JSON,
        report_path=out / COMPARE_REPORT,
        models=dict(models),
        runs=dict(runs),
        tasks=cells,
        overall=overall,
        started=started,
    )
