"""Several producers, one stream: tickets say which batch of the rank's stream each producer makes next, and the
merge hands the batches out in ticket order.

A ticket is a batch's number in the rank's stream (epoch x batches per epoch + batch). Producers (DALI pipelines,
CPU decode workers) take the next ticket whenever they can start a batch, so each makes a share of the stream in
proportion to its speed, and a producer that slows takes fewer; since batch g always holds the same samples, the
stream does not depend on who made which batch, and a resumed run starts again at a ticket.

Tickets live in anonymous shared memory, so forked decode workers take them too. The lock is a POSIX record lock
(``lockf``) on a private file beside a thread lock: the kernel releases a record lock when its process dies, so a
worker killed while holding it cannot block the others (a multiprocessing lock would stay held).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterable

import numpy as np

REDO_SLOTS = 256  # tickets given back (a batch that must be made again) waiting to be taken first
NEXT, YIELDED, STOPPED, REDOS = range(4)


class TicketsStopped(Exception):
    """The stream was closed: a producer waiting for a ticket ends."""


class Tickets:
    """Batch numbers from ``start`` on, at most ``window`` ahead of the last one handed out (bounding what waits in
    the merge), shared by threads and forked processes; tickets given back are taken again first, lowest first."""

    def __init__(self, start: int, window: int):
        self.window = window
        self.memory = np.frombuffer(mmap.mmap(-1, 8 * (4 + REDO_SLOTS)), dtype=np.int64)
        self.memory[NEXT] = self.memory[YIELDED] = start
        self._thread_lock = threading.Lock()
        handle, path = tempfile.mkstemp(prefix="vmae-tickets-")
        os.unlink(path)  # nothing left on disk: the open file is all the lock needs
        os.write(handle, b"\0")
        self._file = handle

    def _locked(self):
        tickets = self

        class Held:
            def __enter__(self):
                tickets._thread_lock.acquire()
                fcntl.lockf(tickets._file, fcntl.LOCK_EX)

            def __exit__(self, *_):
                fcntl.lockf(tickets._file, fcntl.LOCK_UN)
                tickets._thread_lock.release()

        return Held()

    def take(self, wait: bool = True, poll: float = 0.002, longest_poll: float = 0.05) -> int:
        """The next batch to make (a given-back one first); waits while the stream is ``window`` ahead of the
        merge, unless ``wait`` is False: a producer holding a batch inside the window must not wait (the merge may
        be waiting for it; its own prefetch depth bounds how far past the window it goes). Raises TicketsStopped
        once the stream is closed. The wait polls, more slowly the longer it lasts (a stream left open after its
        last batch then costs its process little)."""
        while True:
            with self._locked():
                m = self.memory
                if m[STOPPED]:
                    raise TicketsStopped
                if m[REDOS]:
                    redo = m[4:4 + m[REDOS]]
                    low = int(np.argmin(redo))
                    ticket = int(redo[low])
                    redo[low] = redo[m[REDOS] - 1]
                    m[REDOS] -= 1
                    return ticket
                if m[NEXT] < m[YIELDED] + self.window or not wait:
                    m[NEXT] += 1
                    return int(m[NEXT] - 1)
            time.sleep(poll)
            poll = min(2 * poll, longest_poll)

    def give_back(self, tickets: Iterable[int]) -> None:
        """Batches taken but not delivered (their producer failed or was abandoned): made again, by anyone."""
        with self._locked():
            m = self.memory
            for ticket in tickets:
                if m[REDOS] == REDO_SLOTS:
                    raise RuntimeError(f"more than {REDO_SLOTS} batches are waiting to be made again")
                m[4 + m[REDOS]] = ticket
                m[REDOS] += 1

    def handed_out(self, ticket: int) -> None:
        """The merge has handed out every batch below ``ticket``."""
        self.memory[YIELDED] = ticket

    def stop(self) -> None:
        self.memory[STOPPED] = 1

    @property
    def taken(self) -> int:
        """Tickets handed to producers so far (the next new one)."""
        return int(self.memory[NEXT])


class Merge:
    """Batches from several producers, handed out in ticket order.

    Producers ``put`` (ticket, batch) from their own threads; ``next`` waits for the next ticket's batch, at most
    ``timeout`` seconds a time, so that the caller can look for hung producers in between."""

    def __init__(self, tickets: Tickets):
        self.tickets = tickets
        self.arrived: queue.SimpleQueue = queue.SimpleQueue()
        self.waiting: dict[int, object] = {}
        self.next_ticket = int(tickets.memory[YIELDED])

    def put(self, ticket: int, batch: object) -> None:
        self.arrived.put((ticket, batch))

    def fail(self, error: BaseException) -> None:
        """A producer cannot go on: the consumer raises ``error`` at its next ``next``."""
        self.arrived.put((None, error))

    def next(self, timeout: float) -> object | None:
        """The next batch in ticket order, or None when it has not arrived within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.next_ticket not in self.waiting:
            try:
                ticket, batch = self.arrived.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                return None
            if ticket is None:
                raise batch
            if ticket >= self.next_ticket:  # a batch made twice (given back after all) is handed out once
                self.waiting.setdefault(ticket, batch)
        batch = self.waiting.pop(self.next_ticket)
        self.next_ticket += 1
        self.tickets.handed_out(self.next_ticket)
        return batch
