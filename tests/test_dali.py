"""DALI's own webdataset reader reads the shards through the index files the builder wrote."""

import json
from pathlib import Path

import numpy as np
import pytest

from vmae.shards.build import build_shards
from vmae.shards.config import ShardConfig

dali = pytest.importorskip("nvidia.dali")
from nvidia.dali import fn, pipeline_def, types  # noqa: E402

pytestmark = pytest.mark.slow


def reader_pipeline(dataset: Path, ext: str, batch: int):
    manifest = json.loads((dataset / "manifest.json").read_text())
    tars = [str(dataset / e["name"]) for e in manifest["shards"]]
    idx = [str(dataset / e["index"]) for e in manifest["shards"]]

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None)
    def pipe():
        video, cls, frames, label, meta = fn.readers.webdataset(
            paths=tars, index_paths=idx, ext=[ext, "cls", "frames", "label", "json"],
            dtypes=[types.UINT8, types.UINT8, types.INT32, types.INT32, types.UINT8],
            missing_component_behavior="error")
        return video, cls, frames, label, meta

    p = pipe()
    p.build()
    return p, manifest


def test_dali_reads_every_sample_with_our_index(built):
    dataset = built[0]
    p, manifest = reader_pipeline(dataset, "mp4", batch=5)
    seen = {}
    for _ in range(manifest["samples"] // 5):
        video, cls, frames, label, meta = p.run()
        for i in range(5):
            m = json.loads(bytes(np.array(meta[i])))
            assert int(np.array(frames[i])[0]) == m["frames"]  # the frame count a DALI graph can read
            assert bytes(np.array(cls[i])).decode() == str(m["label"]) == str(int(np.array(label[i])[0]))
            assert np.array(video[i])[4:8].tobytes() == b"ftyp"
            seen[m["key"]] = m["frames"]
    assert len(seen) == manifest["samples"]


def test_dali_cpu_decoder_decodes_vp9_shards(tmp_path, real_videos):
    src = tmp_path / "in" / "c"
    src.mkdir(parents=True)
    (src / "carphone.mp4").write_bytes(real_videos[3].read_bytes())
    out = tmp_path / "out"
    build_shards(src.parent, out, ShardConfig(codec="vp9", short_side=160), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def decode():
        video = fn.readers.webdataset(paths=[str(out / "shard-000000.tar")],
                                       index_paths=[str(out / "shard-000000.idx")], ext=["webm"])
        return fn.decoders.video(video, device="cpu", frames=[0, 4, 8, 12])

    p = decode()
    p.build()
    (frames,) = p.run()
    assert np.array(frames[0]).shape == (4, 160, 214, 3) and manifest["samples"] == 1
