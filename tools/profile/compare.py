"""The measured rates of a profile report (a written profile.json), and two reports side by side.

Plain dict work on the JSON, no torch: `vmae profile --compare` and the console report read profiles with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator


def named_rates(stages: dict, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """Every measured rate of a profile, named by its path (e.g. "load/K=4")."""
    for name, value in stages.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict) and "median" in value and "windows" in value:
            yield path, value
        elif isinstance(value, dict):
            yield from named_rates(value, path + "/")


def stage_rates(stage: dict) -> dict[str, dict]:
    """The entries of one stage's figures that are measured rates (they have a median), without the figures and
    analyses beside them (the model stage's peak_flops and breakdown)."""
    return {name: value for name, value in stage.items() if isinstance(value, dict) and "median" in value}


def compare_profiles(a: dict, b: dict) -> list[tuple[str, float, float, float]]:
    """(figure, a, b, b / a) for every median the two profiles share."""
    first, second = dict(named_rates(a["stages"])), dict(named_rates(b["stages"]))
    return [(name, first[name]["median"], second[name]["median"],
             second[name]["median"] / first[name]["median"] if first[name]["median"] else float("nan"))
            for name in first if name in second]


def distinct_labels(a: Path, b: Path) -> tuple[str, str]:
    """Column labels for two profiles: the shortest ends of their paths that differ ("a/profile.json" and
    "b/profile.json" where both files are called profile.json); the same file twice is told apart as 1st and 2nd."""
    first, second = a.parts, b.parts
    for n in range(1, max(len(first), len(second)) + 1):
        left, right = str(Path(*first[-n:])), str(Path(*second[-n:]))
        if left != right:
            return left, right
    return f"{a} (1st)", f"{b} (2nd)"
