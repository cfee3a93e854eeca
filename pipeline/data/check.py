"""`vmae loader-check`: a contact sheet of the views the loader cuts, and the clips/s it delivers."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from vmae.pipeline.data.config import DataConfig  # noqa: E402
from vmae.pipeline.data.loader import make_loader  # noqa: E402
from vmae.pipeline.data.sample_reader import BadSample, LoadedSample, SampleReader  # noqa: E402
from vmae.pipeline.data.shardset import open_shards  # noqa: E402
from vmae.pipeline.data.views import denormalize  # noqa: E402


SHEET_NAME = "loader_check.png"


def sheet_path(out: Path) -> Path:
    """The file a contact sheet asked for as ``out`` lands in: inside ``out`` where it is a folder, with ``.png``
    added where it has no suffix (matplotlib would add it silently, and the log would name another path)."""
    if out.is_dir():
        return out / SHEET_NAME
    return out if out.suffix else out.with_name(out.name + ".png")


def contact_sheet(dataset: Path | str, cfg: DataConfig, out: Path, videos: int = 3) -> Path:
    """One row per view of the first ``videos`` samples: its first, middle and last frame, whole, with the
    view's crop drawn on it (dashed when flipped), and beside them the first frame as the model gets it; returns
    the file written (see ``sheet_path``)."""
    out = sheet_path(out)
    shardset = open_shards(dataset, cfg)
    reader = SampleReader(shardset, cfg, epoch=0)
    loaded: list[LoadedSample] = []
    for ref in shardset.rank_part(0, cfg.seed, cfg.shuffle_buffer, 0, 1):
        try:
            loaded.append(reader.load(ref))
        except BadSample:
            continue
        if len(loaded) == videos:
            break
    if not loaded:
        raise RuntimeError(f"no sample of {dataset} could be loaded: run `vmae shards verify {dataset}`")
    rows = sum(s.plan.frames.shape[0] for s in loaded)
    fig, axes = plt.subplots(rows, 4, figsize=(12, 2.4 * rows), squeeze=False)
    row = 0
    for sample in loaded:
        for k in range(sample.plan.frames.shape[0]):
            y, x, h, w = sample.plan.crops[k]
            t_pick = [0, cfg.frames // 2, cfg.frames - 1]
            for col, t in enumerate(t_pick):
                ax = axes[row, col]
                ax.imshow(sample.frames[sample.inverse[k, t]])
                ax.add_patch(Rectangle((x, y), w, h, fill=False, color="yellow", lw=1.5,
                                       ls="--" if sample.plan.flips[k] else "-"))
                ax.set_title(f"{sample.key[:28]} v{k} frame {sample.plan.frames[k, t]}", fontsize=7)
                ax.axis("off")
            axes[row, 3].imshow(denormalize(sample.clips[k], cfg)[:, 0].permute(1, 2, 0).numpy())
            axes[row, 3].set_title(f"model input{' (flipped)' if sample.plan.flips[k] else ''}", fontsize=7)
            axes[row, 3].axis("off")
            row += 1
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


WARMUP_BATCHES = 1


def measure_loader(dataset: Path | str, cfg: DataConfig, batches: int) -> dict:
    """Clips/s over up to ``batches`` batches of the first epoch after one warm-up batch (worker start-up is not
    counted); the figures say how many were timed, and why fewer where the epoch holds fewer."""
    loader = make_loader(dataset, cfg, device="cpu" if cfg.backend == "cpu" else None)
    loader.set_epoch(0)
    per_epoch = len(loader)
    it = iter(loader)
    for _ in range(WARMUP_BATCHES):
        next(it)
    started = time.perf_counter()
    clips = n = 0
    for batch in it:
        clips += batch["video"].shape[0]
        n += 1
        if n == batches:
            break
    seconds = time.perf_counter() - started
    figures = {"backend": loader.backend, "batches": n, "batches_timed": n, "batches_asked": batches,
               "warmup_batches": WARMUP_BATCHES, "batches_per_epoch": per_epoch, "clips": clips,
               "seconds": round(seconds, 3), "clips_per_second": round(clips / seconds, 2) if n and seconds else 0.0,
               **{k: v for k, v in loader.stats.as_dict().items() if k in ("failed", "decoded_frames_per_clip")}}
    if n < batches:
        figures["fewer_because"] = (f"the dataset gives {per_epoch} batches an epoch at data.batch_size="
                                    f"{cfg.batch_size}, {WARMUP_BATCHES} of them the warm-up: a smaller "
                                    f"--batch-size times more")
    return figures
