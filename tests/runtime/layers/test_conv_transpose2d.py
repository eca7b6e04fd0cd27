import numpy as np
import pytest

from helpers import check_module, nhwc_view
from kindling.runtime import nn

CASES = {
    "stride2_pad1_outpad1_groups2": dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1,
                                         output_padding=1, groups=2, bias=True, dilation=1),
    "rect_dilated_no_bias": dict(in_channels=3, out_channels=2, kernel_size=(4, 3), stride=(2, 1), padding=(1, 0),
                                 output_padding=0, groups=1, bias=False, dilation=(1, 2)),
    "fcn_upsample_2x": dict(in_channels=2, out_channels=2, kernel_size=4, stride=2, padding=1, output_padding=0,
                            groups=1, bias=False, dilation=1),
    "fcn_upsample_8x": dict(in_channels=3, out_channels=2, kernel_size=16, stride=8, padding=4, output_padding=0,
                            groups=1, bias=True, dilation=1),
    "whole_strides_rect_outpad": dict(in_channels=3, out_channels=4, kernel_size=(4, 6), stride=(2, 3),
                                      padding=(1, 0), output_padding=(1, 2), groups=1, bias=True, dilation=1),
    "1x1": dict(in_channels=3, out_channels=5, kernel_size=1, stride=1, padding=0, output_padding=0, groups=1,
                bias=True, dilation=1),
}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", CASES)
def test_conv_transpose_matches_torch(torch, case, batch):
    args = CASES[case]
    x = np.random.default_rng(0).standard_normal((batch, args["in_channels"], 5, 4)).astype(np.float32)
    check_module(torch, nn.ConvTranspose2d(**args), torch.nn.ConvTranspose2d(**args), nhwc_view(x))


def test_conv_transpose_rejects_bad_output_padding():
    with pytest.raises(ValueError, match="output_padding"):
        nn.ConvTranspose2d(2, 2, 3, stride=1, output_padding=1, name="up")
