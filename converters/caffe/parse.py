"""Reading Caffe net definitions: text prototxt (current and V1 format), inputs, phase rules."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from google.protobuf import text_format

from kindling.protos import caffe_pb2

from ..graph import Node

from .errors import CaffeError
from .schema import DEFAULT, Schema, layer_class

# V1 enum names -> current type strings (Caffe's UpgradeV1LayerType).
V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DATA": "Data",
    "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}


def _camel(v1_name: str) -> str:
    """A fork's V1 type as its current-format name: IMAGE_SEG_DATA -> ImageSegData."""
    return "".join(part.capitalize() for part in v1_name.split("_"))


@dataclass
class CaffeLayer(Node):
    """One layer, format-neutral (a converters.graph.Node) with Caffe's names for its parts:
    bottoms and tops, ``param`` (its *_param fields, in the current format) and ``blobs`` (numpy
    arrays from the caffemodel)."""
    lr_mult: list[float] = field(default_factory=list)
    decay_mult: list[float] = field(default_factory=list)

    bottoms = property(lambda self: self.inputs)
    tops = property(lambda self: self.outputs)
    param = property(lambda self: self.attrs)

    @property
    def blobs(self) -> list:
        return self.weights

    @blobs.setter
    def blobs(self, value: list) -> None:
        self.weights = value


@functools.lru_cache(maxsize=None)
def _known_field_names() -> frozenset[str]:
    names = set()

    def walk(desc):
        for f in desc.fields:
            names.add(f.name)
        for nested in desc.nested_types:
            walk(nested)
        for e in desc.enum_types:
            names.update(v.name for v in e.values)
    for msg in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
        walk(msg)
    for e in caffe_pb2.DESCRIPTOR.enum_types_by_name.values():
        names.update(v.name for v in e.values)
    return frozenset(names)


# What a prototxt may be, checked before protobuf's parser sees it: real nets are under a few MB,
# with short lines, nested a few levels deep (layer { convolution_param { weight_filler { } } }).
MAX_PROTOTXT_BYTES = 64 << 20
MAX_LINE = 1 << 20
MAX_DEPTH = 32

# A string runs to its closing quote or to the end of its line (as protobuf's tokenizer reads it), so
# every match succeeds where it starts and the scan stays linear even for unterminated strings.
_STRINGS = re.compile(r'"(?:[^"\\\n]|\\.?)*+(?:"|$)|\'(?:[^\'\\\n]|\\.?)*+(?:\'|$)', re.MULTILINE)
_COMMENTS = re.compile(r"#[^\n]*")
# A field name is a word followed by ":" or "{" (or "<"). The lookbehind starts a match only at a
# word's first character and the possessive quantifiers never backtrack, so the scan is linear:
# with plain ones a 20,000-character word took 5 s, each start position retrying the whole word.
_FIELD = re.compile(r"(?<![\w.])(\w++)\s*+(?=[:{<])")


def _bare(text: str) -> str:
    """The text with strings and comments taken out (what remains holds names and structure)."""
    return _COMMENTS.sub("", _STRINGS.sub('""', text))


def _check_shape(text: str, bare: str, path: Path) -> None:
    """Line length and nesting depth within bounds (protobuf's text parser recurses per level)."""
    for n, line in enumerate(text.splitlines(), 1):
        if len(line) > MAX_LINE:
            raise CaffeError(f"{path}: line {n} is {len(line):,} characters long (at most {MAX_LINE:,}): not a "
                             f"net definition")
    depth = 0
    for m in re.finditer(r"[{}<>]", bare):
        depth += 1 if m.group() in "{<" else -1
        if depth > MAX_DEPTH:
            line = bare.count("\n", 0, m.start()) + 1
            raise CaffeError(f"{path}: line {line}: blocks nest more than {MAX_DEPTH} levels deep: not a net "
                             f"definition")


