"""`vmae profile`: measure each stage, name the bottleneck; or compare two profiles."""

from __future__ import annotations

import argparse
import json

from vmae.tools.commands import command_config
from vmae.tools.config import ConfigError, flag_values, load_config
from vmae.tools.profile import compare_profiles, run_profile
from vmae.tools.report import print_comparison, print_profile


def profile_command(args: argparse.Namespace) -> int:
    if args.compare:
        a, b = (json.loads(path.read_text()) for path in args.compare)
        print_comparison(compare_profiles(a, b), *args.compare)
        return 0
    cfg = command_config(args)
    sweep = {}
    for item in args.sweep:
        key, _, values = item.partition("=")
        if not values or not key.startswith("data."):
            raise ConfigError(f"--sweep {item!r}: give a data key and its values, e.g. data.workers=1,2")
        sweep[key] = values.split(",")
    slow = {stage: float(sec) for stage, _, sec in (item.partition("=") for item in args.slow)}
    report = run_profile(cfg, tuple(s for s in args.stages.split(",") if s), args.seconds, args.out, sweep,
                         make_cfg=lambda extra: load_config(args.config, [*args.overrides, *extra],
                                                            flag_values(args)),
                         baselines=args.baselines, slow=slow)
    print_profile(report, args.out)
    return 0
