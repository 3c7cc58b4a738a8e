"""``cmrsynth restyle``: a real image re-rendered in another vendor's style (flow models, DESIGN §9).

The image is inverted to noise with the flow ODE under ``--source-vendor`` (default: unconditional) and
integrated forward under ``--vendor``; the result goes back onto the image's grid and intensity scale.
Voxels outside the model's field of view keep their values. The output header is marked synthetic. ``--out`` is a
folder, as ``cmrsynth sample``'s (``<image name>_restyled_<vendor>`` in ``--format``, DICOM a series folder), or
a file name with an image suffix (the earlier form, still accepted).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "re-render a real image in another vendor's style (flow-matching inversion)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from CMRSynthLib.jobs.sample import FORMATS
    from CMRSynthLib.training.config import DEVICES

    parser.add_argument("--model", required=True,
                        help="flow checkpoint folder or starter name (acdc-flow: Siemens only; phantom-flow: four "
                             "simulated vendors)")
    parser.add_argument("--image", required=True, help="the image to restyle")
    parser.add_argument("--mask", required=True, help="its mask (canonical labels 0-3, same grid)")
    parser.add_argument("--vendor", required=True,
                        help="target vendor style: one the model knows (cmrsynth models MODEL lists them)")
    parser.add_argument("--source-vendor", default=None, help="the image's own vendor (default: unconditional)")
    parser.add_argument("--phase", default=None, help="cardiac phase ED or ES (default: unconditional)")
    parser.add_argument("--group", default=None, help="pathology group (default: unconditional)")
    parser.add_argument("--steps", type=int, default=None, help="ODE steps each way (default: the model's)")
    parser.add_argument("--out", required=True,
                        help="output folder, as cmrsynth sample's: <image name>_restyled_<vendor> in --format; a file "
                             "name ending in .nii.gz, .nii, .nrrd or .mha is written as that file")
    parser.add_argument("--format", choices=tuple(FORMATS), default="nifti",
                        help="file format in an output folder (dicom: a series folder)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where the model runs")


def target_of(out: Path, image: str, vendor: str, fmt: str) -> Path:
    """Where the restyled image goes: ``out`` itself when it names an image file, else
    ``out/<image name>_restyled_<vendor>`` with the suffix of ``fmt``."""
    from CMRSynthLib.data.volume import WRITE_SUFFIXES
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.files import _split_suffix
    from CMRSynthLib.jobs.sample import FORMATS, safe_word

    if str(out).lower().endswith(WRITE_SUFFIXES):  # a file name: its suffix is the format
        if fmt == "dicom" or (fmt != "nifti" and not str(out).lower().endswith(FORMATS[fmt])):
            raise InputError(f"--format {fmt}: --out names a file of another format; give an output folder",
                             path=out)
        return out
    if out.exists() and not out.is_dir():
        raise InputError("--out must be a folder or a file name ending in " + ", ".join(WRITE_SUFFIXES), path=out)
    return out / f"{_split_suffix(Path(image).name)[0]}_restyled_{safe_word(vendor)}{FORMATS[fmt]}"


def run(args, progress) -> int:
    from CMRSynthLib.data.volume import read_volume, write_volume
    from CMRSynthLib.synthesis import restyle
    from CMRSynthLib.synthetic_dicom import write_dicom_series
    from CMRSynthLib.training.checkpoint import load_checkpoint
    from CMRSynthLib.training.distributed import World
    from CMRSynthLib.training.loop import resolve_device

    out = target_of(Path(args.out), args.image, args.vendor, args.format)
    image, mask = read_volume(args.image), read_volume(args.mask)
    generator, card = load_checkpoint(args.model, device=resolve_device(args.device, World()))
    progress.start("restyle", total=None, model=card["model_id"])
    result = restyle(generator, card, image, mask, vendor=args.vendor, source_vendor=args.source_vendor,
                     phase=args.phase, group=args.group, steps=args.steps, image_path=args.image,
                     mask_path=args.mask)
    if args.format == "dicom":
        write_dicom_series(result, out, description=result.metadata["descrip"][len("SYNTHETIC "):])
    else:
        write_volume(result, out)
    progress.artefact(str(out), "restyled")
    progress.done(out=str(out))
    return 0
