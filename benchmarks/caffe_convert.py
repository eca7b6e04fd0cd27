"""Converting a VGG16-size caffemodel (~550 MB, VGG16's published layer shapes, random weights):
time and peak memory against simply reading the file, each in a fresh process.

    python benchmarks/caffe_convert.py [--json out.json]

Target: peak RSS (above the interpreter's baseline) < 2x the file size, time close to a read.
Loading VGG16 ran BigDL's driver out of heap; this is where kindling must not hit that wall.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import run_measured  # noqa: E402

CONVS = [("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128),
         ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv4_1", 256, 512),
         ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv5_1", 512, 512), ("conv5_2", 512, 512),
         ("conv5_3", 512, 512)]
FCS = [("fc6", 25088, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000)]


def prototxt() -> str:
    lines = ['name: "VGG_ILSVRC_16_layers"', 'input: "data"', "input_dim: 1", "input_dim: 3", "input_dim: 224",
             "input_dim: 224"]
    bottom = "data"
    for name, _, cout in CONVS:
        lines.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                     f"convolution_param {{ num_output: {cout} pad: 1 kernel_size: 3 }} }}")
        lines.append(f'layer {{ name: "relu{name[4:]}" type: "ReLU" bottom: "{name}" top: "{name}" }}')
        bottom = name
        if name.endswith("_2") and name[4] in "12" or name.endswith("_3"):
            pool = f"pool{name[4]}"
            lines.append(f'layer {{ name: "{pool}" type: "Pooling" bottom: "{bottom}" top: "{pool}" '
                         "pooling_param { pool: MAX kernel_size: 2 stride: 2 } }")
            bottom = pool
    for name, _, cout in FCS:
        lines.append(f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" '
                     f"inner_product_param {{ num_output: {cout} }} }}")
        bottom = name
        if name != "fc8":
            lines.append(f'layer {{ name: "relu{name[2:]}" type: "ReLU" bottom: "{name}" top: "{name}" }}')
            lines.append(f'layer {{ name: "drop{name[2:]}" type: "Dropout" bottom: "{name}" top: "{name}" '
                         "dropout_param { dropout_ratio: 0.5 } }")
    lines.append('layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }')
    return "\n".join(lines) + "\n"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _blob(shape) -> bytes:
    """A BlobProto with random floats, built on the wire (the way Caffe writes it)."""
    data = np.random.default_rng(len(shape)).standard_normal(int(np.prod(shape)), dtype=np.float32) * 0.01
    dims = b"".join(_varint(d) for d in shape)
    return _field(7, _field(1, dims)) + _field(5, data.astype("<f4").tobytes())


def write_caffemodel(path: str) -> None:
    """Streams the NetParameter to disk one layer at a time (field 100: layer)."""
    with open(path, "wb") as f:
        for name, cin, cout in CONVS:
            body = _field(1, name.encode()) + _field(2, b"Convolution") + \
                _field(7, _blob((cout, cin, 3, 3))) + _field(7, _blob((cout,)))
            f.write(_field(100, body))
        for name, fin, fout in FCS:
            body = _field(1, name.encode()) + _field(2, b"InnerProduct") + \
                _field(7, _blob((fout, fin))) + _field(7, _blob((fout,)))
            f.write(_field(100, body))


READ = """
import os
t = time.perf_counter()
buf = numpy.empty(os.path.getsize({path!r}), numpy.uint8)  # reading it into memory, as any loader must
with open({path!r}, "rb") as f:
    f.readinto(memoryview(buf))
result["seconds"] = time.perf_counter() - t
"""
CONVERT = """
from kindling.converters import caffe
t = time.perf_counter()
model = caffe.convert({proto!r}, {path!r})
result["seconds"] = time.perf_counter() - t
result["params"] = sum(int(p.size) for _, p, _ in model.named_parameters())
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        proto, path = os.path.join(tmp, "deploy.prototxt"), os.path.join(tmp, "vgg16.caffemodel")
        Path(proto).write_text(prototxt())
        write_caffemodel(path)
        size_mb = os.path.getsize(path) / 2**20
        reads, converts = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine
            reads.append(run_measured(READ.format(path=path)))
            converts.append(run_measured(CONVERT.format(proto=proto, path=path)))
    peak = statistics.median(r["peak_rss_mb"] - r["baseline_mb"] for r in converts)
    t_read = statistics.median(r["seconds"] for r in reads)
    t_conv = statistics.median(r["seconds"] for r in converts)
    report = {"file_mb": round(size_mb, 1), "params": converts[0]["params"], "read_seconds": round(t_read, 2),
              "convert_seconds": round(t_conv, 2), "convert_vs_read": round(t_conv / t_read, 2),
              "peak_rss_mb": round(peak, 1), "peak_vs_file": round(peak / size_mb, 3)}
    print(f"VGG16 caffemodel {size_mb:.0f} MB, {report['params']:,} parameters")
    print(f"convert: {t_conv:.2f} s = {report['convert_vs_read']:.2f}x the time to read the file ({t_read:.2f} s)")
    print(f"peak RSS while converting: {peak:.0f} MB = {report['peak_vs_file']:.2f}x the file (target < 2x)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
