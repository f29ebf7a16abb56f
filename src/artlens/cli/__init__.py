"""The `artlens` command: a thin Typer layer over the Python API.

Each stage registers its commands from its own module below; heavy imports (torch, onnxruntime)
stay inside the command functions so `artlens --help` and `artlens predict` start fast.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NoReturn

import click
import typer
from typer.core import TyperGroup

# Newer Typer vendors its own Click, whose UsageError is not click.UsageError: catch both.
_USAGE_ERRORS = tuple({click.UsageError, typer.BadParameter.__mro__[1]})

# Exit codes shared by every command (documented in the README).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PARTIAL = 2  # finished, but some inputs could not be read
EXIT_USAGE = 64  # bad option or argument (sysexits EX_USAGE); Click's own 2 would read as EXIT_PARTIAL


@contextmanager
def _usage_exit_code():
    try:
        yield
    except _USAGE_ERRORS as exc:
        exc.exit_code = EXIT_USAGE
        raise


class _Group(TyperGroup):
    """Typer's group, with usage errors (of the group or any command) exiting EXIT_USAGE."""

    def make_context(self, *args, **kwargs):
        with _usage_exit_code():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_exit_code():
            return super().invoke(ctx)


app = typer.Typer(
    name="artlens",
    cls=_Group,
    help="What is this artwork? Style, artist, genre and human/AI origin, with the evidence.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def one_line(text: object) -> str:
    """`text` with control characters (a newline in a file name) shown as escapes: one line."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode("ascii") for ch in s)


def shown(text: object) -> str:
    """`text` (a file name, an error naming one) for a Rich markup string: one line, and square
    brackets escaped so `[red]` in a file name is printed, not read as markup."""
    from rich.markup import escape

    return escape(one_line(text))


def report(console, tag: str, path: object, reason: object, style: str = "yellow") -> None:
    """One line on `console` (stderr) for an input that could not be used: `TAG PATH: REASON`."""
    from rich.text import Text

    console.print(Text.assemble((tag, style), " ", one_line(path), ": ", one_line(reason)), highlight=False, soft_wrap=True)


def fail(console, message: object) -> NoReturn:
    """Print `error: MESSAGE` as one line and exit with EXIT_ERROR."""
    from rich.text import Text

    console.print(Text.assemble(("error:", "red"), " ", one_line(message)), highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_ERROR)


def _register() -> None:
    import importlib

    for name in ("data", "embed", "train", "evaluate", "predict", "explain", "retrieval", "serve", "artist"):
        importlib.import_module(f"artlens.cli.{name}")


_register()


def main() -> None:  # pragma: no cover
    app()
