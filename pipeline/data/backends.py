"""The registries of loader backends (``data.backend``) and CPU decoders (``data.cpu_decoder``), by name.

A new backend or decoder is its own module and one line here. Each name maps to ``"module:attribute"``, imported
only when chosen: reading, validating or printing a config (``--help``) imports neither torch, DALI nor a decoder.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations only: importing them would import torch and PyAV
    from vmae.pipeline.data.decode import FrameDecoder
    from vmae.pipeline.data.protocol import LoaderFactory

AUTO = "auto"  # data.backend: hybrid when this machine has CUDA and DALI, the CPU path otherwise

# data.backend → a class implementing vmae.pipeline.data.protocol.Loader
LOADERS: dict[str, str] = {
    "dali": "vmae.pipeline.data.dali_loader:DaliLoader",  # DALI pipelines: NVDEC (CPU decoder for VP9) → GPU crops
    "cpu": "vmae.pipeline.data.cpu_loader:CpuLoader",  # torch DataLoader workers with a seeking CPU decoder
    "hybrid": "vmae.pipeline.data.hybrid_loader:HybridLoader",  # both at once, batches shared by speed
}

# data.cpu_decoder → a function implementing vmae.pipeline.data.decode.FrameDecoder
CPU_DECODERS: dict[str, str] = {
    "torchcodec": "vmae.pipeline.data.decode:torchcodec_frames",
    "pyav": "vmae.pipeline.data.decode:pyav_frames",
}

BACKEND_NAMES: tuple[str, ...] = (AUTO, *LOADERS)
CPU_DECODER_NAMES: tuple[str, ...] = tuple(CPU_DECODERS)


@lru_cache(maxsize=None)
def resolve(spec: str) -> object:
    """The attribute a registry entry ``"module:attribute"`` names, its module imported now."""
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


def loader_class(backend: str) -> LoaderFactory:
    """The loader class registered as ``backend`` (not ``auto``: pick a backend first)."""
    if backend not in LOADERS:
        raise ValueError(f"data.backend={backend!r} names no loader; choose one of {', '.join(LOADERS)}")
    return resolve(LOADERS[backend])


def cpu_decoder(name: str) -> FrameDecoder:
    """The frame decoder registered as ``name``."""
    if name not in CPU_DECODERS:
        raise ValueError(f"data.cpu_decoder={name!r} names no decoder; choose one of {', '.join(CPU_DECODERS)}")
    return resolve(CPU_DECODERS[name])


def dali_available() -> bool:
    """Whether NVIDIA DALI can be imported here."""
    try:
        import nvidia.dali  # noqa: F401 - optional and heavy: imported only to see whether it is installed
    except ImportError:
        return False
    return True


# codecs each decoder reads, as the shards' samples name them (ffprobe's codec names)
NVDEC_CODECS = ("h264", "hevc", "vp9", "vp8", "av1")  # DALI's mixed decoder: 8-bit 4:2:0
DALI_CPU_CODECS = ("vp9", "vp8", "mjpeg")  # DALI 2.4's CPU video decoder: no H.264 or HEVC

# NVDEC engines per GPU, by the name NVML gives (the longest name that appears in it wins): NVIDIA's video codec
# support matrix; one DALI pipeline keeps about one engine busy, so this is data.pipelines' default
NVDEC_ENGINES: dict[str, int] = {"A100": 5, "A30": 4, "H100": 7, "H200": 7, "GH200": 7, "B200": 7, "L4": 4,
                                 "L40": 3, "L40S": 3, "A10": 2, "T4": 2}


def nvdec_engines(gpu_name: str) -> int | None:
    """NVDEC engines of the GPU called ``gpu_name`` (as NVML or torch name it), or None when not in the table."""
    known = [name for name in NVDEC_ENGINES if name in gpu_name.upper()]
    return NVDEC_ENGINES[max(known, key=len)] if known else None


def suited_backends(codecs: dict[str, int], resolutions: dict[str, int], pframe_interval: int = 0) -> list[str]:
    """What a dataset of these codecs and frame sizes suits, one line per backend, with the reason: what `vmae
    shards inspect` prints."""
    names = set(codecs)
    lines = ["cpu (data.backend=cpu): every codec, on any machine" +
             (f"; clips on the stride's P-frames skip every B-frame when data.stride is a multiple of "
              f"{pframe_interval}" if pframe_interval else "")]
    if names <= set(NVDEC_CODECS):
        sizes = len(resolutions)
        lines.append("dali on a GPU (NVDEC): " + ("one frame size, so one decoder serves every video" if sizes == 1
                                                  else f"{sizes} frame sizes: DALI keeps an NVDEC decoder per codec "
                                                       "and size, and makes another whenever the size changes"))
    else:
        lines.append(f"not dali on a GPU: NVDEC does not decode {', '.join(sorted(names - set(NVDEC_CODECS)))}")
    if names <= set(DALI_CPU_CODECS):
        lines.append("dali without a GPU (DALI's CPU decoder; it does not seek: slower deep into long videos)")
    return lines
