"""`python -m services.model_server [--role R --model M --engine E --port P]`: one model service.

Options override the MODEL_SERVER_* environment; `rationalyst serve model` is the same command.
"""

import typer

from services.model_server.cli import serve_model

if __name__ == "__main__":
    typer.run(serve_model)
