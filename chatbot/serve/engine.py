"""The server's scheduler: one thread runs a `BatchDecoder` over every request; asyncio handlers read events.

Requests wait in a bounded queue and join the running batch as soon as it has room for their
choices, even mid-way through other replies; a reply that finishes or is cancelled leaves at the
next step, freeing its rows for the queue. Token ids go back to each request's asyncio queue;
the handler turns them into text with `chatbot.generate.detokenize.ReplyText`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import Counter, deque
from dataclasses import dataclass, field

from chatbot.generate.batching import BatchDecoder, NewRows
from chatbot.generate.prompt import Prompt
from chatbot.options import SamplingOptions

log = logging.getLogger(__name__)

# Prompts prefilled in one forward pass hold at most this many tokens, padding included: enough
# that a CPU's matmuls run at full speed, few enough that the running replies pause briefly.
PREFILL_TOKENS = 2048


class QueueFull(Exception):
    """The server already holds --max-concurrent requests."""


@dataclass(eq=False)
class Job:
    """One request: a prompt, its options, one seed per choice, and where its events go.

    Events are lists of (choice index, token id, finished) from one step, or an Exception.
    """

    prompt: Prompt
    options: SamplingOptions
    seeds: list[int | None]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    id: int = field(default_factory=itertools.count().__next__)


class Engine:
    """Admit jobs, decode them together in a background thread, hand out their tokens."""

    def __init__(self, decoder: BatchDecoder, *, max_batch: int, max_pending: int):
        """Args:
            max_batch: rows (choices) decoded together.
            max_pending: jobs held at once, decoding or waiting; `submit` refuses more.
        """
        self._decoder = decoder
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: dict[int, tuple[Job, set[int]]] = {}  # job id -> (job, choices still decoding)
        self._removals: list[tuple[int, int]] = []  # (job id, choice) rows to drop before the next step
        self._closed = False
        self.finished: Counter[str] = Counter()  # rows ended, by reason: stop, length, cancelled
        self._thread = threading.Thread(target=self._run, name="chatbot-engine", daemon=True)
        self._thread.start()

    def stats(self) -> dict:
        """Requests decoding and waiting, and rows finished by reason."""
        with self._cond:
            return {"running": len(self._running), "waiting": len(self._waiting),
                    "finished": dict(self.finished)}

    def submit(self, job: Job) -> None:
        """Queue `job`; its events start arriving once it joins the batch.

        Raises:
            QueueFull: when max_pending jobs are already held.
        """
        with self._cond:
            if len(self._running) + len(self._waiting) >= self.max_pending:
                raise QueueFull(f"the server is busy: {self.max_pending} requests are already in progress")
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job, choices: list[int] | None = None) -> None:
        """Stop decoding `job` (all its choices, or these); its rows leave before the next step."""
        with self._cond:
            if job in self._waiting and choices is None:
                self._waiting.remove(job)
                self.finished["cancelled"] += len(job.seeds)
            elif job.id in self._running:
                left = self._running[job.id][1]
                for choice in sorted(left if choices is None else set(choices) & left):
                    self._removals.append((job.id, choice))
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread after the current step."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._closed or self._waiting or self._removals or len(self._decoder))
                if self._closed:
                    return
                removals, self._removals = self._removals, []
                admitted = self._admit()
            for job_id, choice in removals:
                self._decoder.remove((job_id, choice))
                self._end_row(job_id, choice, "cancelled")
            for group in _prefill_groups(admitted):
                self._prefill(group)
            if len(self._decoder):
                self._step()

    def _admit(self) -> list[Job]:
        """Move waiting jobs, oldest first, into the batch while their choices fit (lock held)."""
        admitted = []
        free = self.max_batch - len(self._decoder)
        while self._waiting and len(self._waiting[0].seeds) <= free:
            job = self._waiting.popleft()
            free -= len(job.seeds)
            self._running[job.id] = (job, set(range(len(job.seeds))))
            admitted.append(job)
        return admitted

    def _prefill(self, jobs: list[Job]) -> None:
        try:
            self._decoder.add_many([_rows(job) for job in jobs])
            return
        except Exception as e:  # noqa: BLE001 - the requests fail, the server goes on
            error = e
        if len(jobs) > 1:  # one bad request must not fail the others: try each alone
            for job in jobs:
                self._prefill([job])
            return
        log.error("prefill failed", exc_info=error)
        self._fail([jobs[0].id], error)

    def _step(self) -> None:
        try:
            results = self._decoder.step()
        except Exception as e:  # noqa: BLE001 - every decoding request fails, the server goes on
            log.exception("decoding step failed")
            for key in self._decoder.keys:
                self._decoder.remove(key)
            self._fail(list(self._running), e)
            return
        # Only this thread changes _running, so it may read it without the lock.
        by_job: dict[int, tuple[Job, list[tuple[int, int, bool]]]] = {}
        for (job_id, choice), token_id, finished in results:
            by_job.setdefault(job_id, (self._running[job_id][0], []))[1].append((choice, token_id, finished))
            if finished:
                self._end_row(job_id, choice, "stop" if token_id == self._decoder.eos_id else "length")
        self._send([(job, events) for job, events in by_job.values()])

    def _end_row(self, job_id: int, choice: int, reason: str) -> None:
        with self._cond:
            if job_id not in self._running:
                return
            left = self._running[job_id][1]
            left.discard(choice)
            self.finished[reason] += 1
            if not left:
                del self._running[job_id]

    def _fail(self, job_ids: list[int], error: Exception) -> None:
        with self._cond:
            jobs = [self._running.pop(i)[0] for i in job_ids if i in self._running]
        self._send([(job, error) for job in jobs])

    @staticmethod
    def _send(deliveries: list[tuple[Job, object]]) -> None:
        """Put each event in its job's queue, waking each event loop once, not once per job: a
        wake-up is a write to the loop's self-pipe, and at 16 rows those were 4% of a step."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, object]]] = {}
        for job, event in deliveries:
            by_loop.setdefault(job.loop, []).append((job, event))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # the event loop is closed: the server is shutting down
                pass


def _deliver(batch: list[tuple[Job, object]]) -> None:
    for job, event in batch:
        job.events.put_nowait(event)


def _rows(job: Job) -> NewRows:
    p = job.prompt
    return NewRows([(job.id, i) for i in range(len(job.seeds))], p.input_ids, job.options, job.seeds,
                   p.token_type_ids, p.reply_type_id)


def _prefill_groups(jobs: list[Job]) -> list[list[Job]]:
    """Split jobs, in order, into groups whose left-padded prompts hold at most PREFILL_TOKENS tokens."""
    groups: list[list[Job]] = []
    longest = 0
    for job in jobs:
        length = len(job.prompt.input_ids)
        if groups and max(longest, length) * (len(groups[-1]) + 1) <= PREFILL_TOKENS:
            groups[-1].append(job)
            longest = max(longest, length)
        else:
            groups.append([job])
            longest = length
    return groups
