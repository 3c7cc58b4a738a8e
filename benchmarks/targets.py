"""The issue's targets, each stated as met or missed from the numbers of this run (and what limits it)."""

from __future__ import annotations

from benchmarks.common import GiB, Settings, Table, gib, ratio, seconds, verdict

SPEEDUP_TARGET, STACK_SECONDS, RSS_GIB, DP_RATIO, PEAK_FRACTION = 50.0, 10.0, 4.0, 0.5, 0.30


def targets_table(settings: Settings, context: dict) -> Table:
    table = Table("Targets (issue 7)", ["target", "measured", "verdict", "what limits it"])
    _sampling_targets(table, settings, context)
    _memory_target(table, context)
    _training_targets(table, context)
    if settings.size != 128:
        table.notes.append(f"{settings.mode} mode runs at {settings.size}×{settings.size} with the "
                           f"{settings.preset} preset: the verdicts only check the suite, not the targets.")
    return table


def _sampling_targets(table: Table, settings: Settings, context: dict) -> None:
    from benchmarks.sampling import baseline_row, per_slice

    rows = context.get("sampling")
    if not rows:
        table.add("default sampler ≥ 50× faster than DDPM-1000", "not run", "n/a", "")
        return
    base = baseline_row(rows)
    dice = context.get("dice", {})
    for family, default in context["defaults"].items():
        row = next(r for r in rows if (r.family, r.sampler, r.steps) == (family, *default))
        speedup = per_slice(base, 1) / per_slice(row, 1) if base else None
        mine, theirs = dice.get((family, *default)), dice.get(("ddpm", "ancestral", 1000))
        if mine is None or theirs is None:
            quality, equal = "Dice n/a (random weights: speed only)", None
        else:
            quality, equal = f"mean Dice {mine:.3f} vs {theirs:.3f}", mine >= theirs - 0.01
        met = None if speedup is None else speedup >= SPEEDUP_TARGET and equal is not False
        table.add(f"{family} default ({default[0]}, {default[1]} steps) ≥ {SPEEDUP_TARGET:.0f}× faster than "
                  "DDPM ancestral 1000 at ≥ equal mask Dice",
                  f"{ratio(speedup)}; {quality}", verdict(met),
                  f"{row.evaluations} vs 1000 network evaluations; same network, so the ratio is the evaluation count")
        stack = row.timings.get(settings.stack)
        if stack is not None:
            table.add(f"{family} default: {settings.stack}×{settings.size}×{settings.size} stack < {STACK_SECONDS:.0f} s",
                      f"{seconds(stack)} s wall (CPU {seconds(stack.cpu)} s)", verdict(stack.median < STACK_SECONDS),
                      f"{row.flops * settings.stack / 1e9:,.0f} GFLOPs per stack at "
                      f"{row.flops * settings.stack / stack.median / 1e9:.0f} GFLOP/s achieved")
    volume = context.get("volume3d")
    if volume:
        table.add(f"3D LDM stack ({volume['shape']}) < {STACK_SECONDS:.0f} s", seconds(volume["seconds"]) + " s",
                  verdict(volume["seconds"] < STACK_SECONDS), volume.get("limit", ""))


def _memory_target(table: Table, context: dict) -> None:
    peaks = [r.peak_rss for r in context.get("sampling", []) if r.peak_rss is not None]
    if context.get("volume3d"):
        peaks.append(context["volume3d"]["peak_rss"])
    if peaks:
        table.add(f"peak RSS < {RSS_GIB:.0f} GiB for any stack generation", f"max {gib(max(peaks))} GiB",
                  verdict(max(peaks) < RSS_GIB * GiB), "process RSS incl. torch itself (~0.3 GiB)")


def _training_targets(table: Table, context: dict) -> None:
    dp = context.get("dp")
    if dp:
        for family, value in dp.items():
            table.add(f"{family}: DP training throughput ≥ {DP_RATIO}× non-DP", ratio(value["ratio"]),
                      verdict(value["ratio"] >= DP_RATIO), value.get("limit", ""))
    training = context.get("training")
    if training:
        for family, value in training.items():
            table.add(f"{family} training at ≥ {PEAK_FRACTION:.0%} of the matmul peak",
                      f"{value['fraction']:.0%} ({value['flops_per_s'] / 1e9:.0f} of {value['peak'] / 1e9:.0f} GFLOP "
                      "per CPU-second)",
                      verdict(value["fraction"] >= PEAK_FRACTION), value.get("limit", ""))
