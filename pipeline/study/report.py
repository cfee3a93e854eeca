"""The study's report from its results: every figure in report.json, tables in report.md (means, per-seed values,
95 % bootstrap intervals of the paired differences), the bars checked, and two plots (accuracy against labels per
class for each arm; PSNR by predictor)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from vmae.pipeline.study.reconstruction import TRIVIAL

FEATURE_MARGIN = 0.05  # (c): the pretrained encoder's lead over the initial weights and raw pixels, every seed
PSNR_MARGIN = 1.0  # (d): dB over the best trivial predictor on moving patches, every seed
FINETUNE_TARGET = 0.10  # (a) over (b) at 1-5 labels per class: the target, reported win or lose


def write_report(results: dict, out: Path) -> dict:
    """report.json, report.md, accuracy.png and psnr.png in ``out``; returns the report."""
    report = summarize(results)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "report.md").write_text(markdown(report))
    plot(report, out)
    return report


def summarize(results: dict) -> dict:
    seeds = list(results["seeds"])
    budget = results["budget"]
    rng = np.random.default_rng(0)
    finetune = {size: finetune_rows(results, seeds, size, budget["bootstrap"], rng)
                for size in budget["subset_sizes"]}
    features = feature_rows(results, seeds, budget["subset_sizes"])
    reconstruction = reconstruction_rows(results, seeds)
    report = {"budget": budget, "data": results["data"], "machine": results["machine"],
              "seconds": results.get("seconds"), "lrs": results["lrs"], "seeds": seeds, "finetune": finetune,
              "features": features, "reconstruction": reconstruction}
    report["bars"] = bars(report)
    return report


def finetune_rows(results: dict, seeds: list, size: int, resamples: int, rng: np.random.Generator) -> dict:
    """Per arm the per-seed test top-1, their mean, and the paired difference (a) − (b) with its interval."""
    runs = {arm: [results["seeds"][s]["finetune"][size][arm] for s in seeds] for arm in ("pretrained", "scratch")}
    row = {arm: {"per_seed": [r["test_top1"] for r in rs], "mean": statistics.fmean(r["test_top1"] for r in rs),
                 "steps": [r["steps"] for r in rs], "seconds": [round(r["seconds"], 1) for r in rs],
                 "best_step": [r["best_step"] for r in rs]} for arm, rs in runs.items()}
    row["scratch"]["given_seconds"] = [round(r["given_seconds"], 1) for r in runs["scratch"]]
    differences = [a - b for a, b in zip(row["pretrained"]["per_seed"], row["scratch"]["per_seed"], strict=True)]
    low, high = paired_interval(runs["pretrained"], runs["scratch"], resamples, rng)
    row["difference"] = {"per_seed": differences, "mean": statistics.fmean(differences), "ci95": [low, high]}
    return row


def paired_interval(a: list[dict], b: list[dict], resamples: int, rng: np.random.Generator) -> tuple[float, float]:
    """95 % bootstrap interval of the seed-mean top-1 difference, resampling test clips (the same draw for every
    seed and both arms: the pairing is kept)."""
    keys = sorted(a[0]["correct"])
    right = {arm: np.array([[run["correct"].get(k, 0) for k in keys] for run in runs])
             for arm, runs in (("a", a), ("b", b))}  # [seeds, clips]
    draws = rng.integers(0, len(keys), size=(resamples, len(keys)))
    differences = (right["a"][:, draws] - right["b"][:, draws]).mean(axis=(0, 2))
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)


def feature_rows(results: dict, seeds: list, sizes: list) -> dict:
    """(c): per features and probe, per subset size, the per-seed top-1 and mean."""
    out: dict = {}
    for source in results["seeds"][seeds[0]]["features"]:
        out[source] = {}
        for size in sizes:
            for probe in ("knn_top1", "probe_top1"):
                values = [results["seeds"][s]["features"][source][size][probe] for s in seeds]
                out[source].setdefault(probe, {})[size] = {"per_seed": values, "mean": statistics.fmean(values)}
    return out


def reconstruction_rows(results: dict, seeds: list) -> dict:
    """(d): per mask, predictor and kind of patch, the per-seed PSNR and mean."""
    first = results["seeds"][seeds[0]]["reconstruction"]
    out: dict = {}
    for mask in (m for m in first if isinstance(first[m], dict)):
        out[mask] = {}
        for predictor in first[mask]:
            out[mask][predictor] = {}
            for kind in ("moving", "still", "all"):
                values = [results["seeds"][s]["reconstruction"][mask][predictor][kind] for s in seeds]
                known = [v for v in values if v is not None]
                out[mask][predictor][kind] = {"per_seed": values, "mean": statistics.fmean(known) if known else None}
    return out


def bars(report: dict) -> list[dict]:
    """The issue's bars, each with the figures that decide it and whether it holds."""
    seeds = range(len(report["seeds"]))
    out = []
    rec = report["reconstruction"].get("random", {})
    if rec:
        margins = [rec["pretrained model"]["moving"]["per_seed"][i]
                   - max(rec[t]["moving"]["per_seed"][i] for t in TRIVIAL) for i in seeds]
        out.append({"bar": f"(d) the model beats the best trivial predictor by >= {PSNR_MARGIN:g} dB on moving "
                           "patches (random masks), every seed", "per_seed": margins,
                    "holds": all(m >= PSNR_MARGIN for m in margins)})
    features = report["features"]
    for probe in ("knn_top1", "probe_top1"):
        for rival in ("initial weights", "raw pixels (PCA)"):
            margins = {size: [features["pretrained"][probe][size]["per_seed"][i]
                              - features[rival][probe][size]["per_seed"][i] for i in seeds]
                       for size in features["pretrained"][probe]}
            out.append({"bar": f"(c) pretrained {probe.split('_')[0]} beats {rival} by >= {100 * FEATURE_MARGIN:g} "
                               "points, every seed and subset size", "per_seed": margins,
                        "holds": all(m >= FEATURE_MARGIN for ms in margins.values() for m in ms)})
    for size, row in report["finetune"].items():
        target = size <= 5
        out.append({"bar": f"(a) vs (b) at {size} per class" + (f": target a win of >= {100 * FINETUNE_TARGET:g} "
                                                               "points" if target else ": reported"),
                    "mean": row["difference"]["mean"], "ci95": row["difference"]["ci95"],
                    "holds": row["difference"]["mean"] >= FINETUNE_TARGET if target else None})
    return out


