"""What the figures of a profile say: which stage limits the run and by how much, what another K would give, the
ceilings (decode at ffmpeg's per-core rate, the model at the matmul peak) and the settings to try."""

from __future__ import annotations

from vmae.pipeline.data.backends import CPU_DECODER_NAMES


def verdict(figures: dict, cfg) -> dict:
    """Which stage limits the run, by how much, what K would give, and what to try."""
    k = cfg.data.views
    loads = {int(name[2:]): r["median"] for name, r in figures.get("load", {}).items()}
    models = {name: r["median"] for name, r in figures.get("model", {}).items() if isinstance(r, dict)}
    out: dict = {"advice": []}
    if not loads or not models:
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
        decode = figures.get("decode", {})
        if decode and decode["ours"]["median"] < 0.8 * decode["ffmpeg_1_thread"]["median"]:
            say.append(f"the decoder runs at {decode['ours']['median'] / decode['ffmpeg_1_thread']['median']:.2f} of "
                       f"ffmpeg's per-core rate: try data.cpu_decoder="
                       f"{' or '.join(d for d in CPU_DECODER_NAMES if d != cfg.data.cpu_decoder)}")
    else:
        say.append(f"the loader has {out['headroom']:.2f}x headroom: fewer decode workers leave more CPU to the model")
        if best_backend != cfg.model.attention and cfg.model.attention != "auto":
            say.append(f"use model.attention={best_backend} (the fastest here)")
        say.append("raise data.batch_size (the micro-batch) while memory allows; model.checkpoint=true trades "
                   "compute for memory")
    train = figures.get("train", {}).get("end_to_end")
    if train:
        wait = train["data_wait_pct"]
        ratio = train["median"] / min(load_rate, model_rate)
        out.update(end_to_end_clips_per_s=train["median"], end_to_end_over_slower=ratio, data_wait_pct=wait)
        say.append(f"together: {train['median']:.1f} clips/s, {ratio:.2f}x the slower stage, waiting for data "
                   f"{wait:.1f} % of the time")
        if wait > 10 and limit == "model":
            say.append("data wait above 10 % although the loader is faster: raise data.prefetch")
    return out


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


def profile_limits(report: dict) -> dict[str, float]:
    """The ceilings in clips/s: ffmpeg's per-core decode rate over all cores at the loader's decode work per
    clip, and the model at the measured matmul peak."""
    stages, limits = report["stages"], {}
    decode, loads = stages.get("decode"), stages.get("load", {})
    views = report["config"]["data"]["views"]
    load = loads.get(f"K={views}")
    if decode and load and load.get("decoded_frames_per_clip"):
        limits["decode limit (ffmpeg x cores)"] = (decode["ffmpeg_1_thread"]["median"] * report["machine"]["cores"]
                                                   / load["decoded_frames_per_clip"])
    model = stages.get("model", {})
    rates = [r for r in model.values() if isinstance(r, dict)]
    if rates:
        best = max(rates, key=lambda r: r["median"])
        limits["model at the matmul peak"] = best["median"] / best["mfu"] if best["mfu"] else 0.0
    return limits
