"""`vmae profile`: every stage measured within its bound, the slower stage named, runs compared."""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from pathlib import Path

import pytest
import torch
import yaml
from matplotlib.figure import Figure
from rich.console import Console

from vmae.tools import report as console_report
from vmae.tools.cli import main
from vmae.tools.config import load_config
from vmae.tools.gpu_monitor import DeviceUtilization
from vmae.tools.profile import compare_profiles
from vmae.tools.profile.rates import Rate, measure
from vmae.tools.profile.stages import nvdec_rate
from vmae.tools.profile.verdict import decode_limit, faster_decoder, utilization_advice, verdict



def small_config(tmp: Path, dataset: Path) -> Path:
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"frames": 4, "stride": 2, "views": 2, "crop_size": 32, "batch_size": 4, "workers": 1,
                 "backend": "cpu", "shuffle_buffer": 4, "prefetch": 1},
        "model": {"preset": "tiny", "mask_ratio": 0.75},
        "train": {"dataset": str(dataset), "epochs": 20, "global_batch": 4, "base_lr": 1e-3, "warmup_epochs": 1,
                  "peak_tflops": 1.0},
    }))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("slowed", ["load", "model"])
def test_the_artificially_slowed_stage_is_named_the_bottleneck(built, tmp_path, slowed, capfd):
    config = small_config(tmp_path, built[0])
    assert main(["profile", "--config", str(config), "--stages", "load,model", "--seconds", "1.5",
                 "--out", str(tmp_path / "r"), "--slow", f"{slowed}=0.4"]) == 0
    found = json.loads((tmp_path / "r" / "profile.json").read_text())["verdict"]
    assert found["bottleneck"] == slowed
    assert ("loading is the limit" if slowed == "load" else "the model is the limit") in capfd.readouterr().out


@pytest.mark.slow
def test_sweep_baselines_and_compare(built, tmp_path, capfd):
    config = small_config(tmp_path, built[0])
    assert main(["profile", "--config", str(config), "--stages", "load", "--seconds", "1",
                 "--out", str(tmp_path / "a"), "--sweep", "data.workers=1,2", "data.views=1,2"]) == 0
    a = json.loads((tmp_path / "a" / "profile.json").read_text())
    assert [row["settings"] for row in a["stages"]["sweep"]] == [
        {"data.workers": w, "data.views": v} for w in ("1", "2") for v in ("1", "2")]
    assert all(row["median"] > 0 for row in a["stages"]["sweep"])
    assert main(["profile", "--config", str(config), "--stages", "load,model", "--seconds", "1",
                 "--out", str(tmp_path / "b"), "--baselines"]) == 0
    b = json.loads((tmp_path / "b" / "profile.json").read_text())
    ratios = b["stages"]["baselines"]["ratios"]
    assert {"loader K=1 / per-file decord", "visible-token model / dense (sdpa)"} <= set(ratios)
    # measured, reported as a ratio (its size is a benchmark's to state, not a test's: timing on a shared machine)
    assert all(math.isfinite(r) and r > 0 for r in ratios.values())
    capfd.readouterr()
    assert main(["profile", "--compare", str(tmp_path / "a" / "profile.json"),
                 str(tmp_path / "b" / "profile.json")]) == 0
    printed = capfd.readouterr().out
    assert "load/K=1" in printed and "x" in printed
    rows = compare_profiles(a, b)
    assert {name for name, *_ in rows} >= {"load/K=1", "load/K=2", "load/K=4"}


def test_rates_have_medians_spreads_and_a_trust_flag():
    steady = Rate("clips/s", [10.0, 10.5, 9.8, 10.1])
    noisy = Rate("clips/s", [10.0, 30.0, 5.0])
    assert steady.median == pytest.approx(10.05) and steady.as_dict()["trusted"]
    assert not noisy.as_dict()["trusted"] and noisy.spread == pytest.approx(2.5)
    calls = []
    windows = measure(lambda: calls.append(1) or 2.0, seconds=0.05, warmup=2, min_steps=7)
    assert len(calls) >= 9 and 1 <= len(windows) <= 5