def markdown(report: dict) -> str:
    budget = report["budget"]
    machine = report["machine"]
    lines = [f"# Does MAE pretraining learn? Study report ({budget['name']} budget)", "",
             f"Budget: {budget['note']}; {budget['pool_per_class'] * 10} pool clips, {budget['test_per_class'] * 10} "
             f"test clips, seeds {', '.join(map(str, report['seeds']))}, {budget['preset']} "
             f"{'x'.join(map(str, budget['tubelet']))} tubelets on {budget['frames']}x{budget['crop_size']} clips, "
             f"{budget['pretrain_steps']} pretraining steps. Machine: {machine['cpu']}, {machine['cores']} cores, "
             f"GPU {machine['gpu'] or 'none'}; torch {machine['versions'].get('torch')}. Wall time "
             f"{report['seconds']} s.", "", "## Bars", "", "| bar | figures | holds |", "|---|---|---|"]
    for bar in report["bars"]:
        figures = (f"mean {100 * bar['mean']:+.1f} points, 95 % CI [{100 * bar['ci95'][0]:+.1f}, "
                   f"{100 * bar['ci95'][1]:+.1f}]" if "mean" in bar else json.dumps(_rounded(bar["per_seed"])))
        holds = {True: "yes", False: "**no**", None: "reported"}[bar["holds"]]
        lines.append(f"| {bar['bar']} | {figures} | {holds} |")
    lines += ["", "## (a) pretrained + fine-tuned against (b) from scratch for the same time", "",
              "| labels per class | (a) mean | (b) mean | (a) − (b) | 95 % CI | (a) per seed | (b) per seed | "
              "(b) seconds taken / given |", "|---:|---:|---:|---:|---|---|---|---|"]
    for size, row in report["finetune"].items():
        lines.append(f"| {size} | {_pct(row['pretrained']['mean'])} | {_pct(row['scratch']['mean'])} | "
                     f"{100 * row['difference']['mean']:+.1f} | [{100 * row['difference']['ci95'][0]:+.1f}, "
                     f"{100 * row['difference']['ci95'][1]:+.1f}] | "
                     f"{', '.join(map(_pct, row['pretrained']['per_seed']))} | "
                     f"{', '.join(map(_pct, row['scratch']['per_seed']))} | " +
                     ", ".join(f"{taken:.0f} / {given:.0f}" for taken, given in
                               zip(row["scratch"]["seconds"], row["scratch"]["given_seconds"], strict=True)) + " |")
    lines += ["", "## (c) frozen features", "", "| features | probe | " +
              " | ".join(f"{size} per class" for size in report["finetune"]) + " |",
              "|---|---|" + "---:|" * len(report["finetune"])]
    for source, probes in report["features"].items():
        for probe, sizes in probes.items():
            lines.append(f"| {source} | {probe.split('_')[0]} | " +
                         " | ".join(f"{_pct(v['mean'])} ({', '.join(map(_pct, v['per_seed']))})"
                                    for v in sizes.values()) + " |")
    lines += ["", "## (d) reconstruction of the hidden patches (PSNR, dB)", "",
              "| mask | predictor | moving | still | all |", "|---|---|---:|---:|---:|"]
    for mask, predictors in report["reconstruction"].items():
        for predictor, kinds in predictors.items():
            lines.append(f"| {mask} | {predictor} | " +
                         " | ".join(_db(kinds[k]["mean"]) for k in ("moving", "still", "all")) + " |")
    lines += ["", "lr chosen on the validation clips (first seed): " +
              "; ".join(f"{name} {v['chosen']:g}" for name, v in report["lrs"].items()), ""]
    return "\n".join(lines)


