"""A cascade: a coarse whole-field flow model joined to a latent model (:mod:`CMRSynthLib.generators.ldm`'s coarse
stage), with the checks that make the joined model's card honest.

The coarse model must be a 2D flow trained at the latent grid's pixel size (the refiner's spacing times its
autoencoder factor), on images prepared the same way, on the same patients (one card names the patients of
both networks), and neither model may be DP-trained (one ε would need both ledgers composed).
"""

from __future__ import annotations

SPACING_TOLERANCE = 1e-3  # relative: the coarse pixel must be the latent cell
DEFAULT_START = 0.85


def join(coarse_path, refiner_path, start: float = DEFAULT_START):
    """The cascade of two checkpoints → ``(generator, card)``; the card is the refiner's with a ``cascade``
    record (no ``model_id``/``created``: saving sets them). Raises :class:`InputError` naming the file at fault."""
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.training.checkpoint import load_checkpoint

    if not 0.0 < start <= 1.0:
        raise InputError(f"--start must be in (0, 1], got {start}")
    coarse, coarse_card = load_checkpoint(coarse_path)
    refiner, refiner_card = load_checkpoint(refiner_path)
    check_pair(coarse_card, refiner_card, coarse_path=coarse_path, refiner_path=refiner_path)
    card = {k: v for k, v in refiner_card.items() if k not in ("model_id", "created")}
    card["cascade"] = cascade_record(coarse_card, refiner_card, start)
    return refiner.with_coarse(coarse, start), card


def check_pair(coarse_card: dict, refiner_card: dict, *, coarse_path=None, refiner_path=None) -> None:
    """Refuse a pair that cannot make one honest model, naming the checkpoint at fault."""
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.generators.ldm import check_coarse
    from CMRSynthLib.training.checkpoint import card_config

    if refiner_card["family"] != "ldm":
        raise InputError(f"the refiner must be an LDM model, got a {refiner_card['family']} model",
                         path=refiner_path)
    if coarse_card["family"] != "flow":
        raise InputError(f"the coarse model must be a flow model, got a {coarse_card['family']} model",
                         path=coarse_path)
    if refiner_card["config"].get("coarse") is not None:
        raise InputError("already has a coarse stage; give its refiner without one", path=refiner_path)
    for path, card in ((coarse_path, coarse_card), (refiner_path, refiner_card)):
        if card.get("privacy") is not None:
            raise InputError("was trained with DP: a cascade's ε would need both ledgers composed, which CMRSynth "
                             "does not do; join models trained without DP", path=path)
    refiner = card_config(refiner_card)
    try:
        check_coarse(card_config(coarse_card), refiner)
    except ValueError as exc:
        raise InputError(str(exc), path=coarse_path) from None
    for key in ("members", "holdout"):
        if sorted(coarse_card.get(key) or []) != sorted(refiner_card.get(key) or []):
            raise InputError(f"was trained on other patients than the refiner (its {key} differ): one card must "
                             "name the patients of both networks", path=coarse_path)
    _check_grids(coarse_card["preprocessing"], refiner_card["preprocessing"], refiner.autoencoder.factor,
                 coarse_path)


def _check_grids(coarse: dict, refiner: dict, factor: int, coarse_path) -> None:
    """The coarse model's pixel (preprocessing ``coarse``) is the refiner's latent cell (its pixel × ``factor``),
    and its images were prepared the same way."""
    from CMRSynthLib.errors import InputError

    wanted = [s * factor for s in refiner["spacing"]]
    if any(abs(c - w) > SPACING_TOLERANCE * w for c, w in zip(coarse["spacing"], wanted)):
        raise InputError(f"has {coarse['spacing']} mm pixels; the refiner's latent cells are {wanted} mm (its "
                         f"{refiner['spacing']} mm pixels × {factor}): train the coarse model with --spacing "
                         f"{wanted[0]:g}", path=coarse_path)
    for key in ("field_of_view", "clip_percentiles", "n4"):
        if coarse[key] != refiner[key]:
            raise InputError(f"was prepared with {key} {coarse[key]!r}, the refiner with {refiner[key]!r}",
                             path=coarse_path)


def cascade_record(coarse_card: dict, refiner_card: dict, start: float) -> dict:
    """The card's record of the coarse stage: which models, the coarse one trained how, from which flow time."""
    training = coarse_card.get("training") or {}
    return {"coarse_model_id": coarse_card.get("model_id"), "refiner_model_id": refiner_card.get("model_id"),
            "start": start, "coarse_preprocessing": coarse_card["preprocessing"],
            "coarse_training": {k: training.get(k) for k in ("steps", "wall_seconds", "cpu_seconds", "final_loss",
                                                            "arguments")}}
