"""A process-wide, bounded FIFO queue for the explorer's heavy work (embedding uploads).

One job holds the slot at a time (an embedding already uses every core of this machine; two at
once only make both slower and starve the pages of other sessions); at most ``max_waiting``
more wait, in arrival order, and each waiter is told how many jobs are ahead of it. A full queue
refuses at once with a readable message, so the session goes on instead of piling up work.

The page gets one queue per server process through ``st.cache_resource``; this module has no
Streamlit import so it can be tested with plain threads.
"""
from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from precompute.errors import Task2VecError

MAX_WAITING = 4


class QueueFull(Task2VecError):
    """The queue already holds ``max_waiting`` waiters."""


class JobQueue:
    """``with queue.slot(on_wait=...) as info:`` runs the block when it is this job's turn.

    ``on_wait(ahead)`` is called in the waiting thread whenever the number of jobs ahead
    (the running one included) changes, and every ``poll`` seconds otherwise so a caller can
    refresh its display or notice it was cancelled (an exception raised by ``on_wait`` leaves
    the queue cleanly). The slot is always released, also when the block raises.
    """

    def __init__(self, slots: int = 1, max_waiting: int = MAX_WAITING):
        self.slots = slots
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._waiting: list[int] = []  # tickets in arrival order
        self._running = 0
        self._tickets = itertools.count()

    def snapshot(self) -> tuple[int, int]:
        """(running, waiting) right now."""
        with self._cond:
            return self._running, len(self._waiting)

    def _ahead(self, ticket: int) -> int:
        return self._running + self._waiting.index(ticket)

    @contextmanager
    def slot(self, on_wait: Callable[[int], None] = lambda ahead: None,
             poll: float = 0.5) -> Iterator[dict]:
        info = {"max_ahead": 0, "waited": 0.0}
        t0 = time.perf_counter()
        with self._cond:
            must_wait = self._running >= self.slots or self._waiting
            if must_wait and len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"the server is busy: {len(self._waiting)} uploads are waiting; "
                                "try again in a minute")
            ticket = next(self._tickets)
            self._waiting.append(ticket)
            self._cond.notify_all()  # observers (tests, status) see every change
        try:
            last = None
            while True:
                with self._cond:
                    ahead = self._ahead(ticket)
                    if ahead >= self.slots and ahead == last:
                        self._cond.wait(poll)  # woken when a job leaves, or after poll s
                        ahead = self._ahead(ticket)
                    if ahead < self.slots:  # first in line and a slot is free
                        self._waiting.remove(ticket)
                        self._running += 1
                        self._cond.notify_all()
                        break
                info["max_ahead"] = max(info["max_ahead"], ahead)
                on_wait(ahead)  # outside the lock: it may be slow, or raise to leave the queue
                last = ahead
        except BaseException:
            with self._cond:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                    self._cond.notify_all()
            raise
        info["waited"] = time.perf_counter() - t0
        try:
            yield info
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()
