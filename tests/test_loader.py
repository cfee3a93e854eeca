"""The loader: its contract, its sampling, its decoders against a plain decode, ranks, resume, bad samples."""

import json
import shutil
import struct
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.decode import decode_frames, pyav_frames, reference_frames
from vmae.pipeline.data.cpu_loader import CpuLoader
from vmae.pipeline.data.loader import make_loader
from vmae.pipeline.data.sampling import plan_views, sample_rng, temporal_windows
from vmae.pipeline.data.shardset import ShardSet, open_shards
from vmae.shards.format import DatasetError
from vmae.pipeline.data.views import make_views
from vmae.shards.build import build_shards
from vmae.shards.config import ShardConfig
from vmae.shards.tars import ShardWriter, read_member, sample_members

from conftest import make_video

SMALL = dict(frames=8, stride=2, views=2, crop_size=64, batch_size=2, workers=2, shuffle_buffer=4)


@pytest.fixture(autouse=True)
def close_dali_streams():
    """A test's DALI pipelines stopped after it (a stream left open keeps its threads waiting for tickets)."""
    yield
    from vmae.pipeline.data.dali_loader import _OPEN_STREAMS

    for stream in list(_OPEN_STREAMS):
        stream.close()


def small(**kw) -> DataConfig:
    return DataConfig(**{**SMALL, **kw})


def epoch(loader, n=0, samples_seen=0):
    loader.set_epoch(n, samples_seen)
    return list(loader)


# ------------------------------------------------------------------ contract and determinism

@pytest.mark.slow
def test_batches_follow_the_contract(built):
    loader = make_loader(built[0], small())
    assert loader.backend == "cpu" and len(loader) == 5
    batches = epoch(loader)
    assert len(batches) == 5
    keys = [k for b in batches for k in b["key"]]
    assert len(set(keys)) == 10  # every sample once in the epoch
    classes = len(ShardSet(built[0]).classes)
    for b in batches:
        assert b["video"].shape == (4, 3, 8, 64, 64) and b["video"].dtype == torch.float32
        assert b["label"].tolist()[0::2] == b["label"].tolist()[1::2]  # K clips of a video share its label
        assert all(0 <= lab < classes for lab in b["label"].tolist())
        assert -3 < b["video"].mean() < 3 and torch.isfinite(b["video"]).all()
    assert loader.stats.clips == 20 and loader.stats.failed == {}
    # the decoder's work: at least the frames a clip returns (8 at most, views may share some), keyframe runs added
    assert 2 < loader.stats.decoded_frames_per_clip < 8 * 16


@pytest.mark.slow
def test_bfloat16_clips_for_the_gpu(built):
    loader = CpuLoader(built[0], small(dtype="bfloat16", workers=1))
    loader.set_epoch(0)
    first = next(iter(loader))
    reference = epoch(CpuLoader(built[0], small(workers=1)))[0]
    assert first["video"].dtype == torch.bfloat16
    assert (first["video"].float() - reference["video"]).abs().max() < 0.05  # bf16 rounding of values within ±3


@pytest.mark.slow
def test_stream_depends_on_seed_not_on_worker_count(built):
    one = epoch(CpuLoader(built[0], small(workers=1)))
    two = epoch(CpuLoader(built[0], small(workers=2)))
    assert [b["key"] for b in one] == [b["key"] for b in two]
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(one, two, strict=True))
    other = epoch(CpuLoader(built[0], small(seed=7)))
    assert [b["key"] for b in other] != [b["key"] for b in one]


@pytest.mark.slow
def test_workers_write_again_only_the_batch_memory_the_trainer_dropped(built):
    """Batches come in a pool of buffers: one the trainer holds (or a view of it) is never written again, one it
    dropped is, and what comes out equals batches that each have memory of their own."""
    loader = CpuLoader(built[0], small())
    held = epoch(loader, 0)[:3]  # three batches kept, the epoch's other two dropped
    views = [b["video"][:1] for b in held]  # a view outlives its batch dict
    expected = [v.clone() for v in views]
    pool = loader.pool
    pool_at = {pool.tensor((w, n)).data_ptr() for w, n in np.ndindex(pool.busy.shape)}
    held_at = {b["video"].data_ptr() for b in held}
    assert held_at <= pool_at and len(held_at) == 3
    del held
    copies, used_at = [], []
    for n in range(1, 4):
        loader.set_epoch(n)
        for batch in loader:
            used_at.append(batch["video"].data_ptr())
            copies.append(batch["video"].clone())
            del batch
    assert set(used_at) <= pool_at - held_at  # from the pool, never a held buffer
    assert len(used_at) > len(set(used_at))  # dropped buffers came back
    assert all(torch.equal(v, e) for v, e in zip(views, expected, strict=True))
    fresh = CpuLoader(built[0], small())
    reference = [b for n in range(1, 4) for b in epoch(fresh, n)]  # held: each batch in its own memory
    assert len(reference) == len(copies)
    assert all(torch.equal(r["video"], c) for r, c in zip(reference, copies, strict=True))


