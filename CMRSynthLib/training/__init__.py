"""Training (DESIGN §2.5–2.6): the loop, EMA, checkpoints, distributed data parallelism.

- :mod:`.loop` — :class:`~.loop.Trainer`, one loop for every generator family (and the DP hooks);
- :mod:`.config` — :class:`~.config.TrainConfig`, the arguments of a run;
- :mod:`.data` — from a cohort folder to a dataset split by patient, with the card's provenance;
- :mod:`.checkpoint` — checkpoint folders (safetensors + JSON card), never unpickled;
- :mod:`.ema`, :mod:`.distributed` — weight averaging and torchrun/DDP;
- :mod:`.starters` — reproduces the starter models shipped in ``Resources/models``.
"""
