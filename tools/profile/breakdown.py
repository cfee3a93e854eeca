"""What limits one training step, read off a torch.profiler trace of a few steps: the device time per kernel
category, the host syncs per step, how busy the GPU is, the peak memory, and one sentence naming the limit.

On CUDA the categories share the GPU's kernel and memcpy/memset time; on CPU the self time of the aten ops (self
time, so that an op and the ops it calls are not counted twice). The host syncs are the calls that make the host
wait for the GPU; on CPU the same calls are counted, since the same step would sync on a GPU.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable

import torch
from torch.profiler import ProfilerActivity, profile, record_function

# Kernel categories, first match wins: an event belongs to the first category one of whose lowercase substrings its
# name contains; the last category (no substrings) takes the rest. ``remedy`` is what the limit sentence suggests
# where the category takes much of the step (matmul has none: a step its matmuls limit is compute-bound).
# Attention comes first: its kernels' names can hold "gemm" and "cutlass" too.
KERNEL_CATEGORIES: tuple[dict, ...] = (
    {"name": "attention", "match": ("flash", "fmha", "efficient_attention", "scaled_dot_product", "sdpa",
                                    "attention"),
     "remedy": "the attention kernel is the lever (model.attention; `vmae profile` times each)"},
    # "aten::mm" and "gemm" rather than a bare "mm", which "gamma" (layer norm's GammaBetaBackward kernel) holds;
    # "nvjet" is cuBLAS's kernel family on Hopper; fprop/dgrad/wgrad name cuDNN's convolution kernels
    {"name": "matmul", "match": ("gemm", "gemv", "aten::mm", "addmm", "bmm", "matmul", "linear", "cublas", "cutlass",
                                 "xmma", "nvjet", "conv", "fprop", "dgrad", "wgrad")},
    {"name": "normalization", "match": ("layer_norm", "native_layer_norm", "rms_norm", "gammabeta", "group_norm",
                                        "batch_norm"),
     "remedy": "model.compile fuses these"},
    {"name": "optimizer", "match": ("adam", "foreach", "multi_tensor", "fused_adam"),
     "remedy": "a fused AdamW step (one kernel over every parameter) cuts these"},
    {"name": "memory copy", "match": ("memcpy", "memset", "copy_", "to_copy", "_to_copy"),
     "remedy": "model.compile fuses these"},
    {"name": "elementwise", "match": (), "remedy": "model.compile fuses these"},
)

BUSY_LIMIT_PCT = 80.0  # a GPU busy less than this share of the step waits on the host
SYNC_LIMIT = 3.0  # host syncs per step above this are named: each drains the GPU's queue
MEMORY_LIMIT = 0.9  # peak memory above this share of the device's leaves the micro-batch no room to grow
MATMUL_SHARE_PCT = 50.0  # matmuls below this share of device time: the kernel mix, not the matmuls, sets the pace
NAMED_CATEGORIES = 2  # non-matmul categories a kernel-mix sentence names

STEP_LABEL = "vmae.profile.step"  # the annotation around each profiled step: what lies outside is not the step's
DEVICE_ACTIVITIES = ("kernel", "gpu_memcpy", "gpu_memset")  # not gpu_user_annotation, which spans idle time too
RUNTIME_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
ATEN_SYNCS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select")
# torch's optimizers keep their step counts on the host (unless capturable or fused): the .item() they call on
# them reads host memory and never waits on the GPU, so on CPU those are not counted as syncs
HOST_STATE_SCOPES = ("Optimizer.",)
GIB = 2**30


def step_breakdown(step: Callable[[], object], device: torch.device, steps: int = 3) -> dict:
    """The profile of ``steps`` calls of ``step`` (after one warm-up call) on ``device``: device time per kernel
    category (percent), host syncs per step and which, the GPU's busy share and peak memory (GiB; CUDA only), and
    the sentence that names what limits the step."""
    cuda = device.type == "cuda"
    step()  # warm-up: first-call allocations, kernel selection and the optimizer's state stay out of the trace
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    events = profiled_events(step, cuda, steps)
    spans = step_spans(events)
    syncs = host_syncs(events, spans, cuda)
    device_events = [e for e in events if is_device_event(e)]
    figures = {"steps": steps,
               "categories": category_shares(device_events if cuda else aten_events(events, spans), cuda),
               "host_syncs_per_step": round(sum(syncs.values()) / steps, 2),
               "host_sync_ops": {name: round(n / steps, 2) for name, n in syncs.most_common()},
               "device_busy_pct": round(busy_pct(device_events, spans), 1) if cuda else None,
               "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / GIB, 2) if cuda else None,
               "memory_capacity_gb": (round(torch.cuda.get_device_properties(device).total_memory / GIB, 2)
                                      if cuda else None)}
    figures["limit"] = step_limit(figures)
    return figures


def profiled_events(step: Callable[[], object], cuda: bool, steps: int) -> list:
    """The trace's events (torch FunctionEvents) of ``steps`` calls of ``step``, each inside a STEP_LABEL range."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            with record_function(STEP_LABEL):
                step()
        if cuda:  # the last step's kernels land in the trace; this sync lies outside every step's range
            torch.cuda.synchronize()
    return list(prof.events())