@pytest.mark.slow
def test_stopping_the_workers_leaves_nothing_in_shared_memory(built):
    """Workers are killed when a stream stops: what they had made or sent must not stay in /dev/shm (torch's named
    shared-memory files outlive a killed process until the trainer's process exits)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm here")
    before = set(shm.glob("torch_*"))
    for _ in range(3):
        loader = CpuLoader(built[0], small())
        loader.set_epoch(0)
        batches = iter(loader)
        next(batches), next(batches)  # the workers are busy ahead of the trainer
        del batches
        loader.close()
    assert set(shm.glob("torch_*")) <= before


@pytest.mark.slow
def test_resume_mid_epoch_continues_the_same_stream(built):
    loader = CpuLoader(built[0], small())
    full = epoch(loader, 1)
    resumed = epoch(loader, 1, samples_seen=4)
    assert [b["key"] for b in resumed] == [b["key"] for b in full[2:]]
    assert torch.equal(resumed[0]["video"], full[2]["video"])
    assert len(epoch(loader, 1)) == 5  # the next pass is a whole epoch again


def shard_table(tmp_path: Path, counts: list[int], ext: str = "mp4", classes=()) -> ShardSet:
    """A dataset of only a manifest (the assignment never opens a shard): shards of the given sample counts."""
    manifest = {"format": "vmae-shards/1", "video_extension": ext, "classes": list(classes), "build": {},
                "shards": [{"name": f"shard-{n:06d}.tar", "samples": c} for n, c in enumerate(counts)]}
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return ShardSet(tmp_path)


UNEQUAL = [37, 5, 64, 64, 12, 90, 1, 40, 33, 58, 7, 64, 29]  # 504 samples in 13 shards


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_ranks_read_disjoint_runs_of_their_own_shards_with_equal_steps(tmp_path, world):
    shardset = shard_table(tmp_path, UNEQUAL)
    chunk = 4  # videos a rank takes per step
    seen_over_epochs = set()
    for epoch in range(12):
        parts = [shardset.rank_part(epoch, 0, 16, rank, world, chunk) for rank in range(world)]
        steps = shardset.steps_per_epoch(world, chunk)
        assert all(len(p) == steps * chunk for p in parts)  # the same steps on every rank: no collective waits
        taken = [r for p in parts for r in p]
        assert len(set(taken)) == len(taken)  # disjoint
        assert len(shardset) - len(taken) < world * (chunk + 1)  # the few left out wait for another epoch's order
        opened = [{r.shard for r in p} for p in parts]
        assert sum(map(len, opened)) <= len(UNEQUAL) + world - 1  # a shard is shared only where a run is cut
        seen_over_epochs |= set(taken)
    assert len(seen_over_epochs) == len(shardset)  # every sample, over epochs
    first = shardset.rank_part(0, 0, 16, 0, world, chunk)
    assert first == shardset.rank_part(0, 0, 16, 0, world, chunk) != shardset.rank_part(1, 0, 16, 0, world, chunk)


def test_fixed_streams_give_every_world_size_the_same_global_steps(tmp_path):
    shardset = shard_table(tmp_path, UNEQUAL)
    global_batch = 16

    def global_steps(world: int) -> list[list]:
        chunk = global_batch // world
        parts = [shardset.rank_part(3, 0, 16, rank, world, chunk, streams=8) for rank in range(world)]
        return [[ref for p in parts for ref in p[t * chunk:(t + 1) * chunk]] for t in range(len(parts[0]) // chunk)]

    reference = global_steps(1)
    assert all(global_steps(world) == reference for world in (2, 4, 8))  # the same videos in the same places
    with pytest.raises(ValueError, match="multiple of the world size 3"):
        shardset.rank_part(0, 0, 16, 0, 3, 4, streams=8)
    with pytest.raises(ValueError, match="global batch a multiple"):
        shardset.rank_part(0, 0, 16, 0, 2, 3, streams=8)


@pytest.mark.parametrize("world", [1, 3])
def test_a_mix_gives_each_dataset_its_weight_every_epoch(tmp_path, world):
    shard_table(tmp_path / "big", [30, 30, 30, 30])
    shard_table(tmp_path / "small", [10, 10])
    mix = open_shards(f"{tmp_path / 'big'}@1,{tmp_path / 'small'}@1", DataConfig())
    assert len(mix) == 140 and mix.targets.tolist() == [70, 70]  # small: 3.5x its 20 videos, big: 70 of 120
    seen_big = set()
    for epoch in range(6):
        parts = [mix.rank_part(epoch, 0, 8, rank, world, 2) for rank in range(world)]
        assert len({len(p) for p in parts}) == 1
        taken = [r for p in parts for r in p]
        from_small = sum(r.shard >= 4 for r in taken)
        assert abs(from_small - 70) <= 140 - len(taken)  # the weight, up to the few left for another epoch
        seen_big |= {r for r in taken if r.shard < 4}
    assert len(seen_big) == 120  # a fresh selection of the big dataset each epoch: all of it over epochs
    by_size = open_shards(f"{tmp_path / 'big'},{tmp_path / 'small'}", DataConfig())
    taken = by_size.rank_part(0, 0, 8, 0, 1, 2)
    assert len(set(taken)) == len(taken) == 140  # without weights: every video once, as one dataset


def test_mixes_that_cannot_work_are_refused(tmp_path):
    shard_table(tmp_path / "a", [4], classes=["run", "walk"])
    shard_table(tmp_path / "b", [4], ext="webm")
    shard_table(tmp_path / "c", [4], classes=["swim", "walk"])
    with pytest.raises(DatasetError, match="one video format"):
        open_shards(f"{tmp_path / 'a'},{tmp_path / 'b'}", DataConfig())
    with pytest.raises(DatasetError, match="to every dataset of the mix, or to none"):
        open_shards(f"{tmp_path / 'a'}@2,{tmp_path / 'c'}", DataConfig())
    with pytest.raises(DatasetError, match="one dataset, not a mix"):
        open_shards(f"{tmp_path / 'a'},{tmp_path / 'c'}", DataConfig(limit=2))
    with pytest.raises(DatasetError, match="different classes"):
        _ = open_shards(f"{tmp_path / 'a'},{tmp_path / 'c'}", DataConfig()).classes


@pytest.mark.slow
def test_the_loader_reads_a_mix_of_datasets(built, tmp_path):
    other = tmp_path / "copy"
    shutil.copytree(built[0], other)
    loader = make_loader(f"{built[0]}@1,{other}@3", small(shuffle_buffer=1), device="cpu")
    batches = epoch(loader)  # an epoch is both datasets' size: 10 + 10 videos, 5 of the first and 15 of the copy
    assert len(batches) == 10 and all(b["video"].shape == (4, 3, 8, 64, 64) for b in batches)
    assert {k for b in batches for k in b["key"]} <= {key for key, _ in sample_members_all(built[0])}


# ------------------------------------------------------------------ backends: one registry, one signature

def test_every_registered_backend_is_a_loader_with_the_one_constructor():
    import inspect

    from vmae.pipeline.data.backends import LOADERS, loader_class
    from vmae.pipeline.data.protocol import Loader, LoaderFactory

    expected = list(inspect.signature(LoaderFactory.__call__).parameters)[1:]
    for name in LOADERS:
        cls = loader_class(name)
        assert cls.backend == name and Loader in cls.__mro__
        assert list(inspect.signature(cls.__init__).parameters)[1:] == expected, name
        for member in ("set_epoch", "close", "__len__", "__iter__"):
            assert getattr(cls, member) is not getattr(Loader, member), f"{name} lacks its own {member}"


def test_config_choices_come_from_the_registries():
    from dataclasses import fields

    from vmae.pipeline.data.backends import AUTO, CPU_DECODERS, LOADERS, cpu_decoder

    choices = {f.name: f.metadata.get("choices") for f in fields(DataConfig)}
    assert tuple(choices["backend"]) == (AUTO, *LOADERS)
    assert tuple(choices["cpu_decoder"]) == tuple(CPU_DECODERS)
    assert all(callable(cpu_decoder(name)) for name in CPU_DECODERS)
    with pytest.raises(ValueError, match="data.backend must be one of auto, dali, cpu"):
        small(backend="opencv")


def test_reading_a_config_imports_no_torch_dali_or_decoder():
    code = ("import sys, vmae.pipeline.data.config; "
            "print([m for m in ('torch', 'nvidia.dali', 'av', 'torchcodec') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------ sampling

def test_sampled_windows_cover_the_whole_video_without_bias():
    cfg = DataConfig()
    rng = np.random.default_rng(0)
    starts = np.concatenate([temporal_windows(300, cfg, rng)[0][:, 0] for _ in range(3000)])
    assert starts.min() == 0 and starts.max() == 300 - cfg.clip_length
    counts, _ = np.histogram(starts, bins=8, range=(0, 300 - cfg.clip_length + 1))
    assert counts.min() > 0.8 * counts.mean()  # flat, no pull to the start


def test_views_of_one_video_differ_and_share_crop_within_a_view():
    plan = plan_views(300, 320, 426, DataConfig(), sample_rng(0, 0, "k"))
    assert plan.frames.shape == (4, 16) and len({tuple(c) for c in plan.crops}) == 4
    assert len(set(plan.frames[:, 0])) > 1
    assert (np.diff(plan.frames, axis=1) == 4).all()
    for y, x, h, w in plan.crops:
        assert 0.5 * 320 * 426 * 0.97 <= h * w <= 320 * 426 and y + h <= 320 and x + w <= 426


def test_same_key_same_draws_different_epoch_different_draws():
    a = plan_views(300, 320, 426, DataConfig(), sample_rng(0, 0, "k"))
    b = plan_views(300, 320, 426, DataConfig(), sample_rng(0, 0, "k"))
    c = plan_views(300, 320, 426, DataConfig(), sample_rng(0, 1, "k"))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.crops, b.crops)
    assert not np.array_equal(a.frames, c.frames)


def test_span_draws_every_view_from_one_window_and_decodes_less():
    wide, narrow = DataConfig(), DataConfig(span=1.5)
    rng = np.random.default_rng(1)
    union_wide = np.mean([len(np.unique(temporal_windows(300, wide, rng)[0])) for _ in range(200)])
    for _ in range(200):
        frames = temporal_windows(300, narrow, rng)[0]
        assert frames.max() - frames.min() < 1.5 * narrow.clip_length
    union_narrow = np.mean([len(np.unique(temporal_windows(300, narrow, rng)[0])) for _ in range(200)])
    assert union_narrow < 0.8 * union_wide
    frames = temporal_windows(300, DataConfig(span=1), np.random.default_rng(3))[0]
    assert (frames == frames[0]).all()  # span 1: every view has the same frames


def test_views_match_a_plain_float_crop_resize_normalize():
    cfg = DataConfig(views=3, frames=4, stride=2, crop_size=32)
    plan = plan_views(20, 48, 64, cfg, sample_rng(0, 0, "k"))
    unique, inverse = plan.union()
    frames = torch.randint(0, 256, (len(unique), 48, 64, 3), dtype=torch.uint8)
    got = make_views(frames, plan, inverse, cfg)
    assert got.shape == (3, 3, 4, 32, 32)
    for k in range(3):
        y, x, h, w = plan.crops[k]
        clip = frames[torch.from_numpy(inverse[k])].permute(0, 3, 1, 2).float()[:, :, y:y + h, x:x + w]
        clip = torch.nn.functional.interpolate(clip, size=(32, 32), mode="bilinear", align_corners=False)
        clip = clip.flip(-1) if plan.flips[k] else clip
        want = (clip / 255 - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
        assert (got[k].permute(1, 0, 2, 3) - want).abs().max() < 0.03  # uint8 resize: within a grey level
    assert plan.flips.any() and not plan.flips.all()  # both branches were checked


def test_short_video_repeats_its_last_frame():
    """20 frames, a clip of 16 x 4: the run from frame 0, stride 4, holds 0 … 16; past it every view repeats 16,
    the last frame a GPU decoder's strided request returns (never an index twice in the request)."""
    frames, padded = temporal_windows(20, DataConfig(), np.random.default_rng(0))
    assert padded and (frames[:, :5] == [0, 4, 8, 12, 16]).all() and (frames[:, 5:] == 16).all()


