"""The one thread that decodes requests in turn, a bounded queue in front of it, and cancellation.

A request becomes a Job. The worker thread runs the job's work, which hands events (text pieces) to the
event loop through an asyncio queue, so a waiting request holds no thread. A job whose client went
away is skipped if it has not started and stopped at its next token if it has: nobody waits behind work
whose client is gone for more than one decoding step.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable

from chatforge.serve.errors import ApiError


class Cancelled(Exception):
    """Raised in the worker thread (inside on_token) to end the generation of a job that was cancelled."""


class Job:
    """One request's generation, seen from both sides: the worker thread puts events, the request reads them."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled_at: float | None = None  # monotonic time of cancel(), None while wanted

    def cancel(self) -> None:
        """The client is gone (or has what it needs): stop at the next token. Safe from any thread."""
        if self.cancelled_at is None:
            self.cancelled_at = time.monotonic()

    def check(self) -> None:
        """Raise Cancelled if the job was cancelled; the work calls this for every token."""
        if self.cancelled_at is not None:
            raise Cancelled

    def put(self, event: tuple) -> None:
        """Hand an event to the request (from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the event loop has closed (server shut down): nobody is listening
            pass

    async def events(self) -> AsyncIterator[tuple]:
        """The work's events until it ends; an exception in the work is raised here."""
        while True:
            event = await self.queue.get()
            if event[0] == "done":
                return
            if event[0] == "failed":
                raise event[1]
            yield event


class Worker:
    """One thread running jobs in turn; at most `max_queue` jobs wait for it, more get 429."""

    def __init__(self, max_queue: int):
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatforge-generate")
        self.max_queue = max_queue
        self.waiting = 0  # jobs submitted and not started
        self.lock = threading.Lock()
        # for tests and benchmarks/chat_api_load.py: (cancel, end) of work done after its client left,
        # and the number of jobs skipped because their client left while they waited
        self.abandoned_work: collections.deque = collections.deque(maxlen=10_000)
        self.skipped = 0

    def check_room(self) -> None:
        """Raise ApiError(429) with Retry-After when `max_queue` jobs are already waiting."""
        if self.waiting >= self.max_queue:
            raise ApiError(429, f"the server is busy: {self.waiting} requests are waiting for the model; "
                                "retry after a second", code="rate_limit_exceeded", headers={"Retry-After": "1"})

    def submit(self, job: Job, work: Callable[[Job], None]) -> None:
        """Queue `work(job)` for the worker thread (or raise ApiError(429) when the queue is full)."""
        with self.lock:
            self.check_room()
            self.waiting += 1
        self.executor.submit(self._run, job, work)

    def _run(self, job: Job, work: Callable[[Job], None]) -> None:
        with self.lock:
            self.waiting -= 1
        event: tuple = ("done",)
        if job.cancelled_at is not None:  # a client that left while waiting costs nothing
            self.skipped += 1
            job.put(event)
            return
        start = time.monotonic()
        try:
            work(job)
        except Cancelled:
            pass
        except BaseException as exc:  # raised in the request's task by Job.events
            event = ("failed", exc)
        end = time.monotonic()
        # read before the request can see "done": a cancel() after that is no abandoned work
        if job.cancelled_at is not None and start <= job.cancelled_at < end:
            self.abandoned_work.append((job.cancelled_at, end))
        job.put(event)