def read_prototxt(path, schema: Schema = DEFAULT) -> tuple[caffe_pb2.NetParameter, list[str]]:
    """Parses a prototxt with ``schema`` (kindling's, or one with a fork's merged in); returns the
    net and notes about fields kindling's converter does not use (fork additions, skipped). A
    syntax error names the file and line."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PROTOTXT_BYTES:
            raise CaffeError(f"{path}: {size:,} bytes is too large for a net definition (at most "
                             f"{MAX_PROTOTXT_BYTES >> 20} MB): is it the caffemodel?")
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise CaffeError(f"{path}: cannot read: {e.strerror or e}") from e
    if "\x00" in text:  # protobuf text never holds a NUL byte; a binary caffemodel soon does
        raise CaffeError(f"{path}: is binary (a caffemodel?), not a prototxt text file: are --prototxt and "
                         f"--caffemodel swapped?")
    bare = _bare(text)
    _check_shape(text, bare, path)
    net = schema.net()
    try:
        text_format.Parse(text, net, allow_unknown_field=True, allow_unknown_extension=True)
    except text_format.ParseError as e:
        m = re.match(r"(\d+):(\d+) : (.*)", str(e))
        where = f"line {m.group(1)}, column {m.group(2)}: {m.group(3)}" if m else str(e)
        fork = re.search(r'V1LayerParameter.LayerType" has no value named (\w+)', str(e))
        hint = (f" ({fork.group(1)} is no V1 layer type of BVLC Caffe: the net was written for a fork of Caffe; "
                f"give the fork's caffe.proto with --proto)" if fork and schema is DEFAULT else "")
        raise CaffeError(f"{path}: syntax error at {where}{hint}") from e
    except RecursionError as e:  # _check_shape bounds the depth; this is the parser's own limit
        raise CaffeError(f"{path}: blocks nest too deeply to parse") from e
    unknown = sorted(set(_FIELD.findall(bare)) - _known_field_names())
    notes = [f"{path.name}: ignored fields this converter does not use: {', '.join(unknown)}"] if unknown else []
    return net, [*schema.notes, *notes]


def read_net_binary(path) -> caffe_pb2.NetParameter:
    """A whole binary NetParameter (for small files: tests, net structure from a caffemodel)."""
    try:
        return caffe_pb2.NetParameter.FromString(Path(path).read_bytes())
    except Exception as e:
        raise CaffeError(f"{path}: not a readable caffemodel ({e})") from e


def _state_meets_rule(rule: caffe_pb2.NetStateRule, phase: int, level: int, stages: set[str]) -> bool:
    """Caffe's Net::StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def included(layer, phase: int = caffe_pb2.TEST, level: int = 0, stages=()) -> bool:
    """Caffe's Net::FilterNet: include rules (any met) or exclude rules (none met)."""
    stages = set(stages)
    if layer.include:
        return any(_state_meets_rule(r, phase, level, stages) for r in layer.include)
    return not any(_state_meets_rule(r, phase, level, stages) for r in layer.exclude)


def layers_of(net: caffe_pb2.NetParameter, path, phase: int = caffe_pb2.TEST, stages=()) -> list[CaffeLayer]:
    """The net's layers for ``phase``, in order, current or V1 format alike."""
    if net.layer and net.layers:
        raise CaffeError(f"{path}: mixes `layer` (current) and `layers` (V1) definitions")
    out = []
    layer_type = layer_class(net)
    params = layer_type.DESCRIPTOR.fields_by_name
    v1_types = net.DESCRIPTOR.fields_by_name["layers"].message_type.fields_by_name["type"].enum_type
    for v1 in net.layers:
        if v1.HasField("layer"):
            raise CaffeError(f"{path}: V0 layer definitions (layers {{ layer {{ ... }} }}) are too old to read; "
                             f"upgrade the net with Caffe's upgrade_net_proto_text first")
        if not included(v1, phase, stages=stages):
            continue
        p = layer_type()
        for fd, value in v1.ListFields():  # the *_param messages both formats name alike (forks' too)
            same = params.get(fd.name)
            if fd.message_type and same is not None and same.message_type is fd.message_type \
                    and not fd.is_repeated:
                getattr(p, fd.name).CopyFrom(value)
        kind = v1_types.values_by_number[v1.type].name
        out.append(CaffeLayer(v1.name, V1_TYPES.get(kind) or _camel(kind), list(v1.bottom), list(v1.top), p,
                              lr_mult=list(v1.blobs_lr), decay_mult=list(v1.weight_decay)))
    for layer in net.layer:
        if not included(layer, phase, stages=stages):
            continue
        out.append(CaffeLayer(layer.name, layer.type, list(layer.bottom), list(layer.top), layer,
                              lr_mult=[p.lr_mult for p in layer.param],
                              decay_mult=[p.decay_mult for p in layer.param]))
    return out


