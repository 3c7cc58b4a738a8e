"""From a mask volume to synthetic images on the mask's exact geometry (DESIGN §2.7), and restyling.

The walk: the mask is checked (canonical labels, not empty) and prepared exactly as training cases were
(:func:`~CMRSynthLib.data.preprocess.prepare_mask`, the checkpoint's recorded preprocessing); a 2D model
generates every slice of the stack as one batch, a 3D model the whole stack (padded to its depth); the
result, in [-1, 1], goes back onto the mask's grid with :meth:`SliceTransform.restore` (outside the
prepared field of view: the background value) and is scaled to the intensity range the model's training
cases had for that vendor (the card's ``intensity``: medians of the clip percentiles), so -1 ↦ lo, 1 ↦ hi.

Intensities follow a reference when there is one: :func:`follow_reference` maps the model's range onto the
reference image's values at the same clip percentiles and gives the image the reference's voxel type (an int16
scan 0–1000 gets int16 images on its scale). Without one the image stays float32 on the model's range.

Randomness: sample ``i`` of ``count`` uses a ``torch.Generator`` seeded with ``seed + i``: the same seed
gives the same image. With the privacy filter the draw seeds are secret instead (the header says ``seed=secret``;
:func:`~CMRSynthLib.reid.filter.secret_draw_seed`): a reproducible draw would show which slices were redrawn.
Every volume carries a synthetic marker: ``descrip`` "SYNTHETIC CMRSynth <family>
seed=S vendor=V model=<id>" (kept by NIfTI) and ``cmrsynth_*`` keys (kept by NRRD and MHA).

Precision: ``precision="bf16"`` runs the network under bf16 autocast (convolutions and matmuls in bfloat16,
the sampler's state and updates in float32): 1.5–1.9× faster on CPUs with bf16 matrix units (AMX,
AVX-512-bf16). It is a choice, never automatic: the image stays within ``BF16_TOLERANCE`` of the fp32 one
(images in [-1, 1]; measured on the starter models: max |Δ| ≈ 0.01–0.07, mean ≈ 0.001–0.004, mask Dice
unchanged — the benchmarks' optimisation and solver tables), and the header records it.

Privacy filter: with ``privacy_filter`` (:class:`~CMRSynthLib.reid.filter.PrivacyFilter`) every drawn slice
is checked against the training patients and a slice that re-identifies one is drawn again with a derived
seed (:mod:`CMRSynthLib.reid.filter`); an image still re-identifying after the last redraw is refused
(:class:`~CMRSynthLib.reid.filter.PrivacyFilterRefusal`). The header records only what is true of every
filtered image alike: the threshold and its false-match rate (``cmrsynth_privacy_*``; NIfTI's ``descrip`` ends
in "filtered" when it fits). What the filter did to one draw (rejections, redrawn slices) would tell whether
the mask's patient was a training patient: it goes to the caller's ``screened`` callback (with the secret draw
seed), never into the image.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from CMRSynthLib.data.case import Case, CaseRecord
from CMRSynthLib.data.volume import Volume, check_finite, check_same_geometry
from CMRSynthLib.errors import InputError
from CMRSynthLib.generators.base import Conditions, Vocabulary

if TYPE_CHECKING:
    from CMRSynthLib.reid.filter import Screening

DEFAULT_INTENSITY = (0.0, 1000.0)  # for a card without an intensity record
NEW_ANATOMY_SLICE_MM = 10.0  # slice spacing given to new anatomies (a typical short-axis stack)
ANY_VENDOR = "unconditional"  # the word for the null vendor in file names and headers
PRECISIONS = ("fp32", "bf16")
BF16_TOLERANCE = {"max": 0.1, "mean": 0.01}  # |bf16 image − fp32 image| in [-1, 1], same seed (tested)


def preprocessing(card: dict):
    from CMRSynthLib.data.preprocess import PreprocessConfig

    return PreprocessConfig.from_dict(card["preprocessing"])


def intensity_range(card: dict, vendor: str | None) -> tuple[float, float]:
    """The original intensities that -1 and 1 stand for, for ``vendor`` (or all vendors)."""
    ranges = card.get("intensity") or {}
    lo, hi = ranges.get(vendor or "*") or ranges.get("*") or DEFAULT_INTENSITY
    return float(lo), float(hi)


def tokens(card: dict, *, vendor: str | None, phase: str | None, group: str | None) -> tuple[int, int, int]:
    """Vocabulary tokens; an unknown name is an :class:`InputError` listing the known ones."""
    vocabulary = Vocabulary.from_dict(card["vocabulary"])
    return (vocabulary.token("vendors", vendor), vocabulary.token("phases", phase),
            vocabulary.token("groups", group))


def prepare(card: dict, mask: Volume, *, path=None):
    """The mask on the model's prepared grid → ``(labels (K, H, W) uint8, SliceTransform)``; checks it."""
    from CMRSynthLib.data.preprocess import prepare_mask

    return prepare_mask(mask, preprocessing(card), path=path)


