"""Hand-made slice sets for the audit tests (imported by the test modules of this folder)."""

import numpy as np

from CMRSynthLib.audit.slices import Slices

LEVELS = (-0.7, 0.7, -0.1, 0.35)  # background, LV, MYO, RV intensities


def disc_masks(n: int, size: int = 32, *, shift: int = 0) -> np.ndarray:
    """``(n, size, size)`` masks: LV disc, MYO ring, RV crescent; ``shift`` moves them to the right."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2 - shift)
    mask = np.zeros((size, size), np.uint8)
    mask[r < size * 0.25] = 2
    mask[r < size * 0.17] = 1
    mask[(np.hypot(yy - size / 2, xx - size * 0.2 - shift) < size * 0.2) & (mask == 0)] = 3
    return np.repeat(mask[None], n, axis=0)


def make_slices(patients: int, per_patient: int = 3, *, size: int = 32, seed: int = 0, offset: float = 0.0,
                prefix: str = "p", vendors=("Siemens", "Philips")) -> Slices:
    """Noisy images whose tissue intensities follow the masks (+ ``offset``), ``per_patient`` per patient."""
    rng = np.random.default_rng(seed)
    n = patients * per_patient
    masks = disc_masks(n, size)
    levels = np.array(LEVELS, np.float32)
    images = levels[masks] + offset + rng.normal(0, 0.05, masks.shape).astype(np.float32)
    pid = np.repeat([f"{prefix}{i:02d}" for i in range(patients)], per_patient)
    vendor = np.repeat([vendors[i % len(vendors)] for i in range(patients)], per_patient)
    return Slices(np.clip(images, -1, 1), masks, pid, vendor, ["ED"] * n, ["NOR"] * n, spacing=(1.5, 1.5))
