"""The committed *_pb2.py files must match their .proto schemas (regenerate: python protos/build.py)."""
import importlib
import subprocess
import sys
from pathlib import Path

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
    assert committed == fresh, f"protos/{proto} changed: run `python protos/build.py` and commit the result"


def _drop_json_names(file_proto):
    def walk(messages):
        for m in messages:
            for f in list(m.field) + list(m.extension):
                f.ClearField("json_name")
            walk(m.nested_type)
    walk(file_proto.message_type)
    for f in file_proto.extension:
        f.ClearField("json_name")
