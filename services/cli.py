"""The `rationalyst` command: one entry point that mounts each part's own commands.

Importing this module imports no torch, FastAPI app or model: each command loads what it
needs when it runs.
"""

from __future__ import annotations

import typer

from gateway import cli as gateway_cli
from services.model_server.cli import models_app, serve_model
from services.worker.cli import jobs_app, list_models, show_model, worker
from services.worker.evaluation.cli import app as eval_app
from services.worker.evaluation.cli import data_app, pipeline

app = typer.Typer(
    help="Rationale-guided reasoning: model services, gateway, jobs.",
    add_completion=False,
    no_args_is_help=True,
)
app.command("up")(gateway_cli.up)
app.command("reason")(gateway_cli.reason)
app.command("worker")(worker)
app.command("pipeline")(pipeline)

serve_app = typer.Typer(help="Start one service.", no_args_is_help=True)
serve_app.command("model")(serve_model)
serve_app.command("gateway")(gateway_cli.serve)
app.add_typer(serve_app, name="serve")
models_app.command("list")(list_models)
models_app.command("show")(show_model)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(jobs_app, name="jobs")
app.add_typer(eval_app, name="eval")

if __name__ == "__main__":  # `python -m services.cli ...`, as the console script `rationalyst`
    app(prog_name="rationalyst")