# ------------------------------------------------------------------ decoders against a plain decode

@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["torchcodec", "pyav"])
def test_cpu_decoders_give_the_frames_of_a_plain_decode(built, decoder):
    dataset = built[0]
    rng = np.random.default_rng(0)
    for entry in json.loads((dataset / "manifest.json").read_text())["shards"][:2]:
        tar = dataset / entry["name"]
        for _, members in sample_members(tar)[:2]:
            video = read_member(tar, *next((o, s) for e, o, s in members if e == "mp4"))
            reference = reference_frames(video)
            wanted = np.unique(rng.choice(len(reference), size=12, replace=False))
            got = np.stack(decode_frames(video, wanted, decoder))
            assert np.abs(got.astype(int) - reference[wanted].astype(int)).mean() <= 4


def test_without_torchcodec_pyav_decodes_and_says_so(real_videos, monkeypatch, caplog):
    """A machine without torchcodec (or without the FFmpeg libraries it loads) decodes with PyAV, not a
    decode error per sample."""
    from vmae.pipeline.data import decode

    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # import fails as if not installed
    decode.torchcodec_problem.cache_clear()
    try:
        video = real_videos[0].read_bytes()
        got = np.stack(decode_frames(video, np.array([0, 3, 9]), "torchcodec"))
        assert got.shape[0] == 3 and np.abs(got.astype(int) - reference_frames(video)[[0, 3, 9]]).mean() <= 4
        assert "PyAV decodes instead" in caplog.text
    finally:
        decode.torchcodec_problem.cache_clear()


# ------------------------------------------------------------------ bad samples

@pytest.fixture(scope="module")
def bad_dataset(built, tmp_path_factory):
    """Shard 0 holds: one with its video bytes scrambled, one without .frames, one whose frame count
    lies (10000), and one 30-frame video (shorter than a clip); shard 1 is deleted after the build."""
    src = built[0]
    out = tmp_path_factory.mktemp("bad") / "ds"
    shutil.copytree(src, out)
    tar = out / "shard-000000.tar"
    samples = [(k, {e: read_member(tar, o, s) for e, o, s in m}) for k, m in sample_members(tar)]
    short_src = tmp_path_factory.mktemp("short") / "in" / "c"
    make_video(short_src / "short.mp4", 1.0)
    short_ds = tmp_path_factory.mktemp("short_ds") / "ds"
    build_shards(short_src.parent, short_ds, ShardConfig(min_frames=16), progress=False)
    short = [(k, {e: read_member(short_ds / "shard-000000.tar", o, s) for e, o, s in m})
             for k, m in sample_members(short_ds / "shard-000000.tar")][0]
    scrambled = bytearray(samples[1][1]["mp4"])
    for i in range(200, len(scrambled), 5):
        scrambled[i] ^= 0x5A
    samples[1][1]["mp4"] = bytes(scrambled)
    del samples[2][1]["frames"]
    samples[3][1]["frames"] = struct.pack("<i", 10000)
    short[1]["label"] = struct.pack("<i", 0)
    writer = ShardWriter(tar)
    for key, members in samples[1:] + [short]:  # the short one takes the first good one's place: 10 in all
        writer.write(key, members)
    entry = writer.seal()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][0].update(entry)
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "shard-000001.tar").unlink()
    return out


@pytest.mark.slow
def test_cpu_path_counts_and_replaces_bad_samples(bad_dataset):
    loader = CpuLoader(bad_dataset, small(frames=16))  # a clip spans 31 frames: the 30-frame video is short
    batches = epoch(loader)
    assert len(batches) == 5
    assert all(b["video"].shape == (4, 3, 16, 64, 64) for b in batches)
    failed = loader.stats.failed
    assert failed["missing_member"] == 1 and failed["unreadable_shard"] == 4
    assert failed["decode_error"] >= 2  # the scrambled video and the one whose frame count lies
    assert loader.stats.padded == 1  # the short video, its last frame repeated
    assert sum(failed.values()) + loader.stats.videos == 10


