"""Tickets and the merge: several producers (DALI pipelines, CPU workers) make one stream, in order."""

import os
import signal
import threading
import time

import pytest

from vmae.pipeline.data.backends import nvdec_engines
from vmae.pipeline.data.tickets import Merge, Tickets, TicketsStopped


def test_producers_take_each_ticket_once_and_the_merge_hands_them_out_in_order():
    tickets = Tickets(start=10, window=4)
    merge = Merge(tickets)
    taken: list[int] = []

    def produce(delay: float):
        while True:
            try:
                t = tickets.take()
            except TicketsStopped:
                return
            taken.append(t)
            time.sleep(delay)  # a slow and a fast producer: the fast one takes more
            merge.put(t, f"batch {t}")

    threads = [threading.Thread(target=produce, args=(d,), daemon=True) for d in (0.001, 0.02)]
    for t in threads:
        t.start()
    out = [merge.next(timeout=5) for _ in range(40)]
    tickets.stop()
    assert out == [f"batch {t}" for t in range(10, 50)]
    assert len(taken) == len(set(taken))  # no ticket twice
    assert tickets.taken <= 50 + 4  # never more than the window ahead of the merge


def test_a_given_back_ticket_is_taken_first_and_a_batch_made_twice_is_handed_out_once():
    tickets = Tickets(start=0, window=8)
    merge = Merge(tickets)
    assert [tickets.take() for _ in range(3)] == [0, 1, 2]
    tickets.give_back([1, 0])
    assert [tickets.take() for _ in range(3)] == [0, 1, 3]
    for t, name in ((1, "b"), (0, "a"), (0, "a again"), (2, "c")):
        merge.put(t, name)
    assert [merge.next(timeout=1) for _ in range(3)] == ["a", "b", "c"]
    assert merge.next(timeout=0.1) is None  # 3 was taken, not made yet


def test_a_producer_killed_while_holding_the_lock_does_not_block_the_others():
    """Forked CPU workers take tickets too; the kernel drops a dead process's record lock."""
    tickets = Tickets(start=0, window=100)
    pid = os.fork()
    if pid == 0:  # the child takes the lock and dies holding it
        tickets._locked().__enter__()
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    done = []
    thread = threading.Thread(target=lambda: done.append(tickets.take()), daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert done == [0]


def test_a_stopped_stream_ends_its_waiting_producers():
    tickets = Tickets(start=0, window=1)
    tickets.take()
    ended = []

    def wait_for_room():
        try:
            tickets.take()  # the window is full: waits
        except TicketsStopped:
            ended.append(True)

    thread = threading.Thread(target=wait_for_room, daemon=True)
    thread.start()
    time.sleep(0.05)
    tickets.stop()
    thread.join(timeout=5)
    assert ended == [True]


def test_a_failing_producer_is_raised_to_the_consumer():
    merge = Merge(Tickets(start=0, window=2))
    merge.fail(ValueError("pipeline 3: out of decoder sessions"))
    with pytest.raises(ValueError, match="out of decoder sessions"):
        merge.next(timeout=1)


@pytest.mark.parametrize("name, engines", [("NVIDIA H100 80GB HBM3", 7), ("NVIDIA H200", 7), ("NVIDIA GH200 480GB", 7),
                                           ("NVIDIA A100-SXM4-80GB", 5), ("NVIDIA L40S", 3), ("NVIDIA L4", 4),
                                           ("NVIDIA GeForce RTX 4090", None)])
def test_nvdec_engines_by_gpu_name(name, engines):
    assert nvdec_engines(name) == engines
