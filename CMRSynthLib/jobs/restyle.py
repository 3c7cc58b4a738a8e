"""``cmrsynth restyle``: a real image re-rendered in another vendor's style (flow models, DESIGN §9).

The image is inverted to noise with the flow ODE under ``--source-vendor`` (default: unconditional) and
integrated forward under ``--vendor``; the result goes back onto the image's grid and intensity scale.
Voxels outside the model's field of view keep their values. The output header is marked synthetic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "re-render a real image in another vendor's style (flow-matching inversion)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="flow checkpoint folder or starter name (acdc-flow, phantom-flow)")
    parser.add_argument("--image", required=True, help="the image to restyle")
    parser.add_argument("--mask", required=True, help="its mask (canonical labels 0-3, same grid)")
    parser.add_argument("--vendor", required=True, help="target vendor style")
    parser.add_argument("--source-vendor", default=None, help="the image's own vendor (default: unconditional)")
    parser.add_argument("--phase", default=None, help="cardiac phase ED or ES")
    parser.add_argument("--group", default=None, help="pathology group")
    parser.add_argument("--steps", type=int, default=None, help="ODE steps each way (default: the model's)")
    parser.add_argument("--out", required=True, help="output file (.nii.gz, .nii, .nrrd, .mha)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")


def run(args, progress) -> int:
    from CMRSynthLib.data.volume import WRITE_SUFFIXES, read_volume, write_volume
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.synthesis import restyle
    from CMRSynthLib.training.checkpoint import load_checkpoint
    from CMRSynthLib.training.distributed import World
    from CMRSynthLib.training.loop import resolve_device

    out = Path(args.out)
    if not str(out).lower().endswith(WRITE_SUFFIXES):
        raise InputError(f"--out must end in one of {', '.join(WRITE_SUFFIXES)}", path=out)
    image, mask = read_volume(args.image), read_volume(args.mask)
    generator, card = load_checkpoint(args.model, device=resolve_device(args.device, World()))
    progress.start("restyle", total=None, model=card["model_id"])
    result = restyle(generator, card, image, mask, vendor=args.vendor, source_vendor=args.source_vendor,
                     phase=args.phase, group=args.group, steps=args.steps, image_path=args.image,
                     mask_path=args.mask)
    write_volume(result, out)
    progress.artefact(str(out), "restyled")
    progress.done(out=str(out))
    return 0