@pytest.fixture(scope="module")
def vp9_dataset(video_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("vp9") / "ds"
    src = tmp_path_factory.mktemp("vp9in") / "in"
    shutil.copytree(video_folder / "drift_east", src / "drift_east")
    shutil.copytree(video_folder / "real", src / "real")
    build_shards(src, out, ShardConfig(codec="vp9", short_side=128, samples_per_shard=4), progress=False)
    return out


def sample_members_all(dataset: Path) -> list:
    return [s for tar in sorted(dataset.glob("*.tar")) for s in sample_members(tar)]


@pytest.mark.slow
def test_dali_graph_on_cpu_follows_the_contract(vp9_dataset):
    pytest.importorskip("nvidia.dali")
    loader = make_loader(vp9_dataset, small(backend="dali"), device="cpu")
    assert loader.backend == "dali" and len(loader) == 3
    for _ in range(2):
        batches = epoch(loader)
        assert len(batches) == 3
        keys = {k for b in batches for k in b["key"]}
        assert len(keys) == 6 and keys <= {key for key, _ in sample_members_all(vp9_dataset)}
        for b in batches:
            assert b["video"].shape == (4, 3, 8, 64, 64) and torch.isfinite(b["video"]).all()
            assert b["label"].tolist()[0::2] == b["label"].tolist()[1::2]


@pytest.mark.slow
def test_dali_ranks_take_disjoint_samples_in_the_cpu_paths_order(vp9_dataset):
    """Each rank's DALI stream is its CPU stream: the same samples of the same epoch, in the same order, and the
    two ranks' samples are disjoint."""
    pytest.importorskip("nvidia.dali")
    cfg = small(shuffle_buffer=2, batch_size=1)
    for n in range(2):
        keys = {}
        for backend in ("dali", "cpu"):
            for rank in (0, 1):
                loader = make_loader(vp9_dataset, replace(cfg, backend=backend), rank, 2, device="cpu")
                keys[backend, rank] = [k for b in epoch(loader, n) for k in b["key"]]
                loader.close()
        assert keys["dali", 0] == keys["cpu", 0] and keys["dali", 1] == keys["cpu", 1]
        assert len(keys["dali", 0]) == ShardSet(vp9_dataset).steps_per_epoch(2, 1)
        assert not set(keys["dali", 0]) & set(keys["dali", 1])


@pytest.mark.slow
def test_dali_reads_a_remote_dataset_as_the_local_folder(vp9_dataset, tmp_path):
    """A dataset on HTTP: the pipelines read staged shards and give the local folder's batches."""
    pytest.importorskip("nvidia.dali")
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    quiet = type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(quiet, directory=str(vp9_dataset)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        cfg = small(backend="dali", batch_size=1, cache_dir=str(tmp_path / "cache"))
        remote = epoch(make_loader(url, cfg, 0, 2, device="cpu"), 1)
        local = epoch(make_loader(vp9_dataset, cfg, 0, 2, device="cpu"), 1)
        assert [b["key"] for b in remote] == [b["key"] for b in local]
        assert all(torch.equal(r["video"], lo["video"]) for r, lo in zip(remote, local))
    finally:
        httpd.shutdown()


def dali_decode_vs_reference(tar: Path, ext: str, device: str, wanted: list[int]) -> float:
    """Mean |difference| (of 255) between DALI's decode of the shard's first video and a plain PyAV decode."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=1, num_threads=1, device_id=0 if device == "mixed" else None)
    def pipe():
        video = fn.readers.webdataset(paths=[str(tar)], index_paths=[str(tar.with_suffix(".idx"))], ext=[ext])
        return fn.decoders.video(video, device=device, frames=wanted), video

    p = pipe()
    p.build()
    frames, video = p.run()
    reference = reference_frames(np.array(video[0]).tobytes())[wanted]
    got = np.array(frames.as_cpu()[0] if device == "mixed" else frames[0])
    assert got.shape == reference.shape
    return float(np.abs(got.astype(int) - reference.astype(int)).mean())


@pytest.mark.slow
def test_dali_cpu_decoder_gives_the_frames_of_a_plain_decode(vp9_dataset):
    pytest.importorskip("nvidia.dali")
    assert dali_decode_vs_reference(vp9_dataset / "shard-000000.tar", "webm", "cpu", [0, 5, 17, 40]) <= 4


def damaged_copy(dataset: Path, out: Path, ext: str, damage) -> str:
    """A copy of ``dataset`` whose first sample's ``ext`` member is changed in place by ``damage(bytes, offset,
    size)``; that sample's key."""
    shutil.copytree(dataset, out)
    tar = out / "shard-000000.tar"
    key, members = sample_members(tar)[0]
    offset, size = next((o, s) for e, o, s in members if e == ext)
    data = bytearray(tar.read_bytes())
    damage(data, offset, size)
    tar.write_bytes(bytes(data))
    return key


def scramble(data: bytearray, offset: int, size: int) -> None:
    for i in range(offset + 100, offset + size - 4, 3):
        data[i] ^= 0xAA


@pytest.mark.slow
def test_dali_path_leaves_out_an_undecodable_sample(vp9_dataset, tmp_path):
    pytest.importorskip("nvidia.dali")
    out = tmp_path / "ds"
    damaged_copy(vp9_dataset, out, "webm", scramble)
    loader = make_loader(out, small(backend="dali", shuffle_buffer=1), device="cpu")
    for _ in range(2):
        batches = epoch(loader)
        assert len(batches) == 3 and all(b["video"].shape == (4, 3, 8, 64, 64) for b in batches)
    assert loader.stats.failed == {"decode_error": 1}


@pytest.mark.slow
def test_dali_path_leaves_out_a_sample_whose_frame_count_lies(vp9_dataset, tmp_path):
    """DALI decodes black frames without a word for indices past the stream's end: the loader finds them."""
    pytest.importorskip("nvidia.dali")
    out = tmp_path / "ds"
    key = damaged_copy(vp9_dataset, out, "frames", lambda data, offset, _: data.__setitem__(
        slice(offset, offset + 4), struct.pack("<i", 10_000)))
    loader = make_loader(out, small(backend="dali", shuffle_buffer=1), device="cpu")
    for _ in range(2):
        batches = epoch(loader)
        assert len(batches) == 3 and all(b["video"].shape == (4, 3, 8, 64, 64) for b in batches)
        assert key not in {k for b in batches for k in b["key"]}
        assert all((b["video"].flatten(2).std(dim=2) > 0.05).all() for b in batches)  # no black frame
    assert loader.stats.failed == {"frame_count": 1}


@pytest.mark.slow
def test_a_hung_dali_pipeline_is_abandoned_and_a_fresh_one_makes_its_batches(vp9_dataset, monkeypatch,
                                                                             give_up_after):
    pytest.importorskip("nvidia.dali")
    from vmae.pipeline.data.dali_loader import DaliLoader, DaliWorker

    give_up_after(240)
    cfg = small(backend="dali", decode_deadline=1.0, workers=2, pipelines=2)
    reference = make_loader(vp9_dataset, replace(cfg, pipelines=1), device="cpu")
    clean = epoch(reference)
    reference.close()
    real, calls = DaliWorker._outputs, []

    def first_one_hangs(self, pipe):
        calls.append(self)
        if calls[0] is self:
            self._feed()  # it takes a batch, and its decoder gets stuck in native code
            threading.Event().wait()
        return real(self, pipe)

    monkeypatch.setattr(DaliWorker, "_outputs", first_one_hangs)
    loader = make_loader(vp9_dataset, cfg, device="cpu")
    assert loader.batch_deadline == 2.0  # 2 videos a batch on 1 decode thread per pipeline: 2 x 1 s
    started = time.perf_counter()
    batches = epoch(loader)
    assert [b["key"] for b in batches] == [b["key"] for b in clean]  # its batches made by the others, in order
    assert all(torch.equal(b["video"], c["video"]) for b, c in zip(batches, clean))
    assert loader.stats.failed == {"decode_timeout": 1} and len(loader.abandoned) == 1
    assert time.perf_counter() - started < 60

    loader.close()  # its pipelines may have made the next epoch already: fresh ones, which all hang
    monkeypatch.setattr(DaliWorker, "_outputs", lambda self, pipe: (self._feed(), threading.Event().wait()))
    monkeypatch.setattr(DaliLoader, "max_hangs", 1)
    with pytest.raises(RuntimeError, match="hung 2 times.*data.backend=cpu"):
        epoch(loader, 1)


@pytest.mark.gpu
def test_gpu_decode_matches_a_plain_decode(built):
    """NVDEC through DALI's mixed decoder gives the frames of a PyAV decode (colour conversion aside)."""
    assert dali_decode_vs_reference(built[0] / "shard-000000.tar", "mp4", "mixed", [0, 5, 17, 40]) <= 4


@pytest.mark.gpu
def test_gpu_loader_follows_the_contract(built):
    loader = make_loader(built[0], small(backend="dali"))
    batches = epoch(loader)
    assert batches[0]["video"].is_cuda and batches[0]["video"].shape == (4, 3, 8, 64, 64)


@pytest.mark.slow
def test_loader_check_writes_a_contact_sheet(built, tmp_path):
    sheet = tmp_path / "sheet.png"
    proc = subprocess.run([sys.executable, "-m", "vmae.tools.cli", "loader-check", str(built[0]), "--sheet", str(sheet),
                           "--batches", "2", "--batch-size", "2", "--views", "2", "--frames", "8",
                           "--crop-size", "64"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sheet.stat().st_size > 10_000
    assert "clips/s" in proc.stdout


def loader_check(*args: str) -> subprocess.CompletedProcess:
    """`vmae loader-check` as a user runs it, on a small clip spec."""
    return subprocess.run([sys.executable, "-m", "vmae.tools.cli", "loader-check", *args, "--views", "2",
                           "--frames", "4", "--crop-size", "32"], capture_output=True, text=True)


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("two")
    for label in ("a", "b"):
        make_video(folder / "videos" / label / f"{label}.mp4", 2.5, "160x120")
    build_shards(folder / "videos", folder / "ds", ShardConfig(workers=1), progress=False)
    return folder / "ds"


@pytest.mark.slow
def test_loader_check_writes_the_sheet_into_a_folder_given_as_sheet_and_logs_that_path(two_videos, tmp_path):
    folder = tmp_path / "sheets"
    folder.mkdir()
    proc = loader_check(str(two_videos), "--sheet", str(folder), "--batches", "1", "--batch-size", "1")
    assert proc.returncode == 0, proc.stderr
    written = folder / "loader_check.png"
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"contact sheet: {written}" in proc.stderr
    assert not (tmp_path / "sheets.png").exists()
    bare = tmp_path / "views"  # no suffix: the PNG's own is added, and the log names the file written
    proc = loader_check(str(two_videos), "--sheet", str(bare), "--batches", "1", "--batch-size", "1")
    assert proc.returncode == 0, proc.stderr
    assert f"contact sheet: {bare}.png" in proc.stderr and Path(f"{bare}.png").exists()


@pytest.mark.slow
def test_loader_check_says_how_many_batches_it_timed_and_why_fewer_than_asked(two_videos, tmp_path):
    proc = loader_check(str(two_videos), "--sheet", str(tmp_path / "s.png"), "--batches", "5", "--batch-size", "1")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.splitlines()[0])
    assert figures["batches_timed"] == 1 and figures["batches_asked"] == 5 and figures["batches_per_epoch"] == 2
    assert figures["warmup_batches"] == 1 and "2 batches an epoch" in figures["fewer_because"]
    line = proc.stdout.splitlines()[1]
    assert "timed 1 of 5 batches asked" in line and "2 batches an epoch" in line

@pytest.fixture(scope="module")
def pframe_dataset(video_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("pframe") / "ds"
    build_shards(video_folder, out, ShardConfig(pframe_interval=4, samples_per_shard=4), progress=False)
    return out


@pytest.mark.slow
def test_pframe_interval_shards_let_the_decoder_skip_every_b_frame(pframe_dataset):
    import av

    shardset = ShardSet(pframe_dataset)
    assert shardset.frame_alignment(4) == 4 and shardset.frame_alignment(6) == 1
    tar = shardset.shards[0]
    key, members = sample_members(tar)[0]
    video = read_member(tar, *next((o, s) for e, o, s in members if e == "mp4"))
    with av.open(__import__("io").BytesIO(video)) as c:
        types = [av.video.frame.PictureType(f.pict_type).name for f in c.decode(video=0)]
    assert all(t in ("I", "P") for t in types[0:-4:4]) and all(t == "B" for t in types[1:-4:4])
    reference = reference_frames(video)
    wanted = np.arange(0, len(reference) - 4, 4)[::3]
    produced: list[int] = []
    got = np.stack(pyav_frames(video, wanted, decoded=produced))
    assert np.array_equal(got, reference[wanted])  # skipping B-frames changes no reference frame
    assert not any(types[i] == "B" for i in produced)  # and not one was decoded


@pytest.mark.slow
def test_pyav_skips_the_unreferenced_frames_no_view_needs_on_default_shards(built):
    """Default shards keep the x264 preset's B-frames (most unreferenced, some wanted): the decoder works through
    the reference frames and the wanted ones only, and the wanted frames are exactly a plain decode's."""
    import av

    tar = built[0] / json.loads((built[0] / "manifest.json").read_text())["shards"][0]["name"]
    _, members = sample_members(tar)[0]
    video = read_member(tar, *next((o, s) for e, o, s in members if e == "mp4"))
    reference = reference_frames(video)
    with av.open(__import__("io").BytesIO(video)) as c:
        c.streams.video[0].codec_context.skip_frame = "NONREF"
        tb, rate = c.streams.video[0].time_base, c.streams.video[0].average_rate
        references = {round(float(f.pts * tb * rate)) for f in c.decode(video=0)}
    assert 0 < len(references) < len(reference)  # the encoding has frames to skip
    wanted = np.arange(3, len(reference) - 8, 4)  # every 4th frame, B-frames among them
    produced: list[int] = []
    got = np.stack(pyav_frames(video, wanted, decoded=produced))
    assert np.array_equal(got, reference[wanted])
    assert set(wanted) <= set(produced) <= set(wanted) | references
    assert len(produced) < wanted[-1] - wanted[0]  # fewer than decoding every frame between the first and last


@pytest.mark.slow
def test_loader_samples_on_p_frames_of_such_shards(pframe_dataset):
    loader = CpuLoader(pframe_dataset, small(stride=4, frames=4))
    batches = epoch(loader)
    assert len(batches) == 5 and loader.stats.failed == {}
    plan = plan_views(75, 320, 426, small(stride=4, frames=4), sample_rng(0, 0, "k"), align=4)
    assert (plan.frames % 4 == 0).all()
    frames, padded = temporal_windows(10, small(stride=4, frames=4), np.random.default_rng(0), align=4)
    assert padded and frames.max() == 8  # a short video repeats its last aligned frame


@pytest.mark.slow
def test_a_sample_with_incomplete_metadata_is_a_counted_bad_sample(built, tmp_path):
    from vmae.pipeline.data.sample_reader import BadSample, SampleReader
    from vmae.pipeline.data.shardset import SampleRef

    out = tmp_path / "ds"
    shutil.copytree(built[0], out)
    tar = out / "shard-000002.tar"
    samples = [(k, {e: read_member(tar, o, s) for e, o, s in m}) for k, m in sample_members(tar)]
    samples[0][1]["json"] = b'{"label": 0}'  # no width or height
    writer = ShardWriter(tar)
    for key, members in samples:
        writer.write(key, members)
    writer.seal()
    reader = SampleReader(ShardSet(out), small(), epoch=0)
    with pytest.raises(BadSample) as err:
        reader.load(SampleRef(2, 0))
    assert err.value.reason == "bad_metadata" and "height" in str(err.value)
    assert reader.load(SampleRef(2, 1)).clips.shape == (2, 3, 8, 64, 64)


def test_default_workers_share_the_cores_among_the_ranks_of_a_machine(monkeypatch):
    import os

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert DataConfig().worker_count == 64 and DataConfig(workers=3).worker_count == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert DataConfig().worker_count == 8
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "16(x4)")
    assert DataConfig().worker_count == 4


def test_evaluation_views_are_temporal_windows_times_spatial_crops():
    from vmae.pipeline.data.sampling import plan_views

    cfg = DataConfig(views=6, test_crops=3, augment=False, frames=4, stride=2)
    plan = plan_views(100, 240, 320, cfg, np.random.default_rng(0))
    assert [tuple(c) for c in plan.crops] == [(0, 0, 240, 240), (0, 40, 240, 240), (0, 80, 240, 240)] * 2
    assert (plan.frames[0] == plan.frames[2]).all() and (plan.frames[3] == plan.frames[5]).all()
    # the two windows span the run from frame 0, stride 2, to its last frame inside the video, 98
    assert plan.frames[0, 0] == 0 and plan.frames[3, -1] == 98
    portrait = plan_views(100, 320, 240, cfg, np.random.default_rng(0))
    assert [tuple(c)[:2] for c in portrait.crops[:3]] == [(0, 0), (40, 0), (80, 0)]
    with pytest.raises(ValueError, match="multiple of data.test_crops"):
        DataConfig(views=4, test_crops=3)


# ------------------------------------------------------------------ decoding that cannot hang a run

def never_returns() -> None:
    """A stand-in for decord's spin on a lying container: C code (catastrophic regex backtracking) holding the
    GIL, for longer than any test runs."""
    import re

    re.match(r"(a|aa)+$", "a" * 80 + "b")


@pytest.fixture
def give_up_after(request):
    """Fail the test, instead of hanging CI, if it runs past the given seconds."""
    import signal

    def alarm(seconds: int):
        def fail(*_):
            raise TimeoutError(f"{request.node.name} still running after {seconds} s: the loader hung")
        signal.signal(signal.SIGALRM, fail)
        signal.alarm(seconds)
    yield alarm
    signal.alarm(0)


@pytest.mark.slow
def test_a_decode_that_never_returns_is_abandoned_and_its_worker_replaced(built, monkeypatch, tmp_path,
                                                                          give_up_after):
    from vmae.pipeline.data import sample_reader
    from vmae.pipeline.data.shardset import SampleRef

    shardset = ShardSet(built[0])
    stuck_key, members = shardset.members(SampleRef(1, 2))
    offset, size = members[shardset.video_ext]
    with open(shardset.shards[1], "rb") as fh:
        fh.seek(offset)
        stuck_video = fh.read(size)
    decode = sample_reader.decode_frames
    pid_file = tmp_path / "stuck_pid"

    def decode_or_hang(video, indices, *args, **kwargs):
        if video == stuck_video:
            pid_file.write_text(str(__import__("os").getpid()))
            never_returns()
        return decode(video, indices, *args, **kwargs)

    monkeypatch.setattr(sample_reader, "decode_frames", decode_or_hang)  # the forked workers inherit it
    give_up_after(300)
    loader = CpuLoader(built[0], small(decode_deadline=10.0))
    batches = epoch(loader)
    assert len(batches) == loader.per_epoch and all(b["video"].shape == (4, 3, 8, 64, 64) for b in batches)
    assert dict(loader.stats.failed) == {"decode_timeout": 1}
    assert list(loader.abandoned.values()) == [stuck_key]
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == len(set(keys)) == loader.per_epoch * 2  # every other sample once: nothing lost or doubled
    stuck_pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # the stuck worker is gone, not left spinning
        __import__("os").kill(stuck_pid, 0)
    # the next epoch replaces it at once, without another wait or restart
    epoch(loader, 1)
    assert loader.stats.failed["decode_timeout"] == 2 and len(loader.abandoned) == 1


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["torchcodec", "pyav"])
def test_a_container_that_overstates_its_length_is_a_counted_decode_error(built, tmp_path, decoder, give_up_after):
    """Cut the media data of a faststart mp4: its index still lists every frame, the bytes stop a third in."""
    out = tmp_path / "ds"
    shutil.copytree(built[0], out)
    tar = out / "shard-000000.tar"
    samples = [(k, {e: read_member(tar, o, s) for e, o, s in m}) for k, m in sample_members(tar)]
    whole = samples[0][1]["mp4"]
    assert whole.find(b"moov") < whole.find(b"mdat")  # the index comes first, so it survives the cut
    samples[0][1]["mp4"] = whole[: len(whole) // 3]
    frames = struct.unpack("<i", samples[0][1]["frames"])[0]
    with pytest.raises(Exception) as err:
        decode_frames(samples[0][1]["mp4"], np.array([0, frames - 1]), decoder)
    assert type(err.value).__name__ == "DecodeError"
    writer = ShardWriter(tar)
    for key, members in samples:
        writer.write(key, members)
    entry = writer.seal()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][0].update(entry)
    (out / "manifest.json").write_text(json.dumps(manifest))
    give_up_after(240)
    loader = CpuLoader(out, small(cpu_decoder=decoder, augment=False, decode_deadline=30.0))
    batches = epoch(loader)  # evaluation windows: the last one lies in the part that is gone
    assert dict(loader.stats.failed) == {"decode_error": 1} and not loader.abandoned
    assert all(b["video"].shape == (4, 3, 8, 64, 64) for b in batches)


# ------------------------------------------------------------------ segment sampling (short clips)

def test_segment_sampling_takes_one_frame_per_segment_and_its_evaluation_windows_differ():
    """Something-Something V2 clips are ~2-6 s: dense evaluation windows coincide (as PySlowFast's users found);
    segment sampling's do not."""
    n = 40  # frames in the video: shorter than one dense clip of 16 x 4
    dense = DataConfig(augment=False, views=6, test_crops=3)
    windows = temporal_windows(n, dense, np.random.default_rng(0))[0]
    assert len({tuple(w) for w in windows}) == 1  # what the issue reported
    segment = DataConfig(augment=False, views=6, test_crops=3, sampling="segment", frames=8)
    frames = temporal_windows(n, segment, np.random.default_rng(0))[0]
    assert frames.shape == (6, 8) and len({tuple(w) for w in frames}) == 2  # 2 windows, each repeated for 3 crops
    segments = np.arange(8) * n / 8
    assert ((frames >= np.floor(segments)) & (frames < np.floor(segments + n / 8))).all()
    train = DataConfig(sampling="segment", frames=8, views=4)
    rng = np.random.default_rng(1)
    drawn = np.stack([temporal_windows(n, train, rng)[0] for _ in range(500)])  # [draws, K, T]
    for i in range(8):  # each frame slot stays in its segment and covers all of it
        assert set(drawn[:, :, i].ravel()) == set(range(i * 5, i * 5 + 5))
    short, padded = temporal_windows(5, train, rng)
    assert padded and short.max() <= 4 and (np.diff(short, axis=1) >= 0).all()


@pytest.mark.parametrize("span", [0, 2])
def test_the_graph_is_asked_for_one_run_per_video_that_holds_its_views(span):
    """What the DALI graph is fed for a video is one strictly increasing run (start, stride, length), the CPU
    plan's window, and each view's offset in it: the run's frames at those offsets are the plan's frames."""
    from vmae.pipeline.data.dali_graph import graph_inputs
    from vmae.pipeline.data.sampling import plan_views

    for cfg in (DataConfig(augment=False, views=4, span=span), DataConfig(span=span)):
        for n in (300, 301, 64, 40, 7, 75):
            plan = plan_views(n, 128, 170, cfg, np.random.default_rng(n), align=2 if cfg.augment else 1)
            inputs = graph_inputs([b"\0" * 8], [plan], cfg)
            start, steps = int(inputs[1][0]), int(inputs[2][0])
            assert (start, steps) == (plan.window.start, plan.window.steps)
            assert start + (steps - 1) * cfg.stride <= n - 1
            for k in range(cfg.views):
                offset, crop_start, crop_end, mirror = (c[0] for c in inputs[3 + 4 * k:7 + 4 * k])
                run = start + cfg.stride * np.minimum(int(offset[0]) + np.arange(cfg.frames), steps - 1)
                assert np.array_equal(run, plan.frames[k]), (n, k)
                y, x, h, w = plan.crops[k]
                assert crop_start.tolist() == [y, x] and crop_end.tolist() == [y + h, x + w]
                assert int(mirror) == int(plan.flips[k])


@pytest.mark.slow
@pytest.mark.parametrize("frames, stride, sampling", [(8, 2, "dense"), (16, 5, "dense"), (8, 1, "segment")])
def test_the_dali_graph_gives_the_cpu_paths_frames_for_the_same_plan(vp9_dataset, frames, stride, sampling):
    """Evaluation views (no draws) of every video through DALI's CPU decoder and through the CPU path, crop = the
    short side so that nothing is resized: the same frames, each closest to its own counterpart. (16 x 5: the
    75-frame videos are short.)"""
    pytest.importorskip("nvidia.dali")
    cfg = small(augment=False, frames=frames, stride=stride, crop_size=128, batch_size=1, shuffle_buffer=1,
                sampling=sampling)
    clips, padded = {}, {}
    for backend in ("dali", "cpu"):
        loader = make_loader(vp9_dataset, replace(cfg, backend=backend), device="cpu")
        clips[backend] = {b["key"][0]: b["video"] for b in epoch(loader)}
        padded[backend] = loader.stats.padded
    assert clips["dali"].keys() == clips["cpu"].keys() and len(clips["cpu"]) == len(ShardSet(vp9_dataset))
    std = torch.tensor(cfg.std).view(1, 3, 1, 1, 1) * 255
    for key, dali in clips["dali"].items():
        cpu = clips["cpu"][key]
        grey = ((dali - cpu) * std).abs().mean(dim=(1, 3, 4))  # [K, T] mean |difference| per frame, of 255
        assert grey.max() < 4, (key, grey)
        shifted = ((dali[:, :, 1:] - cpu[:, :, :-1]) * std).abs().mean(dim=(1, 3, 4))
        moving = shifted > 2  # where neighbouring frames differ, each frame matches its own counterpart best
        assert (grey[:, 1:][moving] <= shifted[moving]).all(), key
    short = ShardSet(vp9_dataset).manifest["class_counts"]["drift_east"]  # the synthetic videos: 75 frames
    assert padded["dali"] == padded["cpu"] == (short if sampling == "dense" and frames * stride > 75 else 0)


@pytest.mark.slow
def test_pipelines_and_the_hybrid_loader_give_the_cpu_paths_stream(vp9_dataset):
    """Training views (random windows, crops, flips): one DALI pipeline, two, and the hybrid of DALI pipelines and
    CPU workers give the same batches, bit for bit, whoever made each; against the CPU path the same samples in
    the same order and the same crops (interpolation and colour conversion aside)."""
    pytest.importorskip("nvidia.dali")
    cfg = small(batch_size=1, shuffle_buffer=2)
    runs, made_by = {}, {}
    for name, backend, pipelines in (("cpu", "cpu", 0), ("dali1", "dali", 1), ("dali2", "dali", 2),
                                     ("hybrid", "hybrid", 1)):
        loader = make_loader(vp9_dataset, replace(cfg, backend=backend, pipelines=pipelines), device="cpu")
        runs[name] = epoch(loader, 0) + epoch(loader, 1)
        made_by[name] = dict(loader.stats.made_by)
        loader.close()
    keys = [b["key"] for b in runs["cpu"]]
    assert len(keys) == 2 * len(ShardSet(vp9_dataset))
    for name in ("dali1", "dali2", "hybrid"):
        assert [b["key"] for b in runs[name]] == keys, name
    for a, b, c in zip(runs["dali1"], runs["dali2"], runs["hybrid"]):
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["label"], b["label"])
        assert ((a["video"] - c["video"]).abs() * 0.225 * 255).mean() < 4  # a CPU-made batch differs this little
    std = 0.225 * 255
    for a, c in zip(runs["dali1"], runs["cpu"]):
        assert ((a["video"] - c["video"]).abs() * std).mean(dim=(1, 3, 4)).max() < 4
    assert set(made_by["dali2"]) == {"dali0", "dali1"} and set(made_by["hybrid"]) == {"dali0", "cpu"}


