"""Orchestration of the audit: checkpoints + cohort → report.json, report.html and figures.

Who is who: members are the patients the checkpoint card lists as trained on (or ``members``);
non-members are the card's held-out patients, or ``holdout`` (a cohort folder whose patients are all
non-members, a file of patient ids, or ids). Overlap is refused: the numbers would be meaningless.

What is compared with what (all on the checkpoint's prepared grid, slices that show the heart):

- the synthetic set is generated from the members' masks, vendors and attributes (the set a hospital would
  share), plus one image per non-member slice for memorisation and adherence; or read from ``synthetic``;
- fidelity: synthetic (member masks) vs real non-members, with real members vs real non-members as the
  yardstick; adherence on all synthetic images and on those from held-out masks, reference on real non-members
  (the judge and the FD-seg encoder are trained on the members: the report says what they saw);
- discriminability: every real slice (members and non-members) against every synthetic one, split by patient;
- utility: segmenters on real members / synthetic / both, tested on real non-members;
- privacy: attacks on members vs non-members, read against the same attacks between two groups of
  non-members (the control); nearest neighbours among all of their real slices; the privacy
  filter's re-identification rate before and after on the members' synthetic images (:mod:`.reidentification`).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from CMRSynthLib import __version__
from CMRSynthLib.audit import figures
from CMRSynthLib.audit.adherence import mask_adherence, segmenter_ceiling, what_the_judge_saw
from CMRSynthLib.audit.discriminability import DiscriminatorConfig, classifier_two_sample_test
from CMRSynthLib.audit.features import segmenter_space
from CMRSynthLib.audit.fidelity import feature_distances, ms_ssim_diversity, tissue_statistics
from CMRSynthLib.audit.inception import inception_space
from CMRSynthLib.audit.membership import AttackConfig, membership_inference
from CMRSynthLib.audit.memorisation import nearest_neighbours
from CMRSynthLib.audit.reidentification import reidentification
from CMRSynthLib.audit.report import verdict_rows, write_report
from CMRSynthLib.audit.segmenter import SegmenterConfig, train_segmenter
from CMRSynthLib.audit.slices import Slices, to_conditions
from CMRSynthLib.audit.stats import MIN_PATIENTS_FOR_CI
from CMRSynthLib.audit.utility import cross_vendor_study, split_vendors, utility_study
from CMRSynthLib.errors import InputError
from CMRSynthLib.files import atomic_dir
from CMRSynthLib.training.ledger import patient_level
from CMRSynthLib.training.membership import SPLITS, SUFFIX, patient_splits


@dataclass(frozen=True)
class AuditPlan:
    """How much work an audit does: patients per side, segmenter, attacks, bootstrap draws."""

    max_patients: int | None = None  # per side (members, non-members) except for the membership attacks; None = all
    slices_per_case: int | None = None  # heart slices kept per image, evenly spaced base to apex; None = all
    segmenter: SegmenterConfig = SegmenterConfig()
    attack: AttackConfig = AttackConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    n_boot: int = 1000
    batch_size: int = 32
    seed: int = 0

    @classmethod
    def quick(cls) -> "AuditPlan":
        return cls(max_patients=6, slices_per_case=3, segmenter=SegmenterConfig.quick(), attack=AttackConfig.quick(),
                   discriminator=DiscriminatorConfig.quick(), n_boot=300)


# -- who is who ---------------------------------------------------------------------------------------
CARD_SPLITS = SPLITS  # patient lists of a checkpoint (card or membership file: training/membership.py)


def patient_list(value, *, flag: str, splits: dict | None = None) -> list[str] | None:
    """Patient ids from a sequence, the name of one of the checkpoint's splits (:data:`CARD_SPLITS`), a file
    (one id per line or comma-separated) or a comma-separated string; split names may be joined by ``+``."""
    if value is None:
        return None
    if isinstance(value, str) and splits is not None and all(p in CARD_SPLITS for p in value.split("+")):
        ids = [i for part in value.split("+") for i in (splits.get(part) or [])]
        if not ids:
            raise InputError(f"{flag} {value}: the checkpoint lists no such patients")
        return sorted(set(ids))
    if isinstance(value, (list, tuple, set)):
        ids = [str(v).strip() for v in value]
    elif os.path.isfile(value):
        ids = Path(value).read_text(encoding="utf-8").replace(",", "\n").split()
    else:
        ids = str(value).split(",")
    ids = sorted({i.strip() for i in ids if i.strip()})
    if not ids:
        raise InputError(f"{flag} names no patient", path=value if isinstance(value, str) and os.path.isfile(value) else None)
    return ids


def resolve_patients(splits: dict, cohort, *, members=None, holdout=None, holdout_cohort=None,
                     warnings: list[str]) -> tuple[list[str], list[str]]:
    """Members and non-members present in the data; InputError on overlap or when a side is empty.

    ``splits``: the checkpoint's patient lists (:func:`CMRSynthLib.training.membership.patient_splits`)."""
    member_ids = patient_list(members, flag="--members", splits=splits) or list(splits.get("members") or [])
    if holdout_cohort is not None:
        non_ids = holdout_cohort.patients()
    else:
        non_ids = patient_list(holdout, flag="--holdout", splits=splits) or list(splits.get("holdout") or [])
    where = f"neither the checkpoint card nor a {SUFFIX} file beside the folder"
    if not member_ids:
        raise InputError(f"{where} lists member patients; give --members")
    if not non_ids:
        raise InputError(f"{where} lists held-out patients; give --holdout")
    overlap = sorted(set(member_ids) & set(non_ids))
    if overlap:
        raise InputError(f"members and held-out patients overlap ({len(overlap)}: {', '.join(overlap[:5])}); "
                         "membership numbers would be meaningless - give disjoint --members/--holdout")
    present = set(cohort.patients())
    non_present = set(holdout_cohort.patients()) if holdout_cohort is not None else present
    kept_m = [p for p in member_ids if p in present]
    kept_n = [p for p in non_ids if p in non_present]
    for name, wanted, kept in (("member", member_ids, kept_m), ("held-out", non_ids, kept_n)):
        if not kept:
            raise InputError(f"none of the {len(wanted)} {name} patients ({', '.join(wanted[:3])}, ...) is in the "
                             f"data; is --data the cohort this model was trained on?", path=cohort.root)
        if len(kept) < len(wanted):
            warnings.append(f"{len(wanted) - len(kept)} of {len(wanted)} {name} patients are not in the data "
                            "and were left out")
    return sorted(kept_m), sorted(kept_n)


