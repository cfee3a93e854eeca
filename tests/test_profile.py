"""`vmae profile`: every stage measured within its bound, the slower stage named, runs compared."""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from matplotlib.figure import Figure
from rich.console import Console

from vmae.tools import report as console_report
from vmae.tools.cli import main
from vmae.tools.config import load_config
from vmae.tools.gpu_monitor import DeviceUtilization
from vmae.model.mae import preset
from vmae.tools.profile import compare_profiles
from vmae.tools.profile.breakdown import (KERNEL_CATEGORIES, STEP_LABEL, busy_pct, category_of, category_shares,
                                          host_syncs, is_device_event, step_breakdown, step_limit, step_spans,
                                          union_length)
from vmae.tools.profile.plot import profile_bars
from vmae.tools.profile.rates import Rate, measure
from vmae.tools.profile.stages import nvdec_rate, training_step
from vmae.tools.profile.verdict import decode_limit, faster_decoder, model_limit, utilization_advice, verdict



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
    # the model case profiles with the micro-batch found as training finds it
    auto = ["data.batch_size=auto"] if slowed == "model" else []
    assert main(["profile", "--config", str(config), "--stages", "load,model", "--seconds", "1.5",
                 "--out", str(tmp_path / "r"), "--slow", f"{slowed}=0.4", *auto]) == 0
    report = json.loads((tmp_path / "r" / "profile.json").read_text())
    found = report["verdict"]
    if auto:
        fitted = report["device_fit"]
        assert fitted["micro_batch"] in (1, 2, 4) and fitted["checkpoint"] is False
        assert found["advice"][0].startswith(f"micro-batch {fitted['micro_batch']} videos, found on this device")
        assert "activation checkpointing off (the micro-batch fits without it)" in found["advice"][0]
    else:  # an explicit micro-batch on CPU: no trial steps, checkpointing off and the profile says why
        assert report["device_fit"] == {"checkpoint": False, "checkpoint_why": "on CPU it stays off unless asked for"}
        assert found["advice"][0] == "activation checkpointing off (on CPU it stays off unless asked for)"
    assert found["bottleneck"] == slowed
    printed = capfd.readouterr().out
    assert ("loading is the limit" if slowed == "load" else "the model is the limit") in printed
    # the model stage holds what limits the fastest backend's step beside the backends' rates, which alone compete
    model = report["stages"]["model"]
    breakdown = model["breakdown"]
    assert breakdown["attention"] in ("sdpa", "math") and breakdown["limit"]
    assert sum(breakdown["categories"].values()) == pytest.approx(100, abs=1)
    assert found["best_attention"] in ("sdpa", "math")
    assert found["model_clips_per_s"] == max(model[b]["median"] for b in ("sdpa", "math"))
    assert found["step_limit"] == breakdown["limit"]
    assert any(breakdown["limit"] in line for line in found["advice"])
    assert " ".join(breakdown["limit"].split()[:4]) in " ".join(printed.split())
    assert "model (breakdown)" not in [bar.label for bar in profile_bars(report)]
    assert model_limit(report) > 0


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


@pytest.fixture(scope="module")
def tiny_step():
    """A training step of the tiny model on 4 clips of 4 x 32² (CPU), as the model stage builds it."""
    device = torch.device("cpu")
    step, model = training_step(preset("tiny", attention="sdpa"), 4, device, torch.float32, frames=4, size=32)
    return step, model, device


@pytest.fixture(scope="module")
def tiny_breakdown(tiny_step):
    step, _, device = tiny_step
    return step_breakdown(step, device, steps=2)


def test_the_breakdown_of_a_training_step_shares_its_time_and_names_its_limit(tiny_breakdown):
    found = tiny_breakdown
    assert list(found["categories"]) == [c["name"] for c in KERNEL_CATEGORIES]
    assert sum(found["categories"].values()) == pytest.approx(100, abs=1)
    # the tiny model is linear layers, a convolution, layer norms and SDPA: each shows, matmul among the largest
    assert found["categories"]["matmul"] > 0 and found["categories"]["normalization"] > 0
    assert found["categories"]["attention"] > 0
    assert found["device_busy_pct"] is None and found["peak_memory_gb"] is None  # CUDA figures
    assert found["limit"] == step_limit(found) and found["limit"]
    assert found["host_syncs_per_step"] == sum(found["host_sync_ops"].values())


def test_item_calls_in_the_step_are_counted_as_host_syncs_and_named(tiny_step, tiny_breakdown):
    step, model, device = tiny_step
    weight = next(model.parameters())

    def syncing_step() -> None:
        step()
        for _ in range(5):  # what logging a loss with float(loss) each step does five times over
            weight.sum().item()

    found = step_breakdown(syncing_step, device, steps=2)
    assert found["host_syncs_per_step"] - tiny_breakdown["host_syncs_per_step"] >= 5
    assert found["host_sync_ops"]["aten::_local_scalar_dense"] >= 5
    # the optimizer's .item() on its host-side step counts is no sync on a GPU either, and is not counted
    assert tiny_breakdown["host_sync_ops"].get("aten::_local_scalar_dense", 0) == 0
    assert found["limit"].startswith("host syncs: ") and "aten::_local_scalar_dense 5" in found["limit"]


def figures_of(categories: dict[str, float], busy: float | None = None, syncs: float = 0.0,
               peak: float | None = None, capacity: float | None = None) -> dict:
    """Breakdown figures as step_breakdown returns them, for the limit rules."""
    shares = {c["name"]: 0.0 for c in KERNEL_CATEGORIES} | categories
    return {"categories": shares, "device_busy_pct": busy, "host_syncs_per_step": syncs,
            "host_sync_ops": {"aten::nonzero": syncs} if syncs else {}, "peak_memory_gb": peak,
            "memory_capacity_gb": capacity}