def test_a_resumed_dali_stream_goes_on_with_the_same_batches(vp9_dataset):
    pytest.importorskip("nvidia.dali")
    cfg = small(backend="dali", batch_size=1, shuffle_buffer=2)
    whole = epoch(make_loader(vp9_dataset, cfg, device="cpu"))
    resumed = epoch(make_loader(vp9_dataset, cfg, device="cpu"), 0, samples_seen=3)
    assert [b["key"] for b in resumed] == [b["key"] for b in whole[3:]]
    assert all(torch.equal(r["video"], w["video"]) for r, w in zip(resumed, whole[3:]))


def test_stopping_workers_does_not_wait_on_a_lock_a_killed_worker_held(built, give_up_after):
    """A worker SIGKILLed inside ``Event.is_set()`` leaves the Event's lock held; torch's own shutdown then waits on
    it forever (a CI hang). The parent holding that lock stands in for such a worker here."""
    loader = CpuLoader(built[0], small(), device="cpu")
    loader.set_epoch(0)
    batches = iter(loader)
    next(batches)  # workers running, the iterator mid-epoch
    iterator = loader._stream[0]
    workers = list(iterator._workers)
    lock = iterator._workers_done_event._cond
    lock.acquire()
    try:
        give_up_after(30)
        loader.close()
    finally:
        lock.release()
    assert not any(w.is_alive() for w in workers)


