"""The step fitted to the device: the micro-batch search under an imposed memory limit, activation checkpointing
only where memory needs it, the compiled blocks against the eager ones, the fused optimizer, no host sync in the
model's step, and `vmae pretrain data.batch_size=auto` end to end."""

from __future__ import annotations

import json
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from test_pretrain import run_config, vmae_pretrain, write_config
from vmae.model.mae import MaskedVideoAutoencoder, compile_blocks
from vmae.model.masking import make_mask
from vmae.pipeline.train import tuning
from vmae.pipeline.train.config import TrainConfig, TrainError
from vmae.pipeline.train.engine import make_optimizer
from vmae.pipeline.train.tasks import FinetuneTask, PretrainTask
from vmae.pipeline.train.tuning import (Trial, candidate_sizes, compile_mode, search, settle_micro_batch)
from vmae.tools.config import load_config, preset_layer

CPU = torch.device("cpu")


def tiny_cfg(*overrides: str):
    return load_config(None, ["model.preset=tiny", "data.frames=4", "data.crop_size=32", "data.views=2",
                              "data.batch_size=auto", "train.global_batch=16", "train.zero_stage=1", *overrides])


def tiny_model(cfg) -> MaskedVideoAutoencoder:
    torch.manual_seed(0)
    return MaskedVideoAutoencoder(cfg.model, cfg.data.frames, cfg.data.crop_size)


# ------------------------------------------------------------------ the search on its own


def test_candidate_sizes_divide_the_rank_share_and_double():
    assert candidate_sizes(512) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert candidate_sizes(48) == [1, 2, 4, 8, 16, 48]
    assert candidate_sizes(6, lambda v: v % 2 == 0) == [2, 6]  # mixup: even micro-batches only
    assert candidate_sizes(1) == [1]


def fake_trials(peaks: dict[int, float], rates: dict[int, float], limit: float, oom_from: int = 10**9):
    """A trial function with known peaks (GiB) and clips/s, refusing what is over ``limit`` as run_trial does."""
    made = []

    def trial(videos: int, checkpoint: bool) -> Trial:
        made.append((videos, checkpoint))
        if videos >= oom_from:
            return Trial(videos, checkpoint, problem="out of memory")
        peak = peaks[videos] / (2 if checkpoint else 1)
        return Trial(videos, checkpoint, peak, rates[videos], None if peak <= limit else f"needs {peak} GiB")
    return trial, made


def test_the_search_takes_the_largest_size_under_the_limit_that_still_pays():
    peaks = {1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0, 16: 16.0}
    rates = {1: 10.0, 2: 19.0, 4: 30.0, 8: 40.0, 16: 41.0}
    trial, made = fake_trials(peaks, rates, limit=10.0)
    best, trials = search(trial, [1, 2, 4, 8, 16], False)
    assert best.videos == 8 and [t.videos for t in trials] == [1, 2, 4, 8, 16]
    assert trials[-1].problem == "needs 16.0 GiB"
    trial, _ = fake_trials(peaks, rates, limit=100.0)
    best, trials = search(trial, [1, 2, 4, 8, 16], False)
    assert best.videos == 8 and trials[-1].problem == "+2 % clips/s only"  # 16 fits but gains 2.5 %
    trial, _ = fake_trials(peaks, rates, limit=100.0, oom_from=4)
    best, trials = search(trial, [1, 2, 4, 8, 16], False)
    assert best.videos == 2 and trials[-1].problem == "out of memory"


# ------------------------------------------------------------------ the real trials on CPU


@pytest.fixture(scope="module")
def measured_peaks() -> dict[int, float]:
    """Peak GiB of each candidate of the tiny model, no limit and every size taken (MIN_GAIN lowered)."""
    cfg = tiny_cfg("train.memory_limit_gb=100")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tuning, "MIN_GAIN", -1.0)
        found = settle_micro_batch(tiny_model(cfg), PretrainTask(cfg), cfg, CPU, torch.float32, 1)
    assert found["micro_batch"] == 16 and cfg.data.batch_size == 16  # every size taken: the rank's whole share
    return {t["videos"]: t["peak_gib"] for t in found["trials"]}