def conditions(generator, labels: np.ndarray, token_ids: tuple[int, int, int], *, path=None) -> tuple[Conditions, int]:
    """Conditions for a prepared stack: ``(K, 4, H, W)`` for a 2D model, ``(1, 4, D, H, W)`` for 3D.

    Returns the conditions and the stack index of the first generated slice (3D: negative when padded).
    """
    from CMRSynthLib.data.datasets import fit_depth, one_hot

    start = 0
    if generator.config.spatial_dims == 3:
        depth = int(generator.config.image_size[0])
        if labels.shape[0] > depth:
            raise InputError(f"the mask has {labels.shape[0]} slices; this 3D model generates stacks of at most "
                             f"{depth}", path=path)
        _, labels, start = fit_depth(np.zeros(labels.shape, np.float32), labels, depth)
        mask = one_hot(labels)[None]
    else:
        mask = one_hot(labels).movedim(0, 1)
    n = mask.shape[0]
    vendor, phase, group = (torch.full((n,), t, dtype=torch.long) for t in token_ids)
    return Conditions(mask, vendor, phase, group), start


def _to_stack(images: torch.Tensor, generator, k: int, start: int) -> np.ndarray:
    """Generated ``(B, 1, ...)`` → the prepared ``(K, H, W)`` stack in [-1, 1]."""
    array = images.detach().float().cpu().numpy()
    if generator.config.spatial_dims == 3:
        return array[0, 0, -start:-start + k] if start < 0 else array[0, 0, :k]
    return array[:, 0]


@dataclass(frozen=True)
class ReferenceScale:
    """What a synthetic image follows of its reference image: the voxel type and the reference's values
    ``(lo, hi)`` at the model's clip percentiles ``percentiles``."""

    dtype: np.dtype
    lo: float
    hi: float
    percentiles: tuple[float, float]

    @classmethod
    def of(cls, reference: Volume, card: dict) -> "ReferenceScale":
        """The scale of ``reference`` (non-finite voxels ignored) at ``card``'s clip percentiles."""
        percentiles = tuple(float(p) for p in preprocessing(card).clip_percentiles)
        values = np.asarray(reference.array)
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
        lo, hi = (float(v) for v in np.percentile(finite, percentiles))
        return cls(np.dtype(np.float32 if values.dtype == np.float16 else values.dtype), lo, hi, percentiles)


def follow_reference(image: Volume, scale: ReferenceScale, card: dict, vendor: str | None) -> Volume:
    """``image`` (float, on the model's range for ``vendor``) on its reference's scale and voxel type.

    The model's range ``(lo, hi)`` (the medians of its training images' clip percentiles, :func:`intensity_range`)
    maps linearly onto the reference's values at the same percentiles; an integer type is rounded and clipped to
    the type's range. The header records it (``cmrsynth_intensity``).
    """
    lo, hi = intensity_range(card, vendor)
    scaled = scale.lo + (np.asarray(image.array, np.float64) - lo) * ((scale.hi - scale.lo) / (hi - lo))
    if scale.dtype.kind in "iu":
        info = np.iinfo(scale.dtype)
        scaled = np.clip(np.rint(scaled), info.min, info.max)
    p_lo, p_hi = scale.percentiles
    return image.with_array(scaled.astype(scale.dtype), cmrsynth_intensity=(
        f"{scale.dtype.name} on the reference's scale: the model's {lo:.6g}..{hi:.6g} mapped to the reference's "
        f"{p_lo:g}-{p_hi:g} percentiles {scale.lo:.6g}..{scale.hi:.6g}"))


