"""The CPU path's decode workers: how each starts, the watch on what each is loading, and how they are killed.

A decode that never returns (decord spins forever, holding the GIL, on a container that over-reports its frame
count) cannot hang the run: each worker notes in shared memory which sample it is loading and since when
(``WorkerWatch``); the trainer's process, while it waits for a batch, finds a sample past
``data.decode_deadline`` and kills the workers (``kill_workers``), then restarts them without that sample.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import time
from collections.abc import Iterator

import numpy as np
from torch.utils.data import get_worker_info
from torch.utils.data._utils import signal_handling

from vmae.pipeline.data.shardset import SampleRef


class WorkerWatch:
    """Which sample each decode worker is loading and since when (pid, shard, row, start), in shared memory.

    A decoder stuck in C with the GIL held leaves nothing inside its worker able to notice; the trainer's
    process reads these slots instead."""

    def __init__(self, workers: int):
        # anonymous shared memory, inherited by the forked workers: nothing in /dev/shm to outlive them
        self.slots = np.frombuffer(mmap.mmap(-1, workers * 4 * 8), dtype=np.float64).reshape(workers, 4)

    @contextlib.contextmanager
    def loading(self, ref: SampleRef) -> Iterator[None]:
        """In a worker: mark ``ref`` as being loaded for as long as the block runs."""
        info = get_worker_info()
        slot = self.slots[info.id] if info else None
        if slot is not None:
            slot[:3] = os.getpid(), ref.shard, ref.row
            slot[3] = time.monotonic()  # written last and cleared first: a reader never sees a half-made slot
        try:
            yield
        finally:
            if slot is not None:
                slot[3] = 0.0

    def overdue(self, deadline: float) -> list[tuple[SampleRef, float]]:
        """Samples whose load has run longer than ``deadline`` seconds, with how long."""
        now = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
        return [(SampleRef(int(shard), int(row)), now - started) for _, shard, row, started in self.slots.tolist()
                if started and now - started > deadline]


def kill_workers(iterator: Iterator) -> None:
    """SIGKILL every worker of a DataLoader iterator: one stuck in C ignores anything milder (and they ignore
    SIGTERM on purpose, see ``init_worker``). Their pids are first taken off torch's SIGCHLD watch, which would
    otherwise raise the deaths in this process at a random point (torch's private API: tests/test_loader.py
    pins the behaviour).

    torch's own ``_shutdown_workers`` is not called after the kill: it sets a multiprocessing Event whose lock a
    worker killed inside ``is_set()`` still holds, and would wait on it forever (seen in CI). Its other steps are
    done here: the pin-memory thread stopped before the kill (it reads what the workers write), the queues closed
    without joining their feeder threads after it."""
    if getattr(iterator, "_shutdown", True):
        return
    if getattr(iterator, "_worker_pids_set", False):
        signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False
    if hasattr(iterator, "_pin_memory_thread"):
        iterator._pin_memory_thread_done_event.set()  # a threading.Event: no lock a worker could hold
        iterator._worker_result_queue.put((None, None))  # wake it if it waits for a batch
        iterator._pin_memory_thread.join(timeout=10)
    workers = getattr(iterator, "_workers", [])
    for worker in workers:
        if worker.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
    for worker in workers:
        worker.join(timeout=10)
    iterator._shutdown = True  # torch's __del__ then leaves it alone
    for queue in [*getattr(iterator, "_index_queues", []), iterator._worker_result_queue]:
        queue.cancel_join_thread()
        queue.close()


def init_worker(worker_id: int, nice: int) -> None:
    """A decode worker's start: it ignores SIGTERM and gives up ``nice`` of CPU priority."""
    # SLURM signals every process of a job before preemption: the workers keep serving batches while the
    # trainer writes its checkpoint, and leave when it shuts the DataLoader down
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if nice:  # on a CPU-only machine the model's threads then preempt decoding that is ahead of them
        os.nice(nice)
