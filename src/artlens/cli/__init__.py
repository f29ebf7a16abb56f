"""The `artlens` command: a thin Typer layer over the Python API.

Each stage registers its commands from its own module below; heavy imports (torch, onnxruntime)
stay inside the command functions so `artlens --help` and `artlens predict` start fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="artlens",
    help="What is this artwork? Style, artist, genre and human/AI origin, with the evidence.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Exit codes shared by every command (documented in the README).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PARTIAL = 2  # finished, but some inputs could not be read


def _register() -> None:
    import importlib

    for name in ("data", "embed", "train", "evaluate", "predict", "explain", "serve", "artist"):
        try:
            importlib.import_module(f"artlens.cli.{name}")
        except ModuleNotFoundError as exc:  # a stage not written yet
            if exc.name != f"artlens.cli.{name}":
                raise


_register()


def main() -> None:  # pragma: no cover
    app()