def precision_context(precision: str, device: torch.device):
    """The context the network runs in: nothing for ``"fp32"``, bf16 autocast on ``device`` for ``"bf16"``."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def marker(card: dict, *, seed: int | str, vendor: str | None, **extra) -> dict[str, str]:
    """Header fields that mark a volume as synthetic and say how it was made."""
    family, model = card["family"], card.get("model_id", "unknown")
    descrip = f"SYNTHETIC CMRSynth {family} seed={seed} vendor={vendor or ANY_VENDOR} model={model}"
    if extra.get("privacy_filter") is not None and len(descrip) + len(" filtered") <= 80:
        descrip += " filtered"
    fields = {"synthetic": "true", "family": family, "model": model, "seed": str(seed),
              "vendor": vendor or ANY_VENDOR, **{k: str(v) for k, v in extra.items() if v is not None}}
    return {"descrip": descrip[:80], **{f"cmrsynth_{k}": v for k, v in fields.items()}}


@torch.no_grad()
def synthesize(generator, card: dict, mask: Volume, *, vendor: str | None, phase: str | None = None,
               group: str | None = None, seed: int = 0, steps: int | None = None, sampler: str | None = None,
               guidance: float | None = None, count: int = 1, callback: Callable[[int, int], None] | None = None,
               precision: str = "fp32", privacy_filter=None, screened: Callable[[int, Screening], None] | None = None,
               path=None) -> list[Volume]:
    """``count`` synthetic images for ``mask``, each a float32 :class:`Volume` on the mask's exact geometry.

    ``vendor``/``phase``/``group`` None means unconditional (the null token). ``callback(done, total)``
    counts network steps (as the generator reports them) over all ``count`` images. ``precision`` is
    ``"fp32"`` or ``"bf16"`` (see the module notes). ``privacy_filter`` screens every draw (module notes);
    ``screened(index, seed, screening)`` then gets each image's secret draw seed and
    :class:`~CMRSynthLib.reid.filter.Screening`, a refused one included (before the refusal is raised).
    Raises :class:`InputError` for a bad mask (naming ``path``), an unknown vendor/phase/group, or bad
    sampling options; :class:`~CMRSynthLib.reid.filter.PrivacyFilterRefusal` for a refused image.
    """
    if int(count) != count or count < 1:
        raise InputError(f"--count must be a positive whole number, got {count}")
    sampler, steps, guidance = generator.check_sampling(sampler, steps, guidance)
    device = next(generator.parameters()).device
    precision_context(precision, device)  # checks the name before any work
    token_ids = tokens(card, vendor=vendor, phase=phase, group=group)
    labels, transform = prepare(card, mask, path=path)
    cond, start = conditions(generator, labels, token_ids, path=path)
    cond = cond.to(device)
    lo, hi = intensity_range(card, vendor)
    volumes = []
    if privacy_filter is not None:
        from CMRSynthLib.reid.filter import secret_draw_seed
    for index in range(count):
        # a filtered draw's seed is secret (module notes): the header says so instead of naming it
        draw_seed, shown_seed = (seed + index,) * 2 if privacy_filter is None else (secret_draw_seed(), "secret")
        rng = torch.Generator(device=device).manual_seed(draw_seed)
        relay = None if callback is None else (lambda done, total, i=index: callback(i * total + done, count * total))
        with precision_context(precision, device):
            images = generator.sample(cond, sampler=sampler, steps=steps, guidance=guidance, generator=rng,
                                      callback=relay)
        stack = _to_stack(images, generator, labels.shape[0], start)
        filter_fields = {}
        if privacy_filter is not None:
            stack, filter_fields = _screen(privacy_filter, generator, cond, labels, start, stack, draw_seed,
                                           dict(sampler=sampler, steps=steps, guidance=guidance), precision,
                                           screened and (lambda *drawn, i=index: screened(i, *drawn)), path)
        restored = transform.restore(stack, order=1, fill=-1.0).array
        scaled = (lo + (restored.astype(np.float64) + 1.0) * 0.5 * (hi - lo)).astype(np.float32)
        volumes.append(Volume(scaled, mask.ijk_to_ras, marker(
            card, seed=shown_seed, vendor=vendor, phase=phase, group=group, sampler=sampler, steps=steps,
            guidance=guidance, precision=precision, **filter_fields)))
    return volumes


def _screen(privacy_filter, generator, cond: Conditions, labels: np.ndarray, start: int, stack: np.ndarray,
            seed: int, options: dict, precision: str, screened, path) -> tuple[np.ndarray, dict]:
    """The privacy filter on one drawn stack → the kept stack and its header fields (the same for every image);
    tells ``screened`` what it did; refuses a lost cause."""
    from CMRSynthLib.reid.filter import PrivacyFilterRefusal
    from CMRSynthLib.reid.model import NOT_MEASURABLE

    device = cond.mask.device
    whole = generator.config.spatial_dims == 3

    def redraw(which: np.ndarray, new_seed: int) -> np.ndarray:
        rng = torch.Generator(device=device).manual_seed(new_seed)
        with precision_context(precision, device):
            images = generator.sample(cond if whole else cond[torch.as_tensor(which)], generator=rng, **options)
        drawn = _to_stack(images, generator, labels.shape[0], start)
        return drawn[which] if whole else drawn

    stack, screening = privacy_filter.screen(stack, labels, seed, redraw, whole=whole)
    if screened is not None:
        screened(seed, screening)
    if screening.refused:
        raise PrivacyFilterRefusal(
            f"the image still re-identifies a training patient after {privacy_filter.retries} redraws "
            f"(embedding distance below the threshold {privacy_filter.threshold:.3g}); this model reproduces a "
            "training patient's scan for this mask, so the image is withheld: use a model trained with DP, another "
            "mask, or more --privacy-retries", path=path)
    rate = privacy_filter.false_match_rate
    return stack, {"privacy_filter": f"{privacy_filter.threshold:.6g}",
                   "privacy_false_match_rate": NOT_MEASURABLE if rate is None else f"{rate:.4g}"}


@torch.no_grad()
def restyle(generator, card: dict, image: Volume, mask: Volume, *, vendor: str, source_vendor: str | None = None,
            phase: str | None = None, group: str | None = None, steps: int | None = None,
            image_path=None, mask_path=None) -> Volume:
    """``image`` re-rendered in ``vendor``'s style, on its own geometry and intensity scale.

    Flow models only (DESIGN §3): the prepared image is integrated back to noise under ``source_vendor``
    (None: unconditional) and forward again under ``vendor``. Voxels outside the prepared field of view keep
    their original values. Raises :class:`InputError` for NaN intensities, a mask off the image's grid, or
    a model that cannot restyle.
    """
    from CMRSynthLib.data.preprocess import prepare_case

    if not hasattr(generator, "restyle") or card["family"] == "anatomy":
        raise InputError(f"restyle needs a flow-matching model (invertible); this checkpoint is a "
                         f"{card['family']} model")
    check_finite(image, path=image_path)
    check_same_geometry(image, mask, image_path=image_path, label_path=mask_path)
    sampler, steps, _ = generator.check_sampling(None, steps, 1.0)
    target = tokens(card, vendor=vendor, phase=phase, group=group)
    source = tokens(card, vendor=source_vendor, phase=phase, group=group)
    record = CaseRecord(patient="restyle", phase=phase or "", image_path=str(image_path or "image"),
                        label_path=str(mask_path or "mask"))
    prepared = prepare_case(Case(record, image, mask), preprocessing(card), whole=True)
    if not prepared.mask.any():
        raise InputError("mask is empty (no LV, MYO or RV voxel)", path=mask_path)
    cond_target, start = conditions(generator, prepared.mask, target, path=mask_path)
    cond_source, _ = conditions(generator, prepared.mask, source, path=mask_path)
    device = next(generator.parameters()).device
    images = torch.as_tensor(prepared.image)
    if generator.config.spatial_dims == 3:
        from CMRSynthLib.data.datasets import fit_depth

        fitted, _, _ = fit_depth(prepared.image, prepared.mask, int(generator.config.image_size[0]))
        images = torch.as_tensor(fitted)[None, None]
    else:
        images = images[:, None]
    out = generator.restyle(images.to(device), cond_source.to(device), cond_target.to(device), steps=steps,
                            sampler=sampler)
    stack = _to_stack(out, generator, prepared.mask.shape[0], start)
    restored = prepared.transform.restore(np.clip(stack, -1.0, 1.0), order=1, fill=np.nan).array
    values = prepared.transform.denormalise(restored)
    outside = np.isnan(restored)
    values[outside] = np.asarray(image.array, dtype=np.float32)[outside]
    return Volume(values, image.ijk_to_ras, marker(card, seed=0, vendor=vendor, restyled_from=source_vendor or
                                                   ANY_VENDOR, steps=steps))


def _pad_to_field(stack: np.ndarray, field_mm, spacing) -> np.ndarray:
    """``stack`` ``(K, H, W)`` padded evenly with background to cover ``field_mm`` at ``spacing`` (rows, columns)."""
    sizes = [max(n, int(np.ceil(mm / sp))) for n, mm, sp in zip(stack.shape[1:], field_mm, spacing)]
    pads = [(0, 0)] + [((s - n) // 2, s - n - (s - n) // 2) for s, n in zip(sizes, stack.shape[1:])]
    return np.pad(stack, pads)


@torch.no_grad()
def sample_anatomy(anatomy, card: dict, *, count: int, group: str | None = None, phase: str | None = None,
                   seed: int = 0, steps: int | None = None,
                   field_mm: tuple[float, float] | None = None) -> list[Volume]:
    """``count`` new masks from the stage-1 anatomy generator: canonical uint8 :class:`Volume` s.

    A 2D anatomy model draws single slices, a 3D one whole stacks (empty end slices dropped). The grid is
    the model's prepared grid: its in-plane spacing, ``NEW_ANATOMY_SLICE_MM`` between slices, axes along
    RAS and the centre at the origin. Mask ``i`` uses seed ``seed + i``. ``field_mm`` ``(rows, columns)``
    pads the grid with background to at least that field of view (for whole-field-of-view image models).
    """
    if int(count) != count or count < 1:
        raise InputError(f"--new-anatomy must be a positive whole number, got {count}")
    _, steps, _ = anatomy.check_sampling(None, steps, 1.0)
    vocabulary = Vocabulary.from_dict(card["vocabulary"])
    phase_token, group_token = vocabulary.token("phases", phase), vocabulary.token("groups", group)
    device = next(anatomy.parameters()).device
    spacing = preprocessing(card).spacing  # (rows, columns) mm
    masks = []
    for index in range(count):
        rng = torch.Generator(device=device).manual_seed(seed + index)
        labels = anatomy.sample_labels(1, phase=phase_token, group=group_token, steps=steps, generator=rng)[0]
        stack = labels.cpu().numpy()
        if not stack.any():
            raise RuntimeError("the anatomy model drew an empty mask; it needs more training")
        if stack.ndim == 2:
            stack = stack[None]
        else:
            filled = np.flatnonzero(stack.reshape(len(stack), -1).any(1))
            stack = stack[filled[0]:filled[-1] + 1]
        if field_mm is not None:
            stack = _pad_to_field(stack, field_mm, spacing)
        matrix = np.diag([spacing[1], spacing[0], NEW_ANATOMY_SLICE_MM, 1.0])
        matrix[:3, 3] = -matrix[:3, :3] @ ((np.asarray(stack.shape[::-1]) - 1) / 2.0)
        masks.append(Volume(stack.astype(np.uint8), matrix, {
            "descrip": f"SYNTHETIC CMRSynth anatomy seed={seed + index} model={card.get('model_id', 'unknown')}"[:80]}))
    return masks