def test_a_codec_the_decoder_cannot_read_is_refused_at_start(built):
    """Before any pipeline is built: H.264 shards for DALI's CPU decoder, MJPEG shards for NVDEC."""
    from types import SimpleNamespace

    from vmae.pipeline.data.dali_loader import refuse_undecodable

    with pytest.raises(ValueError, match="DALI's CPU decoder cannot decode h264 shards.*data.backend=cpu"):
        make_loader(built[0], small(backend="dali"), device="cpu")
    mjpeg = SimpleNamespace(dataset=Path("frames"), manifest={"build": {"codec": "mjpeg"}})
    with pytest.raises(ValueError, match="NVDEC cannot decode mjpeg shards.*--codec h264"):
        refuse_undecodable(mjpeg, "mixed")
    refuse_undecodable(SimpleNamespace(dataset=Path("k400"), manifest={"build": {"codec": "hevc"}}), "mixed")


def test_uint8_clips_normalized_where_they_land_give_the_float_batches(built):
    """For a GPU the workers send uint8 clips (a quarter of the bytes) from a pool and the trainer's process
    normalizes them on the device: the same batches as the float path, bit for bit in float32; run here on the
    CPU, the same code but the device string."""
    cfg = small(batch_size=2)
    plain = epoch(CpuLoader(built[0], cfg, device="cpu"))
    loader = CpuLoader(built[0], cfg, device="cpu")
    loader.uint8_clips = True
    batches = epoch(loader)
    assert loader.pool.dtype == torch.uint8  # the workers wrote uint8 into the pool
    assert [b["key"] for b in batches] == [b["key"] for b in plain]
    assert all(torch.equal(b["video"], p["video"]) and b["video"].dtype == torch.float32
               for b, p in zip(batches, plain))
    half = CpuLoader(built[0], replace(cfg, dtype="bfloat16"), device="cpu")
    half.uint8_clips = True
    for b, p in zip(epoch(half), plain):
        assert b["video"].dtype == torch.bfloat16 and (b["video"].float() - p["video"]).abs().max() < 0.02