def test_an_imposed_memory_limit_picks_the_largest_micro_batch_under_it(measured_peaks, monkeypatch, caplog):
    peaks = measured_peaks
    assert list(peaks) == [1, 2, 4, 8, 16] and all(a < b for a, b in zip(peaks.values(), list(peaks.values())[1:]))
    monkeypatch.setattr(tuning, "MIN_GAIN", -1.0)  # memory alone decides here: no dependence on timings
    limit = (peaks[4] + peaks[8]) / 2
    cfg = tiny_cfg(f"train.memory_limit_gb={limit}")
    model = tiny_model(cfg)
    with caplog.at_level("INFO", logger="vmae.pipeline.train.tuning"):
        found = settle_micro_batch(model, PretrainTask(cfg), cfg, CPU, torch.float32, 1)
    assert found["micro_batch"] == 4 and cfg.data.batch_size == 4 and found["checkpoint"] is False
    assert cfg.model.checkpoint is False and model.checkpoint is False
    refused = found["trials"][-1]
    assert refused["videos"] == 8 and refused["peak_gib"] > limit and refused["problem"].startswith("needs")
    assert "-> 4 videos per micro-batch" in caplog.text
    # the split that follows keeps the global batch: 16 videos = 1 rank x 4 x 4 accumulation
    from vmae.pipeline.train.config import batch_split

    split = batch_split(cfg.train, cfg.data, 1)
    assert (split.micro_batch, split.accumulation, split.global_batch) == (4, 4, 16)


def test_checkpointing_is_switched_on_only_when_nothing_fits_without_it(measured_peaks, monkeypatch, caplog):
    monkeypatch.setattr(tuning, "MIN_GAIN", -1.0)
    cfg = tiny_cfg(f"train.memory_limit_gb={measured_peaks[1] * 0.99}")
    model = tiny_model(cfg)
    with caplog.at_level("INFO", logger="vmae.pipeline.train.tuning"):
        found = settle_micro_batch(model, PretrainTask(cfg), cfg, CPU, torch.float32, 1)
    assert found["checkpoint"] is True and model.checkpoint and model.encoder.checkpoint
    assert found["trials"][0]["checkpoint"] is False and found["trials"][0]["problem"].startswith("needs")
    assert all(t["checkpoint"] for t in found["trials"][1:])
    assert "activation checkpointing on (model.checkpoint=auto): memory needs it: without it 1 video(s)" in caplog.text
    assert found["checkpoint_why"].startswith("memory needs it: without it 1 video(s) per micro-batch: needs")
    # with it off by request, nothing fits: refused with what to do
    cfg = tiny_cfg(f"train.memory_limit_gb={measured_peaks[1] * 0.5}", "model.checkpoint=false")
    with pytest.raises(TrainError, match=r"smallest micro-batch \(1 video\(s\)\) does not fit in .*"
                                         r"model.checkpoint=true.*train.memory_limit_gb"):
        settle_micro_batch(tiny_model(cfg), PretrainTask(cfg), cfg, CPU, torch.float32, 1)


def test_an_explicit_micro_batch_wins_and_cpu_runs_stay_uncheckpointed():
    cfg = tiny_cfg("data.batch_size=2", "train.memory_limit_gb=0.000001")
    model = tiny_model(cfg)
    found = settle_micro_batch(model, PretrainTask(cfg), cfg, CPU, torch.float32, 1)
    assert found == {"checkpoint": False, "checkpoint_why": "on CPU it stays off unless asked for"}
    assert cfg.data.batch_size == 2 and model.checkpoint is False


def test_finetuning_with_mixup_searches_even_micro_batches_only():
    cfg = load_config(None, ["model.preset=tiny", "data.frames=4", "data.crop_size=32", "data.views=1",
                             "data.batch_size=auto", "train.global_batch=6"], base=[preset_layer("finetune")])
    task = FinetuneTask(cfg, classes=["a", "b", "c"])
    assert [v for v in candidate_sizes(6, task.fits_micro_batch)] == [2, 6]
    labels = task.trial_batch(4, CPU)["label"]
    assert labels.tolist() == [0, 1, 2, 0]


# ------------------------------------------------------------------ compile, optimizer, host syncs


def test_compile_is_on_for_cuda_only_and_off_under_zero3():
    assert compile_mode("auto", torch.device("cuda"), 1) == "default"
    assert compile_mode("auto", torch.device("cuda"), 3) == "off"
    assert compile_mode("auto", CPU, 1) == "off"
    assert compile_mode("reduce-overhead", CPU, 3) == "reduce-overhead"  # a user's explicit mode wins