def subsample_matched(ids_m: list[str], ids_n: list[str], strata: dict[str, tuple], limit: int | None,
                      seed: int) -> tuple[list[str], list[str]]:
    """At most ``limit`` non-members (random), then as many members chosen to match their (vendor, group),
    falling back to vendor alone, then to any member: a capped audit keeps the attacks' strata balanced."""
    if limit is None or (len(ids_m) <= limit and len(ids_n) <= limit):
        return ids_m, ids_n
    rng = np.random.default_rng(seed)
    chosen_n = sorted(rng.choice(ids_n, size=min(limit, len(ids_n)), replace=False).tolist())
    pool = rng.permutation(ids_m).tolist()
    chosen_m: list[str] = []
    for key in (lambda s: s, lambda s: s[:1], lambda s: ()):
        for patient in chosen_n:
            match = next((m for m in pool if key(strata[m]) == key(strata[patient])), None)
            if match is not None and len(chosen_m) < min(limit, len(ids_m)):
                chosen_m.append(match)
                pool.remove(match)
    return sorted(chosen_m), chosen_n


# -- slices -------------------------------------------------------------------------------------------------
def load_slices(cohort, patients: Sequence[str], preprocessing, *, what: str,
                slices_per_case: int | None = None) -> Slices:
    """The prepared slices showing the heart of ``patients`` in ``cohort`` (every case must have a label);
    at most ``slices_per_case`` of them per image, evenly spaced from base to apex."""
    from CMRSynthLib.data.cohorts import load_case
    from CMRSynthLib.data.preprocess import prepare_case

    wanted = set(patients)
    parts = []
    for record in cohort.records:
        if record.patient not in wanted:
            continue
        if not record.label_path:
            raise InputError(f"{what} image has no mask; the audit needs the mask of every image",
                             path=record.image_path)
        prepared = prepare_case(load_case(record), preprocessing)
        keep = np.flatnonzero(prepared.mask.reshape(len(prepared.mask), -1).any(axis=1))
        if slices_per_case is not None and len(keep) > slices_per_case:
            keep = keep[np.linspace(0, len(keep) - 1, slices_per_case).round().astype(int)]
        n = len(keep)
        parts.append(Slices(prepared.image[keep], prepared.mask[keep], [record.patient] * n, [record.vendor] * n,
                            [record.phase] * n, [record.group] * n, spacing=preprocessing.spacing))
    if not parts:
        raise InputError(f"no {what} slices showing the heart were found", path=cohort.root)
    return Slices.cat(parts)


