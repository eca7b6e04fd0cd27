"""The committed *_pb2.py files must match their .proto schemas (regenerate: python protos/build.py)."""
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

PROTOS = Path(__file__).resolve().parents[2] / "protos"


@pytest.mark.parametrize("proto", sorted(p.name for p in PROTOS.glob("*.proto")))
def test_generated_code_is_current(tmp_path, proto):
    out = tmp_path / "set.pb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"--descriptor_set_out={out}",
                    str(PROTOS / proto)], check=True)
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    _drop_json_names(fresh)  # protoc adds them to descriptor sets but not to generated code
    module = importlib.import_module(f"kindling.protos.{proto[:-len('.proto')]}_pb2")
    committed = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
    _normalise_float_defaults(fresh)
    _normalise_float_defaults(committed)
    assert committed == fresh, f"protos/{proto} changed: run `python protos/build.py` and commit the result"


@pytest.mark.parametrize("proto", sorted(p.name for p in PROTOS.glob("*.proto") if "service " in p.read_text()))
def test_generated_service_code_is_current(tmp_path, proto):
    """The *_pb2_grpc.py beside a schema with a service, as protos/build.py writes it (the grpcio-tools
    version stamped in it aside). In a process of its own: protoc's C++ protobuf and the one inside
    TensorFlow (imported by other tests) crash when they share a process."""
    for p in (PROTOS / proto, PROTOS / "build.py"):
        (tmp_path / p.name).write_text(p.read_text())
    subprocess.run([sys.executable, str(tmp_path / "build.py")], check=True, capture_output=True)
    name = proto[:-len(".proto")] + "_pb2_grpc.py"

    def code(path):
        return [line for line in path.read_text().splitlines() if not line.startswith("GRPC_GENERATED_VERSION")]
    assert code(tmp_path / name) == code(PROTOS / name), f"protos/{name} is stale: run `python protos/build.py`"


def _drop_json_names(file_proto):
    def walk(messages):
        for m in messages:
            for f in list(m.field) + list(m.extension):
                f.ClearField("json_name")
            walk(m.nested_type)
    walk(file_proto.message_type)
    for f in file_proto.extension:
        f.ClearField("json_name")


def _normalise_float_defaults(file_proto):
    """Float defaults are written as "0.999" in one place and "0.999000013" in the other."""
    kinds = (descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT, descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE)

    def walk(messages):
        for m in messages:
            for f in m.field:
                if f.type in kinds and f.HasField("default_value"):
                    f.default_value = repr(float(np.float32(float(f.default_value))))
            walk(m.nested_type)
    walk(file_proto.message_type)
