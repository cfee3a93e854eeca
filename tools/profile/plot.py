"""profile.png: the stage rates (and the sweep's combinations) as bars, each loader bar with its decode limit, the
model's limit as a line, and a title that says what was measured and what limits."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import NamedTuple

from vmae.tools.profile.compare import stage_rates
from vmae.tools.profile.verdict import best_sweep, decode_limit, model_limit

COLORS = {"load": "tab:blue", "sweep": "tab:purple", "model": "tab:orange", "train": "tab:green"}


class Bar(NamedTuple):
    """One bar of the plot: its label, clips/s, the stage it measures and the decode limit drawn over it."""

    label: str
    value: float
    stage: str
    limit: float | None = None
    best: bool = False


def profile_bars(report: dict) -> list[Bar]:
    """Every clips/s figure of the report, in the order of a run; loader bars carry their own decode limit, since
    the frames decoded per clip (and so the limit) change with K and the other settings."""
    stages = report["stages"]
    bars = [Bar(f"load {name}", r["median"], "load", decode_limit(report, r.get("decoded_frames_per_clip", 0)))
            for name, r in stages.get("load", {}).items()]
    best = best_sweep(stages.get("sweep", []))
    for row in stages.get("sweep", []):
        label = "sweep " + " ".join(f"{key.removeprefix('data.')}={value}" for key, value in row["settings"].items())
        bars.append(Bar(label, row["median"], "sweep", decode_limit(report, row.get("decoded_frames_per_clip", 0)),
                        row is best))
    bars += [Bar(f"model ({name})", r["median"], "model") for name, r in stage_rates(stages.get("model", {})).items()]
    if "train" in stages:
        bars.append(Bar("end to end", stages["train"]["end_to_end"]["median"], "train"))
    return bars


def plot_title(report: dict) -> str:
    """What the run measured and which stage limits it, or that no bottleneck was named and why."""
    measured = ", ".join(name for name in report["stages"] if name != "baselines") or "nothing"
    found = report["verdict"]
    if "bottleneck" in found:
        limit = "loading" if found["bottleneck"] == "load" else "the model"
        said = (f"{limit} is the limit (loader {found['load_clips_per_s']:.1f} clips/s, model "
                f"{found['model_clips_per_s']:.1f} clips/s)")
    else:
        said = f"no bottleneck named: {found.get('no_bottleneck_because', 'the figures do not say')}"
    return textwrap.fill(f"vmae profile of {measured}: {said}", 100)


def plot_profile(report: dict, path: Path) -> Path:
    """The bars, their decode limits and the model limit, written as a PNG to ``path``."""
    # matplotlib is optional and heavy, and only the plot needs it: loaded here, not with the package
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = profile_bars(report)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(bars)), 4))
    x = range(len(bars))
    drawn = ax.bar(x, [b.value for b in bars], color=[COLORS[b.stage] for b in bars])
    for rect, bar in zip(drawn, bars, strict=True):
        if bar.best:
            rect.set_hatch("//")
            ax.annotate("best", (rect.get_x() + rect.get_width() / 2, bar.value), ha="center", va="bottom",
                        fontsize=7)
    limits = [(i, b.limit) for i, b in enumerate(bars) if b.limit]
    for n, (i, value) in enumerate(limits):
        ax.hlines(value, i - 0.45, i + 0.45, color="black", ls="--", lw=1.2,
                  label="decode limit of each loader bar (ffmpeg frames per CPU-s x cores / decoded frames per "
                        "clip)" if n == 0 else None)
    model = model_limit(report)
    if model:
        ax.axhline(model, color="black", ls=":", lw=1, label=f"model at the matmul peak: {model:.1f}")
    ax.set_xticks(list(x), [b.label for b in bars])
    ax.set_ylabel("clips/s")
    ax.set_title(plot_title(report), fontsize=8)
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    for tick in ax.get_xticklabels():  # rotated labels end under their bar, not beside it
        tick.set_horizontalalignment("right")
        tick.set_rotation_mode("anchor")
    if limits or model:
        ax.legend(fontsize=6, loc="upper left")
    _scale(ax, [b.value for b in bars], [v for _, v in limits] + ([model] if model else []))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _scale(ax, values: list[float], limits: list[float]) -> None:
    """A linear axis, or a log one where a limit lies far above the bars (which it would flatten)."""
    top = max(values + limits + [0])
    if values and top > 5 * max(values + [1e-9]):
        ax.set_yscale("log")
        ax.set_ylim(max(min(values), 1e-9) / 2, top * 2)
    else:
        ax.set_ylim(0, top * 1.3 or 1)
