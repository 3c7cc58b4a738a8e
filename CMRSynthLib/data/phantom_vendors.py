"""The phantom's four vendor styles: how a scanner turns the anatomy into an image (DESIGN §7).

A style sets the tissue contrast of the bSSFP cine (signal relative to blood), the field of view, the
fraction of k-space acquired and its apodisation window (resolution, blur and Gibbs ringing), the smooth
receive-coil bias field, the signal-to-noise ratio and the scanner's intensity scale. Acquisition order:
contrast → bias field → complex Gaussian noise → k-space truncation and window → magnitude. The noise is
added before the k-space filter, so it is correlated like the noise of a zero-filled reconstruction, and the
magnitude makes it Rician. Its per-pixel standard deviation after filtering is ``blood / snr``.

The numbers are plausible rather than measured from any scanner; they differ enough that a classifier on
two simple features (myocardium/blood ratio, noise level) tells the vendors apart.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Mapping

import numpy as np
import scipy.fft

from CMRSynthLib.data.phantom_anatomy import TISSUES


@dataclass(frozen=True)
class VendorStyle:
    """One scanner's look. ``contrast`` maps every tissue of :data:`TISSUES` to its signal (blood = 1)."""

    name: str
    contrast: Mapping[str, float]
    snr: float  # blood signal / noise standard deviation (per pixel, after the k-space filter)
    kspace_fraction: float  # acquired k-space extent / displayed matrix's extent, (0, 1]
    window: float  # apodisation: 0 = plain truncation (most ringing) … 1 = Hann (smooth, blurrier)
    bias: float  # strength of the log bias field across the field of view
    fov_mm: float  # in-plane field of view along the image columns (pixel size = fov_mm / columns)
    scale: float  # scanner units of the blood signal

    def __post_init__(self):
        missing = set(TISSUES) - set(self.contrast)
        if missing:
            raise ValueError(f"vendor style {self.name!r} lacks contrast for {sorted(missing)}")


def _contrast(myo, fat, muscle, liver, lung, soft):
    return {"blood": 1.0, "myo": myo, "fat": fat, "muscle": muscle, "liver": liver, "lung": lung,
            "marrow": 0.55 * fat, "bone": 0.03, "csf": 0.95, "soft": soft, "pericardium": 0.06}


VENDOR_STYLES: dict[str, VendorStyle] = {
    "Siemens": VendorStyle("Siemens", _contrast(0.27, 0.92, 0.24, 0.30, 0.05, 0.35), snr=30.0,
                           kspace_fraction=0.80, window=0.15, bias=0.30, fov_mm=180.0, scale=420.0),
    "Philips": VendorStyle("Philips", _contrast(0.36, 0.74, 0.30, 0.36, 0.07, 0.40), snr=42.0,
                           kspace_fraction=0.92, window=0.6, bias=0.12, fov_mm=165.0, scale=220.0),
    "GE": VendorStyle("GE", _contrast(0.19, 1.05, 0.18, 0.24, 0.04, 0.30), snr=18.0,
                      kspace_fraction=0.62, window=0.35, bias=0.45, fov_mm=200.0, scale=1800.0),
    "Canon": VendorStyle("Canon", _contrast(0.45, 0.84, 0.38, 0.42, 0.08, 0.46), snr=24.0,
                         kspace_fraction=0.70, window=0.0, bias=0.25, fov_mm=190.0, scale=900.0),
}


def patient_style(style: VendorStyle, rng: np.random.Generator) -> VendorStyle:
    """The vendor's style with this patient's scan-to-scan variation (coil, shim, protocol tweaks)."""
    contrast = {k: (v if k == "blood" else v * rng.normal(1.0, 0.03)) for k, v in style.contrast.items()}
    return replace(style, contrast=contrast, snr=style.snr * rng.uniform(0.88, 1.12),
                   fov_mm=style.fov_mm * rng.uniform(0.97, 1.03), scale=style.scale * rng.uniform(0.9, 1.1))


@lru_cache(maxsize=32)
def kspace_filter(rows: int, cols: int, fraction: float, window: float) -> np.ndarray:
    """``(rows, cols)`` float32 weights on the FFT grid: a box of ``fraction`` of the k-space extent along
    each axis (the acquired matrix), tapered by a Hann window blended in by ``window``."""
    weights = np.ones((rows, cols), np.float32)
    for axis, n in ((0, rows), (1, cols)):
        k = np.abs(np.fft.fftfreq(n)) * 2.0 / fraction  # 1 at the edge of the acquired extent
        w = np.where(k <= 1.0, (1 - window) + window * 0.5 * (1 + np.cos(np.pi * np.minimum(k, 1))), 0.0)
        weights *= w.reshape((-1, 1) if axis == 0 else (1, -1)).astype(np.float32)
    return weights


def acquire(signal: np.ndarray, style: VendorStyle, rng: np.random.Generator, *, bias: np.ndarray) -> np.ndarray:
    """Image a ``(K, H, W)`` noiseless signal (blood = 1) as ``style``: float32 magnitude in scanner units.

    ``bias`` is the ``(K, H, W)``-broadcastable multiplicative coil field (shared by a patient's phases).
    """
    _, h, w = signal.shape
    weights = kspace_filter(h, w, style.kspace_fraction, style.window)
    sigma = (1.0 / style.snr) / float(np.sqrt(np.mean(weights ** 2)))
    data = np.empty(signal.shape, np.complex64)
    data.real = signal * bias + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    data.imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    spectrum = scipy.fft.fft2(data, axes=(1, 2), overwrite_x=True, workers=1)
    spectrum *= weights
    image = np.abs(scipy.fft.ifft2(spectrum, axes=(1, 2), overwrite_x=True, workers=1))
    image *= np.float32(style.scale)
    return image


def bias_field(shape: tuple[int, int, int], style: VendorStyle, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field ``(K, H, W)`` as a separable product: brighter towards a random side
    and towards the anterior chest coil, mean about 1, log amplitude ``style.bias``."""
    k, h, w = shape
    ys = np.linspace(-1.0, 1.0, h, dtype=np.float32)
    xs = np.linspace(-1.0, 1.0, w, dtype=np.float32)
    zs = np.linspace(-1.0, 1.0, k, dtype=np.float32)
    gx, gy, gz, curve = rng.normal(0.0, 1.0, 4)
    log_x = style.bias * (0.5 * gx * xs - 0.25 * abs(curve) * xs ** 2)
    log_y = style.bias * (-0.6 * ys + 0.3 * gy * ys - 0.25 * abs(curve) * ys ** 2)  # anterior coil: top brighter
    log_z = style.bias * 0.2 * gz * zs
    return (np.exp(log_z)[:, None, None] * np.exp(log_y)[None, :, None] * np.exp(log_x)[None, None, :]).astype(
        np.float32)