def step_spans(events: list) -> list[tuple[float, float]]:
    """(start, end) in µs of each profiled step's host range."""
    return [(e.time_range.start, e.time_range.end) for e in events
            if e.name == STEP_LABEL and e.device_type == torch.autograd.DeviceType.CPU]


def within(event, spans: list[tuple[float, float]]) -> bool:
    """Whether ``event`` starts inside one of the steps (by time: CUDA's backward runs on threads of its own)."""
    return any(start <= event.time_range.start <= end for start, end in spans)


def is_device_event(event) -> bool:
    """A kernel, memcpy or memset on the GPU's timeline."""
    return event.device_type == torch.autograd.DeviceType.CUDA and event.activity_type in DEVICE_ACTIVITIES


def aten_events(events: list, spans: list[tuple[float, float]]) -> list:
    """The host's aten ops inside the steps (not the annotations, autograd nodes and Python wrappers around them)."""
    return [e for e in events if e.name.startswith("aten::") and e.device_type == torch.autograd.DeviceType.CPU
            and within(e, spans)]


def category_of(name: str) -> str:
    """The KERNEL_CATEGORIES entry whose substring ``name`` holds first; the last category where none does."""
    lower = name.lower()
    for category in KERNEL_CATEGORIES:
        if any(sub in lower for sub in category["match"]):
            return category["name"]
    return KERNEL_CATEGORIES[-1]["name"]


def ancestors(event) -> Iterable:
    """The host events ``event`` runs inside, innermost first."""
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def category_shares(events: list, cuda: bool) -> dict[str, float]:
    """Percent of device time per category (every category, in the registry's order): GPU time of kernels and
    copies on CUDA, self time of aten ops on CPU."""
    totals = Counter({c["name"]: 0.0 for c in KERNEL_CATEGORIES})
    for e in events:
        if cuda:
            totals[category_of(e.name)] += e.time_range.end - e.time_range.start
        else:
            # a CPU AdamW runs plain aten ops (mul_, lerp_, addcdiv_): its annotation says they are the optimizer's
            in_optimizer = any(a.name.startswith("Optimizer.step") for a in ancestors(e))
            totals["optimizer" if in_optimizer else category_of(e.name)] += e.self_cpu_time_total
    whole = sum(totals.values())
    return {name: round(100 * t / whole, 1) if whole else 0.0 for name, t in totals.items()}


def host_syncs(events: list, spans: list[tuple[float, float]], cuda: bool) -> Counter:
    """The calls inside the steps that make the host wait for the device, counted by name."""
    if cuda:
        # the runtime's waits, named by the aten op that made them (.item() is aten::_local_scalar_dense, .cpu()
        # aten::copy_); an aten op on a host tensor issues none and is rightly not counted
        return Counter(sync_name(e) for e in events if e.name in RUNTIME_SYNCS and within(e, spans))
    return Counter(e.name for e in events if e.name in ATEN_SYNCS and within(e, spans) and not host_side(e))


