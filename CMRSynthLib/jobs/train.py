"""``cmrsynth train``: learn p(image | mask, vendor, phase, group) from a cohort (DESIGN §9).

Resumes when ``--out`` holds an unfinished run with the same arguments; reports a finished one and exits 0
(``--force`` starts over). Under ``torchrun --nproc_per_node N -m CMRSynthLib train ...`` it trains with
DistributedDataParallel (with ``--dp``: DP-SGD over disjoint shares of the sampled patients, noise added
once); only rank 0 writes. ``--generator anatomy`` trains the stage-1 mask generator (the two-stage
pipeline's first stage, used by ``cmrsynth sample --new-anatomy``).

Differential privacy: :mod:`CMRSynthLib.training.privacy` adds its flags here (``add_arguments``) and turns
them into the trainer's privacy object (``from_args``, None when DP is off); it imports no torch at its top.
"""

from __future__ import annotations

import argparse

from CMRSynthLib.training import privacy
from CMRSynthLib.training.config import DEVICES, LR_SCHEDULES, PRECISIONS, PRESETS

HELP = "train a generator (ddpm, ldm, flow, hybrid, or the anatomy mask generator) on a cohort"
FAMILIES = ("ddpm", "ldm", "flow", "hybrid", "anatomy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="cohort folder (ACDC, M&Ms, image/label pairs, phantom)")
    parser.add_argument("--generator", choices=FAMILIES, default=None,
                        help="generator family (default with --init: the --init model's family; required without)")
    parser.add_argument("--out", required=True, help="checkpoint folder to write (or to resume)")
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=PRESETS, default=None,
                       help="network size: tiny (tests), small (CPU), base (GPU) (default: the --init model's, else small)")
    model.add_argument("--image-size", type=int, default=None, help="prepared in-plane size in pixels (default: the --init model's, else 64, the phantom's "
                            "heart crop; the ACDC starters use 96 or 192)")
    model.add_argument("--spatial-dims", type=int, choices=(2, 3), default=None, help="2D slices or 3D stacks (default: the --init model's, else 2)")
    model.add_argument("--depth", type=int, default=None,
                       help="3D only: slices per stack (default: the deepest stack, rounded up to a multiple of 8)")
    model.add_argument("--vendors", type=lambda text: tuple(v.strip() for v in text.split(",")), default=None,
                       help="comma-separated vendor names a new model knows (default: the training patients' vendors; "
                            "with --dp: Siemens, Philips, GE, Canon, as the card must not reveal the patients' vendors). "
                            "A fine-tune keeps its --init model's (the acdc- models know Siemens only). Training "
                            "patients of a vendor the model does not know train its null (vendor-free) token, with a "
                            "warning: the model learns their images, not their vendor's style")
    model.add_argument("--spacing", type=float, default=None,
                       help="prepared in-plane pixel size in mm (default: the --init model's, else 192 mm / "
                            "--image-size, 3 mm at 64 px, sized for the phantom's hearts; the ACDC starters use "
                            "1.5625 mm, the pixel of the ACDC images)")
    model.add_argument("--field-of-view", choices=("heart", "whole"), default=None,
                       help="heart (default for a new model): learn and generate a heart-centred crop; whole: learn "
                            "from tiles of the whole field of view (--image-size) and generate the reference's "
                            "entire field of view; a fine-tune keeps its --init model's")
    model.add_argument("--autoencoder-patch", type=int, default=None,
                       help="LDM: train the autoencoder on random squares of this many pixels (default 96 with "
                            "--field-of-view whole, else whole images)")
    model.add_argument("--init", default=None,
                       help="checkpoint (or starter name) to fine-tune from; it implies --generator, --preset, "
                            "--image-size, --spacing and the vendors (default: train a new model)")
    model.add_argument("--mask-dropout", type=float, default=None,
                       help="flow/LDM: share of training samples given no mask and no tokens, so that guidance "
                            "(--guidance > 1) pulls images towards their mask (default: the --init model's, else 0)")
    model.add_argument("--guidance", type=float, default=None,
                       help="flow/LDM: the guidance weight the model samples with by default (default: the --init "
                            "model's, else 1)")
    model.add_argument("--heart-coordinates", action="store_const", const=True, default=None,
                       help="flow/LDM: also give the network each pixel's offset from the heart, so that a whole-field "
                            "model knows where the chest wall, lungs and air lie (default: the --init model's, else "
                            "off; a fine-tune of a model without it starts from the same outputs)")
    model.add_argument("--stage", choices=("diffusion", "decoder"), default=None,
                       help="ldm with --init: what the fine-tune trains: diffusion (the latent network, default) or "
                            "decoder (the autoencoder's decoder alone, against a PatchGAN discriminator, which "
                            "sharpens the images; the encoder, latent network and coarse stage stay as they are)")
    model.add_argument("--adversarial-weight", type=float, default=None,
                       help="--stage decoder: weight of the adversarial term beside L1 (default 0.05)")
    run = parser.add_argument_group("optimisation")
    run.add_argument("--max-steps", type=int, default=None,
                     help="stop after this many optimizer steps (default: --epochs decides)")
    run.add_argument("--epochs", type=int, default=None, help="stop after this many epochs (default 100 "
                     "when --max-steps is not given)")
    run.add_argument("--batch-size", type=int, default=16,
                     help="slices per step; with --dp the expected number of PATIENTS per step, at most the "
                          "training split's patients (cmrsynth inspect DATA shows them)")
    run.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (AdamW)")
    run.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cosine", help="learning-rate schedule after warm-up")
    run.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    run.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    run.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0 = off)")
    run.add_argument("--ema-decay", type=float, default=0.999, help="decay of the weights' moving average (saved)")
    run.add_argument("--autoencoder-fraction", type=float, default=None,
                     help="ldm only: share of the steps for the autoencoder stage (default 0.3)")
    run.add_argument("--seed", type=int, default=0,
                     help="seeds the split, the initial weights and the loss's noise (under --dp not the DP noise)")
    run.add_argument("--train-patients", type=int, default=None,
                     help="train on only N patients of the training split (the card lists them; default: all)")
    where = parser.add_argument_group("execution")
    where.add_argument("--device", choices=DEVICES, default="auto", help="where to train (auto: CUDA, MPS, else CPU)")
    where.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="training precision: auto is bf16 (or fp16 without --dp) on CUDA and fp32 elsewhere; "
                            "fp16 and bf16 need CUDA (cmrsynth sample --precision bf16 also runs on a CPU)")
    where.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    where.add_argument("--force", action="store_true", help="start over even if --out holds a run")
    privacy.add_arguments(parser)


