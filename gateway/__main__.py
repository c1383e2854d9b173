"""`python -m gateway [--host H --port P --rationalyst-url U ...]`: serve the gateway.

Options override the GATEWAY_* environment; `rationalyst gateway serve` is the same command.
"""

import typer

from gateway.cli import serve

if __name__ == "__main__":
    typer.run(serve)
