"""Re-identification: does a synthetic image show one of the generator's training patients?

:mod:`.embedding` the network and its contrastive fit; :mod:`.model` the calibrated model kept beside a
checkpoint (``<folder>.PRIVATE-reid``); :mod:`.filter` the generation-time privacy filter.
"""

from __future__ import annotations

import os
from pathlib import Path


DEFAULT_FALSE_MATCH_RATE = 0.01  # share of held-out slices the calibrated threshold may call a training patient
DEFAULT_STEPS = 300  # contrastive training steps (about half a minute for 64 × 64 slices on one CPU thread)
SUFFIX = ".PRIVATE-reid"  # a checkpoint folder's re-identification model lives beside it: <folder>.PRIVATE-reid
# What the filter does to a DP model's guarantee: said by the command-line help, the panel, the run's warning and
# every sidecar of a filtered DP model's images (and the README), in these words.
DP_NOTE = ("On a model trained with differential privacy the filter works outside DP-SGD: it reads the private "
           "training images (through the re-identification model's gallery, their embeddings computed without DP) "
           "and keeps or redraws every slice by how close it lies to them. The filtered images are therefore no "
           "longer covered by the model's ε alone: their guarantee is that of the filter's own mechanism, which has "
           "none formally. Without the filter, a DP model's images are covered by its ε.")


def reid_path(checkpoint: str | os.PathLike) -> Path:
    """``<checkpoint folder>.PRIVATE-reid``, beside the folder (not in it). Imports no torch (the panel uses it)."""
    folder = Path(os.path.abspath(checkpoint))
    return folder.with_name(folder.name + SUFFIX)
