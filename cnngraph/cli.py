"""The `cnngraph` command: a thin dispatcher.

Each subcommand lives in its own module under `cnngraph/commands/` and exposes
`register(subparsers)`, which adds its parser and sets `func` (args -> exit code).
A `CnnGraphError` (any error a user can cause) is printed as one line on stderr with exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys

from .errors import CnnGraphError, one_line

COMMANDS = ["zoo", "show", "ops", "train", "export", "verify", "infer", "bench", "demo",
            "importer",  # importer: `cnngraph import` (the module cannot be named import)
            "quantize", "weights"]


class UsageError(CnnGraphError):
    """A command line argparse refuses; `prog` is the (sub)command that refused it."""

    def __init__(self, prog: str, message: str):
        self.prog = prog
        super().__init__(f"{message} (see {prog} --help)")


class Parser(argparse.ArgumentParser):
    """argparse, its errors raised as UsageError so that `main` prints them as one line (exit 2)
    without the usage block, as every other error; the subcommands' parsers are of this class."""

    def error(self, message: str):
        raise UsageError(self.prog, message)


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cnngraph", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cnngraph {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"cnngraph.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cnngraph.commands.{name}":
                raise
            continue  # command not written yet
        module.register(sub)
    return parser


def version() -> str:
    """The installed package's version (its metadata: no import of the package's heavy parts)."""
    try:
        return importlib.metadata.version("cnngraph")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        from . import __version__
        return __version__


def main(argv: list[str] | None = None) -> int:
    try:
        args = make_parser().parse_args(argv)
    except UsageError as exc:
        print(f"{exc.prog}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except CnnGraphError as exc:
        print(f"cnngraph {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cnngraph {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`cnngraph zoo | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