def sync_name(event) -> str:
    """The innermost aten op around a runtime sync, or the runtime call itself (torch.cuda.synchronize())."""
    return next((a.name for a in ancestors(event) if a.name.startswith("aten::")), event.name)


def host_side(event) -> bool:
    """An aten sync op inside another (counted already) or inside an optimizer's host-side bookkeeping."""
    return any(a.name in ATEN_SYNCS or a.name.startswith(HOST_STATE_SCOPES) for a in ancestors(event))


def busy_pct(device_events: list, spans: list[tuple[float, float]]) -> float:
    """Percent of the profiled span (first step's start to the later of the last step's end and the last kernel's
    end) in which the GPU ran at least one kernel or copy."""
    if not spans:
        return 0.0
    start = min(begin for begin, _ in spans)
    # a kernel may start after its step's host range ended (launches are asynchronous): every kernel from the
    # first step on is the steps'
    intervals = sorted((e.time_range.start, e.time_range.end) for e in device_events if e.time_range.start >= start)
    if not intervals:
        return 0.0
    end = max(max(stop for _, stop in spans), max(stop for _, stop in intervals))
    return 100 * union_length(intervals) / (end - start) if end > start else 0.0


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by sorted (start, end) intervals, overlaps counted once (streams run side by side)."""
    covered, reach = 0.0, float("-inf")
    for start, end in intervals:
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def step_limit(figures: dict) -> str:
    """One sentence naming what limits the step, with the figure that says so: the host (a GPU busy below
    BUSY_LIMIT_PCT), host syncs, memory, the kernel mix, or else the matmuls themselves."""
    busy, syncs = figures["device_busy_pct"], figures["host_syncs_per_step"]
    shares = figures["categories"]
    if not any(shares.values()):
        return "no device time was recorded: the profiler saw no kernels (CUPTI unavailable?)"
    if busy is not None and busy < BUSY_LIMIT_PCT:
        return (f"the GPU waits on the host: idle {100 - busy:.0f} % of the step: launch overhead or host syncs "
                f"({syncs:g} per step); raise the micro-batch (data.batch_size=auto), model.compile, fewer syncs")
    if syncs > SYNC_LIMIT:
        named = ", ".join(f"{name} {n:g}" for name, n in figures["host_sync_ops"].items())
        return (f"host syncs: {syncs:g} per step ({named}), each waits for the GPU to drain its queue; keep values "
                f"on the device (no .item(), float(t), .tolist() or boolean-mask indexing inside the step)")
    peak, capacity = figures["peak_memory_gb"], figures["memory_capacity_gb"]
    if peak is not None and capacity and peak > MEMORY_LIMIT * capacity:
        return (f"memory: {peak:.1f} of {capacity:.1f} GiB, the micro-batch cannot grow; model.checkpoint trades "
                f"compute for memory")
    if shares["matmul"] < MATMUL_SHARE_PCT:
        return f"the kernel mix: matmuls {shares['matmul']:.0f} % of device time; {kernel_mix(shares)}"
    return (f"compute-bound: matmuls {shares['matmul']:.0f} % of device time (MFU is the figure to watch)")


def kernel_mix(shares: dict[str, float]) -> str:
    """The largest non-matmul categories with what cuts each, those sharing a remedy named together:
    "elementwise 35 %, normalization 12 %: model.compile fuses these"."""
    remedies = {c["name"]: c.get("remedy", "") for c in KERNEL_CATEGORIES}
    largest = sorted((name for name in shares if name != "matmul" and shares[name] > 0), key=shares.get,
                     reverse=True)[:NAMED_CATEGORIES]
    grouped: dict[str, list[str]] = {}
    for name in largest:
        grouped.setdefault(remedies[name], []).append(f"{name} {shares[name]:.0f} %")
    return "; ".join(f"{', '.join(names)}: {remedy}" for remedy, names in grouped.items())
