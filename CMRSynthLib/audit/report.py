"""report.json (every number, with n, method and interval) and a self-contained report.html.

The HTML opens offline: CSS inline, figures embedded as base64 PNG. Order: what was audited, the DP
ledger(s), warnings, the privacy–utility comparison when several models were audited, then per model
fidelity → discriminability → mask adherence → utility → privacy, and at the end the one-screen verdict table.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np

from CMRSynthLib.audit import discriminability
from CMRSynthLib.audit.membership import CONTROL_RULE
from CMRSynthLib.audit.stats import MIN_PATIENTS_FOR_CI, NOT_MEASURABLE, Estimate, small_sample_warning
from CMRSynthLib.data.conventions import STRUCTURES
from CMRSynthLib.files import atomic_write_text
from CMRSynthLib.training.ledger import patient_level


def jsonable(value):
    """Estimates, numpy values and tuples → plain JSON values (non-finite floats → null)."""
    if isinstance(value, Estimate):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


# -- number formatting ---------------------------------------------------------------------------------
def fmt(est, digits: int = 2) -> str:
    """``0.83 [0.80–0.86]``; a warning adds ⚠ with the warning as tooltip."""
    if est is None:
        return "–"
    if not isinstance(est, Estimate):
        return f"{est:.{digits}f}" if isinstance(est, float) else html.escape(str(est))
    if not np.isfinite(est.value):
        return "–"
    text = f"{est.value:.{digits}f}"
    if est.low is not None:
        text += f" <span class=ci>[{est.low:.{digits}f}, {est.high:.{digits}f}]</span>"
    if est.warning:
        text += f' <span class=warn title="{html.escape(est.warning)}">⚠</span>'
    return text


def _table(header: list[str], rows: list[list[str]], *, cls: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(out: Path, relative: str | None, caption: str) -> str:
    if not relative or not (out / relative).is_file():
        return ""
    data = base64.b64encode((out / relative).read_bytes()).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


# -- sections -----------------------------------------------------------------------------------------
def _ledger(model: dict) -> str:
    ledger = model.get("privacy_ledger")
    name = html.escape(model["name"])
    if not ledger:
        return (f"<div class='ledger none'><b>{name}: no differential privacy.</b> This model was trained "
                f"without DP-SGD; its privacy rests only on the attacks measured below.</div>")
    keys = ["epsilon", "delta", "unit", "group_epsilon", "group_delta", "mechanism", "accountant", "noise_multiplier",
            "max_grad_norm", "sample_rate", "steps", "patients", "slices_per_patient"]
    items = "".join(f"<li><b>{k}</b>: {html.escape(_ledger_value(k, ledger[k]))}</li>" for k in keys
                    if ledger.get(k) is not None)
    rest = {k: v for k, v in ledger.items() if k not in keys}
    extra = f"<details><summary>full ledger</summary><pre>{html.escape(json.dumps(rest, indent=1))}</pre></details>" \
        if rest else ""
    return f"<div class='ledger dp'><b>{name}: differential privacy ledger</b><ul>{items}</ul>{extra}</div>"


def _ledger_value(key: str, value) -> str:
    """Ledger numbers to 4 significant digits; ε and δ rounded up, so the page never understates them."""
    if not isinstance(value, float) or value == 0 or not math.isfinite(value):
        return str(value)
    if key in ("epsilon", "delta", "group_epsilon", "group_delta"):
        scale = 10 ** (math.floor(math.log10(abs(value))) - 3)
        value = math.ceil(round(value / scale, 6)) * scale  # round() first: 0.001 / 1e-6 is 1000.0000000000001
    return f"{value:.4g}"


def _comparison(report: dict, out: Path) -> str:
    """Several models side by side: the DP guarantee, the membership attack and utility, and the figure."""
    rows = []
    for model in report["models"]:
        ledger = model.get("privacy_ledger") or {}
        epsilon, delta = patient_level(ledger)  # a slice-level run: its group-privacy guarantee per patient
        guarantee = "none" if epsilon is None else (
            f"ε = {_ledger_value('epsilon', epsilon)}, δ = {_ledger_value('delta', delta)} per patient"
            + (" (group privacy of slice-level DP)" if ledger.get("unit") == "slice" else ""))
        membership = model["membership"]
        attack = next((a for a in membership.get("attacks", []) if a["name"] == membership.get("headline")), None)
        arms = model["utility"]["arms"]
        rows.append([html.escape(model["name"]), guarantee,
                     fmt(attack["evaluation"]["auc"]) if attack else "not run",
                     fmt(arms.get("synthetic", {}).get("mean", {}).get("dice")),
                     fmt(arms.get("real", {}).get("mean", {}).get("dice")),
                     fmt(model["adherence"]["synthetic"].get("mean", {}).get("dice")),
                     fmt((model.get("discriminability") or {}).get("auc"))])
    table = _table(["model", "DP guarantee", "membership attack AUC (0.5 = no leak)",
                    "utility: Dice, trained on synthetic", "Dice, trained on real", "mask adherence Dice",
                    "real-vs-synthetic classifier AUC (0.5 = indistinguishable)"], rows)
    figure = _figure(out, report["figures"].get("privacy_utility"),
                     "Each model's headline membership-attack AUC against the Dice of a segmenter trained on its "
                     "synthetic images (tested on real held-out patients)")
    return ("<h2>Privacy and utility at a glance</h2><p>What each model guarantees, how well the strongest "
            "membership attack tells its training patients from held-out ones, and how useful its synthetic "
            "images are for training a segmenter. Details per model below.</p>" + table + figure)


def _fidelity(model: dict, out: Path) -> str:
    fid = model["fidelity"]
    rows = [[k, fmt(v, 3), fmt(fid["yardstick"].get(k), 3)] for k, v in fid["distances"].items()]
    parts = ["<h3>Fidelity</h3>",
             "<p>Distances between synthetic images and real held-out images in the feature space" +
             ("s " if len(fid["spaces"]) > 1 else " ") +
             "; ".join(f"<i>{html.escape(s)}</i>" for s in fid["spaces"]) +
             ". The yardstick is the same distance between two groups of <b>real</b> patients (training vs held-out): a synthetic set as close as that is as close as real "
             "data gets. Lower is better; 95% intervals from half-samples of the patients, drawn without replacement "
             "(none for Inception).</p>",
             _table(["measure", "synthetic vs real held-out", "yardstick: real vs real"], rows),
             *[f"<p class=warn>{html.escape(name)}: {html.escape(estimate.warning)}.</p>"
               for name, estimate in fid["distances"].items() if "singular" in (estimate.warning or "")],
             f"<p>Diversity (MS-SSIM between random pairs of different patients; lower = more diverse): "
             f"real {fmt(fid['diversity']['real'], 3)}, synthetic {fmt(fid['diversity']['synthetic'], 3)}.</p>"]
    tissue_rows = [[html.escape(r["vendor"]), html.escape(r["tissue"]), f"{r['real_mean']:.2f} ± {r['real_std']:.2f}",
                    f"{r['synthetic_mean']:.2f} ± {r['synthetic_std']:.2f}", f"{r['w1']:.3f}"] for r in fid["tissues"]]
    if tissue_rows:
        parts += ["<p>Intensity per tissue and vendor (prepared scale [-1, 1]), including tissue outside the "
                  "heart; W1 = Wasserstein-1 distance between the real and synthetic intensity distributions.</p>",
                  "<details><summary>tissue table</summary>" +
                  _table(["vendor", "tissue", "real mean ± sd", "synthetic mean ± sd", "W1"], tissue_rows) +
                  "</details>", _figure(out, model["figures"].get("intensity"), "Intensity per tissue and vendor")]
    parts.append(_figure(out, model["figures"].get("samples"), "Synthetic samples per vendor style with their masks"))
    return "".join(parts)


def _discriminability(model: dict) -> str:
    disc = model.get("discriminability")
    if disc is None:  # a report written before this axis existed
        return ""
    if "skipped" in disc:
        return f"<h3>Discriminability</h3><p>Not measured: {html.escape(disc['skipped'])}.</p>"
    rows = [[f"{'AB'[h]}: {len(half['patients'])}", f"{half['slices']['real']} + {half['slices']['synthetic']}",
             f"{half['auc']:.2f}", f"{half['accuracy']:.2f}"] for h, half in enumerate(disc["halves"])]
    return ("<h3>Discriminability</h3>"
            f"<p>Can a classifier tell synthetic slices from real ones? {html.escape(disc['protocol'])}. ROC AUC 0.5 = "
            f"indistinguishable, 1 = always told apart: <b>AUC {fmt(disc['auc'])}</b>, accuracy "
            f"{fmt(disc['accuracy'])} ({html.escape(disc['auc'].method)}). Verdict rule: "
            f"{html.escape(disc['rule'])}.</p>" +
            _table(["evaluated half: patients", "slices real + synthetic", "AUC of the classifier trained on the "
                    "other half", "accuracy"], rows))


def _seg_rows(summary: dict) -> list[list[str]]:
    return [[name, fmt(summary[name]["dice"]), fmt(summary[name]["hd95"], 1)] for name in STRUCTURES] + \
           [["mean", fmt(summary["mean"]["dice"]), ""]]


def _adherence(model: dict) -> str:
    adh = model["adherence"]
    sets = [("synthetic, all masks", adh["synthetic"]), ("synthetic, held-out masks", adh.get("held_out_masks")),
            ("real held-out (reference)", adh["ceiling"])]
    sets = [(label, summary) for label, summary in sets if summary is not None]
    per_set = [_seg_rows(summary) for _, summary in sets]  # rows [structure, Dice, HD95] of each set
    rows = [[per_set[0][i][0], *[cell for set_rows in per_set for cell in set_rows[i][1:]]]
            for i in range(len(per_set[0]))]
    header = ["structure", *[f"{kind} ({label})" for label, _ in sets for kind in ("Dice", "HD95 mm")]]
    return ("<h3>Mask adherence</h3><p>A segmenter segments each synthetic image; its prediction is compared with "
            f"the mask the image was generated from. {html.escape(adh['judge'])}.</p>" + _table(header, rows))


def _arms_table(study: dict) -> str:
    rows = []
    for arm, summary in study["arms"].items():
        diff = study["differences"].get(arm)
        steps = study.get("n_train_steps", {}).get(arm, "–")  # reports before the per-arm steps lack them
        rows.append([html.escape(arm), str(study["n_train_slices"][arm]), str(steps)] +
                    [fmt(summary[s]["dice"]) for s in STRUCTURES] + [fmt(summary["mean"]["dice"]),
                                                                    fmt(diff, 3) if diff else "baseline"])
    table = _table(["trained on", "slices", "steps", "Dice LV", "Dice MYO", "Dice RV", "mean Dice",
                    f"Δ mean Dice vs {html.escape(study['baseline'])}"], rows)
    noise = study.get("training_noise")
    if noise is None:
        return table
    return table + (f"<p class=sub>Training noise: a second segmenter trained on {html.escape(study['baseline'])} "
                    f"with another seed differs from the first by Δ {fmt(noise, 3)}; a difference between arms "
                    f"is called only beyond twice that.</p>")


def _utility(model: dict) -> str:
    util = model["utility"]
    parts = ["<h3>Utility</h3>", f"<p>Segmenters trained on each set, tested on {util['test_patients']} real "
             "held-out patients. Δ is the paired per-patient difference with its interval.</p>", _arms_table(util)]
    cross = model.get("cross_vendor") or {}
    if "arms" in cross:
        parts += [f"<p><b>Cross-vendor.</b> Seen vendors: {', '.join(cross['seen_vendors'])}; unseen (test): "
                  f"{', '.join(cross['unseen_vendors'])}.</p>", _arms_table(cross)]
    elif cross.get("skipped"):
        parts.append(f"<p><b>Cross-vendor</b> not run: {html.escape(cross['skipped'])}.</p>")
    return "".join(parts)


def _privacy(model: dict, out: Path) -> str:
    parts = ["<h3>Privacy</h3>"]
    mia = model.get("membership") or {}
    if "attacks" in mia:
        rows = [[html.escape(a["name"]) + (" <b>(headline)</b>" if a["name"] == mia["headline"] else ""),
                 "–" if a["timestep"] is None else f"{a['timestep']:g}", html.escape(a.get("direction", "learned")),
                 fmt(a["evaluation"]["auc"]),
                 _tpr(a["evaluation"]["tpr_at_0.01_fpr"]), _tpr(a["evaluation"]["tpr_at_0.001_fpr"]),
                 f"{a['evaluation']['p_value']:.2g}", f"{a['evaluation']['accuracy_at_threshold']:.2f}"]
                for a in mia["attacks"]]
        control = _control_row(mia.get("control"))
        ev = mia["evaluation_patients"]
        parts += [f"<p>Membership inference: {html.escape(mia['protocol'])}. Noise level and threshold chosen on "
                  f"calibration patients; numbers below on separate evaluation patients ({len(ev['members'])} "
                  f"members, {len(ev['non_members'])} non-members). AUC 0.5 = the attacker guesses; "
                  f"{html.escape(mia['headline_rule'])}"
                  + (f". The last row is the control: {html.escape(CONTROL_RULE)}" if control else "") + ".</p>",
                  _table(["attack", "t", "direction", "ROC AUC", "TPR @ 1% FPR", "TPR @ 0.1% FPR", "p (members score higher)",
                          "accuracy at calibrated threshold"], rows + ([control] if control else [])),
                  _figure(out, model["figures"].get("roc"), "ROC curves on the evaluation patients"),
                  _figure(out, model["figures"].get("timesteps"), "Attack AUC per noise level")]
    else:
        parts.append(f"<p>Membership inference not run: {html.escape(mia.get('skipped', 'no model'))}.</p>")
    mem = model["memorisation"]
    rows = []
    for space in ("pixel", "feature"):
        s = mem.get(space)
        if s:
            rows.append([space, str(s["n_synthetic"]), f"<b>{s['near_copies']}</b> ({s['near_copies_of_members']} of "
                         f"members, {s['near_copies_of_non_members']} of non-members)", f"{s['threshold']:.3g}",
                         f"{s['median_d1']:.3g}", f"{s['median_real_to_real']:.3g}",
                         "–" if s["median_ratio_d1_d2"] is None else f"{s['median_ratio_d1_d2']:.2f}"])
    parts += [f"<p>Memorisation: nearest real slice of every synthetic image. {html.escape(mem['rule'])}.</p>",
              _table(["space", "synthetic images", "near-copies", "threshold", "median nearest distance",
                      "median real-to-real", "median d1/d2"], rows)]
    if mem.get("source_attack") is not None:
        parts.append(f"<p>Black-box check: synthetic images closer to their own (member) source patient than "
                     f"non-members' are to theirs: AUC {fmt(mem['source_attack'])}.</p>")
    parts.append(_reidentification(model))
    gallery = _figure(out, model["figures"].get("gallery"), "Closest synthetic/real pairs")
    if gallery:
        parts.append(f"<div class='sensitive'><b>SENSITIVE</b>{' (real images redacted)' if model.get('redacted') else ': shows real training images'}"
                     f"{gallery}</div>")
    return "".join(parts)


def _reidentification(model: dict) -> str:
    """The privacy filter's re-identification rates (:mod:`.reidentification`) with its calibration."""
    from CMRSynthLib.reid.model import format_rate

    reid = model.get("reidentification")
    if reid is None:  # a report written before the privacy filter existed
        return ""
    if "skipped" in reid:
        return f"<p>Re-identification (privacy filter): not measured: {html.escape(reid['skipped'])}.</p>"
    cal = reid["calibration"]

    def rate(est) -> str:
        return "–" if est is None else format_rate(est.to_dict() if isinstance(est, Estimate) else est)

    row = [f"{reid['threshold']:.3g}", f"{rate(cal['false_match_rate'])} on {cal['slices']} slices of "
           f"{cal['patients']} held-out patients ({html.escape(cal['split'])})", rate(cal["true_match_rate"]),
           str(reid["slices"]), f"<b>{rate(reid['before'])}</b>", rate(reid["after"]),
           "–" if reid["rejected_draws"] is None else str(reid["rejected_draws"])]
    return ("<p>Re-identification (the privacy filter of <code>cmrsynth sample --privacy-filter</code>): a slice "
            "re-identifies a training patient when its embedding, heart blanked out, lies closer than the threshold "
            "to one of that patient's slices. The threshold's false-match rate is measured on patients the model "
            "never saw; a model that adds no patient's identity is rejected at about that rate. <i>After</i>: "
            f"still re-identifying after {reid['retries']} redraws (withheld). {html.escape(reid.get('note', ''))}</p>"
            + _table(["threshold", "false-match rate", "true-match rate (same held-out patient)", "synthetic slices",
                      "re-identified before", "after the filter (withheld)", "rejected draws"], [row]))


