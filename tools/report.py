"""How command results are shown: rich tables on the console."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from vmae.tools.profile.compare import distinct_labels, named_rates
from vmae.tools.profile.verdict import best_sweep

console = Console(stderr=False)


def print_build_summary(summary, out: Path) -> None:
    table = Table(title=f"shards build → {out}", show_header=False)
    if summary.up_to_date:
        table.add_row("status", "already built: nothing to do")
    rows = [
        ("videos in", f"{summary.inputs}"),
        ("samples out", f"{summary.samples} in {summary.shards} shard(s), {_mb(summary.bytes)}"),
        ("stream-copied / transcoded", f"{summary.copied} / {summary.transcoded}"),
        ("rejected", ", ".join(f"{k}: {v}" for k, v in summary.rejected.items()) or "none"),
    ]
    if not summary.up_to_date:
        rows.append(("time", f"{summary.seconds:.1f} s, {summary.videos_per_second:.2f} videos/s, "
                             f"{summary.megabytes_per_second:.2f} MB/s of input"))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if summary.rejected:
        console.print(f"reasons for each rejected input: {out / 'rejects.jsonl'}")


def print_verify_report(report) -> None:
    status = "[green]OK[/green]" if report.ok else f"[red]{len(report.problems)} problem(s)[/red]"
    console.print(f"verify {report.dataset}: {status}: {report.shards} shards, {report.samples} samples, "
                  f"{report.frames_decoded} frames decoded in {report.seconds:.1f} s")
    if report.problems:
        table = Table("where", "problem")
        for p in report.problems:
            table.add_row(p.where, p.what)
        console.print(table)
        console.print("Rebuild the dataset (a build re-run into a fresh folder gives the same bytes) "
                      "or restore the listed shards from a copy.")


def print_dataset_stats(stats: dict) -> None:
    head = Table(title=f"dataset {stats['dataset']}", show_header=False)
    head.add_row("samples", f"{stats['samples']} from {stats['inputs']} inputs, {stats['shards']} shards, "
                            f"{_mb(stats['bytes'])}")
    for key, show in (("duration_seconds", lambda v: f"{v:.1f} s"), ("frames", lambda v: f"{v:g}"),
                      ("shard_bytes", _mb)):
        s = stats[key]
        head.add_row(key.replace("_", " "), f"min {show(s['min'])}, median {show(s['median'])}, "
                                            f"max {show(s['max'])}, total {show(s['total'])}")
    for key in ("resolutions", "fps", "codecs", "modes", "rejects"):
        head.add_row(key, ", ".join(f"{k}: {v}" for k, v in list(stats[key].items())[:8]) or "none")
    head.add_row("padded videos", str(stats["padded"]))
    for n, line in enumerate(stats.get("backends", [])):
        head.add_row("suits" if n == 0 else "", line)
    card = stats.get("card")
    if card:  # what two users compare to see whether they hold the same copy
        listed = ", ".join(f"{name}: {part['videos']}" for name, part in card["listed_per_split"].items())
        head.add_row("dataset card", f"{card['input_kind']} list, split {card['split'] or 'all'}; listed {listed}; "
                                     f"in shards {card['videos']}, rejected {card['rejected']}; inputs digest "
                                     f"{card['inputs_digest'][:16]}")
    console.print(head)
    classes = Table("label", "class", "samples", "seconds", title="classes")
    for n, c in enumerate(stats["classes"]):
        classes.add_row(str(n) if c["name"] != "(unlabeled)" else "-1", c["name"], str(c["samples"]),
                        f"{c['seconds']:.1f}")
    console.print(classes)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def print_train_summary(summary: dict) -> None:
    table = Table(title=summary.get("task", "pretrain"), show_header=False)
    stepped = summary["steps_this_run"] > 0
    status = "done" if stepped else "nothing to do: the run had reached its last step (another --out starts anew)"
    if summary.get("stopped"):
        status = f"stopped by {summary['stopped']}; --resume auto continues"
    if summary.get("sanity_check"):
        status = sanity_check_status(summary["sanity_check"])
    rows = [
        ("status", status),
        ("steps", f"{summary['steps']} of {summary['run_steps']} ({summary['steps_this_run']} in this run, "
                  f"{summary['skipped_steps']} skipped), epoch {summary['epoch']}"),
        ("throughput", f"{summary['clips_per_s']:.2f} clips/s, waiting for data {summary['data_wait_pct']:.1f} %"
         if stepped else "no step in this run"),
    ]
    if stepped and summary.get("device") == "cpu":
        rows.append(("", CPU_DATA_WAIT_NOTE))
    rows += [
        ("loss", f"{summary['first_loss']:.4f} → {summary['final_loss']:.4f} (mean of the last steps)"
         if summary.get("first_loss") is not None else "no step taken"),
        ("time", f"{summary['seconds']:.1f} s"),
    ]
    if summary.get("val_top1") is not None:
        rows.append(("val", f"top-1 {summary['val_top1']:.1%}, top-{summary['val_k']} {summary['val_topk']:.1%} on "
                            f"{summary['val_videos']} videos (multi-view; {summary['eval']})"))
    for key in ("checkpoint", "weights", "picture", "metrics"):
        if summary.get(key):
            rows.append((key, summary[key]))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def sanity_check_status(check: dict) -> str:
    """The --overfit verdict: the loss reached against the threshold, and what to do on a miss."""
    threshold, steps = check["threshold"], check["settle_steps"]
    if check["passed"]:
        return (f"[green]sanity check passed[/green]: the loss stayed below {threshold:g} (train.stop_loss) for "
                f"{steps} steps in a row (at most {check['loss']:.4f}) by step {check['step']}")
    if check["loss"] is None:
        return ("[red]sanity check FAILED[/red]: no step was taken in this run (its --out already holds a finished "
                "run): run it again with a fresh --out")
    return (f"[red]sanity check FAILED[/red]: the loss reached {check['loss']:.4f} (highest of the last {steps} "
            f"steps), not below {threshold:g} (train.stop_loss), by step {check['step']}: the model cannot fit "
            "these videos. Check the lr (train.base_lr) and any override, and the data (`vmae loader-check`)")


# Without it a newcomer reads a CPU run's large "waiting for data" as a fault.
CPU_DATA_WAIT_NOTE = ("on the CPU the loader's decode workers and the model share the same cores, so waiting for "
                      "data is expected here, not a fault; `vmae profile` shows the split")


def print_profile(report: dict, folder: Path) -> None:
    wide = console if console.is_terminal else Console(width=150)
    table = Table(title=f"vmae profile ({report['machine']['cpu']}, {report['machine']['cores']} cores"
                        f"{', ' + report['machine']['gpu'] if report['machine']['gpu'] else ''})")
    for column in ("figure", "median", "unit", "spread", "notes"):
        table.add_column(column, justify="right" if column in ("median", "spread") else "left")
    for name, rate in named_rates(report["stages"]):
        notes = ", ".join(f"{k.replace('_', ' ')} {_short(v)}" for k, v in rate.items()
                          if k not in ("median", "unit", "spread", "trusted", "windows"))
        spread = f"{rate['spread']:.0%}" + ("" if rate["trusted"] else " (too wide)")
        table.add_row(name, f"{rate['median']:.2f}", rate["unit"], spread, notes)
    wide.print(table)
    if report["stages"].get("sweep"):
        wide.print(sweep_table(report["stages"]["sweep"]))
    for line in report["verdict"].get("advice", []):
        wide.print(f"• {line}")
    if report.get("untrusted"):
        console.print(f"spread too wide to trust (> 25 %): {', '.join(report['untrusted'])}; raise --seconds")
    ratios = report["stages"].get("baselines", {}).get("ratios", {})
    for name, ratio in ratios.items():
        console.print(f"baseline ratio {name}: {ratio:.2f}x")
    console.print(f"written: {folder / 'profile.json'}, {folder / 'profile.png'} ({report['wall_seconds']} s)")


def sweep_table(rows: list[dict]) -> Table:
    """One row per combination of the sweep: its settings, clips/s, spread and decoded frames per clip; the
    fastest marked."""
    best = best_sweep(rows)
    table = Table(title="sweep (the loader alone)")
    keys = list(rows[0]["settings"])
    for column in (*keys, "clips/s", "spread", "decoded frames per clip", "best"):
        table.add_column(column, justify="left" if column in keys else "right")
    for row in rows:
        spread = f"{row['spread']:.0%}" + ("" if row["trusted"] else " (too wide)")
        table.add_row(*(str(row["settings"][k]) for k in keys), f"{row['median']:.2f}", spread,
                      f"{row.get('decoded_frames_per_clip', 0):.1f}", "◀ best" if row is best else "")
    return table


def print_comparison(rows: list[tuple[str, float, float, float]], a: Path, b: Path) -> None:
    first, second = distinct_labels(a, b)
    table = Table(title=f"{a} vs {b}")
    for column in ("figure", first, second, "b / a"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for name, first, second, ratio in rows:
        table.add_row(name, f"{first:.2f}", f"{second:.2f}", f"{ratio:.2f}x")
    console.print(table)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