@pytest.mark.gpu
def test_uint8_clips_reach_the_gpu_from_a_pinned_pool(built):
    loader = CpuLoader(built[0], small(), device="cuda")
    batches = epoch(loader)
    assert loader.uint8_clips and loader.pool is not None and loader.pool.dtype == torch.uint8
    assert batches[0]["video"].is_cuda and batches[0]["video"].dtype == torch.float32
    reference = epoch(CpuLoader(built[0], small(), device="cpu"))
    assert all(torch.equal(b["video"].cpu(), r["video"]) for b, r in zip(batches, reference))


@pytest.mark.slow
def test_auto_stops_a_side_that_makes_few_of_the_first_batches_and_says_why(vp9_dataset, monkeypatch, caplog):
    """data.backend=auto on a GPU host is the hybrid loader; when its DALI pipelines are far slower than the CPU
    workers (here made slow on purpose), they are stopped after the first batches, with the shares logged, and
    the stream goes on unchanged."""
    pytest.importorskip("nvidia.dali")
    from vmae.pipeline.data.backends import loader_class
    from vmae.pipeline.data.dali_loader import DaliWorker

    real = DaliWorker._outputs
    monkeypatch.setattr(DaliWorker, "_outputs", lambda self, pipe: (time.sleep(1.5), real(self, pipe))[1])
    cfg = small(batch_size=1, shuffle_buffer=2, workers=2, pipelines=1)
    reference = epoch(make_loader(vp9_dataset, replace(cfg, backend="cpu"), device="cpu"), 0)
    loader = loader_class("hybrid")(vp9_dataset, replace(cfg, backend="auto"), device="cpu")
    with caplog.at_level("INFO", logger="vmae.pipeline.data.hybrid_loader"):
        batches = epoch(loader, 0) + epoch(loader, 1)
    assert [b["key"] for b in batches[:len(reference)]] == [b["key"] for b in reference]
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "the DALI pipelines made" in said and "stopped; the CPU decode workers continue alone" in said
    made = loader.stats.made_by
    assert made["dali0"] <= cfg.prefetch + 1  # at most what it had in flight when stopped
    loader.close()