def test_compiled_blocks_trace_whole_and_give_the_eager_loss_and_gradients():
    """The blocks traced by torch.compile in one graph each (fullgraph: a graph break fails), run through
    AOTAutograd (the aot_eager backend): the same loss and gradients as eager. Inductor's C++ code generation
    itself is left to the GPU check: on this 2-core machine it takes about a minute for the tiny model."""
    cfg = tiny_cfg()
    model = tiny_model(cfg)
    model.settle_attention(torch.float32, CPU)
    video = torch.randn(4, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = make_mask("random", 4, model.grid, 0.9, torch.Generator().manual_seed(1))
    eager = model(video, mask=mask)[0]
    eager.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    names = [name for name, _ in model.named_parameters()]
    assert compile_blocks(model, "default", backend="aot_eager", fullgraph=True) == 6  # 4 encoder + 2 decoder
    assert [name for name, _ in model.named_parameters()] == names  # checkpoints keep their keys
    compiled = model(video, mask=mask)[0]
    compiled.backward()
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_fused_adamw_steps_as_the_foreach_one():
    torch.manual_seed(0)
    weights = [torch.randn(64, 32), torch.randn(32)]
    results = {}
    for kernel in ("fused", "foreach"):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        optimizer = make_optimizer([{"params": params, "weight_decay": 0.05}],
                                   TrainConfig(optimizer_kernel=kernel), "bf16")
        assert optimizer.defaults["fused"] is (kernel == "fused" or None)
        for step in range(3):
            for group in optimizer.param_groups:
                group["lr"] = 1e-2
            for p in params:
                p.grad = torch.sin(p.detach() * (step + 1))
            optimizer.step()
        results[kernel] = params
    for fused, foreach in zip(results["fused"], results["foreach"]):
        torch.testing.assert_close(fused, foreach, atol=1e-6, rtol=1e-6)
    auto = make_optimizer([{"params": [torch.nn.Parameter(torch.zeros(2))]}], TrainConfig(), "bf16", CPU)
    assert auto.defaults["fused"] is None  # CPU: torch's default loop, as the recorded CPU losses were made


SYNCING_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "item")


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("decoder_mask_ratio", [0.0, 0.5])
def test_the_model_step_reads_nothing_back_to_the_host(decoder_mask_ratio):
    """Forward and backward call no op that makes the host wait for the device (.item(), nonzero, boolean
    indexing): on a GPU the host runs ahead, queueing kernels."""
    cfg = tiny_cfg(f"model.decoder_mask_ratio={decoder_mask_ratio}")
    model = tiny_model(cfg)
    video = torch.randn(2, 3, 4, 32, 32)
    mask = make_mask("random", 2, model.grid, 0.9, torch.Generator().manual_seed(1))
    with OpRecorder() as recorder:
        model(video, mask=mask)[0].backward()
    assert len(recorder.ops) > 50
    assert not [op for op in recorder.ops if op.split(".")[0] in SYNCING_OPS]


@pytest.mark.gpu
def test_a_cuda_step_runs_without_a_host_sync():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cfg = tiny_cfg()
    model = tiny_model(cfg).cuda().bfloat16()
    model.settle_attention(torch.bfloat16, torch.device("cuda"))
    video = torch.randn(2, 3, 4, 32, 32, device="cuda", dtype=torch.bfloat16)
    mask = make_mask("random", 2, model.grid, 0.9, torch.Generator().manual_seed(1))
    model(video, mask=mask)[0].backward()  # warm-up: kernels chosen, pinned buffers made
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model(video, mask=mask)[0].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ------------------------------------------------------------------ end to end


def test_pretrain_with_an_auto_micro_batch_keeps_the_global_batch(built, tmp_path):
    cfg = run_config(built[0], tmp_path / "run", max_steps=2, checkpoint_every=10, data__batch_size="auto",
                     memory_limit_gb=50)
    code, output = vmae_pretrain(write_config(tmp_path, cfg))
    assert code == 0, output
    fitted = json.loads((tmp_path / "run" / "run.json").read_text())
    chosen = fitted["device_fit"]["micro_batch"]
    assert chosen in (1, 2, 4) and fitted["device_fit"]["checkpoint"] is False
    assert fitted["batch"]["per_device_batch"] == chosen and fitted["batch"]["accumulation"] == 4 // chosen
    assert fitted["batch"]["global_batch_videos"] == 4
    assert "data.batch_size=auto: 1: " in output and f"-> {chosen} videos per micro-batch" in output
    assert "attention kernels: encoder sdpa, decoder sdpa" in output