def test_bad_profile_requests_are_refused(built, tmp_path, capfd):
    config = small_config(tmp_path, built[0])
    assert main(["profile", "--config", str(config), "--sweep", "workers=1,2"]) == 2
    assert "give a data key" in capfd.readouterr().err
    assert main(["profile", "--config", str(config), "--stages", "load,warp"]) == 2
    assert "unknown stage(s) warp" in capfd.readouterr().err


@pytest.mark.gpu
def test_nvdec_decode_rate_on_cuda(built):
    pytest.importorskip("nvidia.dali")
    windows = nvdec_rate(built[0], seconds=2)
    assert windows and all(w > 0 for w in windows)


def test_a_dali_loader_that_limits_the_run_gets_the_cpu_path_suggested():
    cfg = load_config(None, ["data.views=4"])
    load = {"K=4": {"median": 10.0, "backend": "dali"}}
    model = {"sdpa": {"median": 190.0}}
    advice = verdict({"load": load, "model": model}, cfg)["advice"]
    assert any("data.backend=cpu" in line for line in advice)
    load["K=4"]["backend"] = "cpu"
    advice = verdict({"load": load, "model": model}, cfg)["advice"]
    assert not any("data.backend=cpu" in line for line in advice)


class FakeNvml:
    """NVML as pynvml presents it: SM utilization climbing, the decoder busy at 80 %."""

    def __init__(self):
        self.calls = 0

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetUtilizationRates(self, handle):
        self.calls += 1
        return type("Rates", (), {"gpu": 10 * self.calls, "memory": 5})()

    def nvmlDeviceGetDecoderUtilization(self, handle):
        return [80, 167000]


def test_decoder_utilization_is_sampled_beside_sm_utilization_and_reported():
    with DeviceUtilization(period=0.01, nvml=FakeNvml()) as device:
        time.sleep(0.2)
    summary = device.summary()
    assert summary["samples"] >= 5 and summary["decoder_util_pct"] == 80.0 and summary["sm_util_pct"] > 10
    advice = utilization_advice({"load": summary})
    assert "NVDEC 80 %" in advice[0] and "GPU-Util leaves NVDEC out" in advice[0]
    assert "saturated" in utilization_advice({"load": {**summary, "decoder_util_pct": 97.0}})[-1]


def test_without_a_gpu_there_is_nothing_to_sample():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with DeviceUtilization() as device:
        pass
    assert device.summary() is None


@pytest.mark.gpu
def test_nvml_reads_nvdec_while_dali_decodes(built):
    pytest.importorskip("nvidia.dali")
    with DeviceUtilization(period=0.05) as device:
        nvdec_rate(built[0], 2.0)
    summary = device.summary()
    assert summary is not None and summary["samples"] >= 10
    assert 0 < summary["decoder_util_max_pct"] <= 100 and 0 <= summary["sm_util_pct"] <= 100


class DrawnFigures:
    """What profile.png shows, read off the figure as it is saved: title, bar labels and heights, drawn limits."""

    def __init__(self):
        self.drawn: list[dict] = []

    def spy(self, original):
        def savefig(figure, *args, **kwargs):
            ax = figure.axes[0]
            bars = [(tick.get_text(), rect.get_height(), rect.get_x() + rect.get_width() / 2)
                    for tick, rect in zip(ax.get_xticklabels(), ax.patches, strict=False)]
            segments = [(seg[0][0], seg[1][0], seg[0][1]) for coll in ax.collections for seg in coll.get_segments()]
            self.drawn.append({"title": ax.get_title(), "bars": bars, "segments": segments,
                               "best": [t.get_text() for t in ax.texts]})
            return original(figure, *args, **kwargs)
        return savefig