def plot(report: dict, out: Path) -> None:
    """accuracy.png (test top-1 against labels per class, each arm: seed means and dots) and psnr.png."""
    import matplotlib  # heavy: only a written report pays for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(report["finetune"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, label in (("pretrained", "(a) pretrained + fine-tuned"), ("scratch", "(b) from scratch, same time")):
        means = [100 * report["finetune"][s][arm]["mean"] for s in sizes]
        ax.plot(sizes, means, marker="o", label=label)
        for s in sizes:
            ax.scatter([s] * len(report["seeds"]), [100 * v for v in report["finetune"][s][arm]["per_seed"]], s=8,
                       alpha=0.5)
    for source in ("pretrained", "initial weights", "raw pixels (PCA)"):
        probe = report["features"][source]["probe_top1"]
        ax.plot(sizes, [100 * probe[s]["mean"] for s in sizes], linestyle="--", label=f"(c) linear probe, {source}")
    ax.set(xscale="log", xlabel="labelled clips per class", ylabel="test top-1 (%)", xticks=sizes,
           xticklabels=[str(s) for s in sizes], title="Accuracy against labels")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(report["reconstruction"]), figsize=(10, 4), squeeze=False)
    for ax, (mask, predictors) in zip(axes[0], report["reconstruction"].items()):
        names = list(predictors)
        for i, kind in enumerate(("moving", "still")):
            values = [predictors[n][kind]["mean"] or 0 for n in names]
            ax.bar(np.arange(len(names)) + 0.4 * i, values, width=0.4, label=kind)
        ax.set(xticks=np.arange(len(names)) + 0.2, title=f"{mask} masks", ylabel="PSNR (dB)")
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "psnr.png", dpi=120)
    plt.close(fig)


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _db(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _rounded(value):
    """Floats of a nested list or dict to 3 decimals, for a table cell."""
    if isinstance(value, dict):
        return {str(k): _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return round(value, 3) if isinstance(value, float) else value