def audited_slices(name: str, model, card: dict, cohort, plan: AuditPlan, *, members=None, holdout=None,
                   holdout_cohort=None, warnings: list[str]) -> tuple[Slices, Slices, tuple[Slices, Slices]]:
    """The real slices an audit of ``model`` works on: its members and held-out patients (the card's unless
    ``members``/``holdout`` say otherwise), capped and matched by vendor and group as ``plan`` says, and every
    member and held-out patient for the membership attacks. Returns ``(members, held_out, (all members,
    all held out))``; too few patients for intervals become ``warnings``."""
    from CMRSynthLib.data.preprocess import PreprocessConfig
    from CMRSynthLib.training.checkpoint import resolve_model

    preprocessing = PreprocessConfig.from_dict(card["preprocessing"])
    ids_m, ids_n = resolve_patients(patient_splits(card, resolve_model(model)), cohort, members=members,
                                    holdout=holdout, holdout_cohort=holdout_cohort, warnings=warnings)
    strata = {r.patient: (r.vendor, r.group) for c in (cohort, holdout_cohort) if c for r in c.records}
    every_m, every_n = ids_m, ids_n
    ids_m, ids_n = subsample_matched(ids_m, ids_n, strata, plan.max_patients, plan.seed)
    for side, ids in (("member", ids_m), ("held-out", ids_n)):
        if len(ids) < MIN_PATIENTS_FOR_CI:
            warnings.append(f"{name}: only {len(ids)} {side} patients; confidence intervals are unreliable "
                            f"below {MIN_PATIENTS_FOR_CI}")
    # The attacks only evaluate losses, which is cheap: they get every patient, as a capped audit
    # would otherwise leave them a handful per side and no chance of a significant result.
    attacked = (load_slices(cohort, every_m, preprocessing, what="member", slices_per_case=plan.slices_per_case),
                load_slices(holdout_cohort or cohort, every_n, preprocessing, what="held-out",
                            slices_per_case=plan.slices_per_case))
    return attacked[0].of_patients(ids_m), attacked[1].of_patients(ids_n), attacked


def generate(generator, vocabulary, source: Slices, *, seed: int, batch_size: int, progress, label: str,
             vendors: np.ndarray | None = None) -> Slices:
    """One synthetic image per ``source`` slice, conditioned on its mask, vendor (or ``vendors``), phase, group.

    Batch ``b`` uses a torch generator seeded ``seed + b``: the same call gives the same images.
    """
    import torch

    target = source if vendors is None else Slices(source.images, source.masks, source.patients, vendors,
                                                   source.phases, source.groups, spacing=source.spacing)
    out = []
    progress.start(f"audit: {label}", len(target))
    for b, start in enumerate(range(0, len(target), batch_size)):
        part = target.take(np.arange(start, min(start + batch_size, len(target))))
        cond = to_conditions(part, vocabulary)
        with torch.no_grad():
            images = generator.sample(cond, generator=torch.Generator().manual_seed(seed + b))
        out.append(images[:, 0].float().cpu().numpy())
        progress.update(min(start + batch_size, len(target)))
    return target.with_images(np.concatenate(out))


