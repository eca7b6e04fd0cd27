"""The ``kindling`` command: one subcommand per file under ``kindling/commands/``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
An error is one line on stderr (exit status 1) naming the file and, where there is one, the layer
or field; ``KINDLING_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
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
    "score": "score",
    "evaluate": "evaluate",
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


def _one_line(command: str, e: BaseException) -> str:
    """What the user sees for an error: kindling's own say what is wrong with which file (and layer
    or field); anything else is a bug or the system's, named as such."""
    if isinstance(e, (ValueError, KeyError, OSError)):
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    elif isinstance(e, MemoryError):
        text = f"out of memory{': ' + str(e) if str(e) else ''}"
    else:
        text = f"internal error ({type(e).__name__}: {e}); KINDLING_DEBUG=1 shows where"
    return f"kindling {command}: error: {' '.join(text.split())}"


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
    except Exception as e:  # noqa: BLE001 - one line for the user; the traceback only when asked
        if os.environ.get("KINDLING_DEBUG") not in (None, "", "0"):
            raise
        print(_one_line(args.command, e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
