"""The measured rates of a profile report (a written profile.json), and two reports side by side.

Plain dict work on the JSON, no torch: `vmae profile --compare` and the console report read profiles with it.
"""

from __future__ import annotations

from typing import Iterator


def named_rates(stages: dict, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """Every measured rate of a profile, named by its path (e.g. "load/K=4")."""
    for name, value in stages.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict) and "median" in value and "windows" in value:
            yield path, value
        elif isinstance(value, dict):
            yield from named_rates(value, path + "/")


def compare_profiles(a: dict, b: dict) -> list[tuple[str, float, float, float]]:
    """(figure, a, b, b / a) for every median the two profiles share."""
    first, second = dict(named_rates(a["stages"])), dict(named_rates(b["stages"]))
    return [(name, first[name]["median"], second[name]["median"],
             second[name]["median"] / first[name]["median"] if first[name]["median"] else float("nan"))
            for name in first if name in second]