# -- one model ----------------------------------------------------------------------------------------------
def audit_model(name: str, generator, card: dict, real_m: Slices, real_n: Slices, plan: AuditPlan, *,
                synthetic: Slices | None, figures_dir: Path, cache, device: str, redact: bool, progress,
                warnings: list[str], extra_spaces: Sequence = (), attacked: tuple[Slices, Slices] | None = None,
                reid=None) -> dict:
    """Every measure for one model; returns its report section (figures written to ``figures_dir``).

    Problems that only limit one measure (too few patients for the attacks) become ``warnings``;
    ``extra_spaces`` are further feature spaces for FD/KD (Inception), without bootstrap intervals;
    ``attacked`` are the members and non-members the membership attacks use (default ``real_m``, ``real_n``);
    ``reid`` is the model's re-identification model (:mod:`CMRSynthLib.reid`), or a sentence why there is none."""
    from CMRSynthLib.generators.base import Vocabulary

    vocabulary = Vocabulary.from_dict(card["vocabulary"])
    kw = dict(cache=cache, device=device, progress=progress, n_boot=plan.n_boot)
    judge = train_segmenter(real_m, plan.segmenter, cache=cache, device=device, progress=progress,
                            label="segmenter on real training patients")
    space = segmenter_space(judge)
    if synthetic is None:
        synth_m = generate(generator, vocabulary, real_m, seed=plan.seed, batch_size=plan.batch_size,
                           progress=progress, label="synthesis from members' masks")
        synth_n = generate(generator, vocabulary, real_n, seed=plan.seed + 10_000, batch_size=plan.batch_size,
                           progress=progress, label="synthesis from held-out masks")
        synth_all, source = Slices.cat([synth_m, synth_n]), "generated by the model"
    else:
        synth_m = synth_all = synthetic
        source = "read from --synthetic"
    progress.start("audit: fidelity", None)
    distances, yardstick = {}, {}
    for extra, n_boot in [(space, plan.n_boot // 5)] + [(s, 0) for s in extra_spaces]:  # 2048-d: no bootstrap
        distances.update(feature_distances(extra, real_n, synth_m, n_boot=n_boot, seed=plan.seed))
        yardstick.update(feature_distances(extra, real_n, real_m, n_boot=n_boot, seed=plan.seed))
    fidelity = {"space": space.description, "spaces": [s.description for s in [space, *extra_spaces]],
                "distances": distances, "yardstick": yardstick,
                "diversity": {"real": ms_ssim_diversity(real_m, seed=plan.seed),
                              "synthetic": ms_ssim_diversity(synth_m, seed=plan.seed)},
                "tissues": tissue_statistics(real_n, synth_m, seed=plan.seed)}
    try:  # every real slice against every synthetic one, split by patient inside
        discriminability = classifier_two_sample_test(Slices.cat([real_m, real_n]), synth_all, plan.discriminator,
                                                      n_boot=plan.n_boot, seed=plan.seed, device=device,
                                                      progress=progress)
    except InputError as exc:
        discriminability = {"skipped": str(exc)}
        warnings.append(f"{name}: discriminability not measured: {exc}")
    adherence = {"synthetic": mask_adherence(judge, synth_all, n_boot=plan.n_boot),
                 "ceiling": segmenter_ceiling(judge, real_n, n_boot=plan.n_boot),
                 "judge": what_the_judge_saw(len(real_m.patient_ids()))}
    if synthetic is None:  # masks the judge never saw: like for like with its real held-out reference
        adherence["held_out_masks"] = mask_adherence(judge, synth_n, n_boot=plan.n_boot)
    utility = utility_study(real_m, synth_m, real_n, plan.segmenter, **kw)
    cross = _cross_vendor(generator, vocabulary, real_m, real_n, synthetic, plan, kw)
    try:
        membership = membership_inference(generator, vocabulary, *(attacked or (real_m, real_n)), plan.attack,
                                          progress=progress)
    except InputError as exc:
        membership = {"skipped": str(exc)}
        warnings.append(f"{name}: membership inference not run: {exc}")
    progress.start("audit: nearest neighbours", None)
    memorisation = nearest_neighbours(synth_all, Slices.cat([real_m, real_n]), set(real_m.patient_ids()),
                                      space=space, n_boot=plan.n_boot)
    reidentified = _reidentification(reid, generator, vocabulary, synth_m, synthetic is None, plan, progress)
    figs = _figures(name, figures_dir, synth_m, synth_all, Slices.cat([real_m, real_n]), fidelity, membership,
                    memorisation, redact)
    section = {"name": name, "family": card.get("family", "unknown"), "model_id": card.get("model_id"),
               "privacy_ledger": card.get("privacy"), "redacted": redact,
               "patients": {"members": list(real_m.patient_ids()), "non_members": list(real_n.patient_ids())},
               "synthetic": {"slices": len(synth_all), "source": source},
               "segmenter": {"config": plan.segmenter.to_dict(), "fingerprint": judge.key},
               "fidelity": fidelity, "discriminability": discriminability, "adherence": adherence,
               "utility": utility, "cross_vendor": cross,
               "membership": membership, "memorisation": memorisation, "reidentification": reidentified,
               "figures": figs}
    section["verdict"] = verdict_rows(section)
    return section


def _reidentification(reid, generator, vocabulary, synth_m: Slices, generated: bool, plan: AuditPlan,
                      progress) -> dict:
    """The privacy filter on the members' synthetic images (redrawn like ``cmrsynth sample`` when generated here)."""
    if isinstance(reid, str) or reid is None:
        return {"skipped": reid or "no re-identification model given"}

    def redraw(which: np.ndarray, seed: int) -> np.ndarray:
        return generate(generator, vocabulary, synth_m.take(which), seed=seed, batch_size=plan.batch_size,
                        progress=progress, label="privacy filter: redraws").images

    progress.start("audit: re-identification", None)
    return reidentification(reid, synth_m, redraw if generated else None, seed=plan.seed, n_boot=plan.n_boot)


def _reid_model(model, card: dict):
    """The re-identification model beside ``model``'s folder, or a sentence saying why there is none."""
    from CMRSynthLib.reid.model import find_reid, reid_path
    from CMRSynthLib.training.checkpoint import resolve_model

    folder = reid_path(resolve_model(model))
    if not folder.is_dir():
        return f"no re-identification model beside the checkpoint ({folder.name}); build it with cmrsynth reid"
    try:
        return find_reid(model, card)
    except InputError as exc:
        return str(exc)


def _cross_vendor(generator, vocabulary, real_m: Slices, real_n: Slices, synthetic: Slices | None, plan, kw) -> dict:
    vendors = split_vendors(real_m.vendors.tolist(), real_n.vendors.tolist())
    if vendors is None:
        return {"skipped": "needs at least two vendors among both members and held-out patients"}
    seen, unseen = vendors
    seen_real = real_m.take(np.isin(real_m.vendors, seen))
    if synthetic is not None:
        styled = synthetic
    elif not set(unseen) <= set(vocabulary.vendors):
        return {"skipped": f"the model does not know the vendors {', '.join(sorted(set(unseen) - set(vocabulary.vendors)))}"}
    else:
        restyle = np.array([unseen[i % len(unseen)] for i in range(len(seen_real))])
        styled = generate(generator, vocabulary, seen_real, seed=plan.seed + 20_000, batch_size=plan.batch_size,
                          progress=kw["progress"], label="synthesis in unseen vendors' style", vendors=restyle)
    return cross_vendor_study(real_m, styled, real_n, seen, unseen, plan.segmenter, **kw)


def _figures(name, figures_dir: Path, synth_m, synth_all, real, fidelity, membership, memorisation, redact) -> dict:
    slug = "".join(c if c.isalnum() else "-" for c in name)
    paths = {"samples": figures.sample_grid(synth_m, figures_dir / f"{slug}-samples.png"),
             "gallery": figures.gallery(memorisation["gallery"], synth_all, real,
                                        figures_dir / f"{slug}-nearest-neighbours.png", redact=redact)}
    if fidelity["tissues"]:
        paths["intensity"] = figures.intensity_figure(fidelity["tissues"], figures_dir / f"{slug}-intensity.png")
    if "attacks" in membership:
        paths["roc"] = figures.roc_figure(membership["attacks"], figures_dir / f"{slug}-roc.png")
        paths["timesteps"] = figures.timestep_figure(membership["attacks"], figures_dir / f"{slug}-timesteps.png")
    return {k: f"figures/{Path(v).name}" for k, v in paths.items()}


# -- the whole audit ------------------------------------------------------------------------------------------
def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "report.json").is_file())):
        raise InputError("--out exists and is not an earlier audit folder; choose a new folder", path=out)