def test_the_limit_rules_name_idle_gpu_syncs_memory_kernel_mix_and_compute_in_that_order():
    compute = {"matmul": 80.0, "elementwise": 20.0}
    mix = {"matmul": 40.0, "elementwise": 35.0, "normalization": 15.0, "optimizer": 10.0}
    idle = step_limit(figures_of(compute, busy=62.0, syncs=4.0, peak=75.0, capacity=80.0))
    assert idle.startswith("the GPU waits on the host: idle 38 % of the step") and "(4 per step)" in idle
    assert step_limit(figures_of(compute, busy=95.0, syncs=4.0, peak=75.0, capacity=80.0)).startswith(
        "host syncs: 4 per step (aten::nonzero 4)")
    assert step_limit(figures_of(compute, busy=95.0, syncs=1.0, peak=75.0, capacity=80.0)) == (
        "memory: 75.0 of 80.0 GiB, the micro-batch cannot grow; model.checkpoint trades compute for memory")
    assert step_limit(figures_of(mix, busy=95.0, peak=10.0, capacity=80.0)) == (
        "the kernel mix: matmuls 40 % of device time; elementwise 35 %, normalization 15 %: model.compile fuses "
        "these")
    assert step_limit(figures_of(compute)) == "compute-bound: matmuls 80 % of device time (MFU is the figure to watch)"


def test_kernels_are_sorted_into_categories_by_name():
    assert category_of("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>") == "attention"
    assert category_of("fmha_cutlassF_bf16_aligned_64x128_rf_sm80") == "attention"
    assert category_of("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert category_of("nvjet_hsh_192x192_64x4_1x2_h_bz_coopA_NNN") == "matmul"
    assert category_of("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "matmul"
    assert category_of("aten::addmm") == category_of("aten::mm") == category_of("aten::mkldnn_convolution") == "matmul"
    # "gamma" holds "mm": layer norm's backward kernel is no matmul
    assert category_of("void at::native::GammaBetaBackwardCUDAKernel_32x32<float, float>") == "normalization"
    assert category_of("aten::native_layer_norm_backward") == "normalization"
    assert category_of("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor<float, 4>>") == "optimizer"
    assert category_of("Memcpy HtoD (Pinned -> Device)") == category_of("aten::copy_") == "memory copy"
    assert category_of("void at::native::vectorized_elementwise_kernel<4, GeluCUDAKernelImpl>") == "elementwise"
    assert union_length([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)]) == 4.0  # overlapping streams counted once


def trace_event(name: str, start: float, end: float, gpu: bool = False, activity: str = "cpu_op", parent=None):
    """A stand-in for torch's FunctionEvent with what the breakdown reads: name, device, kind, times, parent."""
    device = torch.autograd.DeviceType.CUDA if gpu else torch.autograd.DeviceType.CPU
    return SimpleNamespace(name=name, device_type=device, activity_type=activity, cpu_parent=parent,
                           time_range=SimpleNamespace(start=start, end=end))


def test_a_cuda_trace_gives_kernel_shares_busy_time_and_the_syncs_by_the_op_that_made_them():
    item = trace_event("aten::_local_scalar_dense", 20, 30)
    events = [trace_event(STEP_LABEL, 0, 100, activity="user_annotation"),
              trace_event(STEP_LABEL, 100, 200, activity="user_annotation"),
              trace_event(STEP_LABEL, 0, 250, gpu=True, activity="gpu_user_annotation"),  # spans idle time too
              trace_event("sm90_xmma_gemm_bf16bf16_bf16f32", 10, 50, gpu=True, activity="kernel"),
              trace_event("vectorized_elementwise_kernel<GeluCUDAKernelImpl>", 40, 60, gpu=True, activity="kernel"),
              trace_event("Memcpy DtoH (Device -> Pinned)", 90, 95, gpu=True, activity="gpu_memcpy"),
              trace_event("pytorch_flash::flash_bwd_kernel", 150, 250, gpu=True, activity="kernel"),
              item, trace_event("cudaStreamSynchronize", 22, 29, activity="cuda_runtime", parent=item),
              trace_event("cudaMemcpyAsync", 21, 22, activity="cuda_runtime", parent=item),
              trace_event("aten::_local_scalar_dense", 120, 121),  # a host tensor's .item(): no runtime wait
              trace_event("cudaDeviceSynchronize", 150, 160, activity="cuda_runtime"),
              trace_event("cudaDeviceSynchronize", 260, 270, activity="cuda_runtime")]  # after the steps
    spans = step_spans(events)
    assert spans == [(0, 100), (100, 200)]
    device = [e for e in events if is_device_event(e)]
    assert len(device) == 4
    # kernels and copies cover 10-60, 90-95 and 150-250 of the 0-250 span
    assert busy_pct(device, spans) == pytest.approx(100 * 155 / 250)
    shares = category_shares(device, cuda=True)
    assert shares["attention"] == pytest.approx(100 * 100 / 165, abs=0.1)
    assert shares["matmul"] == pytest.approx(100 * 40 / 165, abs=0.1)
    assert shares["memory copy"] == pytest.approx(100 * 5 / 165, abs=0.1)
    assert host_syncs(events, spans, cuda=True) == {"aten::_local_scalar_dense": 1, "cudaDeviceSynchronize": 1}