def unique_names(layers: list[CaffeLayer], path, weighted, kept, notes: list[str]) -> list[CaffeLayer]:
    """Module names are layer names. Caffe allows repeats (HED names five Crop layers "crop";
    BVLC's mnist_autoencoder two loss layers "loss"): among the ``kept`` layers (those that become
    modules), a repeated one without weights is renamed name_1, name_2, ... as OpenCV does, with a
    note; two layers with weights under one name are refused, since the caffemodel's weights are
    found by name. The layers stay in their order."""
    heavy = [la.name for la in layers if kept(la) and weighted(la)]
    dup = sorted({n for n in heavy if heavy.count(n) > 1})
    if dup:
        raise CaffeError(f"{path}: layers with weights share the names {', '.join(dup)}; each needs its own name "
                         f"(the caffemodel's weights are found by layer name)")
    all_names = {la.name for la in layers if kept(la)}
    taken, out, renamed = set(heavy), [], {}
    for layer in layers:
        if not kept(layer) or weighted(layer) or layer.name not in taken:
            if kept(layer):
                taken.add(layer.name)
            out.append(layer)
            continue
        k = 1
        while f"{layer.name}_{k}" in taken or f"{layer.name}_{k}" in all_names:
            k += 1
        new = f"{layer.name}_{k}"
        taken.add(new)
        renamed.setdefault(layer.name, []).append(new)
        out.append(replace(layer, name=new))
    for name, news in renamed.items():
        notes.append(f"layers named {name!r} repeat: the later ones are {', '.join(news)} (as OpenCV names them)")
    return out


def declared_inputs(net: caffe_pb2.NetParameter, layers: list[CaffeLayer]) -> dict[str, list[int] | None]:
    """Net inputs and their shapes from `input:` + `input_dim:` / `input_shape`, or Input layers."""
    inputs: dict[str, list[int] | None] = {}
    dims = list(net.input_dim)
    for i, name in enumerate(net.input):
        if i < len(net.input_shape):
            inputs[name] = list(net.input_shape[i].dim)
        elif len(dims) >= 4 * (i + 1):
            inputs[name] = dims[4 * i:4 * i + 4]
        else:
            inputs[name] = None
    for layer in layers:
        if layer.type == "Input":
            shapes = [list(s.dim) for s in layer.param.input_param.shape]
            for i, top in enumerate(layer.tops):
                inputs[top] = shapes[i] if i < len(shapes) else (shapes[0] if shapes else None)
    return inputs


def cut_at(layers: list[CaffeLayer], outputs: list[str], path) -> list[CaffeLayer]:
    """Only the layers that the ``outputs`` blobs need (a detector's backbone, a classifier's
    features), in order. A blob is what its last writer left in it, as in Caffe: cutting at
    "conv5" after an in-place ReLU keeps the ReLU."""
    written = {t for la in layers for t in la.tops}
    unknown = [o for o in outputs if o not in written]
    if unknown:
        raise CaffeError(f"{path}: --outputs names {', '.join(map(repr, unknown))}, which no layer writes; the net's "
                         f"blobs are {', '.join(sorted(written))}")
    needed, kept = set(outputs), []
    for layer in reversed(layers):
        if needed & set(layer.tops):
            needed -= set(layer.tops)
            needed |= set(layer.bottoms)
            kept.append(layer)
    return kept[::-1]