def run_audit(models: Sequence[str], data, out, *, synthetic=None, members=None, holdout=None,
              quick: bool = False, redact: bool = False, inception_weights=None, device: str = "cpu", cache=None,
              plan: AuditPlan | None = None, progress=None) -> dict:
    """Audit one or more checkpoints on a cohort; writes ``out/report.json``, ``out/report.html``, figures.

    Args:
        models: checkpoint folders or starter names.
        data: the cohort the models were trained on (may hold more patients than they saw).
        synthetic: a cohort folder of synthetic images with their masks, used instead of generating (one model).
        members / holdout: override the card's members / held-out patients (see :func:`patient_list`);
            ``holdout`` may also be a cohort folder whose patients are all non-members.
        quick: small n (:meth:`AuditPlan.quick`); ``plan`` overrides it.
        redact: the nearest-neighbour gallery shows outlines instead of real images.
        inception_weights: an Inception-v3 weights file; adds FD/KD-Inception (:mod:`.inception`).
        cache: where trained segmenters are kept (default ``$CMRSYNTH_CACHE`` or ``~/.cache/cmrsynth``).

    Returns the report dict (as written to report.json, before JSON conversion).
    """
    from CMRSynthLib.data.cohorts import open_cohort
    from CMRSynthLib.data.preprocess import PreprocessConfig
    from CMRSynthLib.jobs.progress import Progress
    from CMRSynthLib.training.checkpoint import load_checkpoint

    progress = progress or Progress("none")
    plan = plan or (AuditPlan.quick() if quick else AuditPlan())
    out = Path(out)
    _check_out(out)
    if not models:
        raise InputError("--model: give at least one checkpoint to audit")
    if synthetic is not None and len(models) > 1:
        raise InputError("--synthetic belongs to one model; audit one --model with it")
    extra_spaces = [inception_space(inception_weights)] if inception_weights is not None else []
    loaded = [load_checkpoint(m, device=device) for m in models]
    cohort = open_cohort(data)
    holdout_cohort = open_cohort(holdout) if holdout is not None and os.path.isdir(holdout) else None
    warnings: list[str] = [f"data: {p}" for p in cohort.problems[:5]]
    if quick:
        warnings.append("quick run: briefly trained segmenters, small attacks and discriminator, few bootstrap "
                        "draws; use the full audit for decisions")
    if plan.max_patients is not None or plan.slices_per_case is not None:
        warnings.append(f"capped run: at most {plan.max_patients or 'all'} members and as many held-out patients "
                        f"(the membership attacks use all of them), {plan.slices_per_case or 'all'} heart slices "
                        "per image")
    sections, names = [], _names(models)
    with atomic_dir(out, private=not redact) as tmp:  # a report showing real training images is owner-only
        for name, model, (generator, card) in zip(names, models, loaded):
            preprocessing = PreprocessConfig.from_dict(card["preprocessing"])
            if card["config"].get("spatial_dims", 2) != 2:
                raise InputError(f"{name} is a 3D model; the audit handles 2D (slice-wise) models")
            real_m, real_n, attacked = audited_slices(name, model, card, cohort, plan, members=members,
                                                      holdout=holdout, holdout_cohort=holdout_cohort,
                                                      warnings=warnings)
            synth = None
            if synthetic is not None:
                synth_cohort = open_cohort(synthetic)
                if synth_cohort.problems:  # e.g. images without a mask, which the listing skips
                    raise InputError(f"--synthetic: every synthetic image needs its mask; {synth_cohort.problems[0]}"
                                     + (f" (and {len(synth_cohort.problems) - 1} more problems)"
                                        if len(synth_cohort.problems) > 1 else ""), path=synthetic)
                synth = load_slices(synth_cohort, synth_cohort.patients(), preprocessing, what="synthetic")
            sections.append(audit_model(name, generator, card, real_m, real_n, plan, synthetic=synth,
                                        figures_dir=tmp / "figures", cache=cache, device=device, redact=redact,
                                        progress=progress, warnings=warnings, extra_spaces=extra_spaces,
                                        attacked=attacked, reid=_reid_model(model, card)))
        report = {"format": "cmrsynth-audit", "version": 1, "cmrsynth": __version__,
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "data": {"path": str(data), "layout": cohort.layout, "patients": len(cohort.patients()),
                           "simulated": all(r.simulated for r in cohort.records)},
                  "quick": quick, "redacted": redact, "sensitive": not redact, "warnings": warnings,
                  "settings": {"max_patients": plan.max_patients, "slices_per_case": plan.slices_per_case,
                               "n_boot": plan.n_boot, "seed": plan.seed,
                               "segmenter": plan.segmenter.to_dict(), "attack": plan.attack.to_dict(),
                               "discriminator": plan.discriminator.to_dict()},
                  "models": sections, "figures": {}}
        if len(sections) > 1:
            report["figures"]["privacy_utility"] = _privacy_utility(sections, tmp / "figures")
        write_report(report, tmp)
    progress.artefact(str(out / "report.html"), "report")
    return report