def generator_family(generator: str | None, init: str | None) -> str:
    """The family to train: ``--generator``, implied by ``--init`` (its card's family); an explicit
    ``--generator`` that is not the ``--init`` model's family is refused."""
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.training.checkpoint import read_card, resolve_model

    if init is None:
        if generator is None:
            raise InputError("--generator is required without --init (one of " + ", ".join(FAMILIES) + ")")
        return generator
    family = read_card(resolve_model(init))["family"]
    if generator not in (None, family):
        raise InputError(f"--generator {generator}: --init {init} is a {family} model; leave --generator out to "
                         "fine-tune it")
    return family


def check_dp_batch(batch_size: int, data: str, train_patients: int | None, *, seed: int) -> None:
    """Refuse, before anything is read, a DP ``--batch-size`` (expected patients per step) above the patients
    the run trains on: the training split's, or ``--train-patients``."""
    from CMRSynthLib.data.cohorts import open_cohort
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.training.data import split_sizes

    cohort = open_cohort(data)
    patients = train_patients or split_sizes(cohort, seed=seed)["train"]
    if batch_size > patients:
        raise InputError(f"--batch-size {batch_size}: with --dp it is the expected number of patients per step, at most "
                         f"the {patients} patients the run trains on (the training split of the cohort's "
                         f"{len(cohort.patients())}; cmrsynth inspect {data} shows it)")


def run(args, progress) -> int:
    from CMRSynthLib.training.config import TrainConfig
    from CMRSynthLib.training.loop import Trainer

    args.generator = generator_family(args.generator, args.init)
    dp = privacy.from_args(args)
    if dp is not None:
        check_dp_batch(args.batch_size, args.data, args.train_patients, seed=args.seed)
    config = TrainConfig(
        data=args.data, family=args.generator, out=args.out, preset=args.preset, image_size=args.image_size,
        spatial_dims=args.spatial_dims, depth=args.depth, vendors=args.vendors, spacing=args.spacing, max_steps=args.max_steps, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule, warmup=args.warmup,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, ema_decay=args.ema_decay,
        autoencoder_fraction=args.autoencoder_fraction, field_of_view=args.field_of_view,
        autoencoder_patch=args.autoencoder_patch, mask_dropout=args.mask_dropout, guidance=args.guidance,
        heart_coordinates=args.heart_coordinates, stage=args.stage, adversarial_weight=args.adversarial_weight,
        seed=args.seed,
        train_patients=args.train_patients, init=args.init, device=args.device, precision=args.precision,
        save_every=args.save_every, force=args.force)
    result = Trainer(config, progress=progress, privacy=dp).run()
    if result.already_finished:
        progress.warning(f"{result.out} already holds a finished run ({result.steps} steps); nothing to do "
                         "(use --force to train again)")
        progress.done(out=str(result.out), steps=result.steps, already_finished=True)
    return 0
