"""The hybrid path: on a GPU host, the CPU path's decode workers and the DALI pipelines feed one stream together.

Both kinds take the rank's batches as they free up (``tickets``), so each makes a share of the stream in
proportion to its measured speed, and when one side slows (a busy host, a GPU decoder stalled) the other takes
more at once; the merge hands the batches out in order. Batch g holds the same samples and the same views
whichever side makes it, so the stream is the one the CPU path alone and the DALI path alone give.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from vmae.pipeline.data.backends import AUTO
from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.cpu_loader import CpuLoader
from vmae.pipeline.data.dali_loader import DaliLoader, DaliStream
from vmae.pipeline.data.protocol import Batch
from vmae.pipeline.data.tickets import TicketsStopped

log = logging.getLogger(__name__)

MIN_SHARE = 0.1  # data.backend=auto: a side making less of the first batches than this is stopped
SIDES = {"cpu": "CPU decode workers", "dali": "DALI pipelines"}


class HybridLoader(DaliLoader):
    """DALI pipelines and CPU decode workers, one stream; ``stats.made_by`` says who made how many batches."""

    backend = "hybrid"

    def __init__(self, dataset: Path | str, cfg: DataConfig, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", accumulation: int = 1):
        super().__init__(dataset, cfg, rank, world_size, device, accumulation)
        self.cpu = CpuLoader(dataset, cfg, rank, world_size, device, accumulation)
        self.cpu.stats = self.stats  # one count of replaced samples and decode work

    def _open_stream(self, ticket: int) -> HybridStream:
        return HybridStream(self, ticket)

    def __iter__(self) -> Iterator[Batch]:
        before = dict(self.stats.made_by)
        for batch in super().__iter__():
            yield batch
            if self.cfg.backend == AUTO and self._stream is not None and not self._stream.decided:
                self._stream.decide()
        made = {name: n - before.get(name, 0) for name, n in self.stats.made_by.items()}
        total = sum(made.values()) or 1
        log.info("loader: this epoch's batches were made by %s", ", ".join(
            f"{name} {100 * n / total:.0f} %" for name, n in sorted(made.items())))

    def close(self) -> None:
        super().close()
        self.cpu.close()


class HybridStream(DaliStream):
    """The DALI pipelines of ``DaliStream`` and, on a thread of its own, the CPU path's workers taking the same
    tickets."""

    def __init__(self, loader: HybridLoader, start: int):
        super().__init__(loader, start)
        self.closed = self.decided = False
        self.made_before = dict(loader.stats.made_by)
        self.cpu = loader.cpu
        self.cpu.tickets = self.tickets
        # the CPU path's own abandon (not a previous stream's wrapper of it), then this stream's give-back
        self.cpu._abandon = self._restart_cpu_workers(functools.partial(CpuLoader._abandon, self.cpu))
        self.cpu_thread = threading.Thread(target=self._run_cpu_workers, daemon=True, name="vmae-hybrid-cpu")
        self.cpu_thread.start()

    def producers(self) -> int:
        return self.loader.pipelines + self.loader.cfg.worker_count

    def _run_cpu_workers(self) -> None:
        """Put the CPU workers' batches into the merge, as they come."""
        if self.cpu.device.type == "cuda":
            torch.cuda.set_device(self.cpu.device)  # uint8 clips are copied and normalized on this thread
        try:
            self.cpu._stream = (self.cpu._start((0, 0)), (0, 0))
            while not self.closed:
                batch = self.cpu.on_device(self.cpu.received(self.cpu._next_batch()))
                batch["stats"]["made_by"] = "cpu"
                self.merge.put(batch.pop("ticket"), batch)
        except (StopIteration, TicketsStopped):
            return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, who raises it
            if not self.closed:
                self.merge.fail(err)

    def _restart_cpu_workers(self, abandon):
        """The CPU path's abandon (workers killed and restarted), and the batches the killed workers held given
        back: every ticket taken and neither delivered nor held by a DALI pipeline (a batch made twice is handed
        out once)."""
        def abandon_and_give_back(overdue):
            abandon(overdue)
            self._give_back_lost()
        return abandon_and_give_back

    def decide(self) -> None:
        """``data.backend=auto``: once the first batches are made (4 a producer), a side that made under
        ``MIN_SHARE`` of them is stopped, its cores or decoders left to the other side, and why is logged."""
        made = {name: n - self.made_before.get(name, 0) for name, n in self.loader.stats.made_by.items()}
        total = sum(made.values())
        if total < 4 * self.producers():
            return
        self.decided = True
        cpu = made.get("cpu", 0)
        for side, share in (("cpu", cpu / total), ("dali", 1 - cpu / total)):
            if share < MIN_SHARE:
                log.info("loader (data.backend=auto): the %s made %d of the first %d batches (%.0f %%): stopped; "
                         "the %s continue alone", SIDES[side], round(share * total), total, 100 * share,
                         SIDES["dali" if side == "cpu" else "cpu"])
                self.stop_cpu_workers() if side == "cpu" else self.stop_pipelines()
                return
        log.info("loader (data.backend=auto): of the first %d batches the CPU workers made %.0f %%, the DALI "
                 "pipelines %.0f %%: both go on", total, 100 * cpu / total, 100 - 100 * cpu / total)

    def stop_cpu_workers(self) -> None:
        self.closed = True
        self.cpu.close()
        self._give_back_lost()

    def stop_pipelines(self) -> None:
        for worker in self.workers:
            worker.abandon()  # each ends at its next request for a batch
        self.tickets.give_back([fed.ticket for worker in self.workers for fed in list(worker.fed)])
        self.workers = []

    def _give_back_lost(self) -> None:
        """Every ticket taken and neither delivered nor held by a DALI pipeline: the CPU workers held it."""
        held = {fed.ticket for worker in self.workers for fed in list(worker.fed)}
        arrived = set(self.merge.waiting)
        self.tickets.give_back([t for t in range(self.merge.next_ticket, self.tickets.taken)
                                if t not in held and t not in arrived])

    def close(self) -> None:
        self.closed = True
        super().close()
        self.cpu.close()
        self.cpu_thread.join(timeout=30)