@pytest.mark.slow
def test_a_hung_cpu_worker_in_the_hybrid_loader_gives_its_batches_back(vp9_dataset, monkeypatch, tmp_path,
                                                                     give_up_after):
    """A CPU decode that never returns in the hybrid loader: its workers are killed and restarted, the batches
    they held are made again (by either side), and the epoch is the stream of every other backend, in order."""
    pytest.importorskip("nvidia.dali")
    from vmae.pipeline.data import sample_reader
    from vmae.pipeline.data.backends import loader_class

    decode = sample_reader.decode_frames
    flag = tmp_path / "hung"

    def decode_or_hang(video, indices, *args, **kwargs):
        try:  # the first CPU decode of the run, in whichever worker makes it, never returns
            __import__("os").close(__import__("os").open(flag, __import__("os").O_CREAT | __import__("os").O_EXCL))
        except FileExistsError:
            return decode(video, indices, *args, **kwargs)
        never_returns()

    monkeypatch.setattr(sample_reader, "decode_frames", decode_or_hang)  # the forked workers inherit it
    give_up_after(300)
    cfg = small(batch_size=2, shuffle_buffer=2, decode_deadline=5.0, pipelines=1)
    reference = epoch(make_loader(vp9_dataset, replace(cfg, backend="dali"), device="cpu"))
    loader = loader_class("hybrid")(vp9_dataset, replace(cfg, backend="hybrid"), device="cpu")
    batches = epoch(loader)
    assert [b["key"] for b in batches] == [b["key"] for b in reference]
    assert len(loader.cpu.abandoned) == 1  # named in the log; replaced only if the CPU side makes its batch again
    loader.close()