@pytest.fixture(scope="module")
def swept(built, tmp_path_factory):
    """One `vmae profile --stages decode,load --sweep ...` run: its report, what it printed and what it drew."""
    tmp = tmp_path_factory.mktemp("swept")
    config = small_config(tmp, built[0])
    figures, printed = DrawnFigures(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:  # in-process, so that the spy sees the figure being saved
        patch.setattr(Figure, "savefig", figures.spy(Figure.savefig))
        patch.setattr(console_report, "console", Console(file=printed, width=200))
        with contextlib.redirect_stdout(printed):
            assert main(["profile", "--config", str(config), "--stages", "decode,load", "--seconds", "1.5",
                         "--out", str(tmp / "r"), "--sweep", "data.workers=1,2", "data.views=1,2,4"]) == 0
    report = json.loads((tmp / "r" / "profile.json").read_text())
    return report, printed.getvalue(), figures.drawn[-1]


@pytest.mark.slow
def test_a_sweep_is_printed_as_a_table_with_the_best_marked(swept):
    report, printed, _ = swept
    rows = report["stages"]["sweep"]
    assert len(rows) == 6
    table = printed[printed.index("sweep (the loader alone)"):]
    best = max(rows, key=lambda row: row["median"])
    for row in rows:
        assert f"{row['median']:.2f}" in table and f"{row['decoded_frames_per_clip']:.1f}" in table
    marked = [line for line in table.splitlines() if "best" in line and "◀" in line]
    assert len(marked) == 1 and f"{best['median']:.2f}" in marked[0]
    assert "best of the sweep: " + " ".join(f"{k}={v}" for k, v in best["settings"].items()) in printed


@pytest.mark.slow
def test_a_sweep_is_drawn_with_the_best_marked(swept):
    report, _, drawn = swept
    labels = [label for label, *_ in drawn["bars"]]
    for row in report["stages"]["sweep"]:
        assert f"sweep workers={row['settings']['data.workers']} views={row['settings']['data.views']}" in labels
    assert drawn["best"] == ["best"]


@pytest.mark.slow
def test_the_plot_title_says_what_was_measured_and_why_no_bottleneck_is_named(swept):
    report, _, drawn = swept
    title = " ".join(drawn["title"].split())
    assert "?" not in title and "decode, load, sweep" in title
    assert "no bottleneck named: the model stage was not measured" in title
    assert report["verdict"]["no_bottleneck_because"] in title


@pytest.mark.slow
def test_the_drawn_decode_limit_bounds_every_measured_loader_bar(swept):
    report, _, drawn = swept
    ffmpeg = report["stages"]["decode"]["ffmpeg_1_thread"]
    assert "CPU seconds" in ffmpeg["timed"]
    loader_bars = [(label, height, x) for label, height, x in drawn["bars"] if label.startswith(("load", "sweep"))]
    assert len(loader_bars) == 3 + 6
    for label, height, x in loader_bars:
        over = [y for x0, x1, y in drawn["segments"] if x0 <= x <= x1]
        assert len(over) == 1, label
        # the limit is in clips/s like the bar: frames/s x cores / decoded frames per clip
        assert over[0] >= height, (label, over[0], height, ffmpeg["median"])
    rate = report["stages"]["load"]["K=2"]
    assert decode_limit(report, rate["decoded_frames_per_clip"]) == pytest.approx(
        ffmpeg["median"] * report["machine"]["usable_cores"] / rate["decoded_frames_per_clip"])


def test_compared_profiles_of_the_same_name_get_columns_that_differ(tmp_path, capfd):
    rate = {"median": 10.0, "unit": "clips/s", "spread": 0.0, "trusted": True, "windows": [10.0]}
    for folder, factor in (("before", 1), ("after", 2)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "profile.json").write_text(json.dumps(
            {"stages": {"load": {"K=4": {**rate, "median": 10.0 * factor}}}}))
    assert main(["profile", "--compare", str(tmp_path / "before" / "profile.json"),
                 str(tmp_path / "after" / "profile.json")]) == 0
    header = next(line for line in capfd.readouterr().out.splitlines() if "figure" in line)
    assert "before/profile.json" in header and "after/profile.json" in header


def test_another_decoder_is_advised_only_where_it_measured_faster():
    def decode(ours: float, other: float) -> dict:
        return {"ours": {"median": ours}, "other_decoders": {"torchcodec": {"median": other}}}

    assert faster_decoder(decode(100.0, 130.0)) == ("torchcodec", pytest.approx(1.3))
    assert faster_decoder(decode(100.0, 105.0)) is None  # within the noise of whole-video decodes
    assert faster_decoder(decode(100.0, 60.0)) is None
    assert faster_decoder({}) is None