def _verdict(models: list[dict]) -> str:
    several = len(models) > 1
    rows = []
    for model in models:
        for row in model["verdict"]:
            rows.append(([html.escape(model["name"])] if several else []) +
                        [html.escape(row["axis"]), f"<span class='badge {row['level']}'>{html.escape(row['number'])}</span>",
                         html.escape(row["meaning"])])
    title = "Verdict" if several else f"Verdict: {html.escape(models[0]['name'])}"
    legend = ("<p class=sub>Green: reassuring; amber: limited or inconclusive; red: a problem; blue: information. "
              "Intervals are 95% intervals over patients (bootstrap; half-samples for distances).</p>")
    return (f"<h2 id=verdict>{title}</h2>{legend}" +
            _table((["model"] if several else []) + ["axis", "number", "what it means"], rows, cls="verdict"))


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:18px 28px;
color:#1d2329;line-height:1.45}
h1{margin-bottom:4px} h2{border-bottom:2px solid #d0d7de;padding-bottom:4px;margin-top:32px}
h3{margin-top:22px;color:#24405c} .sub{color:#57606a;margin-top:0}
table{border-collapse:collapse;margin:8px 0 12px;font-size:14px} th,td{border:1px solid #d0d7de;padding:4px 9px;
text-align:left;vertical-align:top} th{background:#f3f5f7}
.ci{color:#57606a;font-size:12px} .warn{color:#b26b00;cursor:help}
.ledger{padding:10px 14px;border-radius:6px;margin:8px 0} .ledger.dp{background:#e8f3ff;border:1px solid #9cc8f5}
.ledger.none{background:#fff4e5;border:1px solid #f0c27b} .ledger ul{margin:4px 0}
.warnings{background:#fff8e1;border:1px solid #f0d27b;padding:8px 14px;border-radius:6px}
.sensitive{border:3px solid #b30000;padding:8px 12px;border-radius:6px;background:#fff5f5}
.sensitive>b{color:#b30000}
figure{margin:10px 0} img{max-width:100%} figcaption{color:#57606a;font-size:13px}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;font-weight:600;white-space:nowrap}
.good{background:#dcf5e3;color:#0f5323} .fair{background:#fff1cc;color:#6b4b00} .poor{background:#ffdcdc;color:#8a0000}
.info{background:#e8eef5;color:#24405c} table.verdict td{font-size:15px}
.simulated{display:inline-block;background:#6f42c1;color:#fff;padding:1px 8px;border-radius:4px;font-size:13px}
"""


def render_html(report: dict, out: Path) -> str:
    data = report["data"]
    simulated = " <span class=simulated>SIMULATED DATA</span>" if data.get("simulated") else ""
    head = (f"<h1>CMRSynth audit{simulated}</h1><p class=sub>{html.escape(report['created'])} · cmrsynth "
            f"{html.escape(report['cmrsynth'])} · data <code>{html.escape(data['path'])}</code> "
            f"({data['patients']} patients, layout {html.escape(data['layout'])})"
            f"{' · quick run (small n)' if report['quick'] else ''}</p>")
    models = report["models"]
    intro = _table(["model", "family", "members audited", "non-members audited", "synthetic images"],
                   [[html.escape(m["name"]), html.escape(m["family"]), str(len(m["patients"]["members"])),
                     str(len(m["patients"]["non_members"])), f"{m['synthetic']['slices']} "
                     f"({html.escape(m['synthetic']['source'])})"] for m in models])
    ledgers = "".join(_ledger(m) for m in models)
    warnings = ("<div class=warnings><b>Warnings</b><ul>" + "".join(f"<li>{html.escape(w)}</li>"
                for w in report["warnings"]) + "</ul></div>") if report["warnings"] else ""
    body = [head, intro, ledgers, warnings, _comparison(report, out) if len(models) > 1 else "",
            "<p><a href='#verdict'>Jump to the verdict table</a></p>"]
    for model in models:
        body += [f"<h2>{html.escape(model['name'])}</h2>", _fidelity(model, out), _discriminability(model),
                 _adherence(model), _utility(model),
                 _privacy(model, out)]
    body.append(_verdict(models))
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>CMRSynth audit</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    """Write ``out/report.json`` and ``out/report.html`` (figures must already be in ``out``)."""
    out = Path(out)
    json_path, html_path = out / "report.json", out / "report.html"
    atomic_write_text(json_path, json.dumps(jsonable(report), indent=1, allow_nan=False))
    atomic_write_text(html_path, render_html(report, out))
    return json_path, html_path


# -- the verdict: each axis, its number, what it means in words ---------------------------------------------
def _row(axis: str, number: str, meaning: str, level: str) -> dict:
    return {"axis": axis, "number": number, "meaning": meaning, "level": level}


def _ci(est: Estimate, digits: int = 2) -> str:
    text = f"{est.value:.{digits}f}"
    return text + (f" [{est.low:.{digits}f}, {est.high:.{digits}f}]" if est.low is not None else "")


def verdict_rows(model: dict) -> list[dict]:
    """The verdict of one audited model: rows of axis, number (text), meaning (a sentence), level."""
    rows = []
    fid = model["fidelity"]
    fd_name = next(k for k in fid["distances"] if k.startswith("FD"))
    fd, ref = fid["distances"][fd_name], fid["yardstick"][fd_name]
    ratio = fd.value / max(ref.value, 1e-9)
    level = "good" if ratio <= 1.5 else "fair" if ratio <= 3 else "poor"
    rows.append(_row("fidelity", f"{fd_name} {fd.value:.3g} (real vs real {ref.value:.3g})",
                     f"synthetic images are {ratio:.1f}× as far from real held-out images as real training "
                     f"images are ({'close to' if level == 'good' else 'recognisably different from' if level == 'fair' else 'far from'} real data)",
                     level))
    if "discriminability" in model:
        rows.append(_discriminability_row(model["discriminability"]))
    adh = model["adherence"]  # like for like: images from masks the judge never saw, when the audit made them
    unseen = "held_out_masks" in adh
    synth, reference = adh["held_out_masks" if unseen else "synthetic"]["mean"]["dice"], adh["ceiling"]["mean"]["dice"]
    share = synth.value / max(reference.value, 1e-9)
    rows.append(_row("mask adherence", f"Dice {_ci(synth)} (real held-out {reference.value:.2f})",
                     f"a segmenter finds the requested heart in synthetic images "
                     f"{'from held-out masks ' if unseen else ''}with {100 * share:.0f}% of the Dice it reaches on "
                     f"real held-out images", "good" if share >= 0.9 else "fair" if share >= 0.75 else "poor"))
    util = model["utility"]
    arms = util["arms"]
    if "synthetic" in arms and "real" in arms:
        s, r = arms["synthetic"]["mean"]["dice"], arms["real"]["mean"]["dice"]
        share = s.value / max(r.value, 1e-9)
        rows.append(_row("utility (synthetic only)", f"Dice {_ci(s)} vs real {r.value:.2f}",
                         f"a segmenter trained only on synthetic images reaches {100 * share:.0f}% of the Dice of "
                         f"one trained on the real patients", "good" if share >= 0.9 else "fair" if share >= 0.7 else "poor"))
    rows += [_difference_row(f"utility ({name})", diff, util.get("training_noise"))
             for name, diff in util["differences"].items() if name != "synthetic"]
    cross = model.get("cross_vendor") or {}
    rows += [_difference_row("cross-vendor", diff, cross.get("training_noise"))
             for diff in cross.get("differences", {}).values()]
    ledger = model.get("privacy_ledger")
    if ledger and ledger.get("unit") == "slice":
        rows.append(_row("privacy (DP)", f"slice-level ε = {ledger.get('epsilon'):.3g}; patient-level ε = "
                         f"{ledger.get('group_epsilon')}, δ = {ledger.get('group_delta')}",
                         "the guarantee per patient follows from group privacy over the patient's slices and is much "
                         "weaker than the slice-level ε", "fair"))
    elif ledger:
        rows.append(_row("privacy (DP)", f"ε = {ledger.get('epsilon'):.3g}, δ = {ledger.get('delta'):.2g}",
                         f"formal differential-privacy guarantee per {ledger.get('unit', 'unit not stated')} "
                         f"({ledger.get('mechanism', 'DP-SGD')})", "info"))
    else:
        rows.append(_row("privacy (DP)", "none", "no formal privacy guarantee: trained without DP-SGD", "fair"))
    mia = model.get("membership") or {}
    if "attacks" in mia:
        rows.append(_membership_row(mia))
    if model["memorisation"].get("source_attack") is not None:
        rows.append(_source_row(model["memorisation"]["source_attack"]))
    mem = model["memorisation"]["pixel"]
    copies = mem["near_copies"]
    rows.append(_row("privacy (memorisation)", f"{copies} near-copies / {mem['n_synthetic']}",
                     "no synthetic image is a near-copy of a real image" if copies == 0 else
                     f"{copies} synthetic images are near-copies of real images ({mem['near_copies_of_members']} of "
                     f"training patients, {mem['near_copies_of_non_members']} of held-out patients)",
                     "good" if copies == 0 else "poor"))
    return rows


def _discriminability_row(disc: dict) -> dict:
    if "skipped" in disc:
        return _row("discriminability", "not measured", disc["skipped"], "info")
    auc, accuracy = disc["auc"], disc["accuracy"]
    level, meaning = discriminability.verdict(auc)
    return _row("discriminability", f"AUC {_ci(auc)}, accuracy {accuracy.value:.2f}",
                f"{meaning} (real-vs-synthetic classifier tested on {auc.n} patients it never saw; 0.5 = chance)",
                level)


def _control_auc(mia: dict) -> Estimate | None:
    """The non-member control's headline AUC, or None when it was not run (too few non-members, older reports)."""
    return (mia.get("control") or {}).get("auc")


def _control_row(control: dict | None) -> list[str] | None:
    """The control as a row of the attacks table: the headline pipeline between two groups of non-members."""
    if control is None:
        return None
    if "skipped" in control:
        return ["<i>control: non-members vs non-members</i>", "–", "–", html.escape(control["skipped"]), "–", "–",
                "–", "–"]
    groups = control["groups"]
    return [f"<i>control: {len(groups['labelled_members'])} vs {len(groups['non_members'])} non-members</i> "
            f"(headline: {html.escape(control['headline'])})",
            "–" if control["timestep"] is None else f"{control['timestep']:g}", "–", fmt(control["auc"]), "–", "–",
            f"{control['p_value']:.2g}", "–"]


def _membership_row(mia: dict) -> dict:
    """The membership verdict, read against the non-member control (:func:`~.membership.non_member_control`).

    Leakage is claimed when the headline attack's Mann–Whitney p-value is below 0.05 and its AUC is above the
    control's; "readily identifiable" when its AUC is also ≥ 0.8. Significant but no better than the control:
    amber, the difference may come from how the patients were split. Not significant with fewer than
    :data:`MIN_PATIENTS_FOR_CI` evaluation patients per class: too few patients to call (blue when fewer than 4,
    where even a perfect attack cannot reach p < 0.05). The headline was chosen on the calibration patients
    (:func:`~.membership.choose_headline`), so its p-value needs no correction for the choice.
    """
    head = next(a for a in mia["attacks"] if a["name"] == mia["headline"])
    ev = head["evaluation"]
    auc, tpr, p = ev["auc"], ev["tpr_at_0.01_fpr"], ev["p_value"]
    n_m, n_n = len(mia["evaluation_patients"]["members"]), len(mia["evaluation_patients"]["non_members"])
    control = _control_auc(mia)
    tpr_text = NOT_MEASURABLE if _not_measurable(tpr) else f"{tpr.value:.2f}"
    number = (f"AUC {_ci(auc)}" + (f" vs non-member control {_ci(control)}" if control else "") +
              f", TPR@1%FPR {tpr_text}, p = {p:.2g}")
    against = (f"; two groups of non-members: AUC {control.value:.2f}" if control else
               "; no non-member control (too few non-members)")
    too_few = small_sample_warning(min(n_m, n_n), "evaluation patients per class")
    if p < 0.05 and (control is None or auc.value > control.value):
        level = "poor" if auc.value >= 0.8 else "fair"
        meaning = (f"an attacker tells training patients from others ({head['name']}): "
                   f"{'members are readily identifiable' if level == 'poor' else 'measurable membership leakage'}"
                   f"{against}")
    elif p < 0.05:
        level = "fair"
        meaning = (f"members score differently (p = {p:.2g}), but the same attacks tell two groups of non-members "
                   f"apart as well (AUC {control.value:.2f}): the difference may come from how the patients were "
                   "split, not from membership")
    elif too_few:
        level = "info" if min(n_m, n_n) < 4 else "fair"
        meaning = (f"too few patients to call: {too_few} ({n_m} members vs {n_n} non-members evaluated"
                   + ("; even a perfect attack cannot be significant" if level == "info" else "") +
                   "); audit more held-out patients")
    else:
        level = "good"
        meaning = (f"no membership signal distinguishable from chance ({n_m} + {n_n} evaluation patients; "
                   f"the best of {len(mia['attacks'])} attacks on calibration patients){against}")
    return _row("privacy (membership)", number, meaning, level)


def _not_measurable(est: Estimate) -> bool:
    return bool(est.warning) and est.warning.startswith(NOT_MEASURABLE)


def _tpr(est: Estimate) -> str:
    """TPR at a low FPR, or "not measurable" when too few non-members can show that FPR (its tooltip gives the
    TPR at zero false positives instead)."""
    if _not_measurable(est):
        return f'{NOT_MEASURABLE} <span class=warn title="{html.escape(est.warning)}">⚠</span>'
    return fmt(est)


def _source_row(auc: Estimate) -> dict:
    """The black-box check of :mod:`.memorisation`: do images from a member's mask resemble that member?"""
    if auc.low is not None and auc.low > 0.5:
        meaning, level = ("images generated from a training patient's mask resemble that patient's own image more "
                          "than held-out patients' images resemble theirs: the model carries patient-specific "
                          "appearance beyond the mask", "poor" if auc.value >= 0.8 else "fair")
    else:
        meaning, level = ("synthetic images resemble their source patient no more for training patients than for "
                          "held-out ones", "good" if auc.n >= 2 * MIN_PATIENTS_FOR_CI else "fair")
    return _row("privacy (source resemblance)", f"AUC {_ci(auc)}", meaning, level)


def _difference_row(axis: str, diff: Estimate, noise: Estimate | None) -> dict:
    """A difference is called only when its interval excludes 0 and it is more than twice the training noise
    (the difference between two segmenters trained on the same data with different seeds)."""
    floor = 2 * abs(noise.value) if noise is not None and np.isfinite(noise.value) else None
    if floor is not None and abs(diff.value) <= floor:
        meaning, level = (f"no difference beyond training randomness: two segmenters trained on the same real data "
                          f"already differ by {noise.value:+.3f}"), "fair"
    elif diff.low is not None and diff.low > 0:
        meaning, level = "adding synthetic images improves the segmenter on real held-out patients", "good"
    elif diff.high is not None and diff.high < 0:
        meaning, level = "adding synthetic images makes the segmenter worse on real held-out patients", "poor"
    else:
        meaning, level = "adding synthetic images makes no difference measurable at this sample size", "fair"
    if level != "fair":
        meaning += (f" (more than twice the training noise of {noise.value:+.3f})" if floor is not None else
                    " (one segmenter per arm: training randomness is not in the interval)")
    if diff.n < MIN_PATIENTS_FOR_CI:
        meaning += f" (only {diff.n} test patients: indicative, not conclusive)"
        level = "fair" if level == "good" else level
    return _row(axis, f"Δ Dice {diff.value:+.3f}" + (f" [{diff.low:+.3f}, {diff.high:+.3f}]" if diff.low is not None
                                                     else ""), meaning, level)
