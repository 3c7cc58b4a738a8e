"""The audit's figures (matplotlib, Agg backend): each function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from CMRSynthLib.audit.slices import Slices
from CMRSynthLib.data.conventions import STRUCTURES

COLOURS = {"LV": "#e41a1c", "MYO": "#4daf4a", "RV": "#377eb8"}
DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from CMRSynthLib.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return path


def _contours(ax, mask: np.ndarray, *, linewidth: float = 0.8) -> None:
    for name in ("MYO", "LV", "RV"):  # LV after MYO: the LV outline is the ring's inner edge, keep it visible
        label = STRUCTURES[name]
        if (mask == label).any():
            ax.contour(mask == label, levels=[0.5], colors=COLOURS[name], linewidths=linewidth)


def _blank(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def sample_grid(synthetic: Slices, path: Path, *, per_vendor: int = 6, seed: int = 0) -> Path:
    """Synthetic slices, one row per vendor style, with the conditioning mask's contours."""
    plt = _pyplot()
    vendors = sorted(set(synthetic.vendors.tolist()))
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(vendors), per_vendor, figsize=(1.6 * per_vendor, 1.7 * len(vendors)), squeeze=False)
    for row, vendor in enumerate(vendors):
        rows = np.flatnonzero((synthetic.vendors == vendor) & (synthetic.masks.reshape(len(synthetic), -1).any(1)))
        chosen = np.sort(rng.choice(rows, size=min(per_vendor, len(rows)), replace=False)) if len(rows) else []
        for col in range(per_vendor):
            ax = axes[row, col]
            _blank(ax)
            if col < len(chosen):
                ax.imshow(synthetic.images[chosen[col]], cmap="gray", vmin=-1, vmax=1)
                _contours(ax, synthetic.masks[chosen[col]])
            else:
                ax.axis("off")
        axes[row, 0].set_ylabel(vendor, fontsize=10)
    fig.suptitle("Synthetic images per vendor style, with the conditioning mask "
                 "(red LV, green MYO, blue RV)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def stack_figure(stacks: list[tuple[str, np.ndarray, np.ndarray]], path: Path, *, title: str, per_stack: int = 3,
                 ) -> Path:
    """One row per ``(name, image (K, H, W), mask (K, H, W))``: ``per_stack`` slices through the LV from base to apex, each
    scaled by its own 1st-99th percentiles, with the mask's contours."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(stacks), per_stack, figsize=(2.6 * per_stack, 2.7 * len(stacks)), squeeze=False)
    for row, (name, image, mask) in enumerate(stacks):
        hearts = np.flatnonzero((mask == STRUCTURES["LV"]).reshape(len(mask), -1).any(1))
        for col, k in enumerate(hearts[np.linspace(0, len(hearts) - 1, per_stack).round().astype(int)]):
            ax = axes[row, col]
            _blank(ax)
            low, high = np.percentile(image[k], (1, 99))
            ax.imshow(image[k], cmap="gray", vmin=low, vmax=high)
            _contours(ax, mask[k])
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def roc_figure(attacks: list[dict], path: Path, *, title: str = "") -> Path:
    """ROC curves of each attack on the evaluation patients, linear and log-log."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    for attack in attacks:
        ev = attack["evaluation"]
        fpr, tpr = np.asarray(ev["roc"]["fpr"]), np.asarray(ev["roc"]["tpr"])
        label = f"{attack['name']} (AUC {ev['auc'].value:.2f})"
        axes[0].step(fpr, tpr, where="post", label=label)
        axes[1].step(np.maximum(fpr, 1e-3), np.maximum(tpr, 1e-3), where="post", label=label)
    for ax, scale in zip(axes, ("linear", "log")):
        lo = 1e-3 if scale == "log" else 0.0
        ax.plot([lo, 1], [lo, 1], color="grey", linestyle="--", linewidth=0.8, label="chance")
        ax.set_xscale(scale)
        ax.set_yscale(scale)
        ax.set_xlabel("false positive rate (non-members called members)")
        ax.set_ylabel("true positive rate (members found)")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "Membership inference on the evaluation patients", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    return _save(fig, path)


