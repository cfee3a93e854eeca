"""`vmae study`: the data, then every seed's four arms, then the report, as ``vmae.pipeline.study.config`` fixes
them before anything runs.

Per seed: (a) pretraining, then fine-tuning on each labelled subset; (b) from scratch on each subset for the
seconds (a) spent there (pretraining plus that fine-tuning) at (b)'s own step time; the lr of each arm and subset
size is chosen on the validation clips on the first seed from the budget's grid and kept for the others; (c)
frozen features; (d) reconstruction. ``results.json`` is rewritten after every seed, so an interrupted study keeps
the seeds it finished.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from vmae.pipeline.evaluate.downstream import evaluation_data
from vmae.pipeline.study.arms import (EVAL_VIEWS, base_config, features_arm, finetune_arm, pixel_pca, pretrain_arm,
                                     reconstruction_arm)
from vmae.pipeline.study.config import BUDGETS, StudyBudget
from vmae.pipeline.study.data import StudyData, build_study_data
from vmae.pipeline.study.report import write_report

log = logging.getLogger(__name__)

ARMS = ("pretrained", "scratch")  # (a) and (b), as the results name them


def run_study(budget_name: str, out: Path, data_root: Path | None = None) -> dict:
    """Run the study of budget ``budget_name`` into ``out``; returns the report (also written there)."""
    if budget_name not in BUDGETS:
        raise ValueError(f"--budget must be one of {', '.join(BUDGETS)}; got {budget_name!r}")
    budget = BUDGETS[budget_name]
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = build_study_data(data_root or out / "data", list(budget.seeds), budget.pool_per_class,
                            budget.test_per_class, budget.val_per_class, sizes=budget.subset_sizes)
    results: dict = {"budget": {"name": budget_name, **asdict(budget)}, "data": data.card, "machine": machine(),
                     "lrs": {}, "seeds": {}, "data_seconds": round(time.perf_counter() - started, 1)}
    clip_spec = base_config(budget, data.pool, out, budget.seeds[0]).data
    pixels = pixel_pca(data, evaluation_data(clip_spec, EVAL_VIEWS, 1))  # one fit for every seed
    for seed in budget.seeds:
        results["seeds"][seed] = run_seed(budget, data, out / f"seed{seed}", seed, results, pixels)
        save(results, out)
    results["seconds"] = round(time.perf_counter() - started, 1)
    save(results, out)
    return write_report(results, out)


def run_seed(budget: StudyBudget, data: StudyData, out: Path, seed: int, results: dict, pixels) -> dict:
    """The four arms of one seed."""
    log.info("study seed %d: pretraining on %d pool clips", seed, data.card["pool_clips"])
    pre = pretrain_arm(budget, data, out / "pretrain", seed)
    found: dict = {"pretrain": {k: v for k, v in pre.items() if k != "weights"}, "finetune": {}}
    for size, subset in data.subsets[seed].items():
        tuned = choose_lr(budget, data, out / f"{size}pc" / "pretrained", seed, subset, budget.finetune_steps,
                          pre["weights"], results, ("pretrained", size))
        given = pre["seconds"] + tuned["seconds"]  # what (a) spent: pretraining plus this fine-tuning
        steps = scratch_steps(given, tuned, budget.curve_points)
        scratch = choose_lr(budget, data, out / f"{size}pc" / "scratch", seed, subset, steps, None, results,
                            ("scratch", size))
        scratch["given_seconds"] = given
        found["finetune"][size] = {"pretrained": tuned, "scratch": scratch}
        log.info("study seed %d, %d per class: pretrained %.1f %%, scratch %.1f %% (%d steps for %.0f s)", seed, size,
                 100 * tuned["test_top1"], 100 * scratch["test_top1"], steps, given)
    found["features"] = features_arm(budget, data, out / "pretrain", seed, pixels)
    found["reconstruction"] = reconstruction_arm(budget, data, out / "pretrain", seed)
    return found


def scratch_steps(given: float, tuned: dict, least: int) -> int:
    """(b)'s steps for ``given`` seconds: as many as fit at (a)'s logged step time once a run's fixed seconds
    (start-up, checkpoints: what (a)'s wall time holds beyond its steps) are paid; at least ``least``."""
    return max(least, round((given - tuned["start_seconds"]) / tuned["step_seconds"]))


def choose_lr(budget: StudyBudget, data: StudyData, out: Path, seed: int, subset: Path, steps: int,
              pretrained: str | None, results: dict, key: tuple[str, int]) -> dict:
    """The fine-tuning run at the arm's lr: on the first seed every lr of the grid is run and the best on the
    validation clips kept (recorded in ``results["lrs"]``); later seeds reuse it."""
    name = f"{key[0]} {key[1]}pc"
    if name in results["lrs"]:
        lr = results["lrs"][name]["chosen"]
        return finetune_arm(budget, data, out / f"lr{lr:g}", seed, subset, lr, steps, pretrained)
    runs = {lr: finetune_arm(budget, data, out / f"lr{lr:g}", seed, subset, lr, steps, pretrained)
            for lr in budget.finetune_lrs}
    chosen = max(runs, key=lambda lr: (runs[lr]["val_top1"], -lr))  # ties: the smaller lr
    results["lrs"][name] = {"chosen": chosen, "val_top1": {f"{lr:g}": r["val_top1"] for lr, r in runs.items()},
                            "chosen_on_seed": seed}
    return runs[chosen]


def save(results: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")


def machine() -> dict:
    """Where the figures came from: CPU, cores, GPU, Python and the versions that set them."""
    versions = {}
    for package in ("torch", "deepspeed", "timm", "av"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "versions": versions}
