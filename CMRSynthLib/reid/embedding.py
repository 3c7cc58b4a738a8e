"""The re-identification embedding: a small CNN that puts slices of one patient close together.

What it sees (the *view*): a prepared slice (the generator's grid, intensities in [-1, 1]) with the heart
(``mask > 0``, dilated by ``heart_margin`` pixels) set to 0. The mask is the user's input: every image made
from a member's mask shows that member's heart, whatever model drew it, so the heart's outline is not what
the filter asks about. It asks whether the generator adds what the mask does not carry and only a training
patient's scan does: the thorax, fat, liver and spine around the heart, the patient's texture and contrast.

Training: the supervised contrastive loss of Khosla et al. (2020, eq. 2, "L_out") with the patient as the
class: in a batch of ``batch_patients`` patients × ``per_patient`` slices, every other slice of the same
patient (another level of the stack, the other phase) is a positive. Slices are augmented (intensity
scale and offset, Gaussian noise, a shift of a few pixels) so that a generator's re-rendering of a patient
stays close to that patient. The network is MONAI's ``Regressor`` (residual strided convolutions, instance
norm, a linear head); embeddings are L2-normalised, so distances lie in [0, 2].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from CMRSynthLib.models.config import FrozenConfig
from CMRSynthLib.reid import DEFAULT_STEPS


@dataclass(frozen=True)
class ReidConfig(FrozenConfig):
    """The embedding network and how it is fitted.

    Attributes:
        size: prepared slice size ``(H, W)`` (the generator's preprocessing ``size``).
        dim: embedding dimension. channels: the network's channels per level (each level halves H and W).
        heart_margin: pixels by which the heart is dilated before it is blanked out of the view.
        steps, batch_patients, per_patient, lr, temperature: the contrastive fit. seed: its randomness.
    """

    size: tuple[int, int]
    dim: int = 32
    channels: tuple[int, ...] = (16, 32, 64, 64)
    heart_margin: int = 2
    steps: int = DEFAULT_STEPS
    batch_patients: int = 8
    per_patient: int = 4
    lr: float = 1e-3
    temperature: float = 0.1
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        for name in ("dim", "steps", "batch_patients", "per_patient"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        if self.per_patient < 2:
            raise ValueError(f"per_patient must be at least 2 (a slice needs a positive), got {self.per_patient}")
        if self.heart_margin < 0 or not self.lr > 0 or not self.temperature > 0:
            raise ValueError("heart_margin must be ≥ 0, lr and temperature > 0")


def build_network(config: ReidConfig) -> nn.Module:
    """MONAI ``Regressor``: ``(B, 1, H, W)`` → ``(B, dim)`` (not yet normalised)."""
    from monai.networks.nets import Regressor

    return Regressor(in_shape=(1, *config.size), out_shape=(config.dim,), channels=config.channels,
                     strides=(2,) * len(config.channels), norm="instance", num_res_units=1)


def heart_region(masks: np.ndarray, margin: int) -> np.ndarray:
    """``(N, H, W)`` bool: the heart (``mask > 0``) of each slice dilated by ``margin`` pixels in-plane."""
    from scipy.ndimage import binary_dilation

    heart = np.asarray(masks) > 0
    if margin == 0 or not heart.any():
        return heart
    structure = np.zeros((1, 3, 3), bool)
    structure[0] = True
    return binary_dilation(heart, structure=structure, iterations=margin)


def heart_corner(masks: np.ndarray, size: tuple[int, int]) -> tuple[int, int]:
    """Top-left ``(row, column)`` of the ``size`` window centred on the heart centroid of a whole stack
    ``(K, H, W)`` (on the stack's centre when it has no heart), as preprocessing centres its crop."""
    heart = np.argwhere(np.asarray(masks) > 0)
    centre = heart[:, 1:].mean(axis=0) if len(heart) else (np.asarray(masks.shape[1:]) - 1) / 2.0
    return tuple(int(round(c - (s - 1) / 2.0)) for c, s in zip(centre, size))


def crop(array: np.ndarray, corner: tuple[int, int], size: tuple[int, int], *, fill: float) -> np.ndarray:
    """``array[:, r:r + h, c:c + w]`` for ``corner`` ``(r, c)`` and ``size`` ``(h, w)``, padded with ``fill``."""
    (r, c), (h, w) = corner, size
    pad = ((0, 0), (max(-r, 0), max(r + h - array.shape[1], 0)), (max(-c, 0), max(c + w - array.shape[2], 0)))
    padded = np.pad(array, pad, constant_values=fill)
    r, c = r + pad[1][0], c + pad[2][0]
    return padded[:, r:r + h, c:c + w]


def view(images: np.ndarray | torch.Tensor, heart: np.ndarray | torch.Tensor) -> torch.Tensor:
    """What the embedding sees: ``images`` ``(N, H, W)`` with ``heart`` ``(N, H, W)`` set to 0 → ``(N, 1, H, W)``."""
    images = torch.as_tensor(np.asarray(images, np.float32) if not torch.is_tensor(images) else images).float()
    heart = torch.as_tensor(np.asarray(heart) if not torch.is_tensor(heart) else heart).bool()
    return images.masked_fill(heart, 0.0)[:, None]


def supervised_contrastive_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon "L_out" (Khosla et al. 2020, eq. 2) for unit embeddings ``z`` ``(B, D)`` and classes ``(B,)``.

    For anchor i with positives P(i) (same class, not i): ``-1/|P(i)| Σ_p log(exp(z_i·z_p/τ) /
    Σ_{a≠i} exp(z_i·z_a/τ))``, averaged over anchors that have a positive. Written out because MONAI's
    ``ContrastiveLoss`` is the unsupervised two-view NT-Xent, which cannot use the patient labels.
    """
    similarity = z @ z.T / temperature
    itself = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_prob = similarity.masked_fill(itself, float("-inf"))
    log_prob = log_prob - torch.logsumexp(log_prob, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~itself
    counts = positives.sum(1)
    per_anchor = -log_prob.masked_fill(~positives, 0.0).sum(1) / counts.clamp_min(1)
    return per_anchor[counts > 0].mean()


def _augment(images: torch.Tensor, heart: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """A random re-rendering of each slice: intensity ``a·x + b``, noise, a shift of up to 2 pixels."""
    n = len(images)
    scale = 1.0 + 0.1 * (2 * torch.rand(n, 1, 1, generator=rng) - 1)
    offset = 0.05 * (2 * torch.rand(n, 1, 1, generator=rng) - 1)
    noise = torch.randn(images.shape, generator=rng) * 0.05 * torch.rand(n, 1, 1, generator=rng)
    out = (images * scale + offset + noise).clamp(-1, 1)
    shifts = torch.randint(-2, 3, (n, 2), generator=rng)
    rolled = [torch.roll(v, tuple(s.tolist()), dims=(-2, -1)) for v, s in zip(view(out, heart)[:, 0], shifts)]
    return torch.stack(rolled)[:, None]


def fit_embedding(images: np.ndarray, masks: np.ndarray, patients: np.ndarray, config: ReidConfig, *,
                  device: str | torch.device = "cpu",
                  callback: Callable[[int, int, float], None] | None = None) -> nn.Module:
    """Fit the embedding on the slices of the training patients → the network in eval mode.

    Args:
        images: ``(N, H, W)`` prepared slices in [-1, 1]; masks: ``(N, H, W)`` canonical labels;
        patients: ``(N,)`` patient ids (the contrastive classes; at least two patients).
        callback: ``callback(step, steps, loss)`` after every step.
    """
    ids, labels = np.unique(np.asarray(patients, dtype=str), return_inverse=True)
    if len(ids) < 2:
        raise ValueError(f"the embedding needs slices of at least 2 patients, got {len(ids)}")
    if tuple(images.shape[1:]) != config.size:
        raise ValueError(f"slices are {tuple(images.shape[1:])}, the config says {config.size}")
    torch.manual_seed(config.seed)  # the network's initial weights
    network = build_network(config).to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=1e-4)
    rng = np.random.default_rng(config.seed)
    noise_rng = torch.Generator().manual_seed(config.seed)
    tensor = torch.as_tensor(np.asarray(images, np.float32))
    heart = torch.as_tensor(heart_region(masks, config.heart_margin))
    by_patient = [np.flatnonzero(labels == k) for k in range(len(ids))]
    network.train()
    for step in range(config.steps):
        chosen = rng.choice(len(ids), size=min(config.batch_patients, len(ids)), replace=False)
        index = np.concatenate([rng.choice(by_patient[k], size=config.per_patient,
                                           replace=len(by_patient[k]) < config.per_patient) for k in chosen])
        batch = _augment(tensor[index], heart[index], noise_rng).to(device)
        z = nn.functional.normalize(network(batch), dim=1)
        loss = supervised_contrastive_loss(z, torch.as_tensor(labels[index], device=device), config.temperature)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if callback is not None:
            callback(step + 1, config.steps, float(loss.detach()))
    return network.eval()


@torch.no_grad()
def embed(network: nn.Module, images: np.ndarray, masks: np.ndarray, *, heart_margin: int,
          batch_size: int = 128) -> np.ndarray:
    """Unit embeddings ``(N, dim)`` float32 of slices ``images`` ``(N, H, W)`` with their ``masks``."""
    if len(images) == 0:
        raise ValueError("no slices to embed")
    device = next(network.parameters()).device
    heart = heart_region(masks, heart_margin)
    out = [nn.functional.normalize(network(view(images[i:i + batch_size], heart[i:i + batch_size]).to(device)),
                                   dim=1).cpu().numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float32)
