"""ImageNet Inception-v3 pool features for FID/KID, only from a weights file the user supplies.

Nothing is downloaded: ``--inception-weights FILE`` names a safetensors file (or a plain tensor state dict
readable by ``torch.load(weights_only=True)``) with the parameter names of the standard Inception-v3
(torchvision's names, which the FID reference weights share). Its classifier decides the variant:

- 1008 classes: the TensorFlow FID network ("pt_inception-2015-12-05", as in pytorch-fid/torch-fidelity),
  whose pooling differs in three places (average pooling without padding in the A, C and first E blocks,
  max pooling in the last E block); inputs in [-1, 1];
- 1000 classes (or no classifier): torchvision's ImageNet network; inputs normalised with ImageNet's mean/std.

Written here because neither torchvision nor torch-fidelity is a dependency; the architecture is the
published one (Szegedy et al. 2016). Every expected tensor must be present with its exact shape, otherwise
:class:`InputError` names the file and the first mismatches. Grey slices are repeated to 3 channels and
resized bilinearly to 299×299; the features are the 2048 global-average-pooled activations of Mixed_7c.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from CMRSynthLib.errors import InputError

SIZE = 299
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Conv(nn.Module):
    """Convolution without bias, batch norm (eps 0.001), ReLU: Inception's BasicConv2d."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg(x, fid: bool):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=not fid)


class BlockA(nn.Module):
    def __init__(self, cin: int, pool: int, fid: bool):
        super().__init__()
        self.fid = fid
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 64, 1), Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg(x, self.fid))], 1)


class BlockB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 64, 1), Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):
    def __init__(self, cin: int, c7: int, fid: bool):
        super().__init__()
        self.fid = fid
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = Conv(cin, c7, 1), Conv(c7, c7, **row), Conv(c7, 192, **col)
        self.branch7x7dbl_1, self.branch7x7dbl_2 = Conv(cin, c7, 1), Conv(c7, c7, **col)
        self.branch7x7dbl_3, self.branch7x7dbl_4 = Conv(c7, c7, **row), Conv(c7, c7, **col)
        self.branch7x7dbl_5 = Conv(c7, 192, **row)
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x, self.fid))], 1)


class BlockD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(cin, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x):
        d = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            d = layer(d)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), d, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):
    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool  # "avg" (torchvision), "avg_nopad" (FID first E block) or "max" (FID last E block)
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = Conv(384, 384, (1, 3), padding=(0, 1)), Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 448, 1), Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        b = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "max":
            pooled = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            pooled = _avg(x, self.pool == "avg_nopad")
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b), self.branch3x3_2b(b),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


class InceptionV3Features(nn.Module):
    """Inception-v3 up to the 2048-d pool: images ``(B, 3, 299, 299)`` → features ``(B, 2048)``."""

    def __init__(self, *, fid: bool = True):
        super().__init__()
        self.fid = fid
        self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = Conv(3, 32, 3, stride=2), Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1, self.Conv2d_4a_3x3 = Conv(64, 80, 1), Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32, fid), BlockA(256, 64, fid), BlockA(288, 64, fid)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128, fid), BlockC(768, 160, fid)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160, fid), BlockC(768, 192, fid)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, "avg_nopad" if fid else "avg")
        self.Mixed_7c = BlockE(2048, "max" if fid else "avg")

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError("--inception-weights: file not found", path=path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise InputError(f"--inception-weights: cannot read the file as tensors ({type(exc).__name__}: {exc})",
                         path=path) from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError("--inception-weights: expected a flat dict of tensors (a state dict)", path=path)
    return state


def load_inception(path) -> InceptionV3Features:
    """The Inception-v3 feature network with the weights of ``path``; InputError if they do not fit."""
    path = Path(path)
    state = _read_tensors(path)
    classes = state["fc.weight"].shape[0] if "fc.weight" in state else 1000
    network = InceptionV3Features(fid=classes == 1008)
    expected = {k: v.shape for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    if missing or wrong:
        detail = "; ".join(filter(None, [
            f"{len(missing)} tensors missing (e.g. {', '.join(missing[:3])})" if missing else "",
            "wrong shapes: " + ", ".join(f"{k} {tuple(state[k].shape)} instead of {tuple(expected[k])}"
                                         for k in wrong[:3]) if wrong else ""]))
        raise InputError(f"--inception-weights do not fit Inception-v3 ({detail})", path=path)
    network.load_state_dict({k: state[k] for k in expected}, strict=False)
    return network.eval()


def inception_space(path):
    """A :class:`~.features.FeatureSpace` of Inception-v3 pool features from the user's weights file."""
    from CMRSynthLib.audit.features import FeatureSpace

    network = load_inception(path)
    variant = "TensorFlow FID" if network.fid else "torchvision ImageNet"

    def encode(images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        out = [np.zeros((0, 2048))]
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))[:, None].float()
                x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
                if not network.fid:  # [-1, 1] → [0, 1] → ImageNet normalisation
                    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
                    x = ((x + 1) / 2 - mean) / std
                out.append(network(x).double().numpy())
        return np.concatenate(out)

    return FeatureSpace("Inception", f"ImageNet Inception-v3 pool features (2048, {variant} weights from "
                                     f"{Path(path).name}; FD-Inception is a Fréchet distance on these features "
                                     "after standardising them, not the FID)", encode)
