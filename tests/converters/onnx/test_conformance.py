"""kindling as an ONNX backend over the node test cases that ship inside the installed onnx package
(onnx.backend.test: each case a model with its inputs and expected outputs): every case kindling
converts (all its ops supported, float32 where kindling computes) must match, with onnx's own
comparison and tolerances; the others are counted as skipped, with the reason, never hidden."""
import collections
import warnings

import numpy as np
import pytest

from kindling.converters.onnx.backend import KindlingBackend, unsupported_reason

# Ops the issue lists: each must have cases that run (a table, so a regression in the support
# check cannot quietly turn a listed op's cases into skips).
LISTED = ("Conv ConvTranspose Gemm MatMul Add Sub Mul Div Sum Max Min Mean Relu LeakyRelu PRelu Elu Selu Clip "
          "Sigmoid HardSigmoid HardSwish Tanh Softmax LogSoftmax MaxPool AveragePool GlobalAveragePool GlobalMaxPool "
          "BatchNormalization InstanceNormalization LRN Dropout Flatten Reshape Transpose Squeeze Unsqueeze Concat "
          "Split Slice Pad Identity Resize Upsample").split()
# ...and the ones that only fold into constants when kindling converts a model
FOLDED = ["Constant", "ConstantOfShape", "Cast", "Shape", "Gather"]


@pytest.fixture(scope="module")
def cases():
    from onnx.backend.test.loader import load_model_tests
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators overflow casts on purpose
        return load_model_tests(kind="node")


def test_onnx_node_conformance(cases):
    from onnx.backend.test.runner import Runner
    passed, failed, skipped, ran_ops = [], [], collections.Counter(), collections.Counter()
    listed_skips = []  # float32 single-node cases of a listed op that kindling does not run, and why
    for case in cases:
        why = unsupported_reason(case.model)
        if why:
            skipped[why] += 1
            ops = {n.op_type for n in case.model.graph.node}
            if len(case.model.graph.node) == 1 and ops <= {*LISTED, *FOLDED} and "non-float32" not in why:
                listed_skips.append(f"{case.name} ({why})")
            continue
        try:
            rep = KindlingBackend.prepare(case.model)
            for inputs, expected in case.data_sets:
                with np.errstate(all="ignore"):  # cases take logs of 0, divide by 0 on purpose
                    outputs = rep.run(inputs)
                Runner.assert_similar_outputs(expected, outputs, rtol=case.rtol, atol=case.atol)
        except Exception as e:  # noqa: BLE001 - every failure is collected and reported below
            failed.append(f"{case.name}: {type(e).__name__}: {str(e)[:300]}")
        else:
            passed.append(case.name)
            ran_ops.update({n.op_type for n in case.model.graph.node})
    print(f"\nONNX node conformance ({len(cases)} cases of onnx's backend suite): {len(passed)} passed, "
          f"{len(failed)} failed, {sum(skipped.values())} skipped")
    for why, n in skipped.most_common(12):
        print(f"  skipped {n:4d}: {why[:110]}")
    print(f"  float32 cases of the listed ops skipped ({len(listed_skips)}):")
    for line in listed_skips:
        print(f"    {line}")
    assert not failed, "\n".join(failed)
    missing = [op for op in LISTED if ran_ops[op] == 0]
    assert not missing, f"no case ran for listed ops {missing}"
    assert len(passed) >= 270, f"only {len(passed)} cases ran"
