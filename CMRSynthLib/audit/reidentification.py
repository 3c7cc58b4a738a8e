"""Re-identification in the receipt: how many synthetic images the privacy filter would reject, before and after.

The audit's synthetic images made from the members' masks (the set a hospital would share) are checked with the
model's re-identification model (:mod:`CMRSynthLib.reid`, found beside the checkpoint folder): *before* is the
share of slices that re-identify a training patient as drawn; then the privacy filter redraws them exactly as
``cmrsynth sample --privacy-filter`` does (derived seeds, bounded redraws), and *after* is the share still
re-identifying after the last redraw (the filter withholds those images). Both come with a bootstrap interval
over the source patients, next to the threshold's calibration (its false-match rate on held-out patients and
that rate's interval): a model that adds no patient's identity is rejected at about the false-match rate.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from CMRSynthLib.audit.slices import Slices
from CMRSynthLib.reid.filter import DEFAULT_RETRIES, PrivacyFilter
from CMRSynthLib.reid.model import ReidModel, match_rate


def reidentification(reid: ReidModel, synthetic: Slices, redraw: Callable[[np.ndarray, int], np.ndarray] | None, *,
                     seed: int, retries: int = DEFAULT_RETRIES, n_boot: int = 1000) -> dict:
    """The receipt's re-identification section for ``synthetic`` slices (their ``patients``: whose mask).

    ``redraw(indices, seed)`` → ``(len(indices), H, W)`` draws those slices again (None for images read from
    a folder: then only *before* is measured).
    """
    privacy_filter = PrivacyFilter.of(reid, retries=retries)
    distances = reid.distances(synthetic.images, synthetic.masks)
    method = "share of synthetic slices from members' masks re-identifying a training patient; bootstrap over " \
             "source patients"
    before = match_rate(distances < reid.threshold, synthetic.patients, method=method, n_boot=n_boot, seed=seed)
    section = {"threshold": reid.threshold, "calibration": reid.record["calibration"], "slices": len(synthetic),
               "before": before, "after": None, "rejected_draws": None, "retries": retries,
               "reid": {"created": reid.record["created"], "shareable": reid.record["shareable"]}}
    if redraw is None:
        section["note"] = "images read from --synthetic cannot be redrawn: only the rate before the filter is measured"
        return section
    _, screening = privacy_filter.screen(synthetic.images, synthetic.masks, seed, redraw, whole=False)
    withheld = np.isin(np.arange(len(synthetic)), screening.refused)
    section.update(after=match_rate(withheld, synthetic.patients, method=method + f", after {retries} redraws (those "
                                    "images are withheld)", n_boot=n_boot, seed=seed),
                   rejected_draws=screening.rejected, rounds=screening.rounds)
    return section
