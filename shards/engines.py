"""Where the inputs are processed: a local pool of worker processes, or Ray tasks on a cluster; the results come
back in plan order, the workers kept a bounded window ahead of the reader."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from vmae.shards.config import ShardConfig
from vmae.shards.plan import PlannedItem
from vmae.shards.state import kept_result
from vmae.shards.worker import die_with_parent, process_item

WORKER_MODULE = process_item.__module__  # what the forkserver imports once for all workers


def results(items: list[PlannedItem], offset: int, cfg: ShardConfig,
            items_dir: Path) -> Iterator[tuple[int, dict]]:
    """Each input's result with its plan position (from ``offset``), in plan order; an input processed before
    (by a killed run, or by a --part) is read back, not processed again."""
    engine = _ray_tasks if cfg.engine == "ray" else _local_pool
    with engine(cfg, items_dir) as (submit, wait, width):

        def start(item: PlannedItem) -> tuple[bool, object]:
            kept = kept_result(items_dir, item.key)
            return (True, kept) if kept is not None else (False, submit(item))

        todo = iter(enumerate(items, start=offset))
        window: deque[tuple[int, tuple[bool, object]]] = deque()
        for index, item in todo:
            window.append((index, start(item)))
            if len(window) >= width:
                break
        while window:
            index, (ready, handle) = window.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                window.append((nxt[0], start(nxt[1])))
            yield index, handle if ready else wait(handle)


@contextlib.contextmanager
def _local_pool(cfg: ShardConfig, items_dir: Path) -> Iterator[tuple[Callable, Callable, int]]:
    """A process pool, started only when an input needs processing: (submit, wait, window width)."""
    workers = cfg.workers or os.cpu_count() or 1
    with contextlib.ExitStack() as stack:
        pool: list[ProcessPoolExecutor] = []

        def submit(item: PlannedItem) -> Future:
            if not pool:
                # forkserver: workers start lean (no torch, no open shard files) whatever this process imported
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload([WORKER_MODULE])  # imported once in the server, not in every worker
                pool.append(stack.enter_context(ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                                                    initializer=die_with_parent)))
            return pool[0].submit(process_item, item, cfg, items_dir)

        yield submit, Future.result, 2 * workers + 2


@contextlib.contextmanager
def _ray_tasks(cfg: ShardConfig, items_dir: Path) -> Iterator[tuple[Callable, Callable, int]]:
    """One Ray task per input (Ray reschedules those of a lost node) on the cluster at $RAY_ADDRESS, else a
    local Ray: (submit, wait, window width). Workers on other nodes need the output folder on a shared
    filesystem."""
    import ray  # optional and heavy: only the Ray engine needs it

    address = os.environ.get("RAY_ADDRESS")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, num_cpus=None if address else cfg.workers or os.cpu_count(),
                 include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=cfg.threads_per_worker, max_retries=3)(process_item)
        width = 2 * int(ray.cluster_resources().get("CPU", 1)) + 2
        yield (lambda item: task.remote(item, cfg, items_dir)), ray.get, width
    finally:
        if started_here:
            ray.shutdown()
