"""Regenerates the Python code for every protos/*.proto (run after editing a schema):

    python protos/build.py

The generated *_pb2.py files are committed; tests/protos/test_generated_code.py fails when one is
stale. Files that declare a service also get *_pb2_grpc.py, whose import of its *_pb2 module is
made relative (protoc writes a top-level ``import serving_pb2``; these live in kindling.protos).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def generate() -> list[Path]:
    from grpc_tools import protoc
    written = []
    for proto in sorted(HERE.glob("*.proto")):
        args = ["protoc", f"-I{HERE}", f"--python_out={HERE}"]
        if "service " in proto.read_text():
            args.append(f"--grpc_python_out={HERE}")
        if protoc.main([*args, str(proto)]) != 0:
            raise SystemExit(f"protoc failed on {proto}")
        written.append(proto.with_name(proto.stem + "_pb2.py"))
        service = proto.with_name(proto.stem + "_pb2_grpc.py")
        if service.exists() and "--grpc_python_out" in " ".join(args):
            service.write_text(re.sub(r"^import (\w+_pb2) as ", r"from . import \1 as ", service.read_text(),
                                      flags=re.M))
            written.append(service)
    return written


if __name__ == "__main__":
    for path in generate():
        print(f"wrote {path.relative_to(HERE.parent)}", file=sys.stderr)
