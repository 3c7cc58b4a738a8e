"""Re-identification: does a synthetic image show one of the generator's training patients?

:mod:`.embedding` the network and its contrastive fit; :mod:`.model` the calibrated model kept beside a
checkpoint (``<folder>.PRIVATE-reid``); :mod:`.filter` the generation-time privacy filter.
"""

DEFAULT_FALSE_MATCH_RATE = 0.01  # share of held-out slices the calibrated threshold may call a training patient
DEFAULT_STEPS = 300  # contrastive training steps (about half a minute for 64 × 64 slices on one CPU thread)
