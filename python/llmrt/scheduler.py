"""Continuous batching: every running request of a model joins one batch.

Each step is one native forward over every running task: a one-token row
for each decoding sequence (speculative tasks add their drafts, beam search
its beams) and prompt chunks (up to `chunk` prompt tokens a step, cut where
a lone prompt is cut) for those starting. Tasks start in order as long as
the KV-cache blocks they may need (prompt and max_new_tokens) are free, so a
running task never runs out of cache; the others wait. Finished tasks free
their blocks and waiting ones take their place.

Any number of threads may submit jobs (one generate() call each) and read
their events. There is no thread of its own: a reader whose job has no
event ready runs the next step, for every job, while the others wait for
it; a step's events go to each job's queue. One step at a time.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import numpy as np

from . import masks
from .engine import Engine
from .step import DecodeEntry, StepEntry
from .step import outputs as step_outputs

if TYPE_CHECKING:
    from .request import Task

T = TypeVar("T")


class Job:
    """The tasks of one generate() call and the events they produce:
    (prompt index, text piece, which of the prompt's n samples)."""

    def __init__(self, scheduler: "Scheduler", max_batch: int):
        self.scheduler, self.max_batch = scheduler, max_batch
        self.tasks: list[Task] = []
        self.events: deque[tuple[int, str, int]] = deque()
        self.open = 0
        self.error: BaseException | None = None
        self.cancelled = False
        self.t0 = time.perf_counter()

    @property
    def finished(self) -> bool:
        return self.open == 0

    def put(self, index: int, piece: str, choice: int = 0) -> None:
        self.events.append((index, piece, choice))

    def take_events(self) -> list[tuple[int, str, int]]:
        """The events produced so far (taken); once none are left, the job's
        error is raised (once). For readers that wait in their own way (the
        server's event loop); next_event() runs steps itself."""
        out = list(self.events)
        self.events.clear()
        if not out and self.error is not None:
            err, self.error = self.error, None
            self.cancelled = True
            raise err
        return out

    @property
    def over(self) -> bool:
        """Finished, cancelled or failed: no more events will come."""
        return self.finished or self.cancelled

    def has_pending(self) -> bool:
        """Events to take, or an error to raise."""
        return bool(self.events) or self.error is not None

    def has_news(self) -> bool:
        """Events to take, an error to raise, or the end."""
        return self.has_pending() or self.over

    def next_event(self) -> tuple[int, str, int] | None:
        """The next (index, piece, choice), running steps until there is one;
        None once the job is over."""
        while True:
            if self.events:
                return self.events.popleft()
            if self.error is not None:
                err, self.error = self.error, None
                self.cancelled = True
                raise err
            if self.finished:
                return None
            self.scheduler.run_until(self)

    def run(self) -> list[list]:
        """Runs to the end; per task, its results."""
        try:
            while self.next_event() is not None:
                pass
        finally:
            if not self.finished:  # interrupted
                self.cancel()
        return self.results()

    def results(self) -> list[list]:
        return [t.results() for t in self.tasks]

    def cancel(self) -> None:
        """Stops the job now and frees its blocks."""
        self.cancelled = True
        self.scheduler.reap(self, wait=True)

    def abandon(self) -> None:
        """Its reader is gone: stop it (now if no step is running, else at
        the next step)."""
        if not self.finished:
            self.cancelled = True
            self.scheduler.reap(self, wait=False)


class Scheduler:
    chunk = 256

    def limit_running(self, n: int) -> None:
        """At most n sequences decode together (more wait their turn)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"the running limit must be a positive integer, got {n!r}")
        self.max_running = n

    def __init__(self, engine: Engine, max_running: int = 256, decode_steps: int = 1):
        self.engine = engine
        self.max_running = max_running
        # decode steps a native call may run while nothing waits and every
        # task only decodes (GPU: fewer round trips through Python)
        self.decode_steps = decode_steps
        self.waiting: deque[Task] = deque()
        self.active: list[Task] = []
        self._lock = threading.Lock()      # held for a whole step
        self._owner: int | None = None     # the thread running a step
        self._queue_lock = threading.Lock()
        self._reap_wanted = False          # a job was cancelled since the last reap
        self.work = threading.Event()      # set when a job is submitted or dropped

    # ---- jobs -------------------------------------------------------------------------
    def submit(self, job: Job, tasks: list["Task"]) -> Job:
        job.tasks = tasks
        job.open = len(tasks)
        job.t0 = time.perf_counter()  # timings count from here (queue_ms: until admitted)
        with self._queue_lock:
            self.waiting.extend(tasks)
        self.work.set()
        return job

    def has_work(self) -> bool:
        return bool(self.waiting or self.active or self._reap_wanted)

    def run_once(self) -> bool:
        """One step, for a thread that runs the steps of every job (a server):
        returns whether there was anything to run."""
        with self._lock:
            self._owner = threading.get_ident()
            try:
                if not self.has_work():
                    return False
                self._step()
                return True
            finally:
                self._owner = None

    def run_until(self, job: Job) -> None:
        """Runs a step unless another thread's step gave the job an event or
        ended it meanwhile."""
        with self._lock:
            if job.events or job.finished or job.error is not None:
                return
            self._owner = threading.get_ident()
            try:
                if not self._step() and not (job.events or job.finished):
                    raise RuntimeError("the scheduler has nothing to run for a job that is "
                                       "not finished")
            finally:
                self._owner = None

    def exclusive(self, blocks: int, fn: Callable[[], T]) -> T:
        """Runs fn between steps (no step runs meanwhile) once `blocks` KV-cache
        blocks are there beyond what running tasks may still take; until
        then it runs steps for the others."""
        while True:
            with self._lock:
                self._owner = threading.get_ident()
                try:
                    self._reap()
                    eng = self.engine
                    reserved = sum(max(t.blocks - t.held(eng), 0) for t in self.active)
                    if not self.active or eng.blocks_available() - reserved >= blocks:
                        return fn()
                    self._step()
                finally:
                    self._owner = None

    def reap(self, job: Job, wait: bool) -> None:
        """Drops a cancelled job's tasks and frees their blocks: now, unless
        a step is running (wait=False, or on the stepping thread itself), in
        which case the next step does it."""
        self._reap_wanted = True
        self.work.set()
        if self._owner == threading.get_ident():
            return
        if not self._lock.acquire(blocking=wait):
            return
        try:
            self._reap()
        finally:
            self._lock.release()

    def _reap(self) -> None:
        if not self._reap_wanted:
            return
        self._reap_wanted = False
        with self._queue_lock:
            if any(t.job.cancelled for t in self.waiting):
                for t in [t for t in self.waiting if t.job.cancelled]:
                    self.waiting.remove(t)
                    self._close(t)
        for t in [t for t in self.active if t.job.cancelled]:
            self.active.remove(t)
            self._close(t)
            self._release(t)

    def _close(self, t: "Task") -> None:
        t.done = True
        t.job.open -= 1

    def _release(self, t: "Task") -> None:
        """Gives a finished or dropped task's blocks back; a failure there
        (a bookkeeping error) ends its job rather than the batch."""
        try:
            t.release(self.engine)
        except Exception as err:  # noqa: BLE001
            if t.job.error is None and not t.job.cancelled:
                t.job.error = err

    def _fail(self, failed: list[tuple["Task", BaseException]]) -> None:
        """Tasks that failed end their jobs (every task of them) with the error."""
        if not failed:
            return
        for t, err in failed:
            if t.job.error is None and not t.job.cancelled:
                t.job.error = err
            t.job.cancelled = True
        self._reap_wanted = True
        self._reap()

    # ---- a step ------------------------------------------------------------------------
    def _step(self) -> bool:
        """Admits what fits, runs one forward for every active task and
        applies its outputs. Returns whether there was anything to run."""
        self._reap()
        self._admit()
        self._reap()  # a task that failed to start ends its job
        if not self.active:
            return False
        if self.decode_steps > 1 and not self.waiting and \
                all(t.started and t.multi_step for t in self.active):
            self._decode_steps()
            return True
        plan = StepPlan(self.active, self.chunk, self.engine.images)
        try:
            plan.run(self.engine)
        except BaseException as e:
            # the batch failed as a whole (or was interrupted half-applied):
            # every task in it ends, each job with an error of its own
            self._fail([(t, _error_for_others(e)) for t in self.active])
            if not isinstance(e, Exception):
                raise
            return True
        self._fail(plan.failed)
        self._retire_done()
        return True

    def _retire_done(self) -> None:
        """Finished tasks leave the batch; their sequences go back."""
        for t in [t for t in self.active if t.done]:
            self.active.remove(t)
            t.job.open -= 1
            self._release(t)

    def _decode_steps(self) -> None:
        """Several decode steps in one native call, for a batch of tasks that
        only decode; the draws are applied step after step, as single steps
        would apply them (tokens drawn after a stop string are dropped)."""
        eng = self.engine
        plan: list[tuple[Task, int]] = []
        entries: list[DecodeEntry] = []
        for t in self.active:
            es = t.decode_entries()
            plan.append((t, len(es)))
            entries.extend(es)
        steps = min(self.decode_steps, max(e.budget for e in entries))
        failed: list[tuple[Task, BaseException]] = []
        try:
            tokens, lps = eng.decode(entries, steps)
            for s in range(tokens.shape[0]):
                col = 0
                for t, n in plan:
                    if not t.done:
                        try:
                            t.apply_decoded(eng, tokens[s, col:col + n],
                                            lps[s][col:col + n] if lps is not None else None)
                        except Exception as err:  # noqa: BLE001 - the task's own failure
                            failed.append((t, err))
                            t.done = True
                    col += n
        except BaseException as e:
            self._fail([(t, _error_for_others(e)) for t in self.active])
            if not isinstance(e, Exception):
                raise
            return
        self._fail(failed)
        self._retire_done()

    def _admit(self) -> None:
        """Starts waiting tasks, in order, while the blocks they may need are
        there (and their job and the batch have room)."""
        if not self.waiting:
            return
        eng = self.engine
        running = sum(t.width for t in self.active)
        per_job: dict[int, int] = {}
        for t in self.active:
            per_job[id(t.job)] = per_job.get(id(t.job), 0) + t.width
        # blocks the running tasks may still take
        reserved = sum(max(t.blocks - t.held(eng), 0) for t in self.active)
        available = eng.blocks_available()
        with self._queue_lock:
            full: set[int] = set()  # jobs at their max_batch_size: their later tasks wait too
            skipped: list[Task] = []
            while self.waiting:
                t = self.waiting[0]
                mine = per_job.get(id(t.job), 0)
                if id(t.job) in full or (mine and mine + t.width > t.job.max_batch):
                    full.add(id(t.job))
                    skipped.append(self.waiting.popleft())
                    continue
                if self.active and (running + t.width > self.max_running or
                                    available - reserved < t.blocks):
                    break
                self.waiting.popleft()
                if t.p.max_new_tokens == 0:
                    t.finish_empty()
                    t.job.open -= 1
                    continue
                try:
                    t.admit(eng)
                except Exception as err:  # noqa: BLE001 - fails its job, not the batch
                    self._close(t)
                    self._release(t)
                    if t.job.error is None:
                        t.job.error = err
                    t.job.cancelled = self._reap_wanted = True
                    continue
                self.active.append(t)
                running += t.width
                per_job[id(t.job)] = mine + t.width
                available = eng.blocks_available()
                reserved += max(t.blocks - t.held(eng), 0)
            self.waiting.extendleft(reversed(skipped))


class StepPlan:
    """One forward step of the batch: every started task's entries, then the
    prompt chunks that fit the chunk budget; which of the step's logit rows
    and draws go to which task; and the tasks that failed on the way."""

    def __init__(self, active: list[Task], chunk: int, images: Any = None):
        self.entries: list[StepEntry] = []
        self.parts: list[tuple[Task, int, int]] = []  # task, its logit rows, its draws
        self.failed: list[tuple[Task, BaseException]] = []
        for t in active:
            if not t.started:
                continue
            try:
                es = t.entries()
            except Exception as err:  # noqa: BLE001 - the task's own failure (its draft model, ...)
                self.failed.append((t, err))
                continue
            self._add(t, es)
        budget = chunk
        for t in active:  # prompt chunks after the decoding rows, within the budget
            if t.started:
                continue
            left = len(t.prompt) - t.pos
            c = min(chunk, left)
            if images is not None:  # an image whose rows see each other goes in whole
                c = images.cut(t.prompt, t.pos, c)
            if c > budget and not (c > chunk and budget == chunk):  # (such an image: alone)
                continue
            budget -= c
            toks = np.asarray(t.prompt[t.pos:t.pos + c], np.int32)
            if c == left:  # the prompt's last chunk: its outputs go to the task
                self._add(t, [t.first_entry(toks)])
            else:
                self.entries.append(StepEntry(t.seq, toks, "none"))
            t.pos += c

    def _add(self, t: Task, es: list[StepEntry]) -> None:
        self.parts.append((t, *step_outputs(es)))
        self.entries.extend(es)

    def run(self, eng: Engine) -> None:
        """Runs the step and hands each task its outputs. The masks of the
        constrained samplers drawing in it are computed on the worker thread
        while the forward pass runs. Raises when the step as a whole fails."""
        if not self.entries:
            return
        pending = masks.start_masks(s for e in self.entries if e.samplers for s in e.samplers)
        try:
            res = eng.step(self.entries)
        finally:
            masks.finish_masks(pending)
        row = draw = 0
        for t, n_rows, n_draws in self.parts:
            try:
                t.apply(eng, res.logits[row:row + n_rows] if n_rows else res.logits,
                        res.tokens[draw:draw + n_draws],
                        res.logprobs[draw:draw + n_draws] if res.logprobs is not None else None)
            except Exception as err:  # noqa: BLE001 - the task's own failure
                self.failed.append((t, err))
            row += n_rows
            draw += n_draws


def _error_for_others(e: BaseException) -> BaseException:
    """The error a failed step gives each job in it: an exception of the
    same type and message (one object raised in several threads would mix
    their tracebacks), or, for an interruption of the stepping thread, a
    RuntimeError saying so."""
    if not isinstance(e, Exception):
        err: BaseException = RuntimeError(f"the batch step was interrupted ({type(e).__name__}) "
                                          f"in the thread running it")
    else:
        try:
            err = type(e)(*e.args)
        except Exception:  # noqa: BLE001 - an exception type that cannot be rebuilt
            err = RuntimeError(str(e))
    err.__cause__ = e
    return err
