"""The ``kindling`` command: one subcommand per file under ``kindling/commands/``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import sys
from importlib import import_module

COMMANDS = {
    "info": "info",
    "run": "run",
    "convert": "convert",
    "export": "export",
    "train": "train",
    "demo": "demo",
    "serve": "serve",
    "classify": "classify",
}


def build_parser() -> argparse.ArgumentParser:
    from kindling import __version__
    parser = argparse.ArgumentParser(prog="kindling", description="kindling: convert, fine-tune, validate and serve models.")
    parser.add_argument("--version", action="version", version=f"kindling {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            mod = import_module(f"kindling.commands.{module_name}")
        except ModuleNotFoundError as e:
            if e.name == f"kindling.commands.{module_name}":
                continue  # not built yet
            raise
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, KeyError, OSError) as e:
        # Errors from bad input are worded for the user; no traceback unless asked.
        import os
        if os.environ.get("KINDLING_DEBUG"):
            raise
        print(f"kindling {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
