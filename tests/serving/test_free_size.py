"""Serving a net that takes any input size: the smoke test and warm-up run at its declared size,
each request's images at their own size, and a size the net does not fit is refused naming the
layer."""
import numpy as np
import pytest
from PIL import Image

import kindling
from caffe_nets import CAT, ZOO, zoo_net
from kindling.converters import caffe
from kindling.runtime.predict import InputError
from kindling.serving.servable import load_servable


def test_a_free_size_net_is_served_at_each_images_size(tmp_path):
    proto, weights = zoo_net(tmp_path, ZOO / "squeezenet_v1.1_deploy.prototxt")
    model = caffe.convert(proto, weights, labels=[f"class {i}" for i in range(1000)],
                          preprocessing={"mean": [104.0, 117.0, 123.0], "channel_order": "bgr"})
    path = kindling.save(model, tmp_path / "model.1")
    servable = load_servable("squeezenet", 1, path, workers=2, max_batch=4, max_pixels=None)
    small = tmp_path / "small.png"
    Image.open(CAT).resize((150, 100)).save(small)
    worker = servable.replicas[1]
    for image in (CAT, small):  # one request each: each at its own size
        got = worker.classify([image.read_bytes()], top_k=3)[0]
        expected = caffe.convert(proto, weights).evaluate().forward(worker.preprocess([image])).reshape(-1)
        assert got.indices == np.argsort(-expected)[:3].tolist()
    with pytest.raises(InputError, match="the images differ in size"):
        worker.preprocess([CAT.read_bytes(), small.read_bytes()])  # one batch cannot hold two sizes
    tiny = tmp_path / "tiny.png"
    Image.open(CAT).resize((12, 9)).save(tiny)
    with pytest.raises(InputError, match=r"layer 'pool3' \(MaxPool2d\) does not fit"):
        worker.preprocess([tiny.read_bytes()])
