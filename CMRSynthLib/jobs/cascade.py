"""``cmrsynth cascade``: join a coarse whole-field flow model and a latent model into one model.

The coarse model (``--coarse``, family flow, trained with ``cmrsynth train --generator flow`` at the latent
grid's pixel size: ``--spacing`` the latent model's times its autoencoder factor) draws the whole field's
layout; the latent model (``--refiner``, family ldm) starts its flow from that image noised to ``--start``
(see :mod:`CMRSynthLib.generators.ldm`). The result is one LDM checkpoint (both networks in its weights, the
coarse model's config in its config), written atomically, whose card is the latent model's with a ``cascade``
record naming the coarse model and its training. The checks: :mod:`CMRSynthLib.training.cascade`.
"""

from __future__ import annotations

from pathlib import Path

HELP = "join a coarse whole-field flow model and a latent (LDM) model into one cascade model"


def add_arguments(parser) -> None:
    from CMRSynthLib.training.cascade import DEFAULT_START

    parser.add_argument("--coarse", required=True,
                        help="flow checkpoint trained at the latent grid's pixel size (the refiner's --spacing "
                             "times its autoencoder factor, 4), on the same patients, without DP")
    parser.add_argument("--refiner", required=True, help="LDM checkpoint (or starter name) that draws the detail")
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--start", type=float, default=DEFAULT_START,
                        help="flow time in (0, 1] the coarse image is noised to: higher keeps less of it "
                             f"(default {DEFAULT_START})")


def run(args, progress) -> int:
    from CMRSynthLib.training.cascade import join
    from CMRSynthLib.training.checkpoint import save_checkpoint

    progress.start("cascade", None)
    cascade, card = join(args.coarse, args.refiner, args.start)
    written = save_checkpoint(args.out, cascade, card)
    progress.artefact(str(Path(args.out).resolve()), "model")
    progress.done(out=str(args.out), model=written["model_id"], coarse=card["cascade"]["coarse_model_id"],
                  refiner=card["cascade"]["refiner_model_id"], start=args.start)
    return 0
