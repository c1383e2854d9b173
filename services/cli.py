"""The `rationalyst` command: one entry point that mounts each part's own commands."""

from __future__ import annotations

import typer

from services.model_server.cli import models_app, serve_model

app = typer.Typer(
    help="Rationale-guided reasoning: model services, gateway, jobs.",
    add_completion=False,
    no_args_is_help=True,
)
serve_app = typer.Typer(help="Start one service.", no_args_is_help=True)
serve_app.command("model")(serve_model)
app.add_typer(serve_app, name="serve")
app.add_typer(models_app, name="models")
