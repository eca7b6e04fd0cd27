"""Small Caffe nets for seeds: each layer type kindling converts, on a 1x3x8x8 input, with a
caffemodel of random weights written with the same schema."""
from __future__ import annotations

import numpy as np
from google.protobuf import text_format

from kindling.protos import caffe_pb2

HEAD = 'name: "seed"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'


def _layer(name, kind, bottoms, tops, params=""):
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in tops)
    return f'layer {{ name: "{name}" type: "{kind}" {b} {t} {params} }}\n'


# (prototxt body, {layer: [blob shapes]})
NETS = [
    (_layer("conv", "Convolution", ["data"], ["conv"], "convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 }")
     + _layer("bn", "BatchNorm", ["conv"], ["conv"]) + _layer("sc", "Scale", ["conv"], ["conv"], "scale_param { bias_term: true }")
     + _layer("relu", "ReLU", ["conv"], ["conv"])
     + _layer("pool", "Pooling", ["conv"], ["pool"], "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
     + _layer("fc", "InnerProduct", ["pool"], ["fc"], "inner_product_param { num_output: 5 }")
     + _layer("prob", "Softmax", ["fc"], ["prob"]),
     {"conv": [(4, 3, 3, 3), (4,)], "bn": [(4,), (4,), (1,)], "sc": [(4,), (4,)], "fc": [(5, 64), (5,)]}),
    (_layer("a", "Convolution", ["data"], ["a"], "convolution_param { num_output: 2 kernel_size: 1 }")
     + _layer("b", "Convolution", ["data"], ["b"], "convolution_param { num_output: 2 kernel_size: 3 pad: 1 group: 1 }")
     + _layer("cat", "Concat", ["a", "b"], ["cat"], "concat_param { axis: 1 }")
     + _layer("sum", "Eltwise", ["a", "b"], ["sum"], "eltwise_param { operation: SUM coeff: 1 coeff: -1 }")
     + _layer("prod", "Eltwise", ["cat", "cat"], ["prod"], "eltwise_param { operation: PROD }")
     + _layer("ave", "Pooling", ["prod"], ["ave"], "pooling_param { pool: AVE global_pooling: true }"),
     {"a": [(2, 3, 1, 1), (2,)], "b": [(2, 3, 3, 3), (2,)]}),
    (_layer("dw", "ConvolutionDepthwise", ["data"], ["dw"], "convolution_param { num_output: 3 kernel_size: 3 stride: 2 }")
     + _layer("up", "Deconvolution", ["dw"], ["up"], "convolution_param { num_output: 3 kernel_size: 2 stride: 2 bias_term: false }")
     + _layer("crop", "Crop", ["up", "data"], ["crop"], "crop_param { axis: 2 offset: 0 }")
     + _layer("prelu", "PReLU", ["crop"], ["crop"])
     + _layer("lrn", "LRN", ["crop"], ["lrn"], "lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 }"),
     {"dw": [(3, 1, 3, 3), (3,)], "up": [(3, 3, 2, 2)], "prelu": [(3,)]}),
    (_layer("slice", "Slice", ["data"], ["s1", "s2"], "slice_param { axis: 1 slice_point: 1 }")
     + _layer("flat", "Flatten", ["s2"], ["flat"])
     + _layer("resh", "Reshape", ["s1"], ["resh"], "reshape_param { shape { dim: 0 dim: -1 } }")
     + _layer("perm", "Permute", ["s2"], ["perm"], "permute_param { order: 0 order: 2 order: 3 order: 1 }")
     + _layer("norm", "Normalize", ["s2"], ["norm"], "norm_param { across_spatial: false channel_shared: false }")
     + _layer("tile", "Tile", ["s1"], ["tile"], "tile_param { axis: 1 tiles: 2 }")
     + _layer("arg", "ArgMax", ["tile"], ["arg"], "argmax_param { top_k: 1 axis: 1 }"),
     {"norm": [(2,)]}),
    (_layer("pow", "Power", ["data"], ["pow"], "power_param { power: 2 scale: 0.5 shift: 1 }")
     + _layer("exp", "Exp", ["pow"], ["exp"], "exp_param { base: 2 }")
     + _layer("log", "Log", ["exp"], ["log"])
     + _layer("thr", "Threshold", ["log"], ["thr"], "threshold_param { threshold: 0.5 }")
     + _layer("mvn", "MVN", ["thr"], ["mvn"])
     + _layer("ups", "Upsample", ["mvn"], ["ups"], "upsample_param { scale: 2 }")
     + _layer("red", "Reduction", ["ups"], ["red"], "reduction_param { operation: SUMSQ axis: 2 }")
     + _layer("drop", "Dropout", ["red"], ["red"], "dropout_param { dropout_ratio: 0.5 }"),
     {}),
    (_layer("pool", "Pooling", ["data"], ["pool", "mask"], "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
     + _layer("bn", "BN", ["pool"], ["bnout"], "bn_param { bn_mode: INFERENCE }")
     + _layer("unpool", "Upsample", ["bnout", "mask"], ["unpool"], "upsample_param { scale: 2 }")
     + _layer("sig", "Sigmoid", ["unpool"], ["sig"]) + _layer("tanh", "TanH", ["sig"], ["tanh"])
     + _layer("elu", "ELU", ["tanh"], ["elu"]) + _layer("abs", "AbsVal", ["elu"], ["abs"])
     + _layer("bias", "Bias", ["abs"], ["bias"]) + _layer("bnll", "BNLL", ["bias"], ["bnll"])
     + _layer("shuf", "ShuffleChannel", ["bnll"], ["shuf"], "shuffle_channel_param { group: 3 }"),
     {"bn": [(1, 3, 1, 1), (1, 3, 1, 1)], "bias": [(3,)]}),
]

V1 = ('name: "v1"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n'
      'layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }\n'
      'layers { name: "relu" type: RELU bottom: "conv" top: "conv" }\n'
      'layers { name: "ip" type: INNER_PRODUCT bottom: "conv" top: "ip" inner_product_param { num_output: 3 } }\n')
V1_BLOBS = {"conv": [(2, 3, 3, 3), (2,)], "ip": [(3, 72), (3,)]}

# a train_val net: data and loss layers dropped, the phase chosen
TRAIN_VAL = ('name: "tv"\nlayer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN } '
             'transform_param { mean_value: 104 mean_value: 117 mean_value: 123 crop_size: 8 } }\n'
             'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }\n'
             'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n'
             'layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST } }\n')


def prototxts() -> list[str]:
    return [HEAD + body for body, _ in NETS] + [V1, TRAIN_VAL]


def caffemodel(prototxt: str, blobs: dict, v1: bool = False, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    net = caffe_pb2.NetParameter()
    text_format.Parse(prototxt, net)
    for layer in (net.layers if v1 else net.layer):
        for shape in blobs.get(layer.name, []):
            b = layer.blobs.add()
            if v1:
                b.num, b.channels, b.height, b.width = [1] * (4 - len(shape)) + list(shape)
            else:
                b.shape.dim.extend(shape)
            b.data.extend(rng.uniform(0.5, 1.5, shape).astype(np.float32).ravel().tolist())
    return net.SerializeToString()


def weighted() -> list[tuple[str, bytes]]:
    """(prototxt, caffemodel) pairs."""
    return [(HEAD + body, caffemodel(HEAD + body, blobs)) for body, blobs in NETS] + \
           [(V1, caffemodel(V1, V1_BLOBS, v1=True))]
