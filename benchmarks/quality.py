"""Quality of the starter models (issue 3), so that speed is compared at equal quality.

On the held-out phantom patients of each starter model's card (the phantom cohort its card names, prepared
with its card's preprocessing), for each (sampler, steps) row:

- **mask adherence**: Dice per LV / MYO / RV between the conditioning mask and the prediction of the audit's
  segmenter (:func:`CMRSynthLib.audit.segmenter.train_segmenter`, a MONAI UNet trained on the real member
  patients, cached) on the synthetic image — :func:`CMRSynthLib.audit.adherence.mask_adherence`; the same
  segmenter on the real held-out images is the ceiling, both on all of them and on exactly the slices the
  synthetic rows re-create (a few slices with a sliver of RV can swing a patient's Dice);
- **LV-vs-MYO contrast per vendor**: mean intensity of the LV blood pool minus that of the myocardium (images
  in [-1, 1]), synthetic vs real held-out slices of the same vendor;
- **vendor recognisability**: accuracy of a vendor classifier (:class:`VendorClassifier`, trained here on the
  real member slices — the audit has no vendor classifier) on synthetic images, whose label is the vendor
  they were asked for: every evaluated mask is rendered once in each vendor's style, so the test is balanced
  and asks for styles other than the mask's own scanner; its accuracy on the real held-out slices is the
  ceiling.

Issue 3's targets: Dice ≥ 0.85 for LV and RV, ≥ 0.75 for MYO; vendor accuracy ≥ 80%.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks import subjects
from benchmarks.common import Settings, Table, load_average
from benchmarks.sampling import BASELINE

TARGETS = {"LV": 0.85, "MYO": 0.75, "RV": 0.85}
VENDOR_TARGET = 0.80
SLICES = {"smoke": 4, "quick": 16, "full": 32}  # held-out slices generated per row (spread over patients)
VENDOR_MASKS = {"smoke": 2, "quick": 8, "full": 16}  # held-out masks rendered in every vendor's style
CLASSIFIER_STEPS = {"smoke": 10, "quick": 600, "full": 1500}
ROWS = {  # (sampler, steps) rows beyond each family's default (full mode); the baseline is added for DDPM
    "ddpm": [("dpmpp", 10), ("ddim", 50)],
    "flow": [("euler", 4), ("euler", 16), ("heun", 4)],
    "ldm": [("euler", 4)],
}


MEMBERS = {"smoke": 2, "quick": 16, "full": None}  # member patients the judges train on (None: all)


def phantom_slices(patients, phantom: dict, preprocessing):
    """Prepared slices showing the heart of phantom ``patients`` (ids ``phantomNNN``), made in memory."""
    from CMRSynthLib.audit.slices import Slices
    from CMRSynthLib.data.phantom import make_phantom_patient
    from CMRSynthLib.data.preprocess import prepare_case

    parts = []
    for patient in patients:
        for case in make_phantom_patient(int(patient.removeprefix("phantom")), seed=phantom["seed"],
                                         shape=tuple(phantom["shape"])):
            prepared = prepare_case(case, preprocessing)
            keep = prepared.mask.reshape(len(prepared.mask), -1).any(axis=1)
            n, r = int(keep.sum()), case.record
            parts.append(Slices(prepared.image[keep], prepared.mask[keep], [r.patient] * n, [r.vendor] * n,
                                [r.phase] * n, [r.group] * n, spacing=preprocessing.spacing))
    return Slices.cat(parts)


def members_and_holdout(card: dict, settings: Settings):
    """Real member and held-out slices of the starter's phantom cohort, on the card's prepared grid."""
    from CMRSynthLib.data.preprocess import PreprocessConfig

    preprocessing = PreprocessConfig.from_dict(card["preprocessing"])
    members = sorted(card["members"])[:MEMBERS[settings.mode]]
    holdout = sorted(card["holdout"])[:1] if settings.smoke else sorted(card["holdout"])
    phantom = card["starter"]["phantom"]
    return phantom_slices(members, phantom, preprocessing), phantom_slices(holdout, phantom, preprocessing)


def spread(slices, count: int):
    """``count`` slices taken evenly over the whole set (so every held-out patient and vendor appears)."""
    index = np.unique(np.linspace(0, len(slices) - 1, min(count, len(slices))).round().astype(int))
    return slices.take(index)


def synthesise(generator, card: dict, source, sampler: str, steps: int, *, seed: int = 0):
    """``(synthetic slices, seconds per slice)``: one image per ``source`` slice, all in one batch."""
    from CMRSynthLib.audit.slices import to_conditions
    from CMRSynthLib.generators.base import Vocabulary

    cond = to_conditions(source, Vocabulary.from_dict(card["vocabulary"]))
    start = time.perf_counter()
    images = generator.sample(cond, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(seed))
    seconds = (time.perf_counter() - start) / len(source)
    return source.with_images(images[:, 0].float().numpy()), seconds


def lv_myo_contrast(slices) -> dict[str, float]:
    """Vendor → mean over slices of (mean LV intensity − mean MYO intensity); slices lacking either are skipped."""
    out: dict[str, list[float]] = {}
    for image, mask, vendor in zip(slices.images, slices.masks, slices.vendors):
        if (mask == 1).any() and (mask == 2).any():
            out.setdefault(str(vendor), []).append(float(image[mask == 1].mean() - image[mask == 2].mean()))
    return {vendor: float(np.mean(values)) for vendor, values in sorted(out.items())}


class VendorClassifier:
    """A MONAI ``Classifier`` CNN that tells the vendor of a slice from its heart region, trained with Adam and
    a cosine learning rate (fixed seed).

    Input: a square crop (3/4 of the slice side) centred on the heart (the centroid of the labels) of the
    image and its one-hot label map, 5 channels. The phantom's vendors differ in tissue contrast
    (myocardium/blood), noise, resolution and ringing; the label channels let the network compare tissues
    instead of guessing them. Real slices come with their labels, synthetic ones with their conditioning
    masks. Training crops are jittered by up to :attr:`JITTER` pixels; predictions average the logits of
    the centred crop and four shifted ones. (Random crops of the image alone, the first version, reached
    86% on real held-out slices: crops of lung and chest wall carry little vendor signal.)
    """

    JITTER = 4

    def __init__(self, train, *, steps: int, batch_size: int = 32, seed: int = 0):
        from monai.networks.nets import Classifier

        self.vendors = sorted(set(train.vendors.tolist()))
        self.crop = 3 * train.shape[0] // 4
        torch.manual_seed(seed)
        self.network = Classifier(in_shape=(5, self.crop, self.crop), classes=len(self.vendors),
                                  channels=(16, 32, 64, 64), strides=(2, 2, 2, 2), num_res_units=1, norm="batch")
        inputs, centres = self.inputs(train), self.centres(train)
        labels = torch.tensor([self.vendors.index(v) for v in train.vendors])
        optimiser = torch.optim.Adam(self.network.parameters(), lr=2e-3)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
        rng = np.random.default_rng(seed)
        self.network.train()
        for _ in range(steps):
            index = rng.choice(len(inputs), size=min(batch_size, len(inputs)), replace=False)
            shifts = rng.integers(-self.JITTER, self.JITTER + 1, size=(len(index), 2))
            crops = torch.stack([self.cut(inputs[i], centres[i] + shift) for i, shift in zip(index, shifts)])
            loss = torch.nn.functional.cross_entropy(self.network(crops), labels[torch.from_numpy(index)])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
        self.network.eval()

    @staticmethod
    def inputs(slices) -> torch.Tensor:
        """``(N, 5, H, W)``: the image and its one-hot labels."""
        from CMRSynthLib.audit.slices import one_hot

        return torch.cat([torch.from_numpy(slices.images)[:, None], one_hot(slices.masks)], dim=1)

    @staticmethod
    def centres(slices) -> np.ndarray:
        """``(N, 2)`` integer centroid (row, column) of each slice's labels (the slice centre if it has none)."""
        out = []
        for mask in slices.masks:
            rows, cols = np.nonzero(mask)
            out.append((rows.mean(), cols.mean()) if len(rows) else (mask.shape[0] / 2, mask.shape[1] / 2))
        return np.round(out).astype(int).reshape(-1, 2)

    def cut(self, channels: torch.Tensor, centre: np.ndarray) -> torch.Tensor:
        """The ``crop``² window of ``channels`` ``(C, H, W)`` centred on ``centre``, moved inside the slice."""
        top, left = np.clip(np.asarray(centre) - self.crop // 2, 0, np.array(channels.shape[1:]) - self.crop)
        return channels[:, top:top + self.crop, left:left + self.crop]

    def predict(self, slices) -> np.ndarray:
        """``(N,)`` predicted vendor names."""
        inputs, centres = self.inputs(slices), self.centres(slices)
        shifts = [(0, 0), (-self.JITTER, 0), (self.JITTER, 0), (0, -self.JITTER), (0, self.JITTER)]
        with torch.no_grad():
            logits = sum(self.network(torch.stack([self.cut(x, c + np.array(shift)) for x, c in zip(inputs, centres)]))
                         for shift in shifts)
        return np.array(self.vendors)[logits.argmax(1).numpy()]

    def accuracy(self, slices) -> tuple[float, dict[str, float]]:
        """``(accuracy, vendor → accuracy on that vendor's slices)``; unknown vendors count as wrong."""
        right = self.predict(slices) == slices.vendors
        return float(right.mean()), {v: float(right[slices.vendors == v].mean()) for v in sorted(set(slices.vendors))}


def in_every_vendor(slices, vendors) -> "Slices":
    """Each slice once per vendor of ``vendors``: the same masks and attributes, the vendor replaced."""
    import dataclasses

    from CMRSynthLib.audit.slices import Slices

    return Slices.cat([dataclasses.replace(slices, vendors=np.array([v] * len(slices)))
                       for v in vendors])


def preset_default(family: str, settings: Settings) -> tuple[str, int]:
    """The (sampler, steps) a freshly built generator of the run's preset samples with (the sampling table's default
    row; a starter trained earlier may carry an older default in its card)."""
    from CMRSynthLib.generators import preset_config

    config = preset_config(family, settings.preset, spatial_dims=2, image_size=settings.size,
                           vocabulary=subjects.VOCABULARY)
    return config.sampler, config.steps


def plan(generator, family: str, settings: Settings) -> list[tuple[str, int]]:
    rows = [(generator.default_sampler, generator.default_steps)]
    if not settings.smoke and preset_default(family, settings) not in rows:
        rows.append(preset_default(family, settings))
    if settings.full:
        rows += [r for r in ROWS.get(family, []) if r not in rows]
        if family == BASELINE[0]:
            rows.append(BASELINE[1:])
    return rows


def starters(settings: Settings) -> dict[str, tuple]:
    """Family → (generator, card) of the shipped starters this run covers (smoke: the tiny flow starter)."""
    names = {"flow": "phantom-tiny-flow"} if settings.smoke else {f: f"phantom-{f}" for f in subjects.FAMILIES}
    found = {}
    for family, name in names.items():
        loaded = subjects.starter(name, device=settings.device)
        if loaded is not None:
            found[family] = loaded
    return found


def run(settings: Settings, context: dict) -> list[Table]:
    from CMRSynthLib.audit.adherence import mask_adherence, segmenter_ceiling
    from CMRSynthLib.audit.segmenter import SegmenterConfig, train_segmenter

    models = starters(settings)
    adherence = Table("Quality: mask adherence of the starter models on held-out phantom patients",
                      ["generator", "sampler", "steps", "Dice LV", "Dice MYO", "Dice RV", "mean Dice",
                       "Dice targets (LV, RV ≥ 0.85; MYO ≥ 0.75)", "s/slice (trained, batch of all)"])
    if not models:
        adherence.notes.append("No starter model is shipped yet (Resources/models/phantom-<family>/): quality is n/a, "
                               "the speed tables use random weights.")
        return [adherence]
    loads = [load_average()]
    card0 = next(iter(models.values()))[1]
    members, holdout = members_and_holdout(card0, settings)
    seg_config = SegmenterConfig.quick(steps=20) if settings.smoke else (
        SegmenterConfig.quick() if not settings.full else SegmenterConfig())
    judge = train_segmenter(members, seg_config)
    classifier = VendorClassifier(members, steps=CLASSIFIER_STEPS[settings.mode])
    source = spread(holdout, SLICES[settings.mode])
    restyled = in_every_vendor(spread(holdout, VENDOR_MASKS[settings.mode]), classifier.vendors)
    n_boot = 100 if settings.smoke else 500
    ceiling = segmenter_ceiling(judge, holdout, n_boot=n_boot)
    _add_dice(adherence, f"real held-out images, all {len(holdout)} slices (segmenter ceiling)", "–", "–", ceiling,
              None)
    _add_dice(adherence, "real images of the evaluated slices (their ceiling)", "–", "–",
              segmenter_ceiling(judge, source, n_boot=n_boot), None)
    contrast = {"real held-out": lv_myo_contrast(holdout)}
    vendor_rows = [("real held-out images (classifier ceiling)", *classifier.accuracy(holdout))]
    dice: dict[tuple, float] = {}
    cells: dict[tuple, str] = {}
    for family, (generator, card) in models.items():
        if card["preprocessing"] != card0["preprocessing"] or card["holdout"] != card0["holdout"]:
            adherence.notes.append(f"{family}: trained on other data or preprocessing than the others; skipped")
            continue
        for sampler, steps in plan(generator, family, settings):
            synthetic, per_slice = synthesise(generator, card, source, sampler, steps)
            summary = mask_adherence(judge, synthetic, n_boot=n_boot)
            _add_dice(adherence, family, sampler, steps, summary, per_slice)
            dice[(family, sampler, steps)] = summary["mean"]["dice"].value
            cells[(family, sampler, steps)] = " / ".join(f"{summary[s]['dice'].value:.2f}" for s in TARGETS)
            if (sampler, steps) == (generator.default_sampler, generator.default_steps):
                contrast[f"{family} ({sampler} {steps})"] = lv_myo_contrast(synthetic)
                styled, _ = synthesise(generator, card, restyled, sampler, steps)
                vendor_rows.append((f"{family} ({sampler}, {steps} steps)", *classifier.accuracy(styled)))
    loads.append(load_average())
    context["dice"] = dice
    context["dice_of"] = lambda family, sampler, steps: cells.get((family, sampler, steps), "n/a (not measured)")
    size = "×".join(map(str, card0["preprocessing"]["size"]))
    adherence.notes += [
        f"Starter models (EMA weights) at their own {size} grid; {len(source)} held-out slices spread over "
        f"{len(set(source.patients.tolist()))} patients per row (one batch, seed 0); Dice per patient over its "
        f"slices, mean over patients; segmenter: MONAI UNet trained on {len(members)} real member slices "
        f"({seg_config.steps} steps, cached). Load average: " + " → ".join(loads) + ".",
    ]
    context["vendor_accuracy"] = {name: accuracy for name, accuracy, _ in vendor_rows}
    return [adherence, contrast_table(contrast), vendor_table(vendor_rows, classifier, members, restyled)]


def _add_dice(table: Table, name: str, sampler, steps, summary: dict, per_slice: float | None) -> None:
    values = {s: summary[s]["dice"].value for s in TARGETS}
    met = all(np.isfinite(values[s]) and values[s] >= TARGETS[s] for s in TARGETS)
    table.add(name, sampler, steps, *(f"{values[s]:.3f}" for s in TARGETS), f"{summary['mean']['dice'].value:.3f}",
              "met" if met else "missed", "–" if per_slice is None else f"{per_slice:.3g}")


def contrast_table(contrast: dict[str, dict[str, float]]) -> Table:
    vendors = sorted({v for values in contrast.values() for v in values})
    table = Table("Quality: LV blood pool minus myocardium intensity per vendor (images in [-1, 1])",
                  ["images", *vendors])
    for name, values in contrast.items():
        table.add(name, *(f"{values[v]:+.3f}" if v in values else "–" for v in vendors))
    table.notes.append("Default sampler of each starter; the synthetic rows should match the real row vendor by "
                       "vendor (the vendors differ in contrast by design).")
    return table


def vendor_table(rows: list[tuple[str, float, dict]], classifier: VendorClassifier, members, restyled) -> Table:
    table = Table("Quality: vendor recognisable? Accuracy of a vendor classifier trained on real images",
                  ["images", "accuracy", *classifier.vendors, f"target ≥ {VENDOR_TARGET:.0%}"])
    for name, accuracy, per_vendor in rows:
        table.add(name, f"{accuracy:.1%}", *(f"{per_vendor[v]:.0%}" if v in per_vendor else "–"
                                             for v in classifier.vendors),
                  "met" if accuracy >= VENDOR_TARGET else "missed")
    masks = len(restyled) // len(classifier.vendors)
    table.notes.append(f"Synthetic rows: {masks} held-out masks, each rendered in every vendor's style "
                       f"({len(restyled)} images, default sampler, seed 0); the label is the vendor asked for. "
                       f"Classifier: MONAI Classifier (4 strided residual levels, batch norm) on {classifier.crop}² "
                       f"heart-centred crops of the image and its one-hot labels (logits averaged over 5 shifted "
                       f"crops), trained on {len(members)} real "
                       f"member slices of vendors {', '.join(classifier.vendors)}; chance = "
                       f"{1 / len(classifier.vendors):.0%}.")
    return table
