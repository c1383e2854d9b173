"""Commands of the gateway: ``up`` (the whole local ensemble), ``serve`` (the gateway only) and
``reason`` (ask a running gateway). Importing this module is light: no FastAPI, no torch."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gateway.ensemble import DEFAULT_PORTS, REWARD_ROLE, ROLES

if TYPE_CHECKING:
    from gateway.settings import GatewaySettings

app = typer.Typer(
    help="The reasoning gateway: run the local ensemble, serve, ask.",
    add_completion=False,
    no_args_is_help=True,
)


def run_server(settings: GatewaySettings) -> None:
    """Serve the gateway until interrupted (the only place that builds the app for real)."""
    import uvicorn

    from gateway.app import create_app
    from shared.logging import configure_logging

    configure_logging(settings.log_level, json_logs=settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default 8100).")] = None,
    rationalyst_url: Annotated[str | None, typer.Option(help="Rationalyst service URL.")] = None,
    agent_url: Annotated[str | None, typer.Option(help="Agent service URL.")] = None,
    scorer_url: Annotated[str | None, typer.Option(help="Scorer service URL.")] = None,
    reward_url: Annotated[
        str | None, typer.Option(help="Reward service URL (heuristics prm/orm).")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="Python log level.")] = None,
) -> None:
    """Run the gateway only; options override GATEWAY_* variables."""
    from gateway.settings import GatewaySettings
    from shared.settings import load_settings

    given: dict[str, Any] = {
        "host": host,
        "port": port,
        "rationalyst_url": rationalyst_url,
        "agent_url": agent_url,
        "scorer_url": scorer_url,
        "reward_url": reward_url,
        "log_level": log_level,
    }
    run_server(load_settings(GatewaySettings, **{k: v for k, v in given.items() if v is not None}))


class _Terminated(Exception):
    """SIGINT or SIGTERM arrived; unwinds so that children are stopped."""


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


@app.command("up")
def up(
    model: Annotated[
        str | None, typer.Option(help="Model of all three roles (default: the embedded one).")
    ] = None,
    rationalyst_model: Annotated[
        str | None,
        typer.Option(
            help="Model of the rationalyst role only (overrides --model there): a registered "
            "trained model, a cache name or a folder."
        ),
    ] = None,
    agent_model: Annotated[
        str | None,
        typer.Option(
            help="Model of the agent role only (overrides --model there), e.g. a model "
            "trained by a tripost job, for `strategy: self_improve`."
        ),
    ] = None,
    reward_model: Annotated[
        str | None,
        typer.Option(
            help="Also start a reward service (MODEL_SERVER_ROLE=reward; --engine vllm runs it "
            "on vLLM's pooling runner, else transformers) on this registered PRM/ORM (a "
            "train_prm/train_orm job's model), and point the gateway at it for `heuristic: "
            "prm`/`orm`."
        ),
    ] = None,
    engine: Annotated[str | None, typer.Option(help="transformers, vllm or remote.")] = None,
    internal_token: Annotated[
        str | None,
        typer.Option(
            envvar="RATIONALYST_INTERNAL_TOKEN",
            help="Shared secret of the internal hops; enables `rationalyst models use`.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface of every process.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port.")] = DEFAULT_PORTS["gateway"],
    rationalyst_port: Annotated[int, typer.Option()] = DEFAULT_PORTS["rationalyst"],
    agent_port: Annotated[int, typer.Option()] = DEFAULT_PORTS["agent"],
    scorer_port: Annotated[int, typer.Option()] = DEFAULT_PORTS["scorer"],
    reward_port: Annotated[int, typer.Option()] = DEFAULT_PORTS["reward"],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 600.0,
    logs_dir: Annotated[
        Path | None, typer.Option(help="Folder of the processes' logs (default: a temp dir).")
    ] = None,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker",
            help="Start a worker and a Redis for the offline jobs (--no-worker: models and "
            "gateway only).",
        ),
    ] = True,
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="Redis of the job queue [default: WORKER_REDIS_URL, else "
            "redis://127.0.0.1:6379/0 when one answers there, else a redis-server started "
            "on a free port]."
        ),
    ] = None,
    start_redis: Annotated[
        bool,
        typer.Option("--start-redis", help="Always start a redis-server of the ensemble's own."),
    ] = False,
    artifacts_dir: Annotated[
        Path | None,
        typer.Option(
            help="Artifacts root of the gateway and the worker [default: WORKER_ARTIFACTS_DIR, "
            "else ~/.cache/rationalyst/artifacts]."
        ),
    ] = None,
) -> None:
    """Start three model services (four with --reward-model), the gateway, a worker and (when
    none is reachable) a Redis on loopback; Ctrl-C stops them all."""
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from gateway.ensemble import (
        EnsembleError,
        JobQueue,
        ServiceProcess,
        available_cores,
        gateway_command,
        model_service_command,
        port_in_use,
        restart_process,
        start_process,
        stop_processes,
        supervise,
        thread_envs,
        wait_ready,
        worker_command,
        worker_env,
        worker_ready,
    )

    console = Console()
    roles = (*ROLES, REWARD_ROLE) if reward_model else ROLES
    try:  # the reward service, when started, takes its share of the cores like the others
        threads = thread_envs(roles)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]", markup=False)
        raise typer.Exit(2) from exc
    ports = {"rationalyst": rationalyst_port, "agent": agent_port, "scorer": scorer_port}
    if reward_model:
        ports[REWARD_ROLE] = reward_port
    ports["gateway"] = port
    busy = [f"{name} ({p})" for name, p in ports.items() if port_in_use(p, host)]
    if busy:
        console.print(f"[red]ports already in use: {', '.join(busy)}[/red]")
        raise typer.Exit(1)
    urls = {name: f"http://{host}:{p}" for name, p in ports.items()}
    log_path = logs_dir or Path(tempfile.mkdtemp(prefix="rationalyst-up-"))
    procs: list[ServiceProcess] = []
    # Handled explicitly: a process started in the background of a script inherits SIGINT
    # ignored, and Ctrl-C must stop the ensemble however it was launched.
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in stop_signals}

    def table(status: dict[str, str]) -> Table:
        t = Table(title="rationalyst ensemble", title_justify="left")
        for col in ("process", "url", "pid", "state"):
            t.add_column(col)
        for p in procs:
            state = status.get(p.name, "starting")
            style = "green" if state == "ready" else "yellow"
            t.add_row(p.name, p.url, str(p.pid), f"[{style}]{state}[/{style}]")
        return t

    models = {role: model for role in ROLES} | {
        "rationalyst": rationalyst_model or model,
        "agent": agent_model or model,
    }
    # Model services require the token once it is set, and the gateway sends it.
    env = (
        {"MODEL_SERVER_INTERNAL_TOKEN": internal_token, "GATEWAY_INTERNAL_TOKEN": internal_token}
        if internal_token
        else {}
    )
    queue = None
    if worker:
        try:
            queue = JobQueue.choose(host, redis_url, start_redis, artifacts_dir)
        except EnsembleError as exc:
            console.print(f"[red]{exc}[/red]", markup=False)
            raise typer.Exit(1) from exc
    gateway_env = {**env, **(queue.gateway_env() if queue else {})}
    restartable: set[str] = set()

    try:
        if queue is not None and queue.server_command is not None:
            procs.append(queue.start_server(log_path))
            restartable.add("redis")
            queue.wait_server(procs[-1])
        for role in ROLES:
            cmd = model_service_command(
                role, ports[role], host=host, model=models[role], engine=engine
            )
            role_env = {**env, **threads[role]}
            procs.append(start_process(role, cmd, urls[role], log_dir=log_path, env=role_env))
        if reward_model:  # vLLM's pooling runner or transformers; a remote engine serves none
            cmd = model_service_command(
                REWARD_ROLE, ports[REWARD_ROLE], host=host, model=reward_model,
                engine="vllm" if engine == "vllm" else "transformers",
            )  # fmt: skip
            role_env = {**env, **threads[REWARD_ROLE]}
            procs.append(
                start_process(REWARD_ROLE, cmd, urls[REWARD_ROLE], log_dir=log_path, env=role_env)
            )
        gateway_cmd = gateway_command(port, urls, host=host)
        procs.append(
            start_process(
                "gateway", gateway_cmd, urls["gateway"], log_dir=log_path, env=gateway_env
            )
        )
        if queue is not None:
            w_env = worker_env(
                redis_url=queue.url,
                artifacts_dir=queue.artifacts_dir,
                agent_url=urls["agent"],
                scorer_url=urls["scorer"],
                train_threads=len(available_cores()),
                internal_token=internal_token,
            )
            procs.append(
                start_process(
                    "worker", worker_command(), queue.url, log_dir=log_path,
                    env={**w_env, **queue.data_dirs_env()}, ready=worker_ready(queue.url),
                )
            )  # fmt: skip
            restartable.add("worker")
        started = time.monotonic()
        with Live(table({}), console=console, refresh_per_second=4) as live:
            wait_ready(procs, timeout_s=timeout, on_poll=lambda s: live.update(table(s)))
        console.line()
        console.print(
            f"[green]all ready[/green] in {time.monotonic() - started:.0f}s; logs in {log_path}"
        )
        for name in ("gateway", *roles):
            where = f"  {name:<12} {urls[name]}"
            if name in threads:
                where += f"  ({threads[name]['MODEL_SERVER_THREADS']} threads)"
            console.print(where, markup=False)
        if queue is not None:
            console.print(f"  {'redis':<12} {queue.describe()}", markup=False, soft_wrap=True)
            console.print(
                f"  {'worker':<12} artifacts in {queue.artifacts_dir}", markup=False,
                soft_wrap=True,
            )  # fmt: skip
        console.print("\nTry:")
        console.print(
            f"  curl -s {urls['gateway']}/v1/reason -H 'Content-Type: application/json' \\\n"
            '    -d \'{"question": "Tom has 3 apples and buys 5 more. How many apples does he '
            'have?", "max_steps": 4}\'',
            markup=False,
            soft_wrap=True,
        )
        console.print(
            f'  rationalyst reason "What is 12 * 7?" --url {urls["gateway"]}',
            markup=False,
            soft_wrap=True,
        )
        if queue is not None:
            gw = "" if port == DEFAULT_PORTS["gateway"] else f" --url {urls['gateway']}"
            console.print(
                f"  rationalyst jobs submit --kind prefilter{gw} \\\n"
                "    -i services/worker/sample_corpus/corpus.jsonl --watch",
                markup=False,
                soft_wrap=True,
            )
        use = f"  rationalyst models use <registered-name> --url {urls['rationalyst']}"
        use += " --token <internal token>" if internal_token else "   (start with --internal-token)"
        console.print(use, markup=False, soft_wrap=True)
        console.print("\nCtrl-C stops everything.")
        dead = supervise(procs, restartable, queue, console, restart_process)
        console.print(
            f"{dead.name} exited with code {dead.popen.returncode}; stopping the rest\n"
            f"{dead.log_tail()}",
            markup=False,
            style="red",
        )
        raise typer.Exit(1)
    except EnsembleError as exc:
        console.print(f"[red]{exc}[/red]", markup=False)
        raise typer.Exit(1) from exc
    except (KeyboardInterrupt, _Terminated):
        console.print("\nstopping...")
    finally:
        stop_processes(procs)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if procs:
            console.print(f"stopped {len(procs)} process(es)")


@app.command("reason")
def reason(
    question: Annotated[str, typer.Argument(help="The question to solve.")],
    url: Annotated[
        str, typer.Option(envvar="RATIONALYST_URL", help="Gateway URL.")
    ] = "http://127.0.0.1:8100",
    api_key: Annotated[
        str | None, typer.Option(envvar="RATIONALYST_API_KEY", help="Bearer key, if required.")
    ] = None,
    heuristic: Annotated[str, typer.Option(help="Step selection heuristic.")] = "rationalyst",
    n_candidates: Annotated[int, typer.Option(help="Candidates per step.")] = 3,
    max_steps: Annotated[int, typer.Option(help="Most steps.")] = 15,
    temperature: Annotated[float | None, typer.Option(help="Agent temperature.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    deadline_s: Annotated[float | None, typer.Option(help="Wall-clock budget.")] = None,
    max_step_tokens: Annotated[int | None, typer.Option(help="Tokens per step.")] = None,
    answer_kind: Annotated[
        str | None,
        typer.Option(help="number, boolean, choice, word_list or text (default: detected)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the raw response.")] = False,
    timeout: Annotated[float, typer.Option(help="HTTP timeout in seconds.")] = 900.0,
) -> None:
    """Ask a running gateway and show each step with its rationale and candidate scores."""
    import json

    import httpx
    from rich.console import Console

    body: dict[str, Any] = {
        "question": question,
        "heuristic": heuristic,
        "n_candidates": n_candidates,
        "max_steps": max_steps,
    }
    optional = {
        "temperature": temperature,
        "seed": seed,
        "deadline_s": deadline_s,
        "max_step_tokens": max_step_tokens,
        "answer_kind": answer_kind,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    console = Console()
    try:
        with console.status("reasoning..."):
            res = httpx.post(f"{url}/v1/reason", json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach {url}: {exc}[/red]", markup=False)
        raise typer.Exit(1) from exc
    if res.status_code != 200:
        console.print(f"[red]HTTP {res.status_code}[/red]: {res.text}", markup=False)
        raise typer.Exit(1)
    data = res.json()
    if json_output:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    render_response(console, data)


def render_response(console: Any, data: dict[str, Any]) -> None:
    """Steps with rationale and candidate scores as rich tables, then the answer."""
    from rich.table import Table

    for step in data["trace"]:
        t = Table(
            title=f"step {step['index'] + 1} ({step['heuristic']}"
            + (", the answer step asked for)" if step.get("forced_answer") else ")"),
            title_justify="left",
            caption=f"rationale: {step['rationale']}" if step.get("rationale") else None,
            caption_justify="left",
            show_lines=False,
        )
        t.add_column("", width=1)
        t.add_column("score", justify="right")
        t.add_column("candidate")
        for i, cand in enumerate(step["candidates"]):
            score = "-" if cand["score"] is None else f"{cand['score']:.3f}"
            if cand.get("duplicate_of") is not None:
                score += f" (dup of {cand['duplicate_of'] + 1})"
            if cand.get("repeat_of") is not None:
                score += f" (repeats step {cand['repeat_of'] + 1})"
            mark = "*" if i == step["chosen"] else ""
            style = "bold green" if i == step["chosen"] else None
            t.add_row(mark, score, cand["text"], style=style)
        console.print(t)
    answer = data.get("answer")
    console.print(f"\n[bold]answer:[/bold] {answer if answer is not None else '(none stated)'}")
    timings = data["timings"]
    console.print(
        f"heuristic {data['heuristic_requested']} -> {data['heuristic_used']}; "
        f"{len(data['steps'])} step(s); finish={data.get('finish')}; "
        f"answer kind {data.get('answer_kind')}; "
        f"{timings['total_ms'] / 1000:.1f}s (gateway overhead {timings['overhead_ms']:.0f} ms)"
    )
    for warning in data.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}", markup=True)


if __name__ == "__main__":  # pragma: no cover
    app(prog_name=os.path.basename(sys.argv[0]))
