"""What a checkpoint's ``card.json`` says about how the model was trained, read without torch.

The card is plain JSON (:mod:`.checkpoint` writes it beside the weights). Its reader here is shared by the
STARTERS.md table (:mod:`.starters`) and the panel's catalogue, whose process need not have torch at all.
"""

from __future__ import annotations

CARD = "card.json"
RUN_RECORD = ("steps", "wall_seconds", "cpu_seconds", "final_loss", "arguments")  # of each earlier run, in the card


def runs_of(card: dict) -> list[dict]:
    """The training record of every run of a model, first to last: a starter trained in several runs keeps its
    earlier runs' records in ``starter.earlier_runs``; the last run is ``training``."""
    last = card.get("training") or {}
    return [*(card.get("starter") or {}).get("earlier_runs", ()), {k: last.get(k) for k in RUN_RECORD}]


def decoder_runs(runs: list[dict]) -> list[int]:
    """The 1-based numbers of the runs that sharpened the autoencoder's decoder (``--stage decoder``)."""
    return [number for number, run in enumerate(runs, start=1)
            if isinstance(run, dict) and (run.get("arguments") or {}).get("stage") == "decoder"]
