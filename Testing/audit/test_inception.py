"""Inception-v3 weights: a file of the right shapes loads and gives 2048 features; a wrong one is refused."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from CMRSynthLib.audit.inception import InceptionV3Features, inception_space, load_inception
from CMRSynthLib.errors import InputError


def _weights(classes: int) -> dict:
    torch.manual_seed(0)
    state = {k: v for k, v in InceptionV3Features(fid=classes == 1008).state_dict().items()
             if not k.endswith("num_batches_tracked")}  # the FID reference file has no such counters
    state["fc.weight"], state["fc.bias"] = torch.zeros(classes, 2048), torch.zeros(classes)
    return state


def test_parameter_count_is_inception_v3():
    # torchvision's Inception-v3 has 23.8 M parameters without its auxiliary head; 2.05 M are the classifier
    assert sum(p.numel() for p in InceptionV3Features().parameters()) == 21_785_568


@pytest.mark.parametrize("classes", [1008, 1000])
def test_weights_round_trip_and_features(tmp_path, classes):
    path = tmp_path / "inception.safetensors"
    save_file(_weights(classes), str(path))
    network = load_inception(path)
    assert network.fid == (classes == 1008)
    space = inception_space(path)
    features = space.encode(np.zeros((2, 32, 32), np.float32))
    assert features.shape == (2, 2048) and np.isfinite(features).all()
    assert ("TensorFlow FID" in space.description) == (classes == 1008)


def test_wrong_shapes_and_missing_tensors_are_refused(tmp_path):
    state = _weights(1008)
    state["Mixed_7c.branch1x1.conv.weight"] = torch.zeros(320, 2048, 3, 3)
    del state["Mixed_5b.branch_pool.bn.running_var"]
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(InputError, match=r"1 tensors missing .*Mixed_5b.*wrong shapes: Mixed_7c"):
        load_inception(path)
    with pytest.raises(InputError, match="not found"):
        load_inception(tmp_path / "absent.safetensors")
