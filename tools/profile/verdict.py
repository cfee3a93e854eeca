"""What the figures of a profile say: which stage limits the run and by how much, what another K would give, the
ceilings (decode at ffmpeg's per-core rate, the model at the matmul peak) and the settings to try."""

from __future__ import annotations

from vmae.tools.profile.compare import stage_rates


def verdict(figures: dict, cfg) -> dict:
    """Which stage limits the run, by how much, what K would give, and what to try."""
    k = cfg.data.views
    loads = {int(name[2:]): r["median"] for name, r in figures.get("load", {}).items()}
    models = {name: r["median"] for name, r in stage_rates(figures.get("model", {})).items()}
    out: dict = {"advice": []}
    limit_of_step = figures.get("model", {}).get("breakdown", {}).get("limit")
    if limit_of_step:
        out["step_limit"] = limit_of_step
    if not loads or not models:
        out["no_bottleneck_because"] = unmeasured_reason(bool(loads), bool(models))
        out["advice"] += [f"no bottleneck named: {out['no_bottleneck_because']}", *step_advice(figures),
                          *sweep_advice(figures)]
        return out
    load_rate = loads.get(k, max(loads.values()))
    best_backend = max(models, key=models.get)
    model_rate = models[best_backend]
    limit = "load" if load_rate < model_rate else "model"
    out.update(bottleneck=limit, load_clips_per_s=load_rate, model_clips_per_s=model_rate,
               headroom=max(load_rate, model_rate) / min(load_rate, model_rate), best_attention=best_backend)
    say = out["advice"]
    say.append(f"the loader delivers {load_rate:.1f} clips/s at K={k}, the model consumes {model_rate:.1f} "
               f"({best_backend} attention): {'loading' if limit == 'load' else 'the model'} is the limit, "
               f"{out['headroom']:.2f}x below the other")
    for other, rate in sorted(loads.items()):
        if other != k:
            predicted = min(rate, model_rate)
            say.append(f"K={other}: the loader gives {rate:.1f} clips/s; predicted end to end {predicted:.1f} "
                       f"clips/s ({predicted / min(load_rate, model_rate):.2f}x of now)")
    if limit == "load":
        backend = figures["load"].get(f"K={k}", {}).get("backend")
        if backend == "dali":
            say.append("try data.backend=cpu with data.workers set to the host's cores: on an H100 host with 16 "
                       "cores the CPU path gave ~20x the clips/s of DALI mixed (BENCHMARKS.md, GPU section)")
        if k < max(loads):
            say.append(f"raise data.views to {max(loads)}: each decoded video then gives more clips")
        if not cfg.data.span:
            say.append("try data.span=2: all views from one window, so less of each video is decoded")
        say.append(f"try more decode workers (data.workers, now {cfg.data.worker_count}) or a deeper "
                   f"data.prefetch (now {cfg.data.prefetch})")
        say.append("build shards with --pframe-interval equal to data.stride: clips then need no B-frame")
        faster = faster_decoder(figures.get("decode", {}))
        if faster:
            say.append(f"data.cpu_decoder={faster[0]} decoded {faster[1]:.2f}x the frames/s of "
                       f"{cfg.data.cpu_decoder} on these videos: try it")
    else:
        say.append(f"the loader has {out['headroom']:.2f}x headroom: fewer decode workers leave more CPU to the model")
        if best_backend != cfg.model.attention and cfg.model.attention != "auto":
            say.append(f"use model.attention={best_backend} (the fastest here)")
        say.append("data.batch_size=auto finds the largest micro-batch that fits and still pays; "
                   "model.checkpoint=true trades compute for memory")
    say += step_advice(figures)
    train = figures.get("train", {}).get("end_to_end")
    if train:
        wait = train["data_wait_pct"]
        ratio = train["median"] / min(load_rate, model_rate)
        mfu = train.get("mfu_vs_measured_matmul")
        out.update(end_to_end_clips_per_s=train["median"], end_to_end_over_slower=ratio, data_wait_pct=wait,
                   end_to_end_mfu=mfu)
        say.append(f"together: {train['median']:.1f} clips/s, {ratio:.2f}x the slower stage, waiting for data "
                   f"{wait:.1f} % of the time" + (f", MFU {mfu:.3f} of the matmul rate measured here" if mfu else ""))
        if wait > 10 and limit == "model":
            say.append("data wait above 10 % although the loader is faster: raise data.prefetch")
    say += sweep_advice(figures)
    return out


