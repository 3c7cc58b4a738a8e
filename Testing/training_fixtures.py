"""Shared by the training, synthesis and command tests: a tiny phantom cohort and a tiny trained flow model.

Importable because pytest puts the folder of the root ``conftest.py`` on ``sys.path``. Fixtures are
session-scoped (built once per test worker) and must be treated as read-only.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from CMRSynthLib.data.volume import Volume

PATIENTS, SHAPE = 6, (4, 48, 48)


def run_stopped_at_step(trainer, step: int) -> None:
    """Run ``trainer`` as if its process were killed at its ``step``-th training step (counted from 1; the steps
    before it done): what a resume must recover from."""
    original, calls = trainer._train_step, []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    trainer._train_step = killed
    with pytest.raises(KeyboardInterrupt):
        trainer.run()


def train_config(data, out, **overrides):
    """A TrainConfig for a tiny flow at 32×32 that runs in about a second."""
    from CMRSynthLib.training.config import TrainConfig

    base = dict(data=str(data), family="flow", out=str(out), preset="tiny", image_size=32, spacing=5.0,
                max_steps=12, batch_size=4, lr=2e-3, device="cpu", seed=3)
    return TrainConfig(**{**base, **overrides})


# Each test module that imports a fixture gets its own copy of the definition, so a session scope alone
# would build these once per module; this cache makes it once per process (per xdist worker).
_BUILT: dict[str, object] = {}


def _once(name, build):
    if name not in _BUILT:
        _BUILT[name] = build()
    return _BUILT[name]


@pytest.fixture(scope="session")
def phantom(tmp_path_factory):
    """A 6-patient phantom cohort of 4×48×48 stacks (all four vendors)."""
    from CMRSynthLib.data.phantom import write_phantom_cohort

    return _once("phantom", lambda: write_phantom_cohort(tmp_path_factory.mktemp("phantom") / "cohort", PATIENTS,
                                                         seed=0, shape=SHAPE))


@pytest.fixture(scope="session")
def tiny_flow(phantom, tmp_path_factory):
    """A tiny flow checkpoint trained for 40 steps on :func:`phantom`."""
    from CMRSynthLib.training.loop import Trainer

    def build():
        out = tmp_path_factory.mktemp("models") / "flow"
        Trainer(train_config(phantom, out, max_steps=40, lr_schedule="constant")).run()
        return out

    return _once("tiny_flow", build)


def oblique_mask(shape=(3, 40, 36), spacing=(1.3, 1.7, 8.0)) -> Volume:
    """Canonical labels on an oblique, anisotropic grid (rotated about all three axes, off-origin)."""
    k, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    labels = np.zeros(shape, np.uint8)
    labels[:, r < 9] = 2
    labels[:, r < 6] = 1
    labels[:, 5:12, 4:10] = 3
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", [25, -40, 70], degrees=True).as_matrix() * np.asarray(spacing)
    matrix[:3, 3] = (-31.5, 12.25, 80.0)
    return Volume(labels, matrix)
