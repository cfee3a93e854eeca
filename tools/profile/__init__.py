"""`vmae profile`: decode, load, model and train measured each alone, then together, on the user's dataset and
model config; the bottleneck named, the headroom given, the settings to try suggested.

Every stage runs for a bounded time after a warm-up, cut into windows whose rates give a median and a spread; a
spread wider than ``rates.SPREAD_LIMIT`` is flagged as too noisy to trust.

The package reads in the order of a run:
- ``rates``: ``measure`` (timed windows) and ``Rate`` (median and spread of a stage's windows);
- ``breakdown``: what limits one training step (its kernel mix, host syncs, GPU idle time and memory), from a
  torch.profiler trace;
- ``stages``: each stage measured on its own (decode, load, model, train), the baselines and the loader sweep;
- ``verdict``: the bottleneck, the headroom, the ceilings and the advice drawn from the figures;
- ``plot``: profile.png;
- ``compare``: the rates of a written profile.json, and two profiles side by side;
- ``run``: ``run_profile``, which runs the requested stages and writes profile.json and profile.png.

This module imports no torch: `vmae --help` reads ``STAGES`` from here at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmae.tools.profile.compare import compare_profiles

if TYPE_CHECKING:
    from vmae.tools.profile.run import run_profile

STAGES = ("decode", "load", "model", "train")

__all__ = ["STAGES", "compare_profiles", "run_profile"]


def __getattr__(name: str) -> Any:
    """``run_profile`` on first use: it pulls in torch and the model, which `vmae --help` must not pay for."""
    if name == "run_profile":
        from vmae.tools.profile.run import run_profile

        return run_profile
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
