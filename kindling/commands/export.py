"""kindling export FRAMEWORK ...: write a kindling model in another framework's format.

One module per framework (``export_<framework>.py``) exposing HELP, ``add_arguments(parser)`` and
``run(args) -> int``, as kindling convert has them.
"""
from __future__ import annotations

from importlib import import_module

HELP = "export a kindling model to another framework's format (onnx)"

# framework -> module under kindling/commands/ with its flags and its run()
FRAMEWORKS = {"onnx": "export_onnx"}


def add_arguments(p):
    sub = p.add_subparsers(dest="framework", metavar="FRAMEWORK", required=True)
    for name, module in FRAMEWORKS.items():
        fw = import_module(f"kindling.commands.{module}")
        fp = sub.add_parser(name, help=fw.HELP, description=fw.HELP)
        fp.add_argument("model", help="the kindling model (.kdl)")
        fp.add_argument("-o", "--output", required=True, help="the file to write")
        fw.add_arguments(fp)
        fp.set_defaults(_export=fw.run)


def run(args) -> int:
    return args._export(args)