def _names(models: Sequence[str]) -> list[str]:
    names = [Path(str(m)).name or str(m) for m in models]
    return [n if names.count(n) == 1 else f"{n} ({i + 1})" for i, n in enumerate(names)]


def _privacy_utility(sections: list[dict], figures_dir: Path) -> str:
    points = []
    for s in sections:
        if "attacks" not in s["membership"] or "synthetic" not in s["utility"]["arms"]:
            continue
        head = next(a for a in s["membership"]["attacks"] if a["name"] == s["membership"]["headline"])
        auc, dice = head["evaluation"]["auc"], s["utility"]["arms"]["synthetic"]["mean"]["dice"]
        points.append({"name": s["name"], "mia_auc": auc.value, "mia_low": _bound(auc.low, auc.value),
                       "mia_high": _bound(auc.high, auc.value), "dice": dice.value,
                       "dice_low": _bound(dice.low, dice.value), "dice_high": _bound(dice.high, dice.value),
                       "epsilon": patient_level(s.get("privacy_ledger"))[0]})
    path = figures.privacy_utility(points, figures_dir / "privacy-utility.png")
    return f"figures/{path.name}"


def _bound(bound: float | None, value: float) -> float:
    """An interval bound, or the value itself when there is no interval (a real 0.0 bound stays 0.0)."""
    return value if bound is None else bound