def timestep_figure(attacks: list[dict], path: Path) -> Path:
    """AUC per noise level t of the per-timestep attacks, on calibration and evaluation patients."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for attack in attacks:
        if not attack["per_timestep"]:
            continue
        t = [row["t"] for row in attack["per_timestep"]]
        line, = ax.plot(t, [row["evaluation_auc"] for row in attack["per_timestep"]], marker="o",
                        label=f"{attack['name']} (evaluation)")
        ax.plot(t, [row["calibration_auc"] for row in attack["per_timestep"]], marker="x", linestyle=":",
                color=line.get_color(), label=f"{attack['name']} (calibration)")
        ax.axvline(attack["timestep"], color=line.get_color(), alpha=0.3)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("noise level t (0 = clean image, 1 = pure noise)")
    ax.set_ylabel("ROC AUC (lower loss = member)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.set_title("Attack strength per noise level (vertical line: t chosen on calibration)", fontsize=9)
    return _save(fig, path)


def gallery(pairs: list[dict], synthetic: Slices, real: Slices, path: Path, *, redact: bool) -> Path:
    """The closest synthetic/real pairs; with ``redact`` the real image is replaced by its mask's outline."""
    plt = _pyplot()
    n = max(len(pairs), 1)
    fig, axes = plt.subplots(2, n, figsize=(1.7 * n, 3.8), squeeze=False)
    for col, pair in enumerate(pairs):
        top, bottom = axes[0, col], axes[1, col]
        _blank(top), _blank(bottom)
        top.imshow(synthetic.images[pair["synthetic"]], cmap="gray", vmin=-1, vmax=1)
        if redact:
            bottom.imshow(np.ones(real.shape), cmap="gray", vmin=0, vmax=1)
            _contours(bottom, real.masks[pair["real"]], linewidth=1.2)
        else:
            bottom.imshow(real.images[pair["real"]], cmap="gray", vmin=-1, vmax=1)
        who = "member" if pair["member"] else "non-member"
        top.set_title(f"d = {pair['distance']:.3f}" + (" COPY" if pair["near_copy"] else ""), fontsize=8,
                      color="#b30000" if pair["near_copy"] else "black")
        bottom.set_title(who, fontsize=8)
    axes[0, 0].set_ylabel("synthetic", fontsize=9)
    axes[1, 0].set_ylabel("nearest real" + (" (outline)" if redact else ""), fontsize=9)
    fig.suptitle("SENSITIVE: closest synthetic / real pairs (pixel RMS distance)" +
                 (" - real images redacted" if redact else ""), fontsize=10, color="#b30000")
    return _save(fig, path)


def privacy_utility(points: list[dict], path: Path) -> Path:
    """One point per model: membership-inference AUC (x) against utility Dice (y), labelled with ε."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for point in points:
        x, y = point["mia_auc"], point["dice"]
        ax.errorbar(x, y, xerr=[[x - point.get("mia_low", x)], [point.get("mia_high", x) - x]],
                    yerr=[[y - point.get("dice_low", y)], [point.get("dice_high", y) - y]], marker="o", capsize=3)
        eps = point.get("epsilon")
        ax.annotate(f"{point['name']}" + (f"\nε = {eps:.3g}" if eps is not None else "\nno DP"), (x, y),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(min([0.45] + [p.get("mia_low", p["mia_auc"]) - 0.05 for p in points]), 1.12)  # room for labels
    ax.set_xlabel("membership-inference AUC (0.5 = no leakage)")
    ax.set_ylabel("Dice of a segmenter trained on synthetic data")
    ax.set_title("Privacy–utility: better is up and to the left", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def intensity_figure(rows: list[dict], path: Path) -> Path:
    """Mean ± std intensity per tissue and vendor, real vs synthetic."""
    plt = _pyplot()
    vendors = sorted({r["vendor"] for r in rows})
    fig, axes = plt.subplots(1, max(len(vendors), 1), figsize=(3.3 * max(len(vendors), 1), 3.2), squeeze=False,
                             sharey=True)
    for ax, vendor in zip(axes[0], vendors):
        mine = [r for r in rows if r["vendor"] == vendor]
        x = np.arange(len(mine))
        ax.errorbar(x - 0.1, [r["real_mean"] for r in mine], yerr=[r["real_std"] for r in mine], fmt="o",
                    label="real", capsize=2)
        ax.errorbar(x + 0.1, [r["synthetic_mean"] for r in mine], yerr=[r["synthetic_std"] for r in mine],
                    fmt="s", label="synthetic", capsize=2)
        ax.set_xticks(x, [r["tissue"].replace(" ", "\n", 1) for r in mine], fontsize=6)
        ax.set_title(vendor, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("intensity (prepared, [-1, 1])")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
