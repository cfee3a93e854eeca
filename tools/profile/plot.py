"""profile.png: the stage rates as bars, the ceilings as lines."""

from __future__ import annotations

from pathlib import Path

from vmae.tools.profile.verdict import profile_limits


def plot_profile(report: dict, path: Path) -> Path:
    """Stage rates in clips/s as bars, the decode and compute limits as lines."""
    # matplotlib is optional and heavy, and only the plot needs it: loaded here, not with the package
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = report["stages"]
    bars: list[tuple[str, float]] = []
    for name, r in stages.get("load", {}).items():
        bars.append((f"load {name}", r["median"]))
    for name, r in stages.get("model", {}).items():
        if isinstance(r, dict):
            bars.append((f"model ({name})", r["median"]))
    if "train" in stages:
        bars.append(("end to end", stages["train"]["end_to_end"]["median"]))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(bars)), 4))
    colors = ["tab:blue" if b[0].startswith("load") else "tab:orange" if b[0].startswith("model") else "tab:green"
              for b in bars]
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=colors)
    limits = profile_limits(report)
    for (label, value), style in zip(limits.items(), ("--", ":"), strict=False):
        ax.axhline(value, color="black", ls=style, lw=1)
        ax.text(len(bars) - 0.5, value, f" {label}: {value:.1f}", va="bottom", ha="right", fontsize=7)
    ax.set_ylabel("clips/s")
    ax.set_title(f"vmae profile: {report['verdict'].get('bottleneck', '?')} is the limit", fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    top = max([b[1] for b in bars] + list(limits.values()) + [0])
    if top > 5 * max([b[1] for b in bars] + [1e-9]):  # a far-off limit: a log axis keeps the bars readable
        ax.set_yscale("log")
        ax.set_ylim(min(b[1] for b in bars) / 2, top * 2)
    else:
        ax.set_ylim(0, top * 1.2 or 1)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