def fit_advice(fitted: dict) -> str:
    """What fitting the step to the device chose: the micro-batch and whether checkpointing is on, and why."""
    why = fitted["checkpoint_why"]
    if "micro_batch" not in fitted:
        return f"activation checkpointing {'on' if fitted['checkpoint'] else 'off'} ({why})"
    tried = ", ".join(f"{t['videos']}{' checkpointed' if t['checkpoint'] else ''}: "
                      + (t["problem"] or f"{t['clips_per_s']:.1f} clips/s") for t in fitted["trials"])
    return (f"micro-batch {fitted['micro_batch']} videos, found on this device under {fitted['memory_limit_gib']} GiB "
            f"({tried}); activation checkpointing {'on' if fitted['checkpoint'] else 'off'} ({why})")


def unmeasured_reason(load: bool, model: bool) -> str:
    """Why no stage can be named the limit: which of the two compared stages was not measured."""
    missing = [name for name, measured in (("load", load), ("model", model)) if not measured]
    return (f"the {' and '.join(missing)} stage{'s were' if len(missing) > 1 else ' was'} not measured, and the "
            f"limit is the slower of load and model (run --stages load,model)")


def step_advice(figures: dict) -> list[str]:
    """What limits the fastest backend's training step (the model stage's breakdown), where it was measured."""
    breakdown = figures.get("model", {}).get("breakdown") or {}
    if not breakdown.get("limit"):
        return []
    return [f"the step ({breakdown.get('attention', 'fastest')} attention): {breakdown['limit']}"]


def sweep_advice(figures: dict) -> list[str]:
    """The sweep's fastest combination, as the overrides to use."""
    best = best_sweep(figures.get("sweep", []))
    if best is None:
        return []
    return [f"best of the sweep: {settings_text(best['settings'])}, {best['median']:.1f} clips/s, "
            f"{best.get('decoded_frames_per_clip', 0):.1f} decoded frames per clip"]


def best_sweep(rows: list[dict]) -> dict | None:
    """The sweep's fastest combination (most clips/s), or None without a sweep."""
    return max(rows, key=lambda row: row["median"]) if rows else None


def settings_text(settings: dict) -> str:
    """A sweep combination as the overrides that select it: "data.workers=2 data.views=4"."""
    return " ".join(f"{key}={value}" for key, value in settings.items())


def utilization_advice(utilization: dict) -> list[str]:
    """What SM and NVDEC utilization (NVML) say about the loading and training stages."""
    say = []
    for stage in ("load", "train"):
        figures = utilization.get(stage)
        if not figures:
            continue
        say.append(f"GPU during {stage}: SMs {figures['sm_util_pct']:.0f} %, NVDEC {figures['decoder_util_pct']:.0f} % "
                   f"(peak {figures['decoder_util_max_pct']:.0f} %; nvidia-smi's GPU-Util leaves NVDEC out)")
        if figures["decoder_util_pct"] > 90:
            say.append(f"NVDEC is saturated during {stage}: more views per decoded video (data.views), "
                       "data.span, or a lower shard resolution decode less")
    return say


def decode_limit(report: dict, decoded_frames_per_clip: float) -> float | None:
    """The clips/s that decoding alone allows a loader that decodes ``decoded_frames_per_clip`` frames per
    delivered clip (its K views' union counted once, shared among them): ffmpeg's frames per CPU-second on one
    thread, times the cores this process may use. None where the decode stage was not measured."""
    decode = report["stages"].get("decode")
    if not decode or not decoded_frames_per_clip:
        return None
    machine = report["machine"]
    cores = machine.get("usable_cores") or machine["cores"]
    return decode["ffmpeg_1_thread"]["median"] * cores / decoded_frames_per_clip


def model_limit(report: dict) -> float | None:
    """The fastest attention backend's clips/s at the matmul peak measured in the same run (its MFU at 1)."""
    rates = list(stage_rates(report["stages"].get("model", {})).values())
    if not rates:
        return None
    best = max(rates, key=lambda r: r["median"])
    return best["median"] / best["mfu"] if best["mfu"] else None


def faster_decoder(decode: dict, margin: float = 1.1) -> tuple[str, float] | None:
    """The registered CPU decoder that measured fastest on the profiled videos and its speed-up over the configured
    one, when that is more than ``margin`` (whole-video decodes are noisy: a few percent is no reason to switch)."""
    others = decode.get("other_decoders") or {}
    if not others or not decode.get("ours"):
        return None
    name, rate = max(others.items(), key=lambda item: item[1]["median"])
    speedup = rate["median"] / decode["ours"]["median"]
    return (name, speedup) if speedup > margin else None
