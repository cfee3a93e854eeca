"""GPU utilization while something runs, read through NVML: the SMs and the video decoder (NVDEC) side by side.

`nvidia-smi`'s "GPU-Util" is the share of time any kernel ran; it leaves NVDEC out, so a loader that saturates the
decoder looks idle there. NVML reports the decoder's own utilization.
"""

from __future__ import annotations

import logging
import statistics
import threading
from types import ModuleType

log = logging.getLogger(__name__)


def load_nvml() -> ModuleType | None:
    """pynvml (package nvidia-ml-py), initialized; None without it or without an NVIDIA driver."""
    try:
        import pynvml  # optional (nvidia-ml-py): without it there is simply nothing to sample

        pynvml.nvmlInit()
        return pynvml
    except Exception as err:  # ImportError, or NVMLError without a driver: no GPU to watch
        log.debug("NVML unavailable: %s", err)
        return None


class DeviceUtilization:
    """A context that samples SM and decoder utilization (percent) of GPU ``index`` every ``period`` seconds;
    ``summary()`` is None where NVML cannot be read (no GPU, no driver, no nvidia-ml-py)."""

    def __init__(self, index: int = 0, period: float = 0.2, nvml: ModuleType | None = None):
        self.index, self.period = index, period
        self.nvml = nvml
        self.sm: list[float] = []
        self.decoder: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "DeviceUtilization":
        self.nvml = self.nvml or load_nvml()
        if self.nvml is not None:
            handle = self.nvml.nvmlDeviceGetHandleByIndex(self.index)
            self._thread = threading.Thread(target=self._sample, args=(handle,), daemon=True, name="nvml")
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self, handle) -> None:
        while True:
            self.read(handle)
            if self._stop.wait(self.period):
                self.read(handle)  # one last reading: a short stage still gets one
                return

    def read(self, handle) -> None:
        try:
            self.sm.append(float(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            self.decoder.append(float(self.nvml.nvmlDeviceGetDecoderUtilization(handle)[0]))
        except Exception as err:  # a GPU that does not report one of them (some MIG modes): stop reading
            log.warning("NVML stopped reporting utilization: %s", err)
            self._stop.set()

    def summary(self) -> dict | None:
        if not self.sm:
            return None
        return {"sm_util_pct": round(statistics.fmean(self.sm), 1),
                "decoder_util_pct": round(statistics.fmean(self.decoder), 1),
                "decoder_util_max_pct": max(self.decoder), "samples": len(self.sm)}
