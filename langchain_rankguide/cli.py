"""The ``rankguide`` command line.

Each sub-command lives in its own module under :mod:`langchain_rankguide.commands`
and exposes ``register(subparsers)``; modules are imported only to build the parser,
and each command imports its heavy dependencies only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from langchain_rankguide.errors import RankGuideError

COMMAND_MODULES = (
    "langchain_rankguide.commands.run",
    "langchain_rankguide.commands.config",
    "langchain_rankguide.commands.demo",
    "langchain_rankguide.commands.calibrate",
    "langchain_rankguide.commands.steer",
    "langchain_rankguide.commands.bench",
    "langchain_rankguide.commands.serve",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="rankguide",
        description="Small and large reasoning models working together, step by step.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code (2 for bad input, as argparse does)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except RankGuideError as exc:
        print(f"rankguide: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rankguide: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
