"""The explorer's job queue (explorer.jobs) with real threads: FIFO order, the positions each
waiter is told, the bound on waiters and the slot released when a job fails."""
from __future__ import annotations

import threading
import time

import pytest

from explorer.jobs import JobQueue, QueueFull

WAIT = 30  # s: only a guard against a hung test, never reached when the queue works


def wait_until(queue: JobQueue, running: int, waiting: int) -> None:
    """Block until the queue holds ``running`` and ``waiting`` jobs (woken by its condition)."""
    with queue._cond:
        assert queue._cond.wait_for(lambda: (queue._running, len(queue._waiting)) == (running, waiting),
                                    WAIT), queue.snapshot()


def told(holder: "Holder", ahead: int) -> None:
    """Block until ``holder``'s waiting thread has been told it has ``ahead`` jobs ahead."""
    deadline = time.monotonic() + WAIT
    while not (holder.positions and holder.positions[-1] == ahead):
        assert time.monotonic() < deadline, (holder.positions, ahead)
        time.sleep(0.001)


class Holder:
    """A thread that takes a slot and keeps it until released (or raises inside it)."""

    def __init__(self, queue: JobQueue, name: str, log: list, fail: bool = False):
        self.release = threading.Event()
        self.positions: list[int] = []
        self.error: BaseException | None = None

        def run():
            try:
                with queue.slot(on_wait=self.positions.append, poll=0.05) as info:
                    log.append(name)
                    self.info = info
                    assert self.release.wait(WAIT)
                    if fail:
                        raise RuntimeError(f"{name} failed")
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertions
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def finish(self):
        self.release.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


def test_first_job_runs_at_once_and_is_never_told_to_wait():
    queue, log = JobQueue(), []
    a = Holder(queue, "a", log)
    wait_until(queue, 1, 0)
    a.finish()
    assert log == ["a"] and a.positions == [] and a.info["max_ahead"] == 0 and a.error is None
    assert queue.snapshot() == (0, 0)


def test_waiters_run_in_arrival_order_and_see_their_positions():
    queue, log = JobQueue(max_waiting=4), []
    holders = [Holder(queue, "a", log)]
    wait_until(queue, 1, 0)
    for k, name in enumerate("bcde", start=1):
        holders.append(Holder(queue, name, log))
        wait_until(queue, 1, k)  # arrival order is fixed before the next one starts
    for k, h in enumerate(holders[1:], start=1):
        assert h.positions[0] == k  # k jobs ahead: the running one and k - 1 waiters
    for k, h in enumerate(holders):
        h.finish()
        if k + 1 < len(holders):
            wait_until(queue, 1, len(holders) - k - 2)
            # each waiter reports its new place from its own thread, outside the queue's lock:
            # let every one of them do so before the line moves again
            for j in range(k + 2, len(holders)):
                told(holders[j], j - k - 1)
    assert log == list("abcde")
    for k, h in enumerate(holders[1:], start=1):
        # told every position from k down to 1, in that order (repeats while nothing moves)
        assert sorted(set(h.positions), reverse=True) == list(range(k, 0, -1))
        assert h.positions == sorted(h.positions, reverse=True)
        assert h.info["max_ahead"] == k and h.error is None
    assert queue.snapshot() == (0, 0)


def test_a_full_queue_refuses_the_next_waiter_with_a_message():
    queue, log = JobQueue(max_waiting=4), []
    holders = [Holder(queue, "running", log)]
    wait_until(queue, 1, 0)
    for k in range(1, 5):
        holders.append(Holder(queue, f"w{k}", log))
        wait_until(queue, 1, k)
    with pytest.raises(QueueFull, match="the server is busy: 4 uploads are waiting; try again "
                                        "in a minute"):
        with queue.slot():
            pytest.fail("a fifth waiter must not get a slot")
    assert queue.snapshot() == (1, 4)  # the refused one left no trace
    for h in holders:
        h.finish()
    assert log == ["running", "w1", "w2", "w3", "w4"]
    with queue.slot() as info:  # and the queue works again
        assert info["max_ahead"] == 0


def test_the_slot_is_released_when_the_holder_raises():
    queue, log = JobQueue(), []
    a = Holder(queue, "a", log, fail=True)
    wait_until(queue, 1, 0)
    b = Holder(queue, "b", log)
    wait_until(queue, 1, 1)
    a.finish()
    assert isinstance(a.error, RuntimeError)
    wait_until(queue, 1, 0)  # b took the slot
    b.finish()
    assert log == ["a", "b"] and b.error is None and b.positions[0] == 1
    assert queue.snapshot() == (0, 0)


def test_a_waiter_that_gives_up_leaves_the_queue():
    """A session stopped while waiting (Streamlit raises from its next call, here on_wait)."""
    queue, log = JobQueue(), []
    a = Holder(queue, "a", log)
    wait_until(queue, 1, 0)

    class Stop(Exception):
        pass

    def give_up(ahead):
        raise Stop

    with pytest.raises(Stop):
        with queue.slot(on_wait=give_up):
            pytest.fail("must not run")
    assert queue.snapshot() == (1, 0)
    a.finish()
    assert queue.snapshot() == (0, 0)
